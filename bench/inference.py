"""Generation through `loraforge inference` against plain transformers generate, same model,
same run: time to first token and tokens/s for one stream and for 8 at once, the cost of
switching adapters between requests, the time to load an adapter and its memory.

The server runs as a real process on 127.0.0.1 (streams over HTTP, as the API relays them);
the baseline is `PeftModel.generate` in this process on the same NF4 base and adapter.
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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "LORAFORGE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
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


def server_runs(url: str, adapters: list[str], tokens: int, repeats: int) -> dict[str, Any]:
    """Medians over `repeats` rounds of each load shape."""
    shapes = {
        "one_stream": [adapters[0]],
        "eight_streams_one_adapter": [adapters[0]] * STREAMS,
        "eight_streams_two_adapters": [adapters[i % 2] for i in range(STREAMS)],
        "eight_streams_base": [BASE] * STREAMS,
    }
    asyncio.run(streams_at_once(url, [adapters[0]], 4))  # warm: base loaded, adapter too
    results: dict[str, Any] = {}
    for name, models in shapes.items():
        rounds = [asyncio.run(streams_at_once(url, models, tokens)) for _ in range(repeats)]
        results[name] = {
            key: median(r[key] for r in rounds) for key in ("ttft_median_s", "tokens_per_s")
        }
        results[name]["tokens_per_round"] = median(r["tokens"] for r in rounds)
    return results


def transformers_runs(models_dir: Path, adapter: Path, tokens: int, repeats: int) -> dict[str, Any]:
    """PeftModel.generate on the same NF4 base and adapter: one generation, and 8 in a row
    (generate serves one request at a time)."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tests.worker.inference.adapters import nf4_base

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = PeftModel.from_pretrained(nf4_base(models_dir), adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids

    def generate(max_new: int) -> tuple[float, int]:
        started = time.perf_counter()
        output = model.generate(ids, max_new_tokens=max_new, do_sample=False)
        return time.perf_counter() - started, int(output.shape[1] - ids.shape[1])

    generate(4)  # warm
    one = [generate(tokens) for _ in range(repeats)]
    first = [generate(1)[0] for _ in range(repeats)]
    in_a_row = []
    for _ in range(repeats):
        runs = [generate(tokens) for _ in range(STREAMS)]
        in_a_row.append(sum(n for _, n in runs) / sum(s for s, _ in runs))
    return {
        "one_stream": {
            "ttft_median_s": median(first),
            "tokens_per_s": median(n / s for s, n in one),
            "tokens_per_round": median(n for _, n in one),
        },
        "eight_in_a_row": {"tokens_per_s": median(in_a_row)},
    }


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
    results["settings"] = {"tokens": tokens, "repeats": repeats, "streams": STREAMS}
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
            results["server"] = server_runs(url, list(adapters), tokens, repeats)
            results["adapters"] = adapter_costs(url, process.pid, data_dir, 2 if args.quick else 8)
        finally:
            stop(process)
        first = next(iter(adapters.values()))
        results["transformers"] = transformers_runs(data_dir / "models", first, tokens, repeats)
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
