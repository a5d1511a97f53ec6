"""Streaming multipart bodies: the file part goes straight to disk under a byte cap.

Starlette's form parser spools the whole body before a handler runs, so a cap checked
afterwards is a cap on nothing. Here every chunk is counted as it arrives (chunked bodies
without Content-Length included) and the upload is refused the moment it passes the cap.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import InvalidRequest, PayloadTooLarge

MAX_PARTS = 8
# The file upload's form fields; anything else (an organization, a status...) is refused.
# expires_after comes as one JSON part (the OpenAPI form) or in brackets (the openai SDK's).
FILE_FORM = frozenset(
    {"file", "purpose", "expires_after", "expires_after[anchor]", "expires_after[seconds]"}
)
MAX_FIELD_BYTES = 1024
# Part headers and boundaries ride on top of the file bytes.
ENVELOPE_ALLOWANCE = 64 * 1024
MAX_FILENAME_CHARS = 255
# The filename is display-only, but it is stored: no control characters (PostgreSQL refuses NUL).
FILENAME_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class ReceivedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    bytes: int = 0
    sha256: str = ""


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class MultipartReceiver:
    """Feeds body chunks to python-multipart; writes the `file_field` part to `sink`."""

    def __init__(
        self,
        boundary: bytes,
        sink: BinaryIO,
        max_file_bytes: int,
        *,
        file_field: str = "file",
        fields: frozenset[str] = FILE_FORM,
    ) -> None:
        self.sink = sink
        self.max_file_bytes = max_file_bytes
        self.file_field = file_field
        self.fields = fields
        self.result = ReceivedUpload()
        self._digest = hashlib.sha256()
        self._part = _Part()
        self._parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        # python-multipart bounds each part's headers (count and size) itself.
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise _malformed(exc) from exc

    def finish(self) -> ReceivedUpload:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise _malformed(exc) from exc
        self.result.sha256 = self._digest.hexdigest()
        return self.result

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidRequest("too many form parts", code="too_many_parts")
        self._part = _Part()
        self._headers = {}

    def _on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._part.name not in self.fields:
            raise InvalidRequest(
                f"unknown form field {self._part.name[:64]!r}; send only "
                + ", ".join(sorted(self.fields)),
                param=self._part.name[:64] or None,
                code="unknown_field",
            )
        if b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
            self._part.filename = FILENAME_CONTROL.sub("_", filename)[:MAX_FILENAME_CHARS]

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.name == self.file_field and self._part.filename is not None:
            self.result.bytes += end - start
            if self.result.bytes > self.max_file_bytes:
                raise PayloadTooLarge(
                    f"the {self.file_field} part is over the {self.max_file_bytes} byte limit",
                    param=self.file_field,
                )
            self.sink.write(data[start:end])
            self._digest.update(data[start:end])
            return
        self._part.data.extend(data[start:end])
        if len(self._part.data) > MAX_FIELD_BYTES:
            raise InvalidRequest(
                f"form field {self._part.name!r} is too long",
                param=self._part.name or None,
                code="field_too_long",
            )

    def _on_part_end(self) -> None:
        if self._part.name == self.file_field and self._part.filename is not None:
            if self.result.filename is not None:
                raise InvalidRequest(
                    f"send exactly one {self.file_field} part",
                    param=self.file_field,
                    code="too_many_files",
                )
            self.result.filename = self._part.filename
        elif self._part.name:
            self.result.fields[self._part.name] = self._part.data.decode("utf-8", "replace")


def _malformed(exc: FormParserError) -> InvalidRequest:
    return InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart")


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type, or a 400 saying what was expected."""
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest("send the file as multipart/form-data", code="invalid_content_type")
    return boundary


async def receive_upload(
    body: AsyncIterator[bytes],
    content_type: str | None,
    sink_path: Path,
    max_file_bytes: int,
    *,
    file_field: str = "file",
    fields: frozenset[str] = FILE_FORM,
) -> ReceivedUpload:
    """Stream a multipart body's `file_field` part to `sink_path`; raises 413 as soon as the
    cap is passed."""
    receiver = MultipartReceiver(
        multipart_boundary(content_type),
        sink_path.open("wb"),
        max_file_bytes,
        file_field=file_field,
        fields=fields,
    )
    total = 0
    try:
        async for chunk in body:
            total += len(chunk)
            if total > max_file_bytes + ENVELOPE_ALLOWANCE:
                raise PayloadTooLarge(
                    f"the upload is over the {max_file_bytes} byte limit", param=file_field
                )
            receiver.feed(chunk)
        return receiver.finish()
    finally:
        receiver.sink.close()
