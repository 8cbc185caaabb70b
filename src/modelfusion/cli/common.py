"""What every `fusion` command shares: the error console, the exit-code mapping, --skill,
and `safe`, the one way text from outside reaches the terminal."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from ..errors import FusionError, UsageError
from ..options import EFFORT_SAMPLES
from ..skills import Skill, repo_instructions
from ..text import printable

err = Console(stderr=True)
# --effort's levels for `fusion ask` and `fusion eval`, from the one table that says them.
EFFORT_HELP = ", ".join(f"{level} ({n} samples at most)" for level, n in EFFORT_SAMPLES.items()
                        ) + ", or off (every member at once: the default)"
F = TypeVar("F", bound=Callable[..., Any])

# Options several commands take, declared once.
ConfigOption = Annotated[str | None, typer.Option(
    help="Config file (else $FUSION_CONFIG, ./fusion.toml, user config dir).")]
OfflineOption = Annotated[bool, typer.Option(help="Refuse every non-local provider.")]
DbOption = Annotated[str | None, typer.Option(
    "--db", help="Trace store URL (default $FUSION_TRACES_URL, else traces.db in the user "
    "data dir).")]
StorePromptsOption = Annotated[bool, typer.Option(
    "--store-prompts/--no-store-prompts",
    help="Keep the prompt in the trace (answers and stats are kept either way).")]


def safe(text: object, style: str = "") -> Text:
    """Text the CLI did not write itself (a prompt, a model's name or answer, an upstream
    error, a judge's analysis, a file name), ready for rich: a `Text`, so never read as
    markup (`[/red]` cannot crash a command, `[link=…]` plants no link), and without control
    characters (ESC sequences). Wherever such text is printed, a table cell, a panel or a
    line, it goes through here; a rich str would be parsed as markup."""
    return Text(printable(str(text)), style=style)


def handle_errors(fn: F) -> F:
    """A user's mistake is one line and exit 2; a failed fusion is one line and exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            # safe: messages quote what was given ('modelfusion[local]', a model's name)
            err.print(Text.assemble(("error:", "red"), " ", safe(e)))
            raise typer.Exit(2) from None
        except FusionError as e:  # its message quotes upstream errors
            err.print(Text.assemble((f"fusion failed ({e.code}):", "red"), " ", safe(e)))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def cli_skills(names: list[str] | None, from_repo: bool) -> tuple[str | Skill, ...] | None:
    """--skill NAME... and --skills-from-repo as the `skills` option (None: not set)."""
    skills: list[str | Skill] = list(names or [])
    if from_repo:
        found = repo_instructions()
        if found is None:
            raise UsageError("--skills-from-repo: no CLAUDE.md or AGENTS.md from here up to "
                             "the repository root")
        skills.append(found)
    return tuple(skills) or None


def cost_text(cost: float | None, unknown: str = "cost unknown") -> str:
    """USD for a person: `$0` for free calls (embedded models), not `$0.00000`."""
    if cost is None:
        return unknown
    if cost == 0:
        return "$0"
    return f"${cost:.5f}" if cost < 0.01 else f"${cost:.4f}"
