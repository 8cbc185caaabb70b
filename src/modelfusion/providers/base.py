"""The one interface every provider implements, and the registry that builds them.

A provider turns (model, messages, params) into a Completion, optionally streaming text
deltas through `on_delta`. It raises ProviderError with a typed reason on failure and
never retries: the panel owns the single retry layer.
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


ProviderFactory = Callable[["ProviderConfig"], Provider]
_FACTORIES: dict[str, ProviderFactory] = {}


def register_kind(kind: str) -> Callable[[ProviderFactory], ProviderFactory]:
    """Register a provider kind (`openai_compat`, `local`, ...). Built-ins use it too."""

    def deco(factory: ProviderFactory) -> ProviderFactory:
        _FACTORIES[kind] = factory
        return factory

    return deco


def build_provider(cfg: ProviderConfig) -> Provider:
    from ..errors import ConfigError

    if cfg.kind not in _FACTORIES:
        _load_builtin(cfg.kind)
    try:
        factory = _FACTORIES[cfg.kind]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES))
        raise ConfigError(
            f"provider {cfg.name!r} has unknown kind {cfg.kind!r}; known kinds: {known}"
        ) from None
    return factory(cfg)


def _load_builtin(kind: str) -> None:
    # Imported lazily so that optional dependencies (llama-cpp-python) load only when used.
    if kind == "openai_compat":
        from . import openai_compat  # noqa: F401
    elif kind == "local":
        from .local import runtime  # noqa: F401
