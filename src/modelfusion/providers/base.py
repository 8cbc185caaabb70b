"""Building providers: the registry of kinds (protocol.py) plus the built-in kinds, which
are imported lazily so that optional dependencies (llama-cpp-python) load only when used.

The Provider protocol, DeltaCallback and register_kind live in protocol.py and are
importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .protocol import FACTORIES, DeltaCallback, Provider, ProviderFactory, register_kind

if TYPE_CHECKING:
    from ..config import ProviderConfig

__all__ = ["DeltaCallback", "Provider", "ProviderFactory", "build_provider", "register_kind",
           "warm"]


def build_provider(cfg: ProviderConfig) -> Provider:
    from ..errors import ConfigError

    if cfg.kind not in FACTORIES:
        _load_builtin(cfg.kind)
    try:
        factory = FACTORIES[cfg.kind]
    except KeyError:
        known = ", ".join(sorted(FACTORIES))
        raise ConfigError(
            f"provider {cfg.name!r} has unknown kind {cfg.kind!r}; known kinds: {known}"
        ) from None
    return factory(cfg)


def warm(get: Callable[[str], object], names: Iterable[str]) -> list[str]:
    """Build each named provider now through `get` (a ProviderPool's, on the running
    loop), so that importing its SDK and setting up its client happen before the first
    request, not on the event loop inside a request's timings. Returns the names it could
    not build: the run that uses one reports why."""
    from ..errors import FusionError

    failed = []
    for name in names:
        try:
            get(name)
        except FusionError:
            failed.append(name)
    return failed


def _load_builtin(kind: str) -> None:
    if kind == "openai_compat":
        from . import openai_compat  # noqa: F401
    elif kind == "local":
        from .local import runtime  # noqa: F401
    elif kind == "scripted":  # modelfusion.testing: scripted replies for users' tests
        from .. import testing  # noqa: F401
