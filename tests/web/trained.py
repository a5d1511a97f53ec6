"""Jobs the real worker trained on one `loraforge serve`, shared by the page and Playground
tests (training is the slow part of them): one with a validation file, checkpoints and a
merged export, one trained long enough to answer what it learned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.e2e.stacks import JOB_TIMEOUT_S, Stack, hello_dataset, upload, wait_status
from tests.live import wait_for

BASE = "loraforge/tiny-random-llama"
STEPS = 12
EVAL_EVERY = 4
CHECKPOINT_EVERY = 6
# Enough steps on hello_dataset for the tiny model to answer "Hello 2! Hello 2!" to
# "Say hello number 2", and stop there.
LEARNED_STEPS = 40
# The tiny base answers this greedily with 1,764 tokens (seconds on a CPU): long enough to
# stop it mid-stream.
LONG_PROMPT = "Write a very long story."
# Two generations at once per organization: compare mode's two streams fit, a third is 429.
GENERATION_SETTINGS = {"LORAFORGE_MAX_CONCURRENT_GENERATIONS": "2"}


@dataclass(frozen=True)
class Trained:
    validated: str  # with a validation file, checkpoints and a succeeded merged export
    plain: str  # no validation file, no export; learned its answers
    export: dict[str, Any]
    learned_model: str  # the plain job's fine_tuned_model
    checkpoints: dict[int, str]  # the validated job's checkpoint models by step


def train(client: httpx.Client, training_file: str, **fields: Any) -> str:
    body = {"model": BASE, "training_file": training_file, "suffix": "pages", "seed": 1, **fields}
    response = client.post("/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["id"]
    return job_id


def train_jobs(stack: Stack) -> Trained:
    client = stack.client()
    train_file = upload(client, hello_dataset(24), "hello-train.jsonl")
    valid_file = upload(client, hello_dataset(12), "hello-valid.jsonl")
    options = {"learning_rate": 2e-3, "gradient_checkpointing": False, "max_steps": STEPS}
    validated = train(
        client,
        train_file,
        validation_file=valid_file,
        training={
            **options,
            "eval_every_steps": EVAL_EVERY,
            "checkpoint_every_steps": CHECKPOINT_EVERY,
        },
    )
    plain = train(client, train_file, training={**options, "max_steps": LEARNED_STEPS})
    jobs = {job: wait_status(client, job, "succeeded", "failed") for job in (validated, plain)}
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    path = f"/fine_tuning/jobs/{validated}/exports"
    created = client.post(path, json={"type": "merged", "dtype": "bfloat16"}).json()

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = client.get(f"{path}/{created['id']}").json()
        return current if current["status"] in ("succeeded", "failed") else None

    export = wait_for(finished, JOB_TIMEOUT_S, "the merged export")
    assert export["status"] == "succeeded", export
    checkpoints = client.get(f"/fine_tuning/jobs/{validated}/checkpoints").json()["data"]
    learned_model = jobs[plain]["fine_tuned_model"]
    first_answer(client, learned_model)
    return Trained(
        validated,
        plain,
        export,
        learned_model=learned_model,
        checkpoints={c["step_number"]: c["fine_tuned_model_checkpoint"] for c in checkpoints},
    )


def first_answer(client: httpx.Client, model: str) -> None:
    """The inference server's first answer, once it is up: a fine-tuned model's, so that its
    adapter is loaded before the bare base has answered anything. On a CPU with AVX512-BF16,
    bitsandbytes repacks 4-bit weights on their first forward pass, and peft wrapping them
    after that changes the base's greedy answers (LONG_PROMPT's among them): in this order
    the base answers as it does on a server that never loaded an adapter."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    wait_for(
        lambda: client.post("/chat/completions", json=body).status_code == 200,
        60,
        "the inference server's first answer",
    )
