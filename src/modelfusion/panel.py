"""Parallel dispatch of one request to every panel member.

Members run at once (capped per provider by `max_parallel`), each under its own timeout,
all under one deadline. With a quorum of K, the panel stops waiting once K members have
answered and cancels the rest. This module is the only retry layer: backoff with jitter on
retryable failures, honouring Retry-After, never sleeping past the deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .budget import Budget
from .config import Price, call_cost
from .errors import FusionError, ProviderError
from .providers.base import Provider
from .types import FusionEvent, GenerationParams, MemberResult, Message

Emit = Callable[[FusionEvent], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """One seat on the panel: a model behind a provider, with its own generation settings."""

    index: int
    label: str  # what users see: the spec, plus #k for self-fusion copies
    provider: Provider
    model: str
    params: GenerationParams
    price: Price | None = None
    limit: asyncio.Semaphore | None = None  # the provider's max_parallel


@dataclass(frozen=True, slots=True, kw_only=True)
class PanelOptions:
    timeout: float = 120.0  # per member, all attempts included
    retries: int = 2
    backoff: float = 0.5  # first backoff in seconds; doubles per attempt, with jitter
    backoff_max: float = 8.0
    quorum: int | None = None


class Panel:
    def __init__(self, options: PanelOptions, emit: Emit, headers: dict[str, str],
                 budget: Budget | None = None) -> None:
        self.options = options
        self._emit = emit
        self._headers = headers
        self._budget = budget if budget is not None and budget.active else None

    def with_quorum(self, quorum: int | None) -> Panel:
        """The same panel (events, headers, budget) waiting for another quorum: adaptive
        compute's second stage counts the answers its first stage already has."""
        return Panel(replace(self.options, quorum=quorum), self._emit, self._headers,
                     self._budget)

    async def run(
        self,
        jobs: list[tuple[Member, list[Message]]],
        *,
        deadline_at: float,
        round_no: int | None = None,
    ) -> list[MemberResult]:
        """Run every job; return one MemberResult per job, in job order. Never raises."""
        started = time.monotonic()
        results = [MemberResult(index=m.index, model=m.label) for m, _ in jobs]
        tasks = [
            asyncio.create_task(self._run_member(m, msgs, r, deadline_at, round_no))
            for (m, msgs), r in zip(jobs, results, strict=True)
        ]
        quorum = self.options.quorum
        pending: set[asyncio.Task[None]] = set(tasks)
        answered = 0
        # The budget's trip wire is one more thing to wait on: crossing it stops everyone.
        trip = (asyncio.create_task(self._budget.tripped().wait())
                if self._budget is not None else None)
        try:
            while pending:
                remaining = deadline_at - time.monotonic()
                if remaining <= 0 or (trip is not None and trip.done()):
                    break
                waiting = pending | {trip} if trip is not None else pending
                await asyncio.wait(waiting, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
                pending = {t for t in pending if not t.done()}
                answered = sum(r.ok for r in results)
                if quorum and answered >= quorum:
                    break
        finally:
            for task in pending:
                task.cancel()
            if trip is not None:
                trip.cancel()
            await asyncio.gather(*pending, *([trip] if trip else []), return_exceptions=True)
        for result, task in zip(results, tasks, strict=True):
            if task in pending:
                result.latency_ms = (time.monotonic() - started) * 1000
                if self._budget is not None and self._budget.over():
                    reason, why = "cancelled", "stopped: the budget was exceeded"
                elif quorum and answered >= quorum:
                    reason, why = "cancelled", "cancelled: quorum reached"
                else:
                    reason, why = "timeout", "the fusion deadline passed"
                self._fail(result, reason, why, round_no)
        return results

    async def _run_member(
        self,
        member: Member,
        messages: list[Message],
        result: MemberResult,
        deadline_at: float,
        round_no: int | None,
    ) -> None:
        started = time.monotonic()
        end = deadline_at
        acquired = False
        try:
            if member.limit is not None:
                # Queueing for a max_parallel slot counts against the deadline only: the
                # member's own timeout starts when it is actually sent.
                async with asyncio.timeout_at(_loop_time(deadline_at)):
                    await member.limit.acquire()
                acquired = True
                started = time.monotonic()  # latency is the member's own, not the queue's
            end = min(deadline_at, started + self.options.timeout)
            async with asyncio.timeout_at(_loop_time(end)):
                await self._attempts(member, messages, result, started, end, round_no)
        except TimeoutError:
            self._fail(result, "timeout", f"no answer within {self.options.timeout:g} s"
                       if end < deadline_at else "the fusion deadline passed", round_no)
        except ProviderError as e:
            self._fail(result, e.reason, str(e), round_no)
        except FusionError as e:  # e.g. a local model that cannot load: this member only
            self._fail(result, "upstream_error", str(e), round_no)
        finally:
            if acquired and member.limit is not None:
                member.limit.release()
        if not result.ok:
            result.latency_ms = (time.monotonic() - started) * 1000

    async def _attempts(
        self,
        member: Member,
        messages: list[Message],
        result: MemberResult,
        started: float,
        end: float,
        round_no: int | None,
    ) -> None:
        emit, i = self._emit, member.index
        for attempt in range(self.options.retries + 1):
            result.attempts = attempt + 1
            emit(FusionEvent("member_started", member=i, model=member.label, round=round_no))
            try:
                completion = await member.provider.complete(
                    member.model,
                    messages,
                    member.params,
                    on_delta=lambda text: self._delta(member, text, round_no),
                    headers=self._headers,
                )
            except ProviderError as e:
                if self._budget is not None:
                    self._budget.settle(i)  # what it streamed before failing was spent
                if not e.retryable or attempt == self.options.retries:
                    raise
                wait = e.retry_after if e.retry_after is not None else self._backoff(attempt)
                if time.monotonic() + wait >= end:
                    raise  # waiting would pass the deadline: fail now, don't hang
                await asyncio.sleep(wait)
                continue
            if not completion.content.strip():
                raise ProviderError("bad_response", "empty completion")
            result.content = completion.content
            result.usage = completion.usage
            u = completion.usage
            result.cost = call_cost(completion.cost, u.prompt_tokens, u.completion_tokens,
                                    member.price)
            if self._budget is not None:
                self._budget.settle(i, completion.usage, result.cost)
            result.status, result.reason = "ok", None
            result.latency_ms = (time.monotonic() - started) * 1000
            emit(FusionEvent("member_done", member=i, model=member.label, member_result=result,
                             round=round_no))
            return

    def _delta(self, member: Member, text: str, round_no: int | None) -> None:
        if self._budget is not None:
            self._budget.streamed(member.index, member.price)
        self._emit(FusionEvent("member_delta", member=member.index, text=text, round=round_no))

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.options.backoff_max, self.options.backoff * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    def _fail(self, result: MemberResult, reason: str, message: str,
              round_no: int | None) -> None:
        result.status = "cancelled" if reason == "cancelled" else "failed"
        result.reason = reason  # type: ignore[assignment]
        result.error = message
        result.content = None
        self._emit(FusionEvent("member_failed", member=result.index, model=result.model,
                               member_result=result, round=round_no))


def _loop_time(monotonic_deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
