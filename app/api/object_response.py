"""Downloads of stored objects: a file on disk goes out as a FileResponse, an object in a
bucket is streamed from it; both answer a single byte range (206), 416 past the end, and
their Range errors in the JSON envelope like every other error."""

from __future__ import annotations

from email.utils import formatdate
from urllib.parse import quote

from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import FileResponse, MalformedRangeHeader, StreamingResponse
from starlette.responses import RangeNotSatisfiable as StarletteRangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from app.errors import InvalidRange, RangeNotSatisfiable
from app.storage import Storage, StoredObject


def parse_ranges(header: str, size: int) -> list[tuple[int, int]]:
    """[start, end) pairs of a `Range: bytes=...` header for an object of `size` bytes."""
    units, _, spec = header.partition("=")
    if units.strip().lower() != "bytes":
        raise InvalidRange("only byte ranges are supported", param="Range")
    ranges = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, dash, last = (s.strip() for s in part.partition("-"))
        if not dash or not (first or last):
            raise InvalidRange(f"malformed range {part!r}", param="Range")
        try:
            if not first:
                start, end = max(0, size - int(last)), size
            else:
                start, end = int(first), size if not last else min(int(last) + 1, size)
                if last and int(last) < start:
                    raise InvalidRange(f"range {part!r} ends before it starts", param="Range")
        except ValueError as exc:
            raise InvalidRange(f"malformed range {part!r}", param="Range") from exc
        ranges.append((start, end))
    if not ranges:
        raise InvalidRange("no range requested", param="Range")
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
            # Raised before anything is sent: the app's error handler answers.
            ranges = parse_ranges(headers["range"], self.found.size)
            if len(ranges) == 1:
                (start, end), self.status_code = ranges[0], 206
                self.headers["content-range"] = f"bytes {start}-{end - 1}/{self.found.size}"
                self.headers["content-length"] = str(end - start)
        chunks = self.storage.iter_bytes(self.found.key, start, end)
        self.body_iterator = iterate_in_threadpool(chunks)
        await super().__call__(scope, receive, send)


class LocalFileResponse(FileResponse):
    """A FileResponse whose Range errors are our errors (the JSON envelope), not plain text."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        # Starlette answers these two itself, in plain text; raised as ours, they reach the
        # app's error handler (nothing has been sent yet).
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as exc:
            raise InvalidRange(exc.content or "malformed Range header", param="Range") from exc
        except StarletteRangeNotSatisfiable as exc:
            raise RangeNotSatisfiable(exc.max_size) from exc


def content_disposition(filename: str) -> str:
    """`attachment` with the filename, RFC 5987-encoded when it is not plain ASCII."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


def stored_response(
    storage: Storage, key: str, *, media_type: str, filename: str
) -> LocalFileResponse | ObjectResponse:
    """The object at `key` as a download; FileNotFoundError when it is gone."""
    path = storage.local_path(key)
    if path is not None:
        return LocalFileResponse(path, media_type=media_type, filename=filename)
    found = storage.stat(key)
    if found is None:
        raise FileNotFoundError(key)
    return ObjectResponse(storage, found, media_type=media_type, filename=filename)
