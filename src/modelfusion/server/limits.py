"""Request limits: body size while reading, and the concurrent-fusion gate."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from .errors import ApiError


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes, and with 408
    if it has not all arrived within `timeout` seconds (a client that sends a byte now and
    then must not hold a connection and a fusion slot for ever).

    Content-Length is checked first so an honest oversized upload is refused before it is
    read; a chunked (or lying) one is cut off while it streams in.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise ApiError(400, "Content-Length is not a number", code="invalid_header",
                           param="Content-Length") from None
        if too_big:
            raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                parts.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s",
                       code="request_timeout", headers={"Connection": "close"}) from None
    return b"".join(parts)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than {limit} bytes",
                    code="request_too_large")


class FusionGate:
    """At most `limit` fusions at once; the next is refused (429), never queued.

    Refusing rather than queueing keeps latency bounded and tells load balancers and
    clients (via Retry-After) to come back, instead of piling up timeouts. Single event
    loop, so a plain counter is enough.
    """

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.active = 0

    def acquire(self) -> Slot:
        if self.active >= self.limit:
            raise ApiError(
                429,
                f"the server is running {self.active} fusions, its limit; retry shortly",
                code="server_busy",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.active += 1
        return Slot(self)


class Slot:
    """One admitted fusion. `release()` is idempotent: streams release from two places."""

    __slots__ = ("_gate",)

    def __init__(self, gate: FusionGate) -> None:
        self._gate: FusionGate | None = gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate.active -= 1
            self._gate = None
