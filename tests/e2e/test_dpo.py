"""Supervised then DPO through the openai SDK, on `loraforge api` + a worker over Postgres and
Redis: the DPO job starts from the first job's adapter, learns the preference, survives a
worker's kill -9 (the repeated steps are trained exactly as the first time) and exports."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.stacks import (
    Stack,
    checkpoint_steps,
    create_job,
    events,
    hello_dataset,
    postgres_redis_stack,
    upload,
    wait_export,
    wait_status,
)
from tests.live import wait_for
from tests.worker.factories import preference_rows

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

STEPS = 40
CHECKPOINT_EVERY = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with postgres_redis_stack(tmp_path_factory.mktemp("dpo")) as running:
        yield running


def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=stack.key, max_retries=0, timeout=30
    )


def pairs(repeat: int) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in preference_rows(repeat)).encode()


def metrics(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    """Every metrics event's data, oldest first (a step trained twice appears twice)."""
    return [e["data"] for e in events(stack.client(), job_id) if e["type"] == "metrics"]


def test_supervised_then_dpo_learns_survives_kill_9_and_exports(stack: Stack) -> None:
    client, http = sdk(stack), stack.client()
    parent = create_job(http, upload(http, hello_dataset(16)), max_steps=6)
    parent = wait_status(http, parent["id"], "succeeded", "failed")
    assert parent["status"] == "succeeded", parent["error"]

    training = client.files.create(file=("pairs.jsonl", io.BytesIO(pairs(8))), purpose="fine-tune")
    validation = client.files.create(
        file=("pairs-valid.jsonl", io.BytesIO(pairs(3))), purpose="fine-tune"
    )
    created = client.fine_tuning.jobs.create(
        model=parent["fine_tuned_model"],
        training_file=training.id,
        validation_file=validation.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "batch_size": 4}}},
        seed=3,
        extra_body={
            "training": {
                "learning_rate": 5e-3,
                "gradient_checkpointing": False,
                "max_steps": STEPS,
                "checkpoint_every_steps": CHECKPOINT_EVERY,
                "eval_every_steps": CHECKPOINT_EVERY,
            }
        },
    )
    assert created.method is not None and created.method.type == "dpo"
    assert created.method.dpo is not None and created.method.dpo.hyperparameters is not None
    assert created.method.dpo.hyperparameters.beta == 0.5
    assert created.model == parent["fine_tuned_model"]

    wait_for(
        lambda: max(checkpoint_steps(http, created.id), default=0) >= 2 * CHECKPOINT_EVERY,
        180,
        "two checkpoints",
    )
    stack.kill_worker()
    finished = wait_status(http, created.id, "succeeded", "failed")
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempt"] == 2

    seen = metrics(stack, created.id)
    by_step: dict[int, list[dict[str, Any]]] = {}
    for data in seen:
        by_step.setdefault(data["step"], []).append(data)
    assert set(by_step) == set(range(1, STEPS + 1))
    # Step 1 is at the reference, the parent's adapter: no margin yet, whatever the parent.
    assert by_step[1][0]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    # Steps trained again after the kill are trained exactly as the first time.
    repeated = [step for step, runs in by_step.items() if len(runs) > 1]
    for step in repeated:
        first, again = by_step[step][0], by_step[step][-1]
        for name in ("train_loss", "train_reward_margin", "lr"):
            assert again[name] == pytest.approx(first[name], abs=1e-5), (step, name)
    # The held-out preference: accuracy and margin rise from the first evaluation.
    evaluated = [runs[-1] for _, runs in sorted(by_step.items()) if runs[-1].get("valid_loss")]
    first_eval, last_eval = evaluated[0], evaluated[-1]
    assert last_eval["valid_reward_margin"] > first_eval["valid_reward_margin"] > 0
    assert last_eval["valid_preference_accuracy"] >= first_eval["valid_preference_accuracy"]
    assert last_eval["valid_preference_accuracy"] == 1.0

    job_path = f"/fine_tuning/jobs/{created.id}"
    checkpoints = http.get(f"{job_path}/checkpoints").json()["data"]
    latest = max(checkpoints, key=lambda c: c["step_number"])
    assert latest["step_number"] == STEPS
    assert latest["metrics"]["full_valid_preference_accuracy"] == 1.0
    assert latest["metrics"]["full_valid_reward_margin"] > 0

    export = http.post(f"{job_path}/exports", json={"type": "merged", "dtype": "float32"})
    assert export.status_code == 200, export.text
    export_path = f"{job_path}/exports/{export.json()['id']}"
    done = wait_export(http, export_path)
    assert done["status"] == "succeeded", done
    for path in (f"{export_path}/content", f"{job_path}/adapter"):
        response = http.get(path)
        assert response.status_code == 200 and len(response.content) > 1000, path
