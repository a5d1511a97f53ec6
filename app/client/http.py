"""LoraforgeClient: the REST API over httpx, with the server's error messages as exceptions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from app.client.sse import Frame, parse_frames

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Event streams send a keep-alive every 15 s by default: a minute of silence is a dead link.
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=60.0)
RECONNECT_DELAY_S = 1.0
MAX_RECONNECTS = 30
DOWNLOAD_CHUNK = 1 << 20


class ClientError(Exception):
    """A request that failed: the server's message, or why the server could not be reached."""

    def __init__(
        self, message: str, *, status: int | None = None, error: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error or {}

    @property
    def problems(self) -> list[dict[str, Any]]:
        """A refused dataset's problems: [{line, field, code, message}]."""
        problems: list[dict[str, Any]] = self.error.get("problems") or []
        return problems


def _failure(response: httpx.Response) -> ClientError:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    message = error.get("message") or f"HTTP {response.status_code} {response.reason_phrase}"
    return ClientError(message, status=response.status_code, error=error)


class ProgressReader:
    """A binary file whose reads report progress (httpx streams an upload through read)."""

    def __init__(self, stream: IO[bytes], on_read: Callable[[int], None]) -> None:
        self.stream = stream
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.on_read(len(chunk))
        return chunk

    def fileno(self) -> int:  # lets httpx send a Content-Length instead of chunks
        return self.stream.fileno()


class LoraforgeClient:
    """One server, one API key. `http` may be any httpx.Client (tests pass a TestClient)."""

    def __init__(self, http: httpx.Client, api_key: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {api_key}"}

    @classmethod
    def connect(cls, base_url: str, api_key: str | None) -> LoraforgeClient:
        if not api_key:
            raise ClientError("no API key: set LORAFORGE_API_KEY or pass --api-key")
        root = base_url.rstrip("/").removesuffix("/v1")
        return cls(httpx.Client(base_url=root, timeout=TIMEOUT), api_key)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request to /v1{path}; the JSON body, or ClientError."""
        headers = {**self.headers, **(kwargs.pop("headers", None) or {})}
        try:
            response = self.http.request(method, f"/v1{path}", headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach {self.http.base_url}: {exc}") from exc
        if response.is_error:
            raise _failure(response)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload(self, path: Path, on_read: Callable[[int], None] | None = None) -> Any:
        """POST /v1/files with purpose fine-tune."""
        with path.open("rb") as stream:
            # httpx reads a file part through .read(): the wrapper counts the bytes.
            body: Any = stream if on_read is None else ProgressReader(stream, on_read)
            return self.post(
                "/files",
                None,
                files={"file": (path.name, body, "application/jsonl")},
                data={"purpose": "fine-tune"},
            )

    def download(
        self, path: str, into: IO[bytes], on_chunk: Callable[[int, int | None], None] | None = None
    ) -> None:
        """Stream GET /v1{path} into a binary file."""
        try:
            with self.http.stream("GET", f"/v1{path}", headers=self.headers) as response:
                if response.is_error:
                    response.read()
                    raise _failure(response)
                total = int(response.headers.get("content-length", 0)) or None
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                    into.write(chunk)
                    if on_chunk is not None:
                        on_chunk(len(chunk), total)
        except httpx.TransportError as exc:
            raise ClientError(f"download of {path} failed: {exc}") from exc

    def chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST /v1/chat/completions with `stream: true`: each chunk, the usage one last."""
        request = {**body, "stream": True, "stream_options": {"include_usage": True}}
        try:
            with self.http.stream(
                "POST",
                "/v1/chat/completions",
                json=request,
                headers=self.headers,
                timeout=STREAM_TIMEOUT,
            ) as response:
                if response.is_error:
                    response.read()
                    raise _failure(response)
                for frame in parse_frames(response.iter_lines()):
                    if frame.data == "[DONE]":
                        return
                    yield json.loads(frame.data)
        except httpx.TransportError as exc:
            raise ClientError(f"the chat stream failed: {exc}") from exc

    def events(self, job_id: str) -> Iterator[Frame]:
        """A job's server-sent events, oldest first, through its final `done` frame.

        A dropped connection is resumed with Last-Event-ID, so no event is lost or repeated.
        """
        last_event_id: str | None = None
        failures = 0
        while True:
            headers = dict(self.headers)
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            try:
                with self.http.stream(
                    "GET",
                    f"/v1/fine_tuning/jobs/{job_id}/events",
                    params={"stream": "true"},
                    headers=headers,
                    timeout=STREAM_TIMEOUT,
                ) as response:
                    if response.is_error:
                        response.read()
                        raise _failure(response)
                    for frame in parse_frames(response.iter_lines()):
                        failures = 0
                        if frame.id:
                            last_event_id = frame.id
                        yield frame
                        if frame.event == "done":
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > MAX_RECONNECTS:
                    raise ClientError(f"lost the event stream of {job_id}: {exc}") from exc
            time.sleep(RECONNECT_DELAY_S)
