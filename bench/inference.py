"""Generation through `loraforge inference` against plain transformers generate, same model,
same run: time to first token and tokens/s for one stream and for 8 at once, the cost of
switching adapters between requests, the time to load an adapter and its memory.

The server runs as a real process on 127.0.0.1 (streams over HTTP, as the API relays them);
the baseline is `PeftModel.generate` in this process on the same NF4 base and adapter, its
rounds interleaved with the server's so that both see the same machine.
Greedy decoding, and tokens counted as generated on both sides (an early EOS counts as
fewer tokens, not as a faster run).

    python bench/inference.py [--quick] [--tokens 64] [--repeats 5] [--out-dir DIR]

Prints JSON and writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import finish, header, library_versions, median  # noqa: E402
from tests.live import free_port, stop, wait_for  # noqa: E402

BASE = "loraforge/tiny-random-llama"
PROMPT = [{"role": "user", "content": "Tell me a story about a cow"}]
STREAMS = 8
# torch threads on both sides: the tiny model gains nothing from more, and two threads on a
# shared 2-core machine measure OpenMP's spinning more than the models.
THREADS = 1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "LORAFORGE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = str(THREADS)
    env["LORAFORGE_INFERENCE_MAX_ADAPTERS"] = "32"
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "inference", "--port", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, 120, "the inference server")
    return process, url


async def one_stream(client: httpx.AsyncClient, model: str, tokens: int) -> dict[str, float]:
    """One streamed chat completion: seconds to the first text, total seconds, tokens."""
    body = {
        "model": model,
        "messages": PROMPT,
        "temperature": 0,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    generated = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    return {"ttft_s": first if first is not None else total, "total_s": total, "tokens": generated}


async def streams_at_once(url: str, models: list[str], tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        runs = await asyncio.gather(*(one_stream(client, m, tokens) for m in models))
        wall = time.perf_counter() - started
    return {
        "ttft_median_s": median(r["ttft_s"] for r in runs),
        "tokens": sum(r["tokens"] for r in runs),
        "wall_s": wall,
        "tokens_per_s": sum(r["tokens"] for r in runs) / wall,
    }


class Generate:
    """PeftModel.generate in this process on the same NF4 base and adapter as the server
    (generate serves one request at a time)."""

    def __init__(self, models_dir: Path, adapter: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer

        from tests.worker.inference.adapters import nf4_base

        torch.set_num_threads(THREADS)
        from worker.training.models import inference_mode

        self.model = PeftModel.from_pretrained(nf4_base(models_dir), adapter)
        inference_mode(self.model)  # the server's bitsandbytes path
        tokenizer = AutoTokenizer.from_pretrained(adapter)
        text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
        self.ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        self.run(4)  # warm

    def run(self, max_new: int) -> tuple[float, int]:
        """(seconds, tokens generated) of one greedy generation."""
        started = time.perf_counter()
        output = self.model.generate(self.ids, max_new_tokens=max_new, do_sample=False)
        return time.perf_counter() - started, int(output.shape[1] - self.ids.shape[1])

    def round(self, tokens: int, count: int) -> dict[str, float]:
        first, _ = self.run(1)
        runs = [self.run(tokens) for _ in range(count)]
        seconds = sum(s for s, _ in runs)
        generated = sum(n for _, n in runs)
        return {"ttft_median_s": first, "tokens": generated, "tokens_per_s": generated / seconds}


SHAPES: dict[str, Callable[[list[str]], list[str]]] = {
    "one_stream": lambda a: [a[0]],
    "eight_streams_one_adapter": lambda a: [a[0]] * STREAMS,
    "eight_streams_two_adapters": lambda a: [a[i % 2] for i in range(STREAMS)],
    "eight_streams_base": lambda a: [BASE] * STREAMS,
}


def side_by_side(
    url: str, generate: Generate, adapters: list[str], tokens: int, repeats: int
) -> dict[str, Any]:
    """Medians over `repeats` rounds; each round runs every server shape and generate's two
    shapes one after another, so both sides see the same machine."""
    asyncio.run(streams_at_once(url, [adapters[0]], 4))  # warm: base loaded, adapter too
    rounds: dict[str, list[dict[str, float]]] = {}
    for _ in range(repeats):
        for name, models in SHAPES.items():
            run = asyncio.run(streams_at_once(url, models(adapters), tokens))
            rounds.setdefault(f"server/{name}", []).append(run)
        rounds.setdefault("transformers/one_stream", []).append(generate.round(tokens, 1))
        rounds.setdefault("transformers/eight_in_a_row", []).append(generate.round(tokens, STREAMS))
    results: dict[str, Any] = {"server": {}, "transformers": {}}
    for key, runs in rounds.items():
        side, name = key.split("/")
        results[side][name] = {
            "ttft_median_s": median(r["ttft_median_s"] for r in runs),
            "tokens_per_s": median(r["tokens_per_s"] for r in runs),
            "tokens_per_round": median(r["tokens"] for r in runs),
        }
    return results


def adapter_costs(url: str, pid: int, data_dir: Path, count: int) -> dict[str, Any]:
    """Seconds to load a new adapter, and the server's memory per loaded adapter."""
    from tests.worker.inference.adapters import make_adapter

    paths = [
        make_adapter(data_dir / "models", data_dir / "jobs" / f"extra-{i}" / "adapter", 100 + i)
        for i in range(count)
    ]
    before = rss_bytes(pid)
    load_times = []
    for index, path in enumerate(paths):
        started = time.perf_counter()
        response = httpx.post(
            f"{url}/v1/load_lora_adapter",
            json={"lora_name": f"extra-{index}", "lora_path": str(path)},
            timeout=120,
        )
        response.raise_for_status()
        load_times.append(time.perf_counter() - started)
    grown = rss_bytes(pid) - before
    adapter_bytes = (paths[0] / "adapter_model.safetensors").stat().st_size
    return {
        "adapters_loaded": count,
        "load_median_s": median(load_times),
        "rss_growth_per_adapter_bytes": grown / count,
        "adapter_file_bytes": adapter_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and rounds")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    tokens, repeats = (8, 1) if args.quick else (args.tokens, args.repeats)

    from tests.worker.inference.adapters import make_adapter

    results = header("inference", " ".join(["python", *sys.argv]), args.quick)
    results["libraries"] = library_versions("torch", "transformers", "peft", "bitsandbytes")
    results["settings"] = {
        "tokens": tokens,
        "repeats": repeats,
        "streams": STREAMS,
        "torch_threads": THREADS,
    }
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as scratch:
        data_dir = Path(scratch) / "data"
        adapters = {
            f"ft:bench-{i}": make_adapter(
                data_dir / "models", data_dir / "jobs" / f"bench-{i}" / "adapter", i
            )
            for i in range(2)
        }
        process, url = start_server(data_dir, Path(scratch) / "inference.log")
        try:
            for name, path in adapters.items():
                response = httpx.post(
                    f"{url}/v1/load_lora_adapter",
                    json={"lora_name": name, "lora_path": str(path)},
                    timeout=120,
                )
                response.raise_for_status()
            generate = Generate(data_dir / "models", next(iter(adapters.values())))
            results.update(side_by_side(url, generate, list(adapters), tokens, repeats))
            results["adapters"] = adapter_costs(url, process.pid, data_dir, 2 if args.quick else 8)
        finally:
            stop(process)
    server, baseline = results["server"], results["transformers"]
    results["ratios"] = {
        "one_stream_tokens_per_s_vs_generate": server["one_stream"]["tokens_per_s"]
        / baseline["one_stream"]["tokens_per_s"],
        "eight_streams_tokens_per_s_vs_generate_in_a_row": server["eight_streams_one_adapter"][
            "tokens_per_s"
        ]
        / baseline["eight_in_a_row"]["tokens_per_s"],
        "two_adapters_vs_one_adapter_tokens_per_s": server["eight_streams_two_adapters"][
            "tokens_per_s"
        ]
        / server["eight_streams_one_adapter"]["tokens_per_s"],
    }
    finish(results, args.out_dir)


if __name__ == "__main__":
    main()
