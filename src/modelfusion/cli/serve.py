"""`fusion serve`: the typer command that starts the server. `register(app)` adds it."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import Config, load_config
from ..errors import ConfigError, UsageError
from ..server.settings import is_loopback
from .common import handle_errors


def allowed_providers(cfg: Config, given: list[str] | None, *, loopback: bool
                      ) -> frozenset[str] | None:
    """--allow-provider, else the default for where the server listens (None = all)."""
    from ..server.settings import default_allowed_providers

    if given:
        if "*" in given:
            return None
        unknown = sorted(set(given) - set(cfg.providers))
        if unknown:
            raise ConfigError(f"--allow-provider: unknown providers {unknown}; known: "
                              f"{', '.join(sorted(cfg.providers))}")
        return frozenset(given)
    return None if loopback else default_allowed_providers(cfg)


def allowed_hosts(given: list[str] | None, *, loopback: bool, keyed: bool
                  ) -> frozenset[str] | None:
    """--allowed-host, else the Host check only where a web page could use the server as
    its user (loopback, no keys); None = any Host. Loopback names are always served."""
    if given:
        return None if "*" in given else frozenset(given)
    return frozenset() if loopback and not keyed else None


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    db: Annotated[str | None, typer.Option(help="Trace store URL (default: "
                                           "$FUSION_TRACES_URL, else server-traces.db in the "
                                           "user data dir, apart from the CLI's).")] = None,
    config: Annotated[str | None, typer.Option(help="Config file (else $FUSION_CONFIG, "
                                               "./fusion.toml, user config dir).")] = None,
    store_prompts: Annotated[bool, typer.Option(
        "--store-prompts/--no-store-prompts",
        help="Keep request messages in traces (answers and stats are kept anyway).")] = True,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback bind without "
                                           "FUSION_API_KEYS (anyone can spend your keys).")]
    = False,
    max_concurrent: Annotated[int, typer.Option(help="Fusions at once; more get 429.")] = 64,
    max_messages: Annotated[int, typer.Option(help="Entries in a request's messages; more "
                                              "get 400.")] = 2048,
    max_connections: Annotated[int, typer.Option(help="Open connections; more are answered "
                                                 "503 and closed.")] = 1024,
    allow_provider: Annotated[list[str] | None, typer.Option(
        help="A provider requests may name (repeatable; '*' = every configured one). "
        "Default: every one on loopback; elsewhere the providers fusion.toml declares or its "
        "presets use.")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(
        help="A Host name the server answers to besides localhost, 127.0.0.1 and [::1] "
        "(repeatable; '*' = any). Default: only those on loopback without FUSION_API_KEYS "
        "(against DNS rebinding), any otherwise.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="A web origin (https://app.example.com) whose pages may call the API: CORS for "
        "it, and its POSTs are not refused as cross-site (repeatable; '*' = any). Default: "
        "none, only the server's own page.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    workers: Annotated[int, typer.Option(
        min=1, help="Worker processes on this port (uvicorn's). Each has its own "
        "--max-concurrent, --max-connections, provider pool (max_parallel) and local "
        "models; they share the trace store.")] = 1,
    traces: Annotated[bool, typer.Option(
        "--traces/--no-traces",
        help="Keep a trace of every fusion. --no-traces: none (the traces API answers 404 "
        "traces_disabled), for replicas whose operator logs elsewhere.")] = True,
) -> None:
    """Serve the OpenAI-compatible API (/v1/chat/completions) and the web page (/)."""
    from ..server.app import create_app
    from ..server.logs import quiet
    from ..server.settings import ADMIN_KEYS_ENV, API_KEYS_ENV, ServerSettings, keys_from_env
    from ..server.transport import ReplicaApp, run, uvicorn_config
    from ..traces.schema import SERVER_FILE, default_url
    from ..traces.store import TraceStore

    keys, admin_keys = keys_from_env(), keys_from_env(ADMIN_KEYS_ENV)
    keyed = bool(keys or admin_keys)
    if not keyed and not is_loopback(host) and not insecure:
        raise UsageError(
            f"refusing to serve on {host} without authentication: set {API_KEYS_ENV}="
            "key1,key2 (clients send 'Authorization: Bearer key1'), bind to 127.0.0.1, or "
            "pass --insecure if something else guards this port"
        )
    cfg = load_config(config)
    allowed = allowed_providers(cfg, allow_provider, loopback=is_loopback(host))
    hosts = allowed_hosts(allowed_host, loopback=is_loopback(host), keyed=keyed)
    try:
        settings = ServerSettings(api_keys=keys, admin_keys=admin_keys,
                                  max_concurrent=max_concurrent,
                                  max_messages=max_messages, max_connections=max_connections,
                                  allowed_providers=allowed, allowed_hosts=hosts,
                                  cors_origins=tuple(cors_origin or ()), traces=traces)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if db and not traces:
        raise UsageError("--db names a trace store, but --no-traces keeps none: drop one")
    url = db or default_url(SERVER_FILE)
    # Opened here even for workers, which open their own: a bad URL or a database that
    # refuses us stops the command (exit 2) before any worker starts, and the schema is
    # migrated once.
    store = TraceStore.open(url, store_prompts=store_prompts) if traces else None
    try:
        named = "any configured" if allowed is None else ", ".join(sorted(allowed)) or "none"
        per = f"; {workers} workers, limits per worker" if workers > 1 else ""
        kept = (f"{store.url}{', each key reads its own' if keyed else ''}"
                if store is not None else "off")
        typer.echo(f"modelfusion serving on http://{host}:{port}/ "
                   f"(auth {'on' if keyed else 'off'}; providers requests may name: {named}; "
                   f"traces: {kept}{per})", err=True)
        if workers > 1:
            if store is not None:
                store.close()
                store = None
            app = ReplicaApp(cfg, settings, url if traces else None, store_prompts)
            uv = uvicorn_config(app, settings, host=host, port=port, log_level=log_level,
                                factory=True, timeout_graceful_shutdown=10)
        else:
            uv = uvicorn_config(create_app(cfg, store, settings), settings, host=host,
                                port=port, log_level=log_level, timeout_graceful_shutdown=10)
            quiet()  # after uvicorn's Config has set its loggers up
        run(uv, workers)
    finally:
        if store is not None:
            store.close()


def register(app: typer.Typer) -> None:

    app.command("serve")(handle_errors(serve))
