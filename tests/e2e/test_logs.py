"""Structured logs from real processes: `loraforge serve` with its stdout on a pipe writes one
JSON object per line, from the API, its worker (Celery and the training engine) and its
inference server; a request's lines carry the id its answer's header returned, down to the
inference server it was forwarded to; a job's worker lines carry the job, its organization
and its attempt. On a terminal, `loraforge api` writes lines for people."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.e2e.stacks import FAST_RECOVERY, create_job, hello_dataset, upload, wait_status
from tests.live import FIRST_KEY, children, free_port, stop, wait_for

pytestmark = pytest.mark.slow

BASE = "loraforge/tiny-random-llama"


@dataclass
class Output:
    """Lines a process wrote, collected by a thread as they come (a pipe must be drained)."""

    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def drain(self, stream: IO[bytes]) -> threading.Thread:
        def read() -> None:
            try:
                for raw in iter(stream.readline, b""):
                    with self.lock:
                        self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))
            except OSError:  # a terminal whose last writer has gone: EIO, the end
                pass

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)


@dataclass
class Served:
    base_url: str
    key: str
    pid: int
    stdout: Output
    stderr: Output

    def records(self) -> list[dict[str, Any]]:
        """Every stdout line, parsed: a line that is not one JSON object fails the test."""
        parsed = []
        for number, line in enumerate(self.stdout.snapshot(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"stdout line {number} is not JSON: {line!r}") from None
            assert isinstance(record, dict), line
            parsed.append(record)
        return parsed

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url}/v1",
            timeout=60,
            headers={"Authorization": f"Bearer {self.key}"},
        )


@contextmanager
def serve_on_pipes(root: Path) -> Iterator[Served]:
    """`loraforge serve` with stdout and stderr on pipes (LORAFORGE_LOG_FORMAT left on auto)."""
    env = {
        **os.environ,
        **FAST_RECOVERY,
        "LORAFORGE_DATA_DIR": str(root / "data"),
        "LORAFORGE_DATABASE_URL": "",
        "LORAFORGE_BROKER_URL": "",
        "LORAFORGE_LOG_FORMAT": "auto",
    }
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = Output(), Output()
    readers = [stdout.drain(process.stdout), stderr.drain(process.stderr)]
    base_url = f"http://127.0.0.1:{port}"
    workers: list[int] = []
    try:

        def started() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {stdout.snapshot()[-20:]} {stderr.snapshot()}")
            found = FIRST_KEY.search("\n".join(stdout.snapshot()))
            return found.group(1) if found and _healthy(base_url) else None

        key = wait_for(started, 90, "serve to print its key and answer /healthz", interval=0.2)
        workers = children(process.pid)
        yield Served(base_url, key, process.pid, stdout, stderr)
    finally:
        workers = workers or children(process.pid)
        stop(process, grace_s=20)
        for pid in workers:  # never leave a worker behind
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for reader in readers:
            reader.join(5)


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_on_a_pipe_logs_json_with_request_and_job_fields(tmp_path: Path):
    with serve_on_pipes(tmp_path) as served:
        client = served.client()
        chosen = client.get("/files", headers={"X-Request-ID": "e2e-files-1"})
        assert chosen.status_code == 200
        assert chosen.headers["x-request-id"] == "e2e-files-1"
        made_up = client.get("/models").headers["x-request-id"]
        # A chat request: the API forwards its id to the inference server.
        chat = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        answered = wait_for(
            lambda: (
                client.post(
                    "/chat/completions", json=chat, headers={"X-Request-ID": "e2e-chat-1"}
                ).status_code
                == 200
            ),
            120,
            "the inference server's first answer",
        )
        assert answered
        job = create_job(client, upload(client, hello_dataset(24)), max_steps=4)
        finished = wait_status(client, job["id"], "succeeded", "failed")
        assert finished["status"] == "succeeded", finished
        # The worker's last lines of the job (Celery's "succeeded" line) reach the pipe.
        time.sleep(1.0)
        records = served.records()
        stderr = served.stderr.snapshot()

    organization = job["organization_id"]
    by_request = {
        request_id: [r for r in records if r.get("request_id") == request_id]
        for request_id in ("e2e-files-1", made_up, "e2e-chat-1")
    }
    (files_line,) = by_request["e2e-files-1"]
    assert files_line["logger"] == "loraforge.access" and files_line["path"] == "/v1/files"
    assert files_line["status"] == 200 and files_line["organization"] == organization
    assert files_line["pid"] == served.pid
    assert [r["path"] for r in by_request[made_up]] == ["/v1/models"]
    # The last chat attempt's lines: the API's access line and the inference server's.
    chat_pids = {r["pid"] for r in by_request["e2e-chat-1"] if r.get("status") == 200}
    assert served.pid in chat_pids and len(chat_pids) == 2, by_request["e2e-chat-1"]

    job_lines = [r for r in records if r.get("job_id") == job["id"]]
    worker_lines = [r for r in job_lines if r["pid"] != served.pid]
    assert worker_lines, job_lines
    loggers = {r["logger"] for r in worker_lines}
    assert "worker.training.engine" in loggers, loggers
    for line in worker_lines:
        if line["logger"].startswith("worker.training"):
            assert line["organization"] == organization, line
            assert line["attempt"] == 1, line
    # Celery's own line for the task's outcome is the job's too.
    assert any(
        r["logger"] == "celery.app.trace" and "succeeded in" in r["message"] for r in worker_lines
    ), worker_lines
    assert stderr == [], stderr[-20:]


@contextmanager
def api_on_a_terminal(root: Path, log_format: str) -> Iterator[tuple[str, Output]]:
    """`loraforge api` whose stdout and stderr are a pseudo-terminal (as in a shell)."""
    leader, follower = pty.openpty()
    env = {
        **os.environ,
        "LORAFORGE_DATA_DIR": str(root / "data"),
        "LORAFORGE_DATABASE_URL": "",
        "LORAFORGE_BROKER_URL": "",
        "LORAFORGE_LOG_FORMAT": log_format,
    }
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = Output()
    reader = output.drain(os.fdopen(leader, "rb", buffering=0))
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base_url), 60, "the API to answer /healthz")
        yield base_url, output
    finally:
        stop(process)
        reader.join(5)


def test_the_api_on_a_terminal_writes_lines_for_people(tmp_path: Path):
    with api_on_a_terminal(tmp_path, "auto") as (base_url, output):
        response = httpx.get(f"{base_url}/healthz", headers={"X-Request-ID": "tty-1"})
        assert response.headers["x-request-id"] == "tty-1"
        line = wait_for(
            lambda: next((x for x in output.snapshot() if "request_id=tty-1" in x), None),
            10,
            "the request's access line",
        )
    assert "INFO" in line and "loraforge.access: GET /healthz 200" in line
    assert line.endswith("[request_id=tty-1]")
    for text in output.snapshot():
        assert not text.lstrip().startswith("{"), text


def test_the_setting_asks_for_json_on_a_terminal_too(tmp_path: Path):
    with api_on_a_terminal(tmp_path, "json") as (base_url, output):
        httpx.get(f"{base_url}/healthz", headers={"X-Request-ID": "tty-2"})
        line = wait_for(
            lambda: next((x for x in output.snapshot() if "tty-2" in x), None),
            10,
            "the request's access line",
        )
    assert json.loads(line)["request_id"] == "tty-2"
