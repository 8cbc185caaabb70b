"""`fusion mcp`: serve the `fuse` and `review` tools to an MCP client over stdio."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import load_config
from ..errors import UsageError
from .common import ConfigOption, DbOption, OfflineOption, StorePromptsOption, handle_errors

HELP = """Serve modelfusion to an MCP client (Claude Code, Cursor, …) over stdio.

Tools: fuse (a prompt → one fused answer from the panel, with each member's status, the \
decision, tokens, cost and the trace id) and review (a unified diff → the merged \
findings). The client starts this command itself; stdout carries the protocol, so nothing \
else is printed there.

\b
Claude Code:    claude mcp add fusion -- fusion mcp
With a config:  claude mcp add fusion -- fusion mcp --config ~/fusion.toml
Other clients:  command "fusion", args ["mcp"]

Needs the MCP SDK: pip install 'modelfusion\\[mcp]'. The config is read once, at start."""


@handle_errors
def mcp(
    config: ConfigOption = None,
    offline: OfflineOption = False,
    traces: Annotated[bool, typer.Option(
        "--traces/--no-traces", help="Keep each fusion in the trace store (`fusion log`); "
        "the tool result carries its id.")] = True,
    db: DbOption = None,
    store_prompts: StorePromptsOption = True,
) -> None:
    try:
        from ..mcp.server import build_server
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise UsageError("fusion mcp needs the MCP SDK: pip install 'modelfusion[mcp]'") from None
    from ..traces.store import TraceStore  # SQLAlchemy loads only for commands that need it

    cfg = load_config(config, offline=offline or None)  # a bad config: exit 2 before serving
    store = TraceStore.open(db, store_prompts=store_prompts) if traces else None
    try:
        build_server(cfg, store=store).run("stdio")
    finally:
        if store is not None:
            store.close()


def register(app: typer.Typer) -> None:
    app.command("mcp", help=HELP)(mcp)
