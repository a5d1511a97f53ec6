"""Use the fine-tuned model: jobs trained on `loraforge serve` answer through the official
openai SDK the moment they succeed, each organization with its own adapter, streaming
included; and the proxy to an inference server configured per base model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.db.models import Job
from app.db.session import make_engine, make_session_factory
from tests.e2e.stacks import Stack, embedded_stack, postgres_redis_stack, upload, wait_status
from tests.live import free_port, loraforge, start_inference, stop, wait_for
from tests.worker.inference.adapters import make_adapter, reference_chat

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE = "loraforge/tiny-random-llama"
QUESTION = [{"role": "user", "content": "Say hello number 2"}]


def greetings(word: str, n: int = 40) -> bytes:
    """The same questions for every organization; each learns its own answers."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Say hello number {i % 4}"},
                {"role": "assistant", "content": f"{word} {i % 4}! {word} {i % 4}!"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def train(stack: Stack, key: str, word: str) -> dict[str, Any]:
    """A job that learns to answer with `word`, run to success."""
    with httpx.Client(
        base_url=f"{stack.base_url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        file_id = upload(client, greetings(word))
        body = {
            "model": BASE,
            "training_file": file_id,
            "suffix": word.lower(),
            "seed": 1,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 6}}},
            "training": {
                "learning_rate": 2e-3,
                "gradient_checkpointing": False,
                "checkpoint_every_steps": 20,
            },
        }
        created = client.post("/fine_tuning/jobs", json=body)
        assert created.status_code == 200, created.text
        job: dict[str, Any] = wait_status(client, created.json()["id"], "succeeded", "failed")
        assert job["status"] == "succeeded", job
        checkpoints = client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        job["checkpoint_models"] = [c["fine_tuned_model_checkpoint"] for c in checkpoints]
        return job


def answer(client: openai.OpenAI, model: str, **fields: Any) -> str:
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=24, **fields
    )
    return completion.choices[0].message.content or ""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, Any]]]:
    """serve, with two organizations that each trained a model on the same questions."""
    root = tmp_path_factory.mktemp("inference")
    with embedded_stack(root) as stack:
        other = loraforge(stack.env, "keys", "create", "--org", "globex")
        assert other.returncode == 0, other.stderr
        keys = {"hello": stack.key, "bye": other.stdout.strip()}
        jobs = {word: train(stack, keys[word], word.capitalize()) for word in keys}
        yield stack, {"keys": keys, "jobs": jobs}


def test_a_fine_tuned_model_answers_what_it_learned_and_equals_peft_generate(
    trained: tuple[Stack, dict[str, Any]], tmp_path: Path
):
    stack, world = trained
    client = sdk(stack, world["keys"]["hello"])
    model = world["jobs"]["hello"]["fine_tuned_model"]
    learned = answer(client, model)
    assert learned == "Hello 2! Hello 2!"
    assert "Hello 2!" not in answer(client, BASE)
    assert model in {m.id for m in client.models.list()}

    archive = httpx.get(
        f"{stack.base_url}/v1/fine_tuning/jobs/{world['jobs']['hello']['id']}/adapter",
        headers={"Authorization": f"Bearer {stack.key}"},
    )
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    (adapter_dir,) = {p.parent for p in tmp_path.rglob("adapter_config.json")}
    reference = reference_chat(stack.data_dir / "models", adapter_dir, QUESTION, 24)
    assert learned == reference


def test_a_stream_yields_the_plain_answer_and_its_usage(trained: tuple[Stack, dict[str, Any]]):
    stack, world = trained
    client = sdk(stack, world["keys"]["hello"])
    model = world["jobs"]["hello"]["fine_tuned_model"]
    plain = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=24
    )
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage == plain.usage


def test_organizations_streaming_at_once_each_get_their_own_adapter(
    trained: tuple[Stack, dict[str, Any]],
):
    stack, world = trained
    results: list[tuple[str, str]] = []

    def stream(word: str) -> None:
        client = sdk(stack, world["keys"][word])
        model = world["jobs"][word]["fine_tuned_model"]
        chunks = client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=24, stream=True
        )
        results.append((word, "".join(c.choices[0].delta.content or "" for c in chunks)))

    threads = [threading.Thread(target=stream, args=(w,)) for w in ["hello", "bye"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == sorted(
        [("hello", "Hello 2! Hello 2!")] * 4 + [("bye", "Bye 2! Bye 2!")] * 4
    )


def test_another_organizations_model_is_404_and_a_checkpoint_answers(
    trained: tuple[Stack, dict[str, Any]],
):
    stack, world = trained
    globex = sdk(stack, world["keys"]["bye"])
    with pytest.raises(openai.NotFoundError):
        answer(globex, world["jobs"]["hello"]["fine_tuned_model"])
    with pytest.raises(openai.NotFoundError):
        answer(globex, world["jobs"]["hello"]["checkpoint_models"][0])
    checkpoint = world["jobs"]["bye"]["checkpoint_models"][0]
    assert ":ckpt-step-" in checkpoint
    assert answer(globex, checkpoint)


def test_a_client_that_disconnects_mid_stream_frees_its_slot(
    trained: tuple[Stack, dict[str, Any]],
):
    stack, world = trained
    headers = {"Authorization": f"Bearer {world['keys']['hello']}"}
    body = {"model": BASE, "messages": QUESTION, "max_tokens": 1500, "stream": True}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=60) as client:
        for _ in range(3):  # more than the organization's 4 slots in all, one after another
            streams = [client.stream("POST", "/v1/chat/completions", json=body) for _ in range(4)]
            for opened in streams:
                response = opened.__enter__()
                assert response.status_code == 200
                next(response.iter_bytes())
            for opened in streams:
                opened.__exit__(None, None, None)
        wait_for(
            lambda: (
                client.post(
                    "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}
                ).status_code
                == 200
            ),
            5,
            "a slot to be free again",
        )


def test_an_api_proxies_to_the_inference_server_configured_for_the_base(tmp_path: Path):
    """A succeeded job's adapter, written as a worker would, answers through an API that
    knows the inference server only from LORAFORGE_INFERENCE_BACKENDS."""
    port = free_port()
    backends = {"LORAFORGE_INFERENCE_BACKENDS": json.dumps({BASE: f"http://127.0.0.1:{port}"})}
    with postgres_redis_stack(tmp_path, workers=0, settings=backends) as stack:
        upstream = start_inference(stack.env, port, tmp_path / "inference.log")
        try:
            with stack.client() as client:
                file_id = upload(client, greetings("Hello"))
                body = {"model": BASE, "training_file": file_id}
                job_id = client.post("/fine_tuning/jobs", json=body).json()["id"]
            jobs_dir = stack.data_dir / "jobs"
            adapter = make_adapter(stack.data_dir / "models", jobs_dir / job_id / "adapter", 5)
            model = f"ft:{BASE}:e2e::{job_id[-8:]}"
            engine = make_engine(stack.env["LORAFORGE_DATABASE_URL"])
            with make_session_factory(engine)() as session:
                job = session.get_one(Job, job_id)
                job.status, job.fine_tuned_model = "succeeded", model
                session.commit()
            engine.dispose()
            expected = reference_chat(stack.data_dir / "models", adapter, QUESTION, 24)
            assert answer(sdk(stack, stack.key), model) == expected
        finally:
            stop(upstream)


def test_loraforge_chat_answers_one_message_and_a_conversation(
    trained: tuple[Stack, dict[str, Any]],
):
    stack, world = trained
    model = world["jobs"]["hello"]["fine_tuned_model"]
    env = {"LORAFORGE_BASE_URL": stack.base_url, "LORAFORGE_API_KEY": ""}
    key = world["keys"]["hello"]
    one = loraforge(
        env,
        "chat",
        model,
        "--message",
        "Say hello number 2",
        "--temperature",
        "0",
        "--api-key",
        key,
    )
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "Hello 2! Hello 2!"
    conversation = subprocess.run(
        [sys.executable, "-m", "app.cli", "chat", model, "--temperature", "0", "--api-key", key],
        input="Say hello number 1\nSay hello number 3\nexit\n",
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert conversation.returncode == 0, conversation.stderr
    assert "Hello 1! Hello 1!" in conversation.stdout
    assert conversation.stderr.count(" tokens]") == 2  # two exchanges, each with its usage
    listed = loraforge(env, "models", "list", "--api-key", key)
    assert listed.returncode == 0, listed.stderr
    assert model in {json.loads(line)["id"] for line in listed.stdout.splitlines()}
    refused = loraforge(env, "chat", model, "-m", "hi", "--api-key", world["keys"]["bye"])
    assert refused.returncode == 1 and "does not exist" in refused.stderr
