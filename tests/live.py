"""Live processes for end-to-end tests: the `loraforge` CLI and an API server on 127.0.0.1,
bounded in time and stopped by pid."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import httpx

START_TIMEOUT_S = 60
# serve's first key: on a line of its own in text logs, inside a record's message in JSON.
FIRST_KEY = re.compile(r"LORAFORGE_API_KEY=([A-Za-z0-9_-]+)")
REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound but never
    listening, so no other process can start listening on it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def loraforge(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the `loraforge` command as a user would (through the package's entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def loraforge_in(
    cwd: Path, *args: str, timeout: float = 300, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`loraforge` run from `cwd` as a newcomer would: no LORAFORGE_* setting but `settings`
    (this checkout's code all the same)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFORGE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env={**env, **settings},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop(process: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """SIGTERM, wait, then SIGKILL: never leave a server behind."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace_s)


@contextmanager
def api_server(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`loraforge api` on a free loopback port; yields its base URL once /healthz answers."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"API exited: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"API did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield base_url
        finally:
            stop(process)


def children(pid: int) -> list[int]:
    """Direct child pids of `pid` (from /proc: no psutil needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def command_of(pid: int) -> list[str]:
    """A process's command line (empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def worker_children(pid: int) -> list[int]:
    """The `loraforge worker` processes among `pid`'s children (serve also runs inference)."""
    return [child for child in children(pid) if "worker" in command_of(child)]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet waited for, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`loraforge worker [args]` as a subprocess (the caller stops it with `stop`)."""
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", *args],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def start_inference(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """`loraforge inference` on `port` of 127.0.0.1, once /health answers (the caller stops
    it with `stop`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "inference", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/health"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"inference exited: {log_path.read_text()[-2000:]}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, START_TIMEOUT_S, "the inference server")
    except BaseException:
        stop(process)
        raise
    return process


@contextmanager
def serve_process(
    env: dict[str, str], log_path: Path, start_timeout_s: float = START_TIMEOUT_S
) -> Iterator[tuple[str, str, int]]:
    """`loraforge serve` on a free port; yields (base URL, first API key, pid)."""
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        key = ""
        deadline = time.monotonic() + start_timeout_s
        while not key or not _healthy(base_url):
            text = log_path.read_text(errors="replace")
            if found := FIRST_KEY.search(text):
                key = found.group(1)
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {text[-2000:]}")
            time.sleep(0.2)
        yield base_url, key, process.pid
    finally:
        worker_pids = children(process.pid)
        stop(process, grace_s=20)
        for pid in worker_pids:  # never leave a worker behind, even if serve was killed
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25
) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
