"""Request limits: body size and pace while reading, and the concurrent-fusion gate.

`FusionGate.admit` is the order a fusion request goes through: refused at once when the
gate is full (no body read); its body read holding no fusion slot, within a byte budget
shared by every body being read; a slot; then one yield to the event loop.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from .errors import ApiError


async def read_body(request: Request, limit: int, timeout: float,
                    budget: BodyBudget | None = None) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes, and with 408
    if it has not all arrived within `timeout` seconds (a client that sends a byte now and
    then must not hold a connection and a fusion slot for ever).

    Content-Length is checked first so an honest oversized upload is refused before it is
    read; a chunked (or lying) one is cut off while it streams in. What has arrived counts
    against `budget` until the read ends.
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
                if budget is not None:
                    budget.take(len(chunk))
                parts.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s",
                       code="request_timeout", headers={"Connection": "close"}) from None
    finally:
        if budget is not None:
            budget.give_back(sum(map(len, parts)))
    return b"".join(parts)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than {limit} bytes",
                    code="request_too_large")


class BodyBudget:
    """Bytes of request bodies held while they arrive, over every request at once.

    A body is read before its request takes a fusion slot (a client that sends its body a
    byte now and then must not hold one: 64 such clients kept every fusion out). This
    bounds what those reads may hold instead; the gate sets it to what reading inside the
    slots allowed (max_concurrent × max_body_bytes). Past it the request is refused (429),
    not queued.
    """

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise ApiError(
                429, f"request bodies now arriving hold {self.held} bytes, the server's "
                "limit; retry shortly", code="server_busy",
                headers={"Retry-After": str(self.retry_after_s)})
        self.held += n

    def give_back(self, n: int) -> None:
        self.held -= n


class FusionGate:
    """At most `limit` fusions at once; the next is refused (429), never queued.

    Refusing rather than queueing keeps latency bounded and tells load balancers and
    clients (via Retry-After) to come back, instead of piling up timeouts. Single event
    loop, so plain counters are enough. `reading` counts the requests whose body is being
    read (they hold no slot yet).
    """

    def __init__(self, limit: int, retry_after_s: int, *, max_body_bytes: int = 1 << 20,
                 body_timeout_s: float = 30.0) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.active = 0
        self.reading = 0
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.bodies = BodyBudget(limit * max_body_bytes, retry_after_s)

    async def admit(self, request: Request) -> tuple[Slot, bytes]:
        """A slot and the request's body, or a 429 (408, 413 from the body's read)."""
        self._refuse_if_full()  # before the body: a refusal under load costs no read
        self.reading += 1
        try:
            body = await read_body(request, self.max_body_bytes, self.body_timeout_s,
                                   self.bodies)
        finally:
            self.reading -= 1
        slot = self.acquire()
        try:
            # The rest of a burst that arrived with this request is admitted or refused
            # before this one's parse, plan and member calls run: refusals go out in
            # milliseconds instead of after every admitted request's set-up.
            await asyncio.sleep(0)
        except BaseException:
            slot.release()
            raise
        return slot, body

    def acquire(self) -> Slot:
        self._refuse_if_full()
        self.active += 1
        return Slot(self)

    def _refuse_if_full(self) -> None:
        if self.active >= self.limit:
            raise ApiError(
                429,
                f"the server is running {self.active} fusions, its limit; retry shortly",
                code="server_busy",
                headers={"Retry-After": str(self.retry_after_s)},
            )


class Slot:
    """One admitted fusion. `release()` is idempotent: streams release from two places."""

    __slots__ = ("_gate",)

    def __init__(self, gate: FusionGate) -> None:
        self._gate: FusionGate | None = gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate.active -= 1
            self._gate = None
