# syntax=docker/dockerfile:1
# Images for `docker compose up` and for workers on other machines:
#   api         the API, migrations and the CLI, without torch (Python slim)
#   worker      a GPU worker: CUDA runtime base, the CUDA build of torch, bitsandbytes
#   worker-cpu  a worker for machines without a GPU (CPU build of torch)
# Every image runs as the unprivileged user `loraforge` (uid 10001) with its data in /data.

ARG PYTHON_VERSION=3.12
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# The project's sources, and nothing else, for every image to install from.
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY app /src/app
COPY worker /src/worker
COPY migrations /src/migrations

# Python, a virtualenv on the PATH, the user and /data: what the slim images share.
FROM python:${PYTHON_VERSION}-slim-bookworm AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    LORAFORGE_DATA_DIR=/data \
    HF_HOME=/home/loraforge/.cache/huggingface
RUN python -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group loraforge \
    && install -d -o loraforge -g loraforge /data /home/loraforge/.cache/huggingface

# ---------------------------------------------------------------------------------------
FROM python-base AS api
COPY --from=source /src /tmp/src
# No `worker` extra: the API never imports torch (the s3 extra is boto3 alone).
RUN pip install "/tmp/src[s3]" && rm -rf /tmp/src
USER 10001:10001
WORKDIR /home/loraforge
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["loraforge", "api", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS worker
# PyPI's Linux torch wheels are the CUDA build; an index such as
# https://download.pytorch.org/whl/cu128 picks another CUDA version.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    LORAFORGE_DATA_DIR=/data \
    HF_HOME=/home/loraforge/.cache/huggingface
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group loraforge \
    && install -d -o loraforge -g loraforge /data /home/loraforge/.cache/huggingface
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY --from=source /src /tmp/src
RUN pip install "/tmp/src[worker,s3]" && rm -rf /tmp/src
USER 10001:10001
WORKDIR /home/loraforge
# A solo-pool worker cannot answer `celery inspect ping` while it trains, so the check is
# that PID 1 is still the worker (its death also stops the container).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import pathlib, sys; sys.exit(b'worker' not in pathlib.Path('/proc/1/cmdline').read_bytes())"]
CMD ["loraforge", "worker"]

# ---------------------------------------------------------------------------------------
FROM python-base AS worker-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY --from=source /src /tmp/src
RUN pip install "/tmp/src[worker,s3]" && rm -rf /tmp/src
USER 10001:10001
WORKDIR /home/loraforge
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import pathlib, sys; sys.exit(b'worker' not in pathlib.Path('/proc/1/cmdline').read_bytes())"]
CMD ["loraforge", "worker"]
