"""The replay cache: configs that share a panel share member answers.

`ReplayPool` is a ProviderPool whose providers are wrapped in `CachingProvider`: a call with
the same (provider, model, messages, params — seed and json_schema included) as one already
made in this run folder is answered from disk (completion, usage, cost and the latency it
took when it ran) instead of being computed again. Judge prompts carry a random nonce, so
judge calls never match and always run live.

Latency: each fusion collects the recorded latency of the calls it replayed in a
`ReplayTally` (a context variable, inherited by the panel's tasks), and the harness adds it
to the fusion's measured time. That is exact when calls run one at a time (embedded models)
and an upper bound for panels that run in parallel (cloud members overlap).
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
        key = call_key(self.name, model, messages, params)
        tally = TALLY.get()
        hit = self.cache.get(key)
        if hit is not None:
            if tally is not None:
                tally.replayed_calls += 1
                tally.replayed_ms += float(hit["latency_ms"])
            if on_delta is not None and hit["content"]:
                on_delta(hit["content"])
            return Completion(content=hit["content"], usage=Usage(**hit["usage"]),
                              cost=hit.get("cost"), finish_reason=hit.get("finish_reason"))
        started = time.monotonic()
        completion = await self.inner.complete(model, messages, params, on_delta=on_delta,
                                               headers=headers)
        latency_ms = (time.monotonic() - started) * 1000
        if tally is not None:
            tally.live_calls += 1
        await asyncio.to_thread(self.cache.put, key, {
            "provider": self.name, "model": model, "content": completion.content,
            "usage": completion.usage.to_dict(), "cost": completion.cost,
            "finish_reason": completion.finish_reason, "latency_ms": round(latency_ms, 1),
        })
        return completion

    async def aclose(self) -> None:
        await self.inner.aclose()


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
            wrapped = self._wrapped[name] = CachingProvider(provider, self.cache)
        return wrapped, limit


class LivePool(ProviderPool):
    """--no-replay: every call live, but still tallied so records say so."""

    def get(self, name: str) -> tuple[Provider, asyncio.Semaphore | None]:
        provider, limit = super().get(name)
        return _Counting(provider), limit


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
