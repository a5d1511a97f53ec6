# Everyday verbs. `make serve` runs the service, `make test` runs the tests; both install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; a bare `torch` would pull a CUDA build.
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve api worker key test test-fast lint format typecheck check migrate bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[worker,s3,dev,bench]'
	touch $@

serve: install
	HF_HUB_OFFLINE=1 $(BIN)/loraforge serve --host $(HOST) --port $(PORT)

api: install
	$(BIN)/loraforge api --host $(HOST) --port $(PORT)

worker: install
	HF_HUB_OFFLINE=1 $(BIN)/loraforge worker

key: install
	$(BIN)/loraforge keys create --org $${ORG:-default}

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "not slow and not postgres"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy app worker

check: lint typecheck test

migrate: install
	$(BIN)/loraforge migrate

# Every CPU benchmark, then bench/RESULTS.md and its plots (bench/gpu/ runs on a GPU machine).
BENCH_SCRIPTS := bench/trainer_vs_trl.py bench/quant_memory.py bench/estimator_accuracy.py \
	bench/api_load.py bench/job_latency.py bench/inference.py

bench: install
	for script in $(BENCH_SCRIPTS); do HF_HUB_OFFLINE=1 $(BIN)/python $$script || exit 1; done
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
