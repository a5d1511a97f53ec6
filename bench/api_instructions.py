"""CPU instructions per API request, counted by valgrind: a measure the machine's noise does
not move. Requests/s on a shared 2-core machine swing by a third from one minute to the next;
the instructions a request executes do not.

Each endpoint is called in-process (the ASGI app, no HTTP server, no access log), one request
at a time, against Postgres and Redis. `valgrind --tool=callgrind` counts the instructions of
the whole process for N1 and for N2 requests after a warm-up (the heap then frozen, as
`loraforge api` freezes it); (count(N2) - count(N1)) /
(N2 - N1) is the cost of one request, without the start-up. Only user-space instructions are
counted: the kernel's side of each round trip is not. With `--base REV` the same is done for
the app of a git revision, and the ratio new/base is reported.

    python bench/api_instructions.py [--base 7f2a22b] [--quick]

Prints JSON and writes bench/results/api_instructions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("healthz", "get_job", "list_events", "post_job")
WARM_UP = 20
SETTINGS = {
    "LORAFORGE_RATE_LIMIT_PER_MINUTE": "0",
    "LORAFORGE_MAX_CONCURRENT_JOBS": "0",
    "LORAFORGE_MAX_STORED_BYTES": "0",
    "LORAFORGE_RUN_MIGRATIONS_ON_START": "false",
}


def drive(target: str, count: int, info_path: Path) -> None:
    """Call the app of the tree first on sys.path WARM_UP + count times (run under valgrind)."""
    info = json.loads(info_path.read_text())
    os.environ.update({**info["env"], **SETTINGS})
    from app.main import create_app

    app = create_app()
    jobs = f"/v1/fine_tuning/jobs/{info['job']}"
    method, path, body = {
        "healthz": ("GET", "/healthz", b""),
        "get_job": ("GET", jobs, b""),
        "list_events": ("GET", f"{jobs}/events", b""),
        "post_job": ("POST", "/v1/fine_tuning/jobs", info["post"].encode()),
    }[target]
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {info['key']}".encode())]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000)}  # fmt: skip

    async def call() -> None:
        messages: list[dict[str, Any]] = []
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # the client never disconnects
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await app({**scope, "state": {}}, receive, send)
        if messages[0]["status"] != 200:
            raise SystemExit(f"{target}: HTTP {messages[0]['status']}: {messages[1:]}")

    async def main() -> None:
        for _ in range(WARM_UP):
            await call()
        # As `loraforge api` does once built (create_served_app): what lives on is frozen, so
        # that no full collection of it lands in one count and not in the other.
        gc.collect()
        gc.freeze()
        for _ in range(count):
            await call()

    import uvloop

    uvloop.run(main())


def instructions(tree: Path, target: str, count: int, info_path: Path) -> int:
    """Instructions valgrind counts for WARM_UP + count requests, start-up included."""
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    driver = [str(Path(__file__).resolve()), "--drive", target, str(count), str(info_path)]
    command = [*valgrind, sys.executable, *driver]
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    ran = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    found = re.search(r"Collected : (\d+)", ran.stderr)
    if ran.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind on {target} in {tree} failed:\n{ran.stderr[-3000:]}")
    return int(found.group(1))


def per_request(tree: Path, target: str, counts: tuple[int, int], info_path: Path) -> int:
    low, high = counts
    with ThreadPoolExecutor(2) as pool:  # the two counts run side by side, on the 2 cores
        runs = [pool.submit(instructions, tree, target, n, info_path) for n in counts]
        low_total, high_total = (run.result() for run in runs)
    return round((high_total - low_total) / (high - low))


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench.api_compare import export_revision
    from bench.api_load import drop_queue, seed_job
    from tests.e2e.stacks import postgres_redis_stack

    trees = {"new": ROOT}
    results: dict[str, Any] = {}
    if args.base:
        (work / "base").mkdir()
        results["base"] = {
            "revision": args.base,
            "commit": export_revision(args.base, work / "base"),
        }
        trees = {"base": work / "base", "new": ROOT}
    targets = ("get_job",) if args.quick else TARGETS
    counts = (1, 3) if args.quick else (10, 60)
    with postgres_redis_stack(work / "stack", workers=0) as stack:
        job_id, post = seed_job(stack)
        info_path = work / "stack.json"
        info = {"env": stack.env, "key": stack.key, "job": job_id, "post": post}
        info_path.write_text(json.dumps(info))
        summary: dict[str, Any] = {}
        for target in targets:
            row: dict[str, Any] = {}
            for name, tree in trees.items():
                row[f"{name}_instructions"] = per_request(tree, target, counts, info_path)
                print(f"{target} {name}: {row[f'{name}_instructions']:,}", file=sys.stderr)
            if "base" in trees:
                row["ratio"] = row["new_instructions"] / row["base_instructions"]
            summary[target] = row
        drop_queue(stack.env["LORAFORGE_JOB_QUEUE"])
    results.update(
        {
            "new": {"tree": "this checkout (with uncommitted changes, if any)"},
            "summary": summary,
            "method": {
                "tool": "valgrind --tool=callgrind (user-space instructions of the process)",
                "requests": list(counts),
                "warm_up": WARM_UP,
                "per_request": "(count(N2) - count(N1)) / (N2 - N1), one request at a time",
                "server": "the ASGI app in-process: no uvicorn, no HTTP parsing, no access log",
            },
        }
    )
    return results


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--drive":
        drive(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
        return
    sys.path.insert(0, str(ROOT))
    from bench.common import finish, header, library_versions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="a git revision to compare against")
    parser.add_argument("--quick", action="store_true", help="GET job only, 1 and 3 requests")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python bench/api_instructions.py" + (f" --base {args.base}" if args.base else "")
    results = header("api_instructions", command, args.quick)
    results["libraries"] = library_versions("fastapi", "starlette", "sqlalchemy", "psycopg")
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as root:
        results.update(measure(args, Path(root)))
    finish(results, args.out_dir)


if __name__ == "__main__":
    main()
