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
from functools import partial

from .budget import Budget
from .config import Price, call_cost
from .errors import FusionError, ProviderError
from .providers.base import Provider
from .providers.protocol import BatchProvider
from .types import Completion, FusionEvent, GenerationParams, MemberResult, Message

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
        task_of: list[asyncio.Task[None]] = [None] * len(jobs)  # type: ignore[list-item]
        for group in _sample_groups(jobs):
            task = asyncio.create_task(self._run_members(
                [jobs[i][0] for i in group], jobs[group[0]][1], [results[i] for i in group],
                deadline_at, round_no))
            for i in group:
                task_of[i] = task
        tasks = list(dict.fromkeys(task_of))
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
        for result, task in zip(results, task_of, strict=True):
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

    async def _run_members(
        self,
        members: list[Member],
        messages: list[Message],
        results: list[MemberResult],
        deadline_at: float,
        round_no: int | None,
    ) -> None:
        """One member, or samples of one prompt that its provider decodes as one call
        (`_sample_groups`): one max_parallel slot, one timeout, one attempt loop."""
        started = time.monotonic()
        end = deadline_at
        limit = members[0].limit
        acquired = False
        try:
            if limit is not None:
                # Queueing for a max_parallel slot counts against the deadline only: the
                # member's own timeout starts when it is actually sent.
                async with asyncio.timeout_at(_loop_time(deadline_at)):
                    await limit.acquire()
                acquired = True
                started = time.monotonic()  # latency is the member's own, not the queue's
            end = min(deadline_at, started + self.options.timeout)
            async with asyncio.timeout_at(_loop_time(end)):
                await self._attempts(members, messages, results, started, end, round_no)
        except TimeoutError:
            self._fail_all(results, "timeout", f"no answer within {self.options.timeout:g} s"
                           if end < deadline_at else "the fusion deadline passed", round_no)
        except ProviderError as e:
            self._fail_all(results, e.reason, str(e), round_no)
        except FusionError as e:  # e.g. a local model that cannot load: this member only
            self._fail_all(results, "upstream_error", str(e), round_no)
        finally:
            if acquired and limit is not None:
                limit.release()
        for result in results:
            if not result.ok:
                result.latency_ms = (time.monotonic() - started) * 1000

    async def _attempts(
        self,
        members: list[Member],
        messages: list[Message],
        results: list[MemberResult],
        started: float,
        end: float,
        round_no: int | None,
    ) -> None:
        emit = self._emit
        for attempt in range(self.options.retries + 1):
            for member, result in zip(members, results, strict=True):
                result.attempts = attempt + 1
                emit(FusionEvent("member_started", member=member.index, model=member.label,
                                 round=round_no))
            try:
                completions = await self._call(members, messages, round_no)
            except ProviderError as e:
                if self._budget is not None:
                    for member in members:  # what they streamed before failing was spent
                        self._budget.settle(member.index)
                if not e.retryable or attempt == self.options.retries:
                    raise
                wait = e.retry_after if e.retry_after is not None else self._backoff(attempt)
                if time.monotonic() + wait >= end:
                    raise  # waiting would pass the deadline: fail now, don't hang
                await asyncio.sleep(wait)
                continue
            latency_ms = (time.monotonic() - started) * 1000  # one call: one latency
            for member, result, completion in zip(members, results, completions, strict=True):
                self._accept(member, result, completion, latency_ms, round_no)
            return

    async def _call(self, members: list[Member], messages: list[Message],
                    round_no: int | None) -> list[Completion]:
        first = members[0]
        if len(members) == 1:
            return [await first.provider.complete(
                first.model, messages, first.params,
                on_delta=lambda text: self._delta(first, text, round_no),
                headers=self._headers)]
        batch: BatchProvider = first.provider  # type: ignore[assignment]
        return await batch.complete_many(
            first.model, messages, [m.params for m in members],
            on_delta=[partial(self._delta, m, round_no=round_no) for m in members],
            headers=self._headers)

    def _accept(self, member: Member, result: MemberResult, completion: Completion,
                latency_ms: float, round_no: int | None) -> None:
        if not completion.content.strip():
            if self._budget is not None:
                self._budget.settle(member.index, completion.usage)
            self._fail(result, "bad_response", "empty completion", round_no)
            return
        result.content = completion.content
        result.finish_reason = completion.finish_reason
        result.usage = completion.usage
        u = completion.usage
        result.cost = call_cost(completion.cost, u.prompt_tokens, u.completion_tokens,
                                member.price)
        if self._budget is not None:
            self._budget.settle(member.index, completion.usage, result.cost)
        result.status, result.reason = "ok", None
        result.latency_ms = latency_ms
        self._emit(FusionEvent("member_done", member=member.index, model=member.label,
                               member_result=result, round=round_no))

    def _delta(self, member: Member, text: str, round_no: int | None = None) -> None:
        if self._budget is not None:
            self._budget.streamed(member.index, member.price)
        self._emit(FusionEvent("member_delta", member=member.index, text=text, round=round_no))

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.options.backoff_max, self.options.backoff * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    def _fail_all(self, results: list[MemberResult], reason: str, message: str,
                  round_no: int | None) -> None:
        for result in results:
            if not result.ok:
                self._fail(result, reason, message, round_no)

    def _fail(self, result: MemberResult, reason: str, message: str,
              round_no: int | None) -> None:
        result.status = "cancelled" if reason == "cancelled" else "failed"
        result.reason = reason  # type: ignore[assignment]
        result.error = message
        result.content = None
        result.finish_reason = None
        self._emit(FusionEvent("member_failed", member=result.index, model=result.model,
                               member_result=result, round=round_no))


def _sample_groups(jobs: list[tuple[Member, list[Message]]]) -> list[list[int]]:
    """Job indices, grouped: samples of one prompt (the same provider object, model,
    messages and answer budget, free-form text) on a provider that decodes several at once
    (`complete_many`: the embedded llama.cpp) form one group, in the order of its first
    member; every other job is a group of its own."""
    groups: list[list[int]] = []
    for i, (member, messages) in enumerate(jobs):
        for group in groups:
            first, first_messages = jobs[group[0]]
            if (isinstance(member.provider, BatchProvider)
                    and member.provider is first.provider and member.model == first.model
                    and _batchable(member.params) and _batchable(first.params)
                    and member.params.max_tokens == first.params.max_tokens
                    and messages == first_messages):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _batchable(params: GenerationParams) -> bool:
    """Free-form text the batch decodes as asked: no JSON schema (a grammar is applied per
    call), and neither stop strings nor top_p (its sampler and stop strings are the chat
    template's; such calls go alone, through create_chat_completion, which takes both)."""
    return params.json_schema is None and params.stop is None and params.top_p is None


def _loop_time(monotonic_deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
