"""`Fusion`: the one flow every entry point uses.

    request -> panel (members in parallel) -> mode (judge fuses) -> FusionResult

Everything a caller can get wrong (specs, providers, keys, mode, options) is checked in
the constructor, before any request is sent. `stream()` yields progress events and ends
with a `done` event carrying the result; `run()` and `run_sync()` are thin layers over it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .accounts import Compute
from .budget import Budget, estimate_tokens
from .config import Config, load_config
from .errors import AllMembersFailed
from .judge import Judge, JudgeSeat, defusals, nothing_to_judge
from .modes import MODES, ModeContext, ModeOutcome, ModeSpec
from .options import MAX_SECONDS as MAX_SECONDS  # re-exported: callers import them from here
from .options import FusionOptions as FusionOptions
from .panel import Member, Panel, PanelOptions
from .plan import Plan, Seat, resolve
from .providers.base import Provider, build_provider
from .text import until_stop
from .types import FusionEvent, FusionResult, MemberResult, Message, Timings, to_messages

DEPTH_HEADER = "X-Fusion-Depth"
# Share of the deadline kept for the judge: with deadline < timeout a hanging member would
# otherwise use it all, and the judge would always time out.
JUDGE_RESERVE = 0.2
Messages = str | Sequence[Message | Mapping[str, Any]]


class ProviderPool:
    """One provider object (one pooled HTTP client) and one max_parallel gate per provider.

    Both belong to an event loop, so the pool rebuilds them when it meets a new loop
    (each `run_sync` call runs its own loop).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._providers: dict[str, Provider] = {}
        self._limits: dict[str, asyncio.Semaphore | None] = {}

    def get(self, name: str) -> tuple[Provider, asyncio.Semaphore | None]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._providers, self._limits = loop, {}, {}
        if name not in self._providers:
            cfg = self.config.provider(name)
            self._providers[name] = build_provider(cfg)
            self._limits[name] = asyncio.Semaphore(cfg.max_parallel) if cfg.max_parallel else None
        return self._providers[name], self._limits[name]

    async def aclose(self) -> None:
        providers, self._providers = self._providers, {}
        for provider in providers.values():
            await provider.aclose()


class Fusion:
    """A configured panel + judge + mode. Reusable and safe to share across tasks."""

    def __init__(
        self,
        models: Sequence[str] | None = None,
        judge: str | None = None,
        mode: str | None = None,
        *,
        preset: str | None = None,
        config: Config | str | Path | None = None,
        offline: bool | None = None,
        pool: ProviderPool | None = None,
        default_preset: str | None = None,
        **options: Any,
    ) -> None:
        """`default_preset`: the preset used when neither models nor a preset are named
        (default: the config's `default_preset`, else the embedded local panel)."""
        if isinstance(config, Config):
            self.config = config
            if offline:
                self.config = replace(config, offline=True)
        else:
            self.config = load_config(config, offline=offline)
        self.pool = pool or ProviderPool(self.config)
        # Everything is checked here, before any request (plan.py holds the rules).
        self.plan: Plan = resolve(self.config, models, judge, mode, preset, options,
                                  default_preset=default_preset)

    async def aclose(self) -> None:
        """Close the pooled HTTP clients (use `async with Fusion(...)` to do it for you)."""
        await self.pool.aclose()

    async def __aenter__(self) -> Fusion:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- the flow ----

    async def run(self, messages: Messages, *, seed: int | None = None) -> FusionResult:
        """The fused result. Same flow as stream(), minus the event queue nobody reads.

        `seed` replaces the `seed` option for this run only (members get seed + their copy
        number, the judge and the shuffle the seed itself), so one Fusion serves many
        seeded runs (`fusion eval`: one per problem)."""
        return await self._execute(self.plan.with_seed(seed), to_messages(messages), _ignore)

    def run_sync(self, messages: Messages, *, seed: int | None = None) -> FusionResult:
        return asyncio.run(self._run_and_close(messages, seed))

    async def _run_and_close(self, messages: Messages, seed: int | None) -> FusionResult:
        async with self:
            return await self.run(messages, seed=seed)

    async def stream(self, messages: Messages, *, seed: int | None = None
                     ) -> AsyncIterator[FusionEvent]:
        """Progress events as they happen; the last is `done` (with the result).

        On failure an `error` event is yielded, then the exception is raised. `seed`: as
        in run().
        """
        queue: asyncio.Queue[FusionEvent | None] = asyncio.Queue()
        task = asyncio.create_task(self._execute(self.plan.with_seed(seed),
                                                 to_messages(messages), queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            exc = task.exception()
            if exc is not None:
                yield FusionEvent("error", error=exc)
                raise exc
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _execute(self, plan: Plan, messages: list[Message],
                       emit: Callable[[FusionEvent], None]) -> FusionResult:
        opts = plan.options
        started = time.monotonic()
        deadline_at = started + opts.deadline
        headers = {DEPTH_HEADER: str(opts.depth + 1)}
        if opts.system:
            messages = [Message("system", opts.system),
                        *[m for m in messages if m.role != "system"]]
        if plan.instructions:
            messages = _with_instructions(messages, plan.instructions)

        # Every seat that may run: with adaptive compute, stage 1's and stage 2's.
        members = [self._member(i, seat) for i, seat in enumerate(plan.seats)]
        budget = Budget(max_cost=opts.max_cost, max_total_tokens=opts.max_total_tokens)
        budget.precheck([(m.label, m.price) for m in members],
                        estimate_tokens("".join(m.content for m in messages)), opts.max_tokens)
        panel = Panel(
            PanelOptions(timeout=opts.timeout, retries=opts.retries, backoff=opts.retry_backoff,
                         quorum=opts.quorum),
            emit, headers, budget,
        )
        # Members stop early enough to leave the judge its share (none when nothing is judged).
        panel_end = deadline_at - (JUDGE_RESERVE * opts.deadline if len(members) > 1 else 0.0)
        seed = opts.seed if opts.seed is not None else secrets.randbits(32)
        nonce, memo = secrets.token_hex(4), dict[Any, Any]()  # memo: one per fusion
        mode = MODES[plan.mode]

        def context(results: list[MemberResult]) -> ModeContext:
            """The mode's view of these results; raises when none answered."""
            candidates = [r for r in results if r.ok]
            if not candidates:
                raise AllMembersFailed(results)
            judge = Judge(self._judge(plan.judge), fallback=self._judge(plan.fallback_judge)
                          if plan.fallback_judge else None, emit=emit, headers=headers,
                          end=deadline_at, call_timeout=opts.timeout,
                          demote_suspicious=opts.demote_suspicious,
                          both_orders=opts.judge_both_orders, shuffle_seed=seed,
                          defused=defusals(candidates))
            return ModeContext(messages=messages, candidates=candidates, members=results,
                               judge=judge, seed=seed, nonce=nonce, emit=emit, panel=panel,
                               seats=members, deadline_at=deadline_at, rounds=opts.rounds,
                               adaptive=plan.first is not None, rubric=plan.rubric, memo=memo,
                               answer_max_tokens=opts.answer_max_tokens)

        if plan.first is None:  # every seat at once
            results = await self._stage(panel, [(m, messages) for m in members], panel_end,
                                        budget)
            panel_s, compute, ctx = time.monotonic() - started, None, None
        else:
            results, panel_s, compute, ctx = await self._adaptive(
                plan, mode, panel, members, messages, panel_end, budget, context)
        if ctx is None:  # stage 2 ran (or adaptive compute is off): every candidate
            ctx = context(results)
        judge, candidates = ctx.judge, ctx.candidates
        # Nothing to choose between: the mode is skipped, unless it declared that it
        # reports something even then (vote's split, verified's checks, review's counts).
        skip = nothing_to_judge(candidates) if mode.shortcut else None
        if skip:
            judge.skip(skip)
            outcome = ModeOutcome.picked(candidates[0], reason=skip.replace("_", " "))
        else:
            outcome = await mode.run(ctx)
            if not judge.shown:  # a mode that judged a subset said which itself
                judge.show(ctx.labeled())
        answer, finish = outcome.answer, outcome.finish_reason
        if opts.stop and (cut := until_stop(answer, opts.stop)) is not None:
            answer, finish = cut, "stop"  # a judge's text ends where the caller's stop says
        emit(FusionEvent("answer_delta", text=answer))
        total = time.monotonic() - started
        result = FusionResult(
            answer=answer,
            finish_reason=finish,
            mode=plan.mode,
            members=results,
            judge=judge.result,
            analysis=outcome.analysis,
            votes=outcome.votes,
            rounds=outcome.rounds,
            reason=outcome.reason,
            chosen=outcome.chosen,
            checks=outcome.checks,
            degraded=len(candidates) < len(results),
            compute=compute,
            timings=Timings(total_ms=total * 1000, panel_ms=panel_s * 1000,
                            judge_ms=judge.elapsed_ms),
        )
        emit(FusionEvent("done", result=result))
        return result

    async def _adaptive(self, plan: Plan, mode: ModeSpec, panel: Panel,
                        members: list[Member], messages: list[Message], end: float,
                        budget: Budget, context: Callable[[list[MemberResult]], ModeContext]
                        ) -> tuple[list[MemberResult], float, Compute, ModeContext | None]:
        """Adaptive compute: stage 1 (the lead, and the samples its mode asks for), then the
        rest of the budget only when the mode's acceptance rule does not take stage 1.

        Returns the results, the panel's seconds, the account, and the mode's context when
        stage 1 stood (stage 2 needs a new one over every candidate)."""
        opts = plan.options
        assert mode.accept is not None and opts.samples is not None and plan.first is not None
        started = time.monotonic()
        # Stage 1 waits for all of its (one or two) members: the acceptance rule reads them
        # together; the quorum counts from there on.
        results = await self._stage(panel.with_quorum(None),
                                    [(m, messages) for m in members[:plan.first]], end, budget)
        panel_s = time.monotonic() - started
        ctx = context(results) if any(r.ok for r in results) else None
        stopped = await mode.accept.test(ctx) if ctx is not None else None
        stages, revised = 1, 0
        if stopped is None:
            rest = members[plan.first:]
            if not rest:
                stopped = "budget_spent"
            elif time.monotonic() >= end:
                stopped = "deadline"
            else:
                answered = sum(r.ok for r in results)
                more = panel.with_quorum(max(1, opts.quorum - answered) if opts.quorum
                                         else None)
                revision = await _revision(mode, ctx, messages)
                calls = [(m, revision if revision and plan.seats[m.index].revises
                          else messages) for m in rest]
                revised = sum(1 for _, sent in calls if sent is revision)
                stage_started = time.monotonic()
                results = [*results, *await self._stage(more, calls, end, budget)]
                panel_s += time.monotonic() - stage_started
                stopped, stages, ctx = "budget_spent", 2, None
        compute = Compute(max_samples=opts.samples, samples_used=len(results), stages=stages,
                          stopped=stopped, lead=members[0].label, revised=revised)
        return results, panel_s, compute, ctx

    @staticmethod
    async def _stage(panel: Panel, calls: list[tuple[Member, list[Message]]], end: float,
                     budget: Budget) -> list[MemberResult]:
        """Dispatch these members, each with its messages; a crossed budget ends the fusion
        with what was spent."""
        results = await panel.run(calls, deadline_at=end)
        if budget.active and budget.over():
            error = budget.error()
            error.members = results
            raise error
        return results

    def _member(self, index: int, seat: Seat) -> Member:
        provider, limit = self.pool.get(seat.provider)
        params = seat.params
        if params.json_schema is not None and not provider.supports_json_schema:
            params = replace(params, json_schema=None)
        return Member(index=index, label=seat.label, provider=provider, model=seat.model,
                      params=params, price=self.config.price(seat.label.split("#")[0]),
                      limit=limit)

    def _judge(self, seat: Seat) -> JudgeSeat:
        provider, _ = self.pool.get(seat.provider)
        return JudgeSeat(seat.label, provider, seat.model, seat.params,
                         self.config.price(seat.label))


async def _revision(mode: ModeSpec, ctx: ModeContext | None, messages: list[Message]
                    ) -> list[Message] | None:
    """Stage 2's conversation for the samples that revise the lead: the request, the lead's
    answer, and the mode's feedback on it. None when the mode gives none (or the lead did
    not answer)."""
    assert mode.accept is not None
    if ctx is None or ctx.lead is None or mode.accept.feedback is None:
        return None
    note = await mode.accept.feedback(ctx)
    if not note:
        return None
    return [*messages, Message("assistant", ctx.lead.content or ""), Message("user", note)]


def _ignore(event: FusionEvent) -> None:
    pass


def _with_instructions(messages: list[Message], text: str) -> list[Message]:
    """Skills go after the member's system prompt (or become it, when there is none)."""
    if messages and messages[0].role == "system":
        return [Message("system", f"{messages[0].content}\n\n{text}"), *messages[1:]]
    return [Message("system", text), *messages]
