"""Abusive clients against a live `loraforge api` on 127.0.0.1: slow bodies, chunked oversize
uploads, huge headers, thousands of ranges. Each gets a quick 4xx (or, for ranges, a bounded
answer), other clients are served meanwhile, and no upload is left behind on disk.

Raw sockets, because an HTTP client would not send these requests the way an attacker does.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.api.server_options import MAX_REQUEST_HEAD_BYTES
from app.db.models import ApiKey
from app.db.session import make_engine, make_session_factory
from app.services.keys import hash_key
from tests.factories import chat_dataset
from tests.hardening.seed import seed_organization
from tests.live import api_server, loraforge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MAX_UPLOAD = 64 * 1024
# More than the connection pool holds (SQLite: 5 + 10 overflow; Postgres: 10 + 20).
SLOW_CLIENTS = 36
QUICK_S = 3.0
BOUNDARY = "abuse-boundary"
BIG_ADAPTER_BYTES = 24 << 20


@dataclass
class Live:
    base_url: str
    key: str
    data_dir: Path
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def address(self) -> tuple[str, int]:
        url = httpx.URL(self.base_url)
        return url.host, url.port or 80

    def leftovers(self) -> list[Path]:
        """Files under files/ that are no listed file: what a refused or abandoned upload must
        not leave behind (temporary parts included)."""
        listed = httpx.get(f"{self.base_url}/v1/files?limit=100", headers=self.headers).json()
        kept = {item["id"] for item in listed["data"]}
        root = self.data_dir / "files"
        found = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        return [path for path in found if path.name not in kept]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live-abuse")
    env = {
        "LORAFORGE_DATA_DIR": str(root / "data"),
        "LORAFORGE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "LORAFORGE_RATE_LIMIT_PER_MINUTE": "100000",
        # One organization plays every slow client here (each holds an upload slot).
        "LORAFORGE_MAX_CONCURRENT_UPLOADS": str(SLOW_CLIENTS),
    }
    with api_server(env, root / "api.log") as base_url:
        created = loraforge(env, "keys", "create", "--org", "abuse")
        assert created.returncode == 0, created.stderr
        yield Live(base_url, created.stdout.strip(), root / "data", root / "api.log")


def upload_head(live: Live, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    host, port = live.address
    return (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {live.key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n\r\n"
    ).encode()


def part_head(name: str, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()


def connect(live: Live) -> socket.socket:
    sock = socket.create_connection(live.address, timeout=10)
    sock.settimeout(10)
    return sock


def status_of(sock: socket.socket) -> int:
    """The status code of the response on `sock` (reads until the status line is in)."""
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else 0


def timed_get(live: Live, path: str, **headers: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(f"{live.base_url}{path}", headers={**live.headers, **headers}, timeout=30)
    return response, time.monotonic() - started


def test_slow_uploads_do_not_hold_up_other_requests(live: Live):
    tracebacks = live.log.read_text(errors="replace").count("Traceback")
    with ExitStack() as stack:
        for _ in range(SLOW_CLIENTS):
            sock = stack.enter_context(connect(live))
            sock.sendall(upload_head(live, 50_000) + part_head("file", "slow.jsonl") + b'{"te')
        time.sleep(1.0)  # every slow request is authenticated and waiting for its body
        assert len([p for p in live.leftovers() if p.name.endswith(".part")]) == SLOW_CLIENTS
        for path in ("/healthz", "/v1/files", "/v1/models"):
            response, took = timed_get(live, path)
            assert response.status_code == 200, response.text
            assert took < QUICK_S, f"{path} took {took:.1f}s behind {SLOW_CLIENTS} slow uploads"
    # The slow clients hung up mid-body: their partial uploads are gone.
    deadline = time.monotonic() + 10
    while live.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live.leftovers() == []
    # A client that hangs up is no server error: nothing logged as one.
    assert live.log.read_text(errors="replace").count("Traceback") == tracebacks


def test_slow_download_readers_do_not_hold_up_other_requests(live: Live):
    job_id = big_adapter_job(live)
    request = (
        f"GET /v1/fine_tuning/jobs/{job_id}/adapter HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {live.key}\r\n\r\n"
    ).encode()
    first, took = timed_get(live, f"/v1/fine_tuning/jobs/{job_id}/adapter")
    assert first.status_code == 200, first.text  # builds the archive once
    with ExitStack() as stack:
        for _ in range(SLOW_CLIENTS):
            sock = stack.enter_context(connect(live))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)  # and never read: the server's writes block
        time.sleep(1.0)
        for path in ("/v1/files", f"/v1/fine_tuning/jobs/{job_id}"):
            response, took = timed_get(live, path)
            assert response.status_code == 200, response.text
            assert took < QUICK_S, f"{path} took {took:.1f}s behind {SLOW_CLIENTS} slow readers"


def big_adapter_job(live: Live) -> str:
    """A succeeded job whose adapter is far larger than the sockets' buffers."""
    engine = make_engine(f"sqlite:///{live.data_dir / 'loraforge.db'}")
    try:
        with make_session_factory(engine)() as session:
            key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(live.key)))
            assert key is not None
            organization_id = key.organization_id
        seeded = seed_organization(make_session_factory(engine), live.data_dir, organization_id)
    finally:
        engine.dispose()
    big = live.data_dir / "jobs" / seeded.succeeded_job_id / "adapter" / "big.safetensors"
    big.write_bytes(os.urandom(BIG_ADAPTER_BYTES))
    return seeded.succeeded_job_id


def test_chunked_oversize_upload_is_refused_without_waiting_for_the_rest(live: Live):
    """Four times the cap in chunks, then silence: the body has not ended (no last chunk), so
    only a server that refuses as soon as the cap is passed can answer."""
    head = part_head("file", "a.jsonl")
    chunk = b"x" * 8192
    with connect(live) as sock:
        sock.sendall(upload_head(live, None) + b"%x\r\n%s\r\n" % (len(head), head))
        with suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(4 * MAX_UPLOAD // len(chunk)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        started = time.monotonic()
        sock.settimeout(QUICK_S)
        status = status_of(sock)
        took = time.monotonic() - started
    assert status == 413
    assert took < QUICK_S
    assert live.leftovers() == []


def test_huge_header_is_refused_and_the_server_stays_up(live: Live):
    with connect(live) as sock:
        big = "a" * 1_000_000
        sock.sendall(f"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n".encode())
        status = status_of(sock)
    assert status == 431  # a request head over MAX_REQUEST_HEAD_BYTES
    response, took = timed_get(live, "/v1/files")
    assert response.status_code == 200 and took < QUICK_S


def test_head_sent_in_small_pieces_is_refused_past_the_cap(live: Live):
    with connect(live) as sock:
        sock.sendall(b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(2 * MAX_REQUEST_HEAD_BYTES // 4096):
                sock.sendall(b"a" * 4096)
                time.sleep(0.002)  # one read per piece on the server
        status = status_of(sock)
    assert status == 431


def test_heads_under_the_cap_are_served_one_after_another_on_a_connection(live: Live):
    """The cap is per request: three heads that sum to more than it, on one connection."""
    padding = "a" * (MAX_REQUEST_HEAD_BYTES - 4096)
    with httpx.Client(base_url=live.base_url, headers=live.headers, timeout=30) as client:
        for _ in range(3):
            response = client.get("/v1/files", headers={"X-Padding": padding})
            assert response.status_code == 200


def test_many_parts_are_refused(live: Live):
    body = (
        b"".join(part_head("purpose") + b"fine-tune\r\n" for _ in range(200))
        + f"--{BOUNDARY}--\r\n".encode()
    )
    response = httpx.post(
        f"{live.base_url}/v1/files",
        headers={**live.headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=body,
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_parts"
    assert live.leftovers() == []


def test_thousands_of_ranges_get_a_quick_bounded_answer(live: Live):
    content = chat_dataset(40)
    uploaded = httpx.post(
        f"{live.base_url}/v1/files",
        headers=live.headers,
        files={"file": ("r.jsonl", content)},
        data={"purpose": "fine-tune"},
        timeout=30,
    )
    assert uploaded.status_code == 200, uploaded.text
    ranges = ",".join(f"{i}-{i}" for i in range(0, 10_000, 2))
    response, took = timed_get(
        live, f"/v1/files/{uploaded.json()['id']}/content", Range=f"bytes={ranges}"
    )
    assert took < QUICK_S
    # Too many ranges are ignored (RFC 9110 section 14.2 allows it): the file, once, no parts.
    assert response.status_code == 200
    assert response.content == content


def test_the_server_log_never_shows_the_key(live: Live):
    """Last in this module: every request above carried the key."""
    timed_get(live, "/v1/files")
    log = live.log.read_text(errors="replace")
    assert "POST /v1/files" in log  # the access log is on: the check can see requests
    assert live.key not in log
