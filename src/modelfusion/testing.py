"""A scripted provider for testing code that uses modelfusion, without a network or a model.

    from modelfusion import Fusion, ProviderError
    from modelfusion.testing import ScriptedProvider, choose

    scripted = ScriptedProvider()                  # provider name "scripted"
    scripted.enqueue("a", "Paris.")                 # model a's next answer
    scripted.enqueue("b", "Lyon.")
    scripted.enqueue("c", ProviderError("rate_limited", "slow down"))  # c fails, typed
    scripted.enqueue("j", choose("Paris"))         # the judge picks the Paris answer
    fusion = Fusion(["scripted:a", "scripted:b", "scripted:c"], judge="scripted:j",
                    mode="best-of", config=scripted.config(), retries=0)
    result = fusion.run_sync("Capital of France?")
    assert result.answer == "Paris." and result.members[2].reason == "rate_limited"
    assert sorted(c.model for c in scripted.calls) == ["a", "b", "c", "j"]

Each model has its own queue of replies, consumed in order; `enqueue(None, ...)` feeds a
shared queue that any model falls back to. A reply is a string, a `Reply` (text with a
delay, usage, cost), an exception (raised: a ProviderError becomes a typed member or judge
failure), or a function of the `Call` returning one of those. A call with nothing scripted
fails with a non-retryable ProviderError that says so. Every call is recorded in `calls`.

The provider kind is `scripted`; `config()` returns a Config that declares this instance
as a provider (not remote, so offline mode allows it). State lives on the instance, so it
survives the pool rebuilding providers for a new event loop (each `run_sync`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import Config, ProviderConfig, builtin_providers, load_config
from .errors import ConfigError, ProviderError
from .providers.protocol import DeltaCallback, register_kind
from .types import Completion, GenerationParams, Message, Usage

__all__ = ["Call", "Reply", "ScriptedProvider", "choose"]

KIND = "scripted"
_URL = "scripted://"  # + the instance's token: how a ProviderConfig names its instance


@dataclass(frozen=True, slots=True)
class Call:
    """One call the provider received."""

    model: str
    messages: list[Message]
    params: GenerationParams
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """Every message's content, joined: handy for `in` checks."""
        return "\n".join(m.content for m in self.messages)


@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted answer. Usage defaults to word counts; cost to 0.0 (known and free)."""

    text: str
    delay: float = 0.0  # seconds before the answer starts
    usage: Usage | None = None
    cost: float | None = 0.0
    finish_reason: str = "stop"


# What enqueue() takes: text, a Reply, an exception (instance or class) to raise, or a
# function of the Call that returns one of those.
Step = str | Reply | BaseException | type[BaseException] | Callable[[Call], "Step"]

_INSTANCES: weakref.WeakValueDictionary[str, ScriptedProvider] = weakref.WeakValueDictionary()
_TOKENS = itertools.count(1)


class ScriptedProvider:
    """A provider that answers from scripted replies and records every call it receives."""

    remote = False

    def __init__(self, name: str = "scripted", *, supports_json_schema: bool = True,
                 stream_chunks: bool = True) -> None:
        self.name = name
        # True: judges ask for their JSON schema (recorded in each Call's params).
        self.supports_json_schema = supports_json_schema
        self.stream_chunks = stream_chunks  # on_delta gets the text word by word
        self.calls: list[Call] = []
        self._queues: dict[str | None, deque[Step]] = {}
        self._token = f"{next(_TOKENS)}-{id(self):x}"
        _INSTANCES[self._token] = self

    # ---- scripting

    def enqueue(self, model: str | None, *replies: Step) -> ScriptedProvider:
        """Queue `replies` for `model` (None: for any model without replies of its own)."""
        self._queues.setdefault(model, deque()).extend(replies)
        return self

    def pending(self, model: str | None = None) -> int:
        """Replies still queued for `model` (None: the shared queue)."""
        return len(self._queues.get(model, ()))

    def calls_to(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]

    def reset(self) -> None:
        """Forget every queued reply and recorded call."""
        self._queues.clear()
        self.calls.clear()

    def config(self, base: Config | str | Path | None = None) -> Config:
        """A Config with this provider declared under its name: the built-in providers, or
        `base` (a Config, or a fusion.toml path), plus this one. Nothing is read from the
        current directory or the user's config unless `base` names it."""
        if base is None:
            base = Config(providers=builtin_providers(), presets={}, prices={})
        elif not isinstance(base, Config):
            base = load_config(base)
        declared = ProviderConfig(name=self.name, kind=KIND, base_url=_URL + self._token,
                                  remote=False)
        return replace(base, providers={**base.providers, self.name: declared},
                       declared_providers=base.declared_providers | {self.name})

    # ---- the Provider protocol

    async def complete(
        self,
        model: str,
        messages: list[Message],
        params: GenerationParams,
        *,
        on_delta: DeltaCallback | None = None,
        headers: dict[str, str] | None = None,
    ) -> Completion:
        call = Call(model, list(messages), params, dict(headers or {}))
        self.calls.append(call)
        step = self._next(model)
        while callable(step) and not isinstance(step, type):
            step = step(call)
        if isinstance(step, type) and issubclass(step, BaseException):
            step = step()
        if isinstance(step, BaseException):
            raise step
        reply = step if isinstance(step, Reply) else Reply(str(step))
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if on_delta is not None and reply.text:
            for chunk in re.findall(r"\s*\S+\s*", reply.text) if self.stream_chunks \
                    else [reply.text]:
                on_delta(chunk)
                await asyncio.sleep(0)  # let the panel see each delta as it comes
        usage = reply.usage or Usage(sum(len(m.content.split()) for m in messages),
                                     len(reply.text.split()))
        return Completion(reply.text, usage, reply.cost, reply.finish_reason)

    async def aclose(self) -> None:
        return None  # the script and the calls outlive the pool that used the provider

    def _next(self, model: str) -> Step:
        for key in (model, None):
            queue = self._queues.get(key)
            if queue:
                return queue.popleft()
        raise ProviderError(
            "upstream_error",
            f"{self.name}:{model}: no reply scripted for call {len(self.calls)} "
            f"(queue one with enqueue({model!r}, ...))",
        )


@register_kind(KIND)
def _factory(cfg: ProviderConfig) -> ScriptedProvider:
    token = (cfg.base_url or "").removeprefix(_URL)
    provider = _INSTANCES.get(token)
    if provider is None:
        raise ConfigError(
            f"provider {cfg.name!r} is of kind {KIND!r}, which answers only through a "
            "ScriptedProvider: pass config=ScriptedProvider(...).config()"
        )
    return provider


# ---- judges


_FENCED = re.compile(r'<candidate-(\w+) label="([A-Z]+)">\n(.*?)\n</candidate-\1>', re.S)


def choose(text: str, reason: str = "scripted choice") -> Callable[[Call], Reply]:
    """A best-of judge reply: choose the candidate whose text contains `text`, whatever
    label the seeded shuffle gave it. No such candidate: an invalid label (the judge's
    answer then fails validation, as a confused judge's would)."""

    def step(call: Call) -> Reply:
        for _, label, body in _FENCED.findall(call.prompt):
            if text in body:
                return Reply(json.dumps({"reason": reason, "choice": label}))
        return Reply(json.dumps({"reason": f"no candidate contains {text!r}", "choice": "?"}))

    return step
