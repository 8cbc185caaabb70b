"""The `fusion` command: every typer command of the package lives in this folder.

Each module registers its commands on the one `app`; they share `common` and import
nothing from here, so there is no cycle.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import ask, eval, local, mcp, review, serve, skills, traces

app = typer.Typer(
    help="One prompt, a panel of LLMs in parallel, one fused answer.\n\n"
    "Models are written provider:model (openai:gpt-4o-mini, openrouter:meta-llama/llama-3.3-70b-"
    "instruct, ollama:qwen2.5-coder, local:qwen2.5-coder-1.5b). With no -m and no --preset, "
    "the default preset runs: embedded local models, no API key, nothing leaves the machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"fusion (modelfusion) {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """One prompt, a panel of LLMs in parallel, one fused answer."""


for module in (ask, local, eval, serve, traces, review, mcp, skills):
    module.register(app)


def main() -> None:
    app()
