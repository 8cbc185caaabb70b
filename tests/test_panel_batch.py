"""The panel's sample groups: copies of one model on a provider that decodes several
samples at once (`complete_many`) go as one call; everything else as one call each.

`Batching` below is a test provider standing in for the embedded llama.cpp, whose real
batches tests/test_local_batch.py checks; here it records how it was called, so the
grouping rule, the shared retry and the per-member outcomes can be checked exactly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from modelfusion.errors import ProviderError
from modelfusion.evals.replay import TALLY, CachingBatchProvider, CallCache, ReplayTally
from modelfusion.panel import Member, Panel, PanelOptions
from modelfusion.providers.protocol import BatchProvider
from modelfusion.types import Completion, FusionEvent, GenerationParams, Message, Usage

QUESTION = [Message("user", "2 + 2?")]
SAMPLE = GenerationParams(temperature=0.7, max_tokens=32)


class Plain:
    """A provider with no way to decode samples together."""

    name = "plain"
    supports_json_schema = False
    remote = False

    def __init__(self, faults: list[ProviderError] | None = None,
                 empty: frozenset[int] = frozenset()) -> None:
        self.calls: list[tuple[str, int]] = []  # ("one" | "many", how many samples)
        self.faults = list(faults or [])
        self.empty = empty  # seeds whose answer comes back empty

    def _answer(self, p: GenerationParams) -> Completion:
        text = "" if p.seed in self.empty else f"answer seed={p.seed}"
        return Completion(text, Usage(5, 3), 0.0, "stop")

    async def complete(self, model: str, messages: list[Message], params: GenerationParams,
                       *, on_delta=None, headers=None) -> Completion:  # noqa: ANN001
        self.calls.append(("one", 1))
        return self._answer(params)

    async def aclose(self) -> None:
        return None


class Batching(Plain):
    """One that does: complete_many."""

    name = "batching"

    async def complete_many(self, model: str, messages: list[Message],
                            params: list[GenerationParams], *, on_delta, headers=None
                            ) -> list[Completion]:  # noqa: ANN001
        self.calls.append(("many", len(params)))
        if self.faults:
            raise self.faults.pop(0)
        for p, delta in zip(params, on_delta, strict=True):
            if delta is not None:
                delta(f"seed={p.seed}")
        return [self._answer(p) for p in params]


def _members(provider: object, seeds: list[int], model: str = "m",
             params: GenerationParams = SAMPLE) -> list[Member]:
    return [Member(index=i, label=f"{model}#{i}", provider=provider, model=model,  # type: ignore[arg-type]
                   params=replace(params, seed=s)) for i, s in enumerate(seeds)]


def _run(jobs: list[tuple[Member, list[Message]]], events: list[FusionEvent] | None = None,
         **options: float) -> list:
    sink = events if events is not None else []
    panel = Panel(PanelOptions(backoff=0.01, **options), sink.append, {})

    async def go() -> list:
        return await panel.run(jobs, deadline_at=time.monotonic() + 30)

    return asyncio.run(go())


def test_a_models_copies_go_as_one_call_and_each_gets_its_own_answer() -> None:
    provider = Batching()
    assert isinstance(provider, BatchProvider)
    events: list[FusionEvent] = []
    results = _run([(m, QUESTION) for m in _members(provider, [1, 2, 3])], events)
    assert provider.calls == [("many", 3)]
    assert [r.content for r in results] == [f"answer seed={s}" for s in (1, 2, 3)]
    assert [r.status for r in results] == ["ok"] * 3
    deltas = [(e.member, e.text) for e in events if e.type == "member_delta"]
    assert deltas == [(0, "seed=1"), (1, "seed=2"), (2, "seed=3")]


def test_different_prompts_models_or_budgets_are_not_grouped() -> None:
    provider = Batching()
    a, b = _members(provider, [1, 2])
    other_model = _members(provider, [3], model="n")[0]
    other_budget = replace(_members(provider, [4])[0], params=replace(SAMPLE, max_tokens=8))
    schema = replace(_members(provider, [5])[0],
                     params=replace(SAMPLE, json_schema={"type": "object"}))
    _run([(a, QUESTION), (b, [Message("user", "3 + 3?")]), (other_model, QUESTION),
          (other_budget, QUESTION), (schema, QUESTION)])
    assert provider.calls == [("one", 1)] * 5


def test_a_provider_without_complete_many_gets_one_call_per_member() -> None:
    provider = Plain()
    assert not isinstance(provider, BatchProvider)
    _run([(m, QUESTION) for m in _members(provider, [1, 2])])
    assert provider.calls == [("one", 1), ("one", 1)]


def test_a_retryable_failure_retries_the_whole_group() -> None:
    provider = Batching(faults=[ProviderError("rate_limited", "busy", retryable=True)])
    results = _run([(m, QUESTION) for m in _members(provider, [1, 2])])
    assert provider.calls == [("many", 2), ("many", 2)]
    assert [r.attempts for r in results] == [2, 2] and all(r.ok for r in results)


def test_a_final_failure_fails_every_member_with_the_reason() -> None:
    provider = Batching(faults=[ProviderError("upstream_error", "broken")])
    results = _run([(m, QUESTION) for m in _members(provider, [1, 2])])
    assert [(r.status, r.reason) for r in results] == [("failed", "upstream_error")] * 2


def test_an_empty_answer_fails_only_that_member() -> None:
    provider = Batching(empty=frozenset({2}))
    results = _run([(m, QUESTION) for m in _members(provider, [1, 2, 3])])
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert results[1].reason == "bad_response"


def test_replay_answers_cached_samples_and_batches_only_the_rest(tmp_path: Path) -> None:
    provider = Batching()
    cached = CachingBatchProvider(provider, CallCache(tmp_path))  # type: ignore[arg-type]
    params = [replace(SAMPLE, seed=s) for s in (1, 2, 3)]

    async def call(ps: list[GenerationParams]) -> tuple[list[Completion], ReplayTally]:
        tally = ReplayTally()
        token = TALLY.set(tally)
        try:
            done = await cached.complete_many("m", QUESTION, ps, on_delta=[None] * len(ps))
        finally:
            TALLY.reset(token)
        return done, tally

    first, t1 = asyncio.run(call(params[:2]))
    again, t2 = asyncio.run(call(params))
    assert provider.calls == [("many", 2), ("one", 1)]  # only seed 3 ran the second time
    assert [c.content for c in again[:2]] == [c.content for c in first]
    assert (t1.live_calls, t2.live_calls, t2.replayed_calls) == (2, 1, 2)
