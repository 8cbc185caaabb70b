"""The server's own knobs (the fusion ones live in fusion.toml)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import Config, parse_spec
from ..options import MAX_TOKENS
from .schemas import MAX_MESSAGES

API_KEYS_ENV = "FUSION_API_KEYS"
ADMIN_KEYS_ENV = "FUSION_ADMIN_KEYS"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    # Bearer keys; empty = no auth (only allowed on loopback unless --insecure).
    api_keys: tuple[str, ...] = ()
    # Keys that also read every key's traces (server/auth.py); the others see their own.
    # Either list turns auth on.
    admin_keys: tuple[str, ...] = ()
    max_concurrent: int = 64  # fusions in flight; the next one gets 429
    max_body_bytes: int = 1 << 20  # 1 MiB
    # Entries in `messages` (OpenAI's own limit): each member call handles every one, so
    # this bounds a request's work where the body limit alone does not (20,000 empty
    # messages fit in 660 KB).
    max_messages: int = MAX_MESSAGES
    max_members: int = 8  # panel seats a request may ask for (model*N counts N)
    max_tokens_cap: int = 16_384  # per member answer; also the default when none is set
    max_depth: int = 3  # X-Fusion-Depth at or above this is refused (a loop of servers)
    retry_after_s: int = 1  # Retry-After on 429
    # Slow clients (server/transport.py, limits.read_body): a connection gets this long to
    # send its request headers, a request this long to send its body (else 408); past
    # max_connections open connections a new one is answered 503 and closed.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1024
    # Providers a request may name in model / fusion.models / judge. None: every configured
    # provider (the loopback default); `fusion serve` on another interface defaults to
    # `default_allowed_providers(config)`. Presets may use any provider either way.
    allowed_providers: frozenset[str] | None = None
    # Host names (any port) served besides the loopback ones (localhost, 127.0.0.1, [::1]):
    # the defence against DNS rebinding (server/guards.py). None: any Host. `fusion serve`
    # keeps the check only on loopback without keys, unless --allowed-host is given.
    allowed_hosts: frozenset[str] | None = frozenset()
    # Web origins (scheme://host[:port]) whose pages may call the API: CORS for them, and
    # their POSTs are not refused as cross-site. Empty: no CORS (the default); "*": any.
    cors_origins: tuple[str, ...] = ()
    # False: record no trace (the store given to create_app is ignored) and answer the
    # traces API with 404 `traces_disabled`: a replica whose operator keeps logs elsewhere.
    traces: bool = True

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "max_body_bytes", "max_messages", "max_members",
                     "max_tokens_cap", "max_depth", "retry_after_s", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("header_timeout_s", "body_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name} must be more than 0 and at most 3600 seconds")
        if self.max_connections < self.max_concurrent:  # each fusion holds a connection
            raise ValueError("max_connections must be at least max_concurrent")
        if self.max_tokens_cap > MAX_TOKENS:  # the engine would refuse every request
            raise ValueError(f"max_tokens_cap must be at most {MAX_TOKENS}")
        for host in self.allowed_hosts or ():
            if host_name(host) is None:
                raise ValueError(f"allowed host {host!r}: write a host name, e.g. fusion.lan")
        for origin in self.cors_origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc
                                  or parts.path.strip("/") or parts.query or parts.fragment):
                raise ValueError(f"CORS origin {origin!r}: write scheme://host[:port], e.g. "
                                 "https://app.example.com")


def is_loopback(host: str) -> bool:
    """A bind address or host name that only this machine reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def host_name(host: str) -> str | None:
    """The name in a Host header or an allowed host: lowercase, without the port, the
    brackets of an IPv6 address or a final dot. None: not a host name."""
    host = host.strip().lower()
    if any(c in host for c in "/\\@ "):  # a URL, a path or user@host: not a name
        return None
    if host.startswith("["):
        name, bracket, _ = host[1:].partition("]")
        if not bracket:
            return None
    else:  # name[:port]; a bare IPv6 address has more than one colon
        name = host.split(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    return name or None


def default_allowed_providers(config: Config) -> frozenset[str]:
    """What a public server lets requests name by default: the providers fusion.toml
    declares and the ones its presets (the default one included) use. Not the built-ins
    nobody configured: `ollama:`/`vllm:`/`llamacpp:` reach fixed ports on the server's own
    host, and `local:` loads llama.cpp models into the server."""
    names = set(config.declared_providers)
    for preset in [*config.presets.values(), config.default()]:
        specs = [*preset.models, preset.judge, preset.options.get("fallback_judge")]
        names.update(parse_spec(s).provider for s in specs if isinstance(s, str))
    return frozenset(names)


def keys_from_env(name: str = API_KEYS_ENV) -> tuple[str, ...]:
    """The comma-separated keys in $name (FUSION_API_KEYS, or ADMIN_KEYS_ENV)."""
    raw = os.environ.get(name, "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())
