"""The one interface every provider implements, and the registry of provider kinds.

A provider turns (model, messages, params) into a Completion, optionally streaming text
deltas through `on_delta`. It raises ProviderError with a typed reason on failure and
never retries: the panel owns the single retry layer.

This is all a kind's module imports (`@register_kind("name")`); base.py builds providers
and imports the built-in kinds lazily, so no kind module imports the module that loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..config import ProviderConfig
    from ..types import Completion, GenerationParams, Message

DeltaCallback = Callable[[str], None]


@runtime_checkable
class Provider(Protocol):
    name: str
    # Whether the model's output can be constrained to a JSON schema (judge prompts use it).
    supports_json_schema: bool
    # True for providers that send the prompt over a network (refused when offline).
    remote: bool

    async def complete(
        self,
        model: str,
        messages: list[Message],
        params: GenerationParams,
        *,
        on_delta: DeltaCallback | None = None,
        headers: dict[str, str] | None = None,
    ) -> Completion: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BatchProvider(Provider, Protocol):
    """A provider that decodes several samples of one prompt at once, cheaper than one call
    each (the embedded llama.cpp: one batch, the prompt evaluated once). The panel sends
    a model's samples (same messages and max_tokens, no JSON schema) through it."""

    async def complete_many(
        self,
        model: str,
        messages: list[Message],
        params: list[GenerationParams],
        *,
        on_delta: list[DeltaCallback | None],
        headers: dict[str, str] | None = None,
    ) -> list[Completion]: ...


ProviderFactory = Callable[["ProviderConfig"], Provider]
FACTORIES: dict[str, ProviderFactory] = {}


def register_kind(kind: str) -> Callable[[ProviderFactory], ProviderFactory]:
    """Register a provider kind (`openai_compat`, `local`, ...). Built-ins use it too."""

    def deco(factory: ProviderFactory) -> ProviderFactory:
        FACTORIES[kind] = factory
        return factory

    return deco
