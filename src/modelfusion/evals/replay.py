"""The replay cache: configs that share a panel share member answers.

`ReplayPool` is a ProviderPool whose providers are wrapped in `CachingProvider`: a call with
the same (provider, model, messages, params — seed and json_schema included) as one already
made in this run folder is answered from disk (completion, usage, cost and the latency it
took when it ran) instead of being computed again. Judge prompts carry a random nonce, so
judge calls never match and always run live.

Latency: each fusion collects the recorded latency of the calls it replayed in a
`ReplayTally` (a context variable, inherited by the panel's tasks), and the harness adds it
to the fusion's measured time. That is exact when calls run one at a time (embedded
models; the samples of one batch each record an equal share of its time) and an upper
bound for panels that run in parallel (cloud members overlap).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..files import atomic_write
from ..fusion import ProviderPool
from ..providers.base import DeltaCallback, Provider
from ..providers.protocol import BatchProvider
from ..types import Completion, GenerationParams, Message, Usage


@dataclass(slots=True)
class ReplayTally:
    """What one fusion replayed and what it ran live."""

    replayed_calls: int = 0
    replayed_ms: float = 0.0
    live_calls: int = 0


TALLY: ContextVar[ReplayTally | None] = ContextVar("fusion_eval_tally", default=None)


def call_key(provider: str, model: str, messages: list[Message],
             params: GenerationParams) -> str:
    payload = {
        "provider": provider, "model": model,
        "messages": [m.to_dict() for m in messages],
        "params": {"temperature": params.temperature, "max_tokens": params.max_tokens,
                   "seed": params.seed, "json_schema": params.json_schema},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class CallCache:
    """One JSON file per call under DIR/calls, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "content" in data else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        atomic_write(self._path(key), json.dumps(entry, ensure_ascii=False))


class CachingProvider:
    """A provider answered from the cache when it can, recording every live call."""

    def __init__(self, inner: Provider, cache: CallCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.supports_json_schema = inner.supports_json_schema
        self.remote = inner.remote

    async def complete(self, model: str, messages: list[Message], params: GenerationParams,
                       *, on_delta: DeltaCallback | None = None,
                       headers: dict[str, str] | None = None) -> Completion:
        return (await self._calls(model, messages, [params], [on_delta], headers))[0]

    async def _calls(self, model: str, messages: list[Message], params: list[GenerationParams],
                     on_delta: list[DeltaCallback | None], headers: dict[str, str] | None
                     ) -> list[Completion]:
        """Each call from the cache if it can be, the rest live: one call, or one batch of
        samples (complete_many), whose time each of its calls records a share of."""
        keys = [call_key(self.name, model, messages, p) for p in params]
        tally = TALLY.get()
        done: list[Completion | None] = []
        for key, delta in zip(keys, on_delta, strict=True):
            hit = self.cache.get(key)
            done.append(None if hit is None else _replayed(hit, delta, tally))
        live = [i for i, c in enumerate(done) if c is None]
        if not live:
            return done  # type: ignore[return-value]
        started = time.monotonic()
        if len(live) == 1:
            fresh = [await self.inner.complete(model, messages, params[live[0]],
                                               on_delta=on_delta[live[0]], headers=headers)]
        else:
            fresh = await self.inner.complete_many(  # type: ignore[attr-defined]
                model, messages, [params[i] for i in live],
                on_delta=[on_delta[i] for i in live], headers=headers)
        latency_ms = (time.monotonic() - started) * 1000 / len(live)
        if tally is not None:
            tally.live_calls += len(live)
        for i, completion in zip(live, fresh, strict=True):
            done[i] = completion
            await asyncio.to_thread(self.cache.put, keys[i], {
                "provider": self.name, "model": model, "content": completion.content,
                "usage": completion.usage.to_dict(), "cost": completion.cost,
                "finish_reason": completion.finish_reason, "latency_ms": round(latency_ms, 1),
            })
        return done  # type: ignore[return-value]

    async def aclose(self) -> None:
        await self.inner.aclose()


def _replayed(hit: dict[str, Any], on_delta: DeltaCallback | None,
              tally: ReplayTally | None) -> Completion:
    if tally is not None:
        tally.replayed_calls += 1
        tally.replayed_ms += float(hit["latency_ms"])
    if on_delta is not None and hit["content"]:
        on_delta(hit["content"])
    return Completion(content=hit["content"], usage=Usage(**hit["usage"]),
                      cost=hit.get("cost"), finish_reason=hit.get("finish_reason"))


class CachingBatchProvider(CachingProvider):
    """CachingProvider over a provider that decodes samples together (BatchProvider)."""

    async def complete_many(self, model: str, messages: list[Message],
                            params: list[GenerationParams], *,
                            on_delta: list[DeltaCallback | None],
                            headers: dict[str, str] | None = None) -> list[Completion]:
        return await self._calls(model, messages, params, on_delta, headers)


class ReplayPool(ProviderPool):
    """A ProviderPool whose providers answer repeated calls from DIR/calls."""

    def __init__(self, config: Config, cache: CallCache) -> None:
        super().__init__(config)
        self.cache = cache
        self._wrapped: dict[str, CachingProvider] = {}

    def get(self, name: str) -> tuple[Provider, asyncio.Semaphore | None]:
        provider, limit = super().get(name)
        wrapped = self._wrapped.get(name)
        if wrapped is None or wrapped.inner is not provider:  # the pool met a new loop
            kind = CachingBatchProvider if isinstance(provider, BatchProvider) else CachingProvider
            wrapped = self._wrapped[name] = kind(provider, self.cache)
        return wrapped, limit


class LivePool(ProviderPool):
    """--no-replay: every call live, but still tallied so records say so."""

    def get(self, name: str) -> tuple[Provider, asyncio.Semaphore | None]:
        provider, limit = super().get(name)
        kind = _CountingBatch if isinstance(provider, BatchProvider) else _Counting
        return kind(provider), limit


class _Counting:
    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_json_schema = inner.supports_json_schema
        self.remote = inner.remote

    async def complete(self, model: str, messages: list[Message], params: GenerationParams,
                       *, on_delta: DeltaCallback | None = None,
                       headers: dict[str, str] | None = None) -> Completion:
        completion = await self.inner.complete(model, messages, params, on_delta=on_delta,
                                               headers=headers)
        tally = TALLY.get()
        if tally is not None:
            tally.live_calls += 1
        return completion

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountingBatch(_Counting):
    async def complete_many(self, model: str, messages: list[Message],
                            params: list[GenerationParams], *,
                            on_delta: list[DeltaCallback | None],
                            headers: dict[str, str] | None = None) -> list[Completion]:
        done = await self.inner.complete_many(  # type: ignore[attr-defined]
            model, messages, params, on_delta=on_delta, headers=headers)
        tally = TALLY.get()
        if tally is not None:
            tally.live_calls += len(done)
        return done
