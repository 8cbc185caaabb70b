"""Samples of one prompt decoded as one llama.cpp batch (providers/local/batch.py), on the
real 0.5B model, and the panel sending a model's copies that way (panel._sample_groups).

Batching is observed, not assumed: `generate_batch` is wrapped by a spy that counts its
calls and passes through to the real function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from modelfusion import Fusion
from modelfusion.config import builtin_providers
from modelfusion.providers.local import batch
from modelfusion.providers.local import runtime as local
from modelfusion.types import GenerationParams, Message
from tests.helpers import MODEL, needs_llama

pytestmark = [pytest.mark.local, needs_llama]

QUESTION = [Message("user", "Write a one-line Python function that adds two numbers.")]
GREEDY = GenerationParams(temperature=0.0, seed=1234, max_tokens=24)


@pytest.fixture
def provider(model_home: Path) -> Iterator[local.LocalProvider]:
    yield local.LocalProvider(builtin_providers()["local"])


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch decoded from now on."""
    sizes: list[int] = []
    real = batch.generate_batch

    def spy(llama: Any, name: str, messages: list[Message], params: Any, *rest: Any) -> Any:
        sizes.append(len(params))
        return real(llama, name, messages, params, *rest)

    monkeypatch.setattr(batch, "generate_batch", spy)
    return sizes


async def test_greedy_samples_in_one_batch_equal_a_single_greedy_call(
    provider: local.LocalProvider, batches: list[int]
) -> None:
    single = await provider.complete(MODEL, QUESTION, GREEDY)
    many = await provider.complete_many(MODEL, QUESTION, [GREEDY, GREEDY, GREEDY],
                                        on_delta=[None, None, None])
    assert batches == [3]
    assert [c.content for c in many] == [single.content] * 3
    assert all(c.usage == single.usage and c.finish_reason == single.finish_reason
               for c in many)
    assert single.content.strip()


async def test_each_sample_has_its_own_seed_and_temperature_and_is_reproducible(
    provider: local.LocalProvider,
) -> None:
    params = [GenerationParams(temperature=1.0, seed=k, max_tokens=24) for k in range(4)]
    params.append(replace(GREEDY))  # a greedy sequence in the same batch
    first = await provider.complete_many(MODEL, QUESTION, params, on_delta=[None] * 5)
    again = await provider.complete_many(MODEL, QUESTION, params, on_delta=[None] * 5)
    assert [c.content for c in first] == [c.content for c in again]
    assert len({c.content for c in first[:4]}) > 1  # four seeds at temperature 1 differ
    single = await provider.complete(MODEL, QUESTION, GREEDY)
    assert first[4].content == single.content
    for c, p in zip(first, params, strict=True):
        assert 0 < c.usage.completion_tokens <= p.max_tokens  # type: ignore[operator]
        assert c.finish_reason in {"stop", "length"}


async def test_each_sample_streams_its_own_deltas(provider: local.LocalProvider) -> None:
    deltas: list[list[str]] = [[], []]
    params = [GenerationParams(temperature=1.0, seed=k, max_tokens=16) for k in (1, 2)]
    done = await provider.complete_many(MODEL, QUESTION, params,
                                        on_delta=[deltas[0].append, deltas[1].append])
    await asyncio.sleep(0)  # the last call_soon_threadsafe callbacks
    assert ["".join(d) for d in deltas] == [c.content for c in done]


async def test_samples_that_do_not_fit_the_context_together_run_as_several_batches(
    provider: local.LocalProvider, batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4096 cells, a ~40-token prompt and 1,500 tokens each: two samples per batch.
    params = [GenerationParams(temperature=1.0, seed=k, max_tokens=1500) for k in range(3)]
    short = [Message("user", "Reply with the single word: yes")]
    done = await provider.complete_many(MODEL, short, params, on_delta=[None] * 3)
    assert batches == [3] and len(done) == 3  # one call, split inside
    assert all(c.content.strip() for c in done)


async def test_a_cancelled_batch_frees_the_model_and_leaves_it_clean(
    provider: local.LocalProvider,
) -> None:
    reference = await provider.complete(MODEL, QUESTION, GREEDY)
    started = asyncio.Event()
    essay = [Message("user", "Write a long essay about the history of Python.")]
    long = [GenerationParams(temperature=0.8, max_tokens=400)] * 3
    task = asyncio.create_task(provider.complete_many(
        MODEL, essay, long, on_delta=[lambda _t: started.set(), None, None]))
    await asyncio.wait_for(started.wait(), timeout=120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    again = await asyncio.wait_for(provider.complete(MODEL, QUESTION, GREEDY), timeout=120)
    assert again.content == reference.content


async def test_a_fusion_sends_a_models_copies_as_one_batch(
    model_home: Path, batches: list[int]
) -> None:
    async with Fusion([f"local:{MODEL}*3"], mode="vote", max_tokens=16, seed=5,
                      offline=True) as fusion:
        result = await fusion.run("Name one prime number.")
    assert batches == [3]
    assert [m.status for m in result.members] == ["ok"] * 3
    # One call: the copies share its time.
    assert len({m.latency_ms for m in result.members}) == 1
    assert result.answer.strip()
