"""Two revisions of the API side by side: `loraforge api` from this tree and from a git
revision (`--base`), run in turn against one Postgres database and Redis, `--repeats` rounds,
the same wrk load as bench/api_load.py. Medians per endpoint and the ratio new/base.

Absolute requests/s depend on the machine; a ratio measured in one run does not. Both
revisions must share the migration head (each server upgrades the database on start).

    python bench/api_compare.py --base 08dfc80 [--repeats 3] [--duration 8]

Prints JSON and writes bench/results/api_compare.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api_load import drop_queue, python_run, seed_job, wrk_run
from bench.common import finish, header, library_versions, median

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("healthz", "get_job", "list_events", "post_job")


def export_revision(revision: str, into: Path) -> str:
    """The tree of `revision` under `into`; returns its full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", revision], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return commit


def serve(tree: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`loraforge api` from `tree` on a free port, once /healthz answers."""
    from bench.api_load import healthy
    from tests.live import free_port, wait_for

    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tree,
            env={**os.environ, **env, "PYTHONPATH": str(tree)},
            stdout=out,
            stderr=out,
        )
    base_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(base_url), 60, f"the API from {tree}")
    return process, base_url


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.e2e.stacks import postgres_redis_stack
    from tests.live import stop

    base_tree = work / "base"
    base_tree.mkdir()
    base_commit = export_revision(args.base, base_tree)
    trees = {"base": base_tree, "new": ROOT}
    generator = wrk_run if shutil.which("wrk") else python_run
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {x: [] for x in TARGETS} for t in trees}
    with postgres_redis_stack(work / "stack", workers=0) as stack:
        job_id, post = seed_job(stack)
        paths = {
            "healthz": ("/healthz", None),
            "get_job": (f"/v1/fine_tuning/jobs/{job_id}", None),
            "list_events": (f"/v1/fine_tuning/jobs/{job_id}/events", None),
            "post_job": ("/v1/fine_tuning/jobs", post),
        }
        for round_ in range(args.repeats):
            for name, tree in trees.items():
                process, base_url = serve(tree, stack.env, work / f"{name}.log")
                try:
                    for target, (path, body) in paths.items():
                        url = base_url + path
                        generator(url, stack.key, 2, args.connections, body)  # warm-up
                        result = generator(url, stack.key, args.duration, args.connections, body)
                        runs[name][target].append(result)
                        print(f"round {round_ + 1} {name} {target}: {result}", file=sys.stderr)
                finally:
                    stop(process)
        drop_queue(stack.env["LORAFORGE_JOB_QUEUE"])
    summary: dict[str, Any] = {}
    for target in TARGETS:
        row: dict[str, Any] = {}
        for name in trees:
            row[f"{name}_requests_per_s"] = median(r["requests_per_s"] for r in runs[name][target])
            row[f"{name}_p99_ms"] = median(r["p99_ms"] for r in runs[name][target])
        row["ratio_requests_per_s"] = row["new_requests_per_s"] / row["base_requests_per_s"]
        row["ratio_p99"] = row["new_p99_ms"] / row["base_p99_ms"]
        summary[target] = row
    return {
        "base": {"revision": args.base, "commit": base_commit},
        "new": {"tree": "this checkout (with uncommitted changes, if any)"},
        "summary": summary,
        "runs": runs,
        "load_generator": {"name": "wrk 4.1 (Debian)" if generator is wrk_run
                           else "python asyncio + httpx", "threads": 1,
                           "connections": args.connections, "duration_s": args.duration,
                           "warm_up_s": 2, "repeats": args.repeats, "order": "base, new per round"},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a git revision to compare against")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    os.environ.update(
        {
            "LORAFORGE_RATE_LIMIT_PER_MINUTE": "0",
            "LORAFORGE_MAX_CONCURRENT_JOBS": "0",
            "LORAFORGE_MAX_STORED_BYTES": "0",
        }
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = f"python bench/api_compare.py --base {args.base} --repeats {args.repeats}"
    results = header("api_compare", command, False)
    results["libraries"] = library_versions("uvicorn", "fastapi", "sqlalchemy", "psycopg")
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as root:
        results.update(measure(args, Path(root)))
    finish(results, args.out_dir)


if __name__ == "__main__":
    main()
