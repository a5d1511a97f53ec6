"""A webhook receiver on 127.0.0.1: answers with scripted status codes and keeps every
request it got (arrival time, headers, body)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    # Status codes for the first requests in turn; 200 once they are used up.
    script: list[int]
    received: list[Received] = field(default_factory=list)
    extra_headers: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            return self.script.pop(0) if self.script else 200

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.received)} requests after {timeout} s, not {count}")


@contextmanager
def receiver(script: list[int] | None = None, **extra_headers: str) -> Iterator[Receiver]:
    """A server on a free loopback port, stopped on exit."""
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            hook = state["receiver"]
            with hook.lock:
                hook.received.append(
                    Received(time.monotonic(), self.path, dict(self.headers.items()), body)
                )
            status = hook.next_status()
            answer = b"x" * 2000 if status >= 500 else b"ok"
            self.send_response(status)
            for name, value in hook.extra_headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = Receiver(
        f"http://127.0.0.1:{server.server_port}/hooks",
        list(script or []),
        extra_headers=extra_headers,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["receiver"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
