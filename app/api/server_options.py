"""How uvicorn serves the API, for `loraforge api` and `loraforge serve` alike.

uvicorn's default HTTP parser (httptools) buffers a request's headers however large they are:
a client can make the server hold megabytes per connection before any handler runs. h11
refuses a request head over a size (400, connection closed), at a cost in parsing speed this
API does not notice: bodies are streamed, and requests are few and small.
"""

from __future__ import annotations

from typing import Any

# Request line plus headers; browsers and SDKs send a few kilobytes at most.
MAX_REQUEST_HEAD_BYTES = 64 * 1024

HTTP_OPTIONS: dict[str, Any] = {
    "http": "h11",
    "h11_max_incomplete_event_size": MAX_REQUEST_HEAD_BYTES,
}
