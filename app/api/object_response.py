"""Downloads of stored objects: a file on disk goes out as a FileResponse, an object in a
bucket is streamed from it; both answer a single byte range (206), 416 past the end."""

from __future__ import annotations

from email.utils import formatdate
from urllib.parse import quote

from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import FileResponse, PlainTextResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.storage import Storage, StoredObject


class MalformedRange(ValueError):
    """A Range header that is not `bytes=first-last`, `bytes=first-` or `bytes=-suffix`."""


class RangeNotSatisfiable(ValueError):
    """A range that starts past the end of the object."""


def parse_ranges(header: str, size: int) -> list[tuple[int, int]]:
    """[start, end) pairs of a `Range: bytes=...` header for an object of `size` bytes."""
    units, _, spec = header.partition("=")
    if units.strip().lower() != "bytes":
        raise MalformedRange("only byte ranges are supported")
    ranges = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, dash, last = (s.strip() for s in part.partition("-"))
        if not dash or not (first or last):
            raise MalformedRange(f"malformed range {part!r}")
        try:
            if not first:
                start, end = max(0, size - int(last)), size
            else:
                start, end = int(first), size if not last else min(int(last) + 1, size)
                if last and int(last) < start:
                    raise MalformedRange(f"range {part!r} ends before it starts")
        except ValueError as exc:
            raise MalformedRange(f"malformed range {part!r}") from exc
        ranges.append((start, end))
    if not ranges:
        raise MalformedRange("no range requested")
    if any(start >= size for start, _end in ranges):
        raise RangeNotSatisfiable(size)
    return ranges


class ObjectResponse(StreamingResponse):
    """An object streamed from its backend in chunks; one byte range when asked (a request
    for several ranges gets the whole object, which RFC 9110 allows)."""

    def __init__(self, storage: Storage, found: StoredObject, *, media_type: str, filename: str):
        self.storage, self.found = storage, found
        headers = {
            "accept-ranges": "bytes",
            "content-length": str(found.size),
            "content-disposition": content_disposition(filename),
            "etag": f'"{found.etag}"',
            "last-modified": formatdate(found.modified, usegmt=True),
        }
        super().__init__(iter(()), media_type=media_type, headers=headers)

    def _range_applies(self, scope: Scope, headers: Headers) -> bool:
        if scope["method"].upper() not in ("GET", "HEAD") or "range" not in headers:
            return False
        if_range = headers.get("if-range")
        return if_range is None or if_range in (self.headers["etag"], self.headers["last-modified"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start, end = 0, self.found.size
        headers = Headers(scope=scope)
        if self._range_applies(scope, headers):
            try:
                ranges = parse_ranges(headers["range"], self.found.size)
            except MalformedRange as exc:
                return await PlainTextResponse(str(exc), status_code=400)(scope, receive, send)
            except RangeNotSatisfiable:
                unsatisfiable = {"content-range": f"bytes */{self.found.size}"}
                response = PlainTextResponse("", status_code=416, headers=unsatisfiable)
                return await response(scope, receive, send)
            if len(ranges) == 1:
                (start, end), self.status_code = ranges[0], 206
                self.headers["content-range"] = f"bytes {start}-{end - 1}/{self.found.size}"
                self.headers["content-length"] = str(end - start)
        chunks = self.storage.iter_bytes(self.found.key, start, end)
        self.body_iterator = iterate_in_threadpool(chunks)
        await super().__call__(scope, receive, send)


def content_disposition(filename: str) -> str:
    """`attachment` with the filename, RFC 5987-encoded when it is not plain ASCII."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


def stored_response(
    storage: Storage, key: str, *, media_type: str, filename: str
) -> FileResponse | ObjectResponse:
    """The object at `key` as a download; FileNotFoundError when it is gone."""
    path = storage.local_path(key)
    if path is not None:
        return FileResponse(path, media_type=media_type, filename=filename)
    found = storage.stat(key)
    if found is None:
        raise FileNotFoundError(key)
    return ObjectResponse(storage, found, media_type=media_type, filename=filename)
