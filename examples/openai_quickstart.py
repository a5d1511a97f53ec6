"""Fine-tune the built-in tiny model on examples/animal-sounds.jsonl with the official
openai SDK, watch the job, and download the LoRA adapter.

    export LORAFORGE_API_KEY=lf-...            # printed by `loraforge serve` on first start
    python examples/openai_quickstart.py [--base-url URL] [--out adapter.tar.gz]

The server is LORAFORGE_BASE_URL (or --base-url), as for the `loraforge` command: its root,
http://127.0.0.1:8000 by default, or the same with /v1.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx
from openai import OpenAI

HERE = Path(__file__).resolve().parent
TERMINAL = {"succeeded", "failed", "cancelled"}


def api_url(base_url: str) -> str:
    """The /v1 URL the openai SDK wants, from a server's root or its /v1 URL."""
    return base_url.rstrip("/").removesuffix("/v1") + "/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url", default=os.environ.get("LORAFORGE_BASE_URL", "http://127.0.0.1:8000")
    )
    parser.add_argument("--dataset", type=Path, default=HERE / "animal-sounds.jsonl")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("adapter.tar.gz"))
    args = parser.parse_args()
    key = os.environ["LORAFORGE_API_KEY"]
    base_url = api_url(args.base_url)
    client = OpenAI(base_url=base_url, api_key=key)

    with args.dataset.open("rb") as dataset:
        training_file = client.files.create(file=dataset, purpose="fine-tune")
    print(f"uploaded {training_file.id} ({training_file.bytes} bytes)")

    job = client.fine_tuning.jobs.create(
        model="loraforge/tiny-random-llama",
        training_file=training_file.id,
        suffix="animals",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": args.epochs}}},
    )
    print(f"created {job.id}: {job.status}")
    while job.status not in TERMINAL:
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
        latest = client.fine_tuning.jobs.list_events(job.id, limit=1).data
        print(f"{job.status}: {latest[0].message if latest else ''}")
    if job.status != "succeeded":
        raise SystemExit(f"job {job.status}: {job.error}")
    print(f"fine-tuned model: {job.fine_tuned_model} ({job.trained_tokens} trained tokens)")

    # The adapter download is a loraforge extension, so plain HTTP rather than the SDK.
    with httpx.stream(
        "GET",
        f"{base_url}/fine_tuning/jobs/{job.id}/adapter",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    ) as response:
        response.raise_for_status()
        with args.out.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    print(f"adapter saved to {args.out}")


if __name__ == "__main__":
    main()
