"""The API under load: `loraforge api` (one uvicorn worker) on loopback with Postgres, and
Redis as the broker (a queue of its own that nobody consumes, so POST job measures a working
enqueue and leaves nothing running).

- Upload of a large JSONL (1 GiB; --quick: 16 MiB) with curl: throughput including the
  server's line-by-line validation, and the API process's memory growth (VmRSS sampled every
  20 ms from /proc/<pid>/status, and VmHWM before and after).
- GET a job, GET a job's events (a page of 20 from 200), POST a job: requests/s and latency
  percentiles from wrk (Debian's wrk 4.1, one thread, fixed connections, a Lua `done` hook
  that prints its own latency histogram as JSON) or, where wrk is absent, a Python asyncio
  generator in a separate process (one httpx client, N concurrent loops). The JSON records
  which one ran and its settings.

    python bench/api_load.py [--quick] [--duration 15] [--connections 16] [--upload-mib 1024]

Prints JSON and writes bench/results/api_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import finish, header, library_versions

GOALS = {
    "get_requests_per_s": 1000,
    "get_p99_ms": 50,
    "post_p99_ms": 100,
    "upload_mb_per_s": 50,
    "upload_memory_growth_mib": 64,
}
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def chat_line(i: int) -> bytes:
    """A valid chat example of about 1 KB."""
    words = " ".join(f"word{(i * 7 + k) % 997}" for k in range(60))
    row = {
        "messages": [
            {"role": "system", "content": "You answer in one short paragraph."},
            {"role": "user", "content": f"Question {i}: {words}"},
            {"role": "assistant", "content": f"Answer {i}: {words}"},
        ]
    }
    return (json.dumps(row) + "\n").encode()


def write_jsonl(path: Path, size: int) -> int:
    """A JSONL file of at least `size` bytes, from 1,000 distinct lines repeated."""
    lines = [chat_line(i) for i in range(1000)]
    block = b"".join(lines)
    written = 0
    with path.open("wb") as stream:
        while written < size:
            stream.write(block)
            written += len(block)
    return written


def api_pid(port: int) -> int:
    """The `loraforge api --port PORT` process (uvicorn with one worker runs in it)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"app.cli" in args and b"api" in args and str(port).encode() in args:
            return int(cmdline.parent.name)
    raise RuntimeError(f"no API process on port {port}")


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak_kib = max(self.peak_kib, memory_kib(self.pid, "VmRSS"))
            self.samples += 1
            time.sleep(self.interval)


def upload(base_url: str, key: str, path: Path, pid: int) -> dict[str, Any]:
    """curl -F file=@path: throughput and the API process's memory growth."""
    before_rss, before_hwm = memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM")
    sampler = RssSampler(pid)
    sampler.start()
    began = time.perf_counter()
    completed = subprocess.run(
        [
            "curl", "-sS", "-o", "-", "-w", "\n%{http_code}",
            "-H", f"Authorization: Bearer {key}",
            "-F", "purpose=fine-tune", "-F", f"file=@{path};type=application/jsonl",
            f"{base_url}/v1/files",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    sampler.halt.set()
    sampler.join()
    body, _, status = completed.stdout.rpartition("\n")
    size = path.stat().st_size
    response = json.loads(body) if body.startswith("{") else {"raw": body[:500]}
    return {
        "http_status": int(status or 0),
        "bytes": size,
        "seconds": seconds,
        "mb_per_s": size / seconds / 1e6,
        "examples": (response.get("stats") or {}).get("examples"),
        "rss_before_kib": before_rss,
        "rss_peak_sampled_kib": sampler.peak_kib,
        "rss_samples": sampler.samples,
        "hwm_before_kib": before_hwm,
        "hwm_after_kib": memory_kib(pid, "VmHWM"),
        "growth_mib": (max(sampler.peak_kib, memory_kib(pid, "VmHWM")) - before_rss) / 1024,
        "client": "curl -F (multipart, streamed from disk)",
    }


def wrk_run(url: str, key: str, seconds: int, connections: int, post: str | None) -> dict:
    script = WRK_DONE
    if post is not None:
        body = post.replace("\\", "\\\\").replace("'", "\\'")
        script = (
            f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n" + script
        )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as stream:
        stream.write(script)
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
        "-H", f"Authorization: Bearer {key}", "-s", stream.name, url,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    os.unlink(stream.name)
    line = next(x for x in completed.stdout.splitlines() if x.startswith('{"requests"'))
    raw = json.loads(line)
    return {
        "requests": raw["requests"],
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
    }


def python_run(url: str, key: str, seconds: int, connections: int, post: str | None) -> dict:
    """The asyncio/httpx generator in its own process (so it does not share our GIL)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--loadgen", url, key,
               str(seconds), str(connections), post or ""]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-2000:])
    result: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return result


def loadgen(url: str, key: str, seconds: int, connections: int, post: str) -> None:
    """N concurrent request loops on one httpx.AsyncClient; prints JSON."""
    import asyncio

    import httpx

    from bench.common import percentile

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        failures = 0
        limits = httpx.Limits(max_connections=connections)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=5) as client:
            deadline = time.perf_counter() + seconds

            async def loop() -> None:
                nonlocal failures
                while time.perf_counter() < deadline:
                    began = time.perf_counter()
                    if post:
                        response = await client.post(url, content=post)
                    else:
                        response = await client.get(url)
                    latencies.append(time.perf_counter() - began)
                    failures += response.status_code >= 300

            started = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(connections)))
            elapsed = time.perf_counter() - started
        ms = [x * 1000 for x in latencies]
        return {
            "requests": len(ms),
            "requests_per_s": len(ms) / elapsed,
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms),
            "mean_ms": sum(ms) / len(ms),
            "non_2xx": failures,
            "socket_errors": 0,
        }

    print(json.dumps(asyncio.run(main())))


def seed_events(database_url: str, job_id: str, count: int) -> None:
    """Metric events on the job, as a worker would have written them."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from app.db.models import Job, JobEvent

    engine = create_engine(database_url)
    with Session(engine) as session:
        organization_id = session.scalar(select(Job.organization_id).where(Job.id == job_id))
        for step in range(1, count + 1):
            data = {"step": step, "train_loss": 2.0 / step, "total_steps": count}
            session.add(
                JobEvent(
                    job_id=job_id,
                    organization_id=organization_id,
                    type="metrics",
                    level="info",
                    message=f"Step {step}/{count}: training loss={2.0 / step:.4f}",
                    data=data,
                )
            )
        session.commit()
    engine.dispose()


def seed_job(stack: Any) -> tuple[str, str]:
    """On a fresh stack: a training file and a job with 200 metric events on it. Returns the
    job's id and the body of a POST job for that file."""
    from tests.e2e.stacks import create_job, hello_dataset
    from tests.e2e.stacks import upload as upload_small

    client = stack.client()
    file_id = upload_small(client, hello_dataset(20))  # warm: imports, first requests
    job = create_job(client, file_id, max_steps=2)
    seed_events(stack.env["LORAFORGE_DATABASE_URL"], job["id"], 200)
    post = json.dumps({"model": "loraforge/tiny-random-llama", "training_file": file_id})
    return job["id"], post


def drop_queue(queue: str) -> None:
    """Remove the queue the POSTs filled (no worker consumes it) and its bindings."""
    import redis

    from tests.e2e.stacks import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL)
    for name in client.scan_iter(match=f"*{queue}*"):
        client.delete(name)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.e2e.stacks import postgres_redis_stack

    results: dict[str, Any] = {}
    with postgres_redis_stack(work / "stack", workers=0) as stack:
        pid = api_pid(int(stack.base_url.rsplit(":", 1)[1]))
        job_id, post = seed_job(stack)
        data = work / "upload.jsonl"
        write_jsonl(data, args.upload_mib << 20)
        results["upload"] = upload(stack.base_url, stack.key, data, pid)
        data.unlink()
        generator = wrk_run if shutil.which("wrk") and not args.python_loadgen else python_run
        api = f"{stack.base_url}/v1/fine_tuning/jobs"
        targets = {
            "healthz": (f"{stack.base_url}/healthz", None),  # the floor: no auth, no database
            "get_job": (f"{api}/{job_id}", None),
            "list_events": (f"{api}/{job_id}/events", None),
            "post_job": (api, post),
        }
        results["load"] = run_targets(targets, generator, stack.key, args)
        results["api_rss_after_kib"] = memory_kib(pid, "VmRSS")
        if not args.quick:
            results["h11_variant"] = h11_variant(
                stack, {k: targets[k] for k in ("healthz", "get_job")}, generator, args
            )
        drop_queue(stack.env["LORAFORGE_JOB_QUEUE"])
        results["load_generator"] = {
            "name": "wrk 4.1 (Debian)" if generator is wrk_run else "python asyncio + httpx",
            "threads": 1 if generator is wrk_run else "1 process, asyncio",
            "connections": args.connections,
            "duration_s": args.duration,
            "warm_up_s": 2,
            "timeout_s": 5,
        }
    return results


def run_targets(
    targets: dict[str, tuple[str, str | None]], generator: Any, key: str, args: Any
) -> dict[str, Any]:
    load: dict[str, Any] = {}
    for name, (url, body) in targets.items():
        generator(url, key, 2, args.connections, body)  # warm-up
        load[name] = generator(url, key, args.duration, args.connections, body)
        print(f"{name}: {load[name]}", file=sys.stderr)
    return load


def h11_variant(
    stack: Any, targets: dict[str, tuple[str, str | None]], generator: Any, args: Any
) -> dict[str, Any]:
    """The same app and database under uvicorn's pure-Python parser (h11), not httptools.

    For comparison only: `loraforge api` chooses its parser (app/api/server_options.py).
    Log level info, as `loraforge api` runs: both servers write an access log line per request.
    """
    from tests.live import free_port, stop, wait_for

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_served_app", "--factory", "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1", "--http", "h11",
         "--h11-max-incomplete-event-size", "65536", "--log-level", "info"],
        env={**os.environ, **stack.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: healthy(base_url), 60, "the h11 server")
        moved = {
            k: (url.replace(stack.base_url, base_url), body) for k, (url, body) in targets.items()
        }
        return {"server": "python -m uvicorn ... --http h11 --workers 1",
                "load": run_targets(moved, generator, stack.key, args)}  # fmt: skip
    finally:
        stop(process)


def healthy(base_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def goals(results: dict[str, Any]) -> dict[str, Any]:
    load, up = results["load"], results["upload"]
    gets = [load["get_job"], load["list_events"]]
    checks = {
        "get_requests_per_s": (min(x["requests_per_s"] for x in gets), ">="),
        "get_p99_ms": (max(x["p99_ms"] for x in gets), "<="),
        "post_p99_ms": (load["post_job"]["p99_ms"], "<="),
        "upload_mb_per_s": (up["mb_per_s"], ">="),
        "upload_memory_growth_mib": (up["growth_mib"], "<="),
    }
    failed = sum(x["non_2xx"] + x["socket_errors"] for x in load.values())
    failed += up["http_status"] != 200
    return {
        name: {
            "value": value,
            "goal": f"{op} {GOALS[name]}",
            # A figure measured on failing requests meets nothing.
            "met": not failed and (value >= GOALS[name] if op == ">=" else value <= GOALS[name]),
        }
        for name, (value, op) in checks.items()
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        url, key, seconds, connections, post = sys.argv[2:7]
        loadgen(url, key, int(seconds), int(connections), post)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB upload, 3 s loads")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument("--python-loadgen", action="store_true", help="even if wrk is there")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.upload_mib = 3, 16
    # The server's capacity, not its per-key limits: no rate limit, no job quota.
    limits_off = {
        "LORAFORGE_MAX_UPLOAD_BYTES": str((args.upload_mib + 64) << 20),
        "LORAFORGE_RATE_LIMIT_PER_MINUTE": "0",
        "LORAFORGE_MAX_CONCURRENT_JOBS": "0",
        "LORAFORGE_MAX_STORED_BYTES": "0",
    }
    os.environ.update(limits_off)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python bench/api_load.py" + (" --quick" if args.quick else "")
    results = header("api_load", command, args.quick)
    from app.api.server_options import HTTP_OPTIONS, MAX_REQUEST_HEAD_BYTES

    results["server"] = {
        "command": "loraforge api (uvicorn, 1 worker)",
        "uvicorn_options": {k: getattr(v, "__qualname__", v) for k, v in HTTP_OPTIONS.items()},
        "max_request_head_bytes": MAX_REQUEST_HEAD_BYTES,
        "database": "PostgreSQL on 127.0.0.1 (a fresh database)",
        "broker": "Redis 127.0.0.1:6379 db 12, a queue of its own",
        "settings": limits_off,
    }
    results["libraries"] = library_versions(
        "uvicorn", "fastapi", "starlette", "h11", "httptools", "sqlalchemy", "psycopg"
    )
    with tempfile.TemporaryDirectory(prefix="bench-api-") as root:
        results.update(measure(args, Path(root)))
    results["goals"] = goals(results)
    finish(results, args.out_dir)


if __name__ == "__main__":
    main()
