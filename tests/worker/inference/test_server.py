"""`loraforge inference` in-process: the OpenAI protocol and vLLM's adapter endpoints on the
tiny model in NF4, with real PEFT adapters loaded at run time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.worker.inference.adapters import make_adapter, reference_chat
from worker.inference.server import create_inference_app

BASE = "loraforge/tiny-random-llama"
MESSAGES = [{"role": "user", "content": "Say hello number 2"}]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inference-data")


@pytest.fixture(scope="module")
def adapters(data_dir: Path) -> dict[str, Path]:
    """Two adapters that say different things, stored where a job's adapter would be."""
    return {
        name: make_adapter(data_dir / "models", data_dir / "jobs" / name / "adapter", seed)
        for name, seed in (("ft:one", 1), ("ft:two", 2))
    }


@pytest.fixture(scope="module")
def app(data_dir: Path, adapters: dict[str, Path]) -> Any:
    settings = Settings(data_dir=data_dir, inference_max_adapters=2, _env_file=None)  # type: ignore[call-arg]
    return create_inference_app(settings)


@pytest.fixture(scope="module")
def client(app: Any, adapters: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        for name, path in adapters.items():
            load(test_client, name, path)
        yield test_client


def load(client: TestClient, name: str, path: Path) -> httpx.Response:
    return client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})


def chat(client: TestClient, model: str, **fields: Any) -> Any:
    body = {"model": model, "messages": MESSAGES, "temperature": 0, "max_tokens": 16, **fields}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def stream_events(response: httpx.Response) -> list[Any]:
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_greedy_answers_equal_peft_generate_on_the_same_adapter(
    client: TestClient, data_dir: Path, adapters: dict[str, Path]
):
    for name, path in adapters.items():
        answer = chat(client, name)
        expected = reference_chat(data_dir / "models", path, MESSAGES, 16)
        assert answer["choices"][0]["message"]["content"] == expected
        assert answer["model"] == name
    base = chat(client, BASE)["choices"][0]["message"]["content"]
    assert base == reference_chat(data_dir / "models", None, MESSAGES, 16)
    assert (
        len({base, *(chat(client, n)["choices"][0]["message"]["content"] for n in adapters)}) == 3
    )


def test_a_stream_says_what_the_plain_call_says_and_ends_with_usage(client: TestClient):
    plain = chat(client, "ft:one")
    body = {
        "model": "ft:one",
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = stream_events(client.post("/v1/chat/completions", json=body))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"]["content"] or "" for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == plain["choices"][0]["finish_reason"]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]


def test_concurrent_requests_for_two_adapters_each_get_their_own(app: Any, client: TestClient):
    alone = {
        name: chat(client, name)["choices"][0]["message"]["content"]
        for name in ("ft:one", "ft:two")
    }
    assert alone["ft:one"] != alone["ft:two"]

    async def together() -> list[tuple[str, str]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inference") as http:

            async def ask(name: str) -> tuple[str, str]:
                body = {"model": name, "messages": MESSAGES, "temperature": 0, "max_tokens": 16}
                response = await http.post("/v1/chat/completions", json=body)
                return name, response.json()["choices"][0]["message"]["content"]

            return await asyncio.gather(*(ask(["ft:one", "ft:two"][i % 2]) for i in range(8)))

    for name, text in asyncio.run(together()):
        assert text == alone[name]


def test_stop_sequences_and_token_limits_end_choices_as_openai_says(client: TestClient):
    full = chat(client, "ft:one", max_tokens=12)["choices"][0]
    assert full["finish_reason"] == "length"
    stop = full["message"]["content"][3:6]
    cut = chat(client, "ft:one", max_tokens=12, stop=[stop])["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["message"]["content"] == full["message"]["content"].split(stop)[0]
    completion = client.post(
        "/v1/completions", json={"model": "ft:one", "prompt": "Hello", "max_tokens": 3}
    ).json()
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 3


def test_a_seed_repeats_a_sampled_answer_and_n_gives_several(client: TestClient):
    sampled = [
        chat(client, "ft:two", temperature=1.0, top_p=0.9, seed=7, n=2)["choices"] for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    assert [choice["index"] for choice in sampled[0]] == [0, 1]


def test_unknown_models_and_prompts_past_the_context_are_refused(client: TestClient):
    missing = client.post("/v1/chat/completions", json={"model": "ft:nope", "messages": MESSAGES})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    long_prompt = [{"role": "user", "content": "hello " * 3000}]
    too_long = client.post("/v1/chat/completions", json={"model": BASE, "messages": long_prompt})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    unsupported = client.post(
        "/v1/chat/completions", json={"model": BASE, "messages": MESSAGES, "logprobs": True}
    )
    assert unsupported.status_code == 400 and unsupported.json()["error"]["param"] == "logprobs"


def test_adapters_load_only_from_the_data_dir(client: TestClient, tmp_path: Path):
    outside = load(client, "ft:outside", tmp_path)
    assert outside.status_code == 400
    assert outside.json()["error"]["code"] == "invalid_adapter_path"


def test_the_least_recently_used_idle_adapter_makes_room(
    client: TestClient, data_dir: Path, adapters: dict[str, Path]
):
    chat(client, "ft:two")  # ft:one is now the least recently used of the two loaded
    third = make_adapter(data_dir / "models", data_dir / "jobs" / "three" / "adapter", 3)
    assert load(client, "ft:three", third).status_code == 200
    listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert listed == {BASE, "ft:two", "ft:three"}
    evicted = client.post("/v1/chat/completions", json={"model": "ft:one", "messages": MESSAGES})
    assert evicted.status_code == 404
    assert load(client, "ft:one", adapters["ft:one"]).status_code == 200  # back, for later tests


def test_a_base_answer_before_any_adapter_changes_no_later_answer(
    data_dir: Path, adapters: dict[str, Path]
):
    # On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights at their first forward in
    # eval mode, and peft wrapping repacked layers changed every later answer (logits moved
    # by about 0.05): a long greedy answer shows it.
    story = [{"role": "user", "content": "Write a very long story."}]
    settings = Settings(data_dir=data_dir, _env_file=None)  # type: ignore[call-arg]
    with TestClient(create_inference_app(settings)) as fresh:
        base = chat(fresh, BASE, messages=story, max_tokens=120)
        assert load(fresh, "ft:one", adapters["ft:one"]).status_code == 200
        tuned = chat(fresh, "ft:one", messages=story, max_tokens=120)
    models = data_dir / "models"
    assert base["choices"][0]["message"]["content"] == reference_chat(models, None, story, 120)
    expected = reference_chat(models, adapters["ft:one"], story, 120)
    assert tuned["choices"][0]["message"]["content"] == expected
