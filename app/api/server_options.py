"""How uvicorn serves the API, for `loraforge api` and `loraforge serve` alike.

uvicorn's default HTTP parser, httptools, is its fastest, but it buffers a request's headers
however large they are: a client could make the server hold megabytes per connection before
any handler runs. BoundedHttpToolsProtocol counts the bytes of each request head as they
arrive and answers 431 (connection closed) past MAX_REQUEST_HEAD_BYTES. Bodies are not
counted: they are streamed to the handlers, which bound them.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Request line plus headers; browsers and SDKs send a few kilobytes at most.
MAX_REQUEST_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 32\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request header fields too large."
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a cap on each request head (request line and headers).

    A read that ends one request and starts the next is not counted towards the next head,
    so a head is held to the cap plus one read (asyncio reads at most 256 KiB at a time).
    """

    def connection_made(self, transport: Any) -> None:
        self.reading_head = True
        self.head_bytes = 0
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.reading_head:
            self.head_bytes += len(data)
        super().data_received(data)
        # The parser has taken all of `data`: a head still open past the cap is refused.
        if self.reading_head and self.head_bytes > MAX_REQUEST_HEAD_BYTES:
            self.reading_head = False
            if self.transport.is_closing():  # the parser refused it already (400)
                return
            self.logger.warning("Request head over %d bytes refused.", MAX_REQUEST_HEAD_BYTES)
            self.transport.write(HEAD_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self.reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_head = True
        self.head_bytes = 0


# Logging is ours (app/observability/logs.py): uvicorn configures none, and the API writes
# its own access line per request, with the request's id (app/observability/requests.py).
HTTP_OPTIONS: dict[str, Any] = {
    "http": BoundedHttpToolsProtocol,
    "log_config": None,
    "access_log": False,
}
