"""Runs a prepared fusion for one request: as one JSON body or as an SSE stream.

Both paths consume `Fusion.stream()` (the engine's one flow) and record a trace for every
fusion that ran, answered or failed. Recording is the store's job and never blocks here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Protocol

from ..errors import FusionError, RunError
from ..types import FusionEvent, FusionResult, Message
from . import sse
from .errors import ApiError, internal_error, run_failure
from .resolve import Prepared
from .schemas import ChunkMaker, chat_completion, finish_reason

log = logging.getLogger("modelfusion.server")


class TraceSink(Protocol):
    """What the server needs from `modelfusion.traces.TraceStore`."""

    def record(self, result: FusionResult | None, *, messages: list[Message], source: str,
               preset: str | None = None, error: Exception | None = None,
               mode: str | None = None, owner: str | None = None) -> str: ...

    # owner None: every trace; else only that key's (server/auth.Caller.scope).
    def recent(self, limit: int, *, owner: str | None = None) -> list[Any]: ...

    def get(self, id_or_prefix: str, *, owner: str | None = None) -> Any | None: ...


class FusionService:
    def __init__(self, store: TraceSink | None) -> None:
        self.store = store

    def record(self, p: Prepared, result: FusionResult | None,
               error: Exception | None) -> str | None:
        if self.store is None:
            return None
        try:
            return self.store.record(result, messages=p.request.messages, source="server",
                                     preset=p.preset, error=error, mode=p.fusion.plan.mode,
                                     owner=p.owner)
        except Exception:  # a broken store must not turn an answer into a 500
            log.exception("trace store failed to record a fusion")
            return None

    async def complete(self, p: Prepared) -> dict[str, Any]:
        started = time.monotonic()
        try:
            result = await p.fusion.run(p.request.messages)
        except FusionError as e:
            raise self._failed(p, e, started) from None
        except asyncio.CancelledError:
            self.record(p, None, RunError("the client went away before the fusion finished"))
            raise
        except Exception as e:
            self.record(p, None, e)
            raise
        return chat_completion(p.request.model, result, self.record(p, result, None))

    def _failed(self, p: Prepared, e: FusionError, started: float) -> ApiError:
        trace_id = self.record(p, None, e)
        deadline = p.fusion.plan.options.deadline
        err = run_failure(e, deadline_passed=time.monotonic() - started >= deadline)
        err.extra["trace_id"] = trace_id
        return err

    async def stream(self, p: Prepared) -> AsyncIterator[bytes]:
        """Answer chunks as `data:` frames, panel progress as `: fusion` comment frames."""
        chunks = ChunkMaker(p.request.model)
        relay = AnswerRelay()
        started = time.monotonic()
        result: FusionResult | None = None
        attempt_text = ""
        yield sse.data(chunks.delta({"role": "assistant", "content": ""}))
        try:
            # aclosing: if the client goes away while we wait on a yield, the engine's
            # stream (and its member tasks) is closed now, not whenever GC gets to it.
            events = p.fusion.stream(p.request.messages)
            async with aclosing(events):  # type: ignore[type-var]  # an async generator
                async for event in events:
                    if event.type == "error":
                        continue  # the exception follows; it is sent as an error frame
                    if event.type == "done":
                        result = event.result
                        continue
                    yield sse.progress(event.to_dict())
                    text: str | None = None
                    if p.passthrough and event.member == 0:
                        # One member, no judge: its tokens are the answer, stream them live.
                        if event.type == "member_started":
                            attempt_text = ""
                        elif event.type == "member_delta":
                            attempt_text += event.text or ""
                            text = attempt_text
                    elif event.type == "answer_delta":
                        text = event.text or ""
                    if text is not None and (new := relay.advance(text)):
                        yield sse.data(chunks.delta({"content": new}))
        except FusionError as e:
            yield sse.error(self._failed(p, e, started).error_object())
            return
        except (asyncio.CancelledError, GeneratorExit):
            self.record(p, None, RunError("the client went away before the fusion finished"))
            raise
        except Exception as e:
            log.exception("fusion failed inside a stream")
            self.record(p, None, e)
            yield sse.error(internal_error().error_object())
            return
        assert result is not None
        trace_id = self.record(p, result, None)
        tail = relay.advance(result.answer)
        if tail is None:
            # A retried member streamed different text the second time: what the client
            # already holds is not a prefix of the answer. Say so rather than send garbage.
            err = ApiError(502, "the upstream answer changed after a retry, mid-stream; "
                           "retry the request (or use stream=false)", code="stream_diverged",
                           extra={"trace_id": trace_id})
            yield sse.error(err.error_object())
            return
        if tail:
            yield sse.data(chunks.delta({"content": tail}))
        yield sse.data(chunks.delta({}, finish_reason(result)))
        if p.request.include_usage:
            yield sse.data(chunks.usage(result.usage))
        yield sse.progress({**FusionEvent("done").to_dict(), "result": result.to_dict(),
                            "trace_id": trace_id})
        yield sse.DONE


class AnswerRelay:
    """How much of the answer has gone out, so a retry never repeats or contradicts it.

    `advance(text_so_far)` returns the unsent suffix ("" when nothing new), or None once
    `text_so_far` no longer extends what was sent (a retried attempt that diverged).
    """

    def __init__(self) -> None:
        self.sent = ""
        self.diverged = False

    def advance(self, text: str) -> str | None:
        if self.diverged:
            return None
        if len(text) <= len(self.sent):
            if self.sent.startswith(text):
                return ""  # a retry catching up with what already went out
            self.diverged = True
            return None
        if not text.startswith(self.sent):
            self.diverged = True
            return None
        new = text[len(self.sent):]
        self.sent = text
        return new
