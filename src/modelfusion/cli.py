"""The `fusion` command. Parses flags, builds a Fusion, renders its events. No dispatch here."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel as RichPanel
from rich.table import Table

from .config import load_config
from .errors import AllMembersFailed, BudgetExceeded, FusionError, UsageError
from .fusion import Fusion
from .local_cli import prepare as prepare_local_models
from .modes import MODES
from .progress import LiveProgress
from .skills import Skill, repo_instructions
from .types import FusionResult, Message

app = typer.Typer(
    help="One prompt, a panel of LLMs in parallel, one fused answer.\n\n"
    "Models are written provider:model (openai:gpt-4o-mini, openrouter:meta-llama/llama-3.3-70b-"
    "instruct, ollama:qwen2.5-coder, local:qwen2.5-coder-1.5b). With no -m and no --preset, "
    "the default preset runs: embedded local models, no API key, nothing leaves the machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """A user's mistake is one line and exit 2; a failed fusion is one line and exit 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            # escape: messages carry text like 'modelfusion[local]' that is not markup
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        except FusionError as e:
            err.print(f"[red]fusion failed ({e.code}):[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _read_prompt(prompt: str | None) -> str:
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError('no prompt: fusion ask "your question" (or pipe it: echo ... | '
                             "fusion ask -)")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return prompt


@app.command()
@handle_errors
def ask(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; '-' or omit to read stdin.")]
    = None,
    model: Annotated[list[str] | None, typer.Option(
        "-m", "--model", help="Panel member provider:model; repeat it. model*3 samples 3 times.")]
    = None,
    judge: Annotated[str | None, typer.Option(help="Judge provider:model (default: the "
                                              "preset's judge, else the first member).")] = None,
    mode: Annotated[str | None, typer.Option(help=f"How to fuse: {', '.join(sorted(MODES))}.")]
    = None,
    preset: Annotated[str | None, typer.Option(help="A named preset from fusion.toml.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt for every member.")] = None,
    skill: Annotated[list[str] | None, typer.Option(
        "--skill", help="Add a skills pack (e.g. coding) to every member's system prompt and "
        "its rubric to the judge; repeatable.")] = None,
    skills_from_repo: Annotated[bool, typer.Option(
        help="Add the CLAUDE.md / AGENTS.md rules found from here up to the repo root.")]
    = False,
    temperature: Annotated[float | None, typer.Option(help="Members' temperature.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Max tokens per member answer.")]
    = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per member (retries "
                                                  "included).")] = None,
    deadline: Annotated[float | None, typer.Option(help="Seconds for the whole fusion.")]
    = None,
    quorum: Annotated[int | None, typer.Option(help="Stop waiting once K members answered.")]
    = None,
    rounds: Annotated[int | None, typer.Option(help="Debate rounds (mode debate).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the shuffle and sampling.")]
    = None,
    max_cost: Annotated[float | None, typer.Option(help="USD limit for the whole fusion: "
                                                   "refused up front if the worst case "
                                                   "exceeds it, stopped when crossed.")] = None,
    max_total_tokens: Annotated[int | None, typer.Option(help="Token limit for the whole "
                                                         "fusion (same rules).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")]
    = False,
    show: Annotated[bool, typer.Option(help="Print every member's answer too.")] = False,
    config: Annotated[str | None, typer.Option(help="Config file (else $FUSION_CONFIG, "
                                               "./fusion.toml, user config dir).")] = None,
    offline: Annotated[bool, typer.Option(help="Refuse every non-local provider.")] = False,
    db: Annotated[str | None, typer.Option("--db", help="Trace store URL (default "
                                           "$FUSION_TRACES_URL, else traces.db in the user "
                                           "data dir).")] = None,
    store_prompts: Annotated[bool, typer.Option(
        "--store-prompts/--no-store-prompts",
        help="Keep the prompt in the trace (answers and stats are kept either way).")] = True,
) -> None:
    """Ask the panel; print the fused answer (progress goes to stderr)."""
    text = _read_prompt(prompt)
    fusion = Fusion(
        model or None, judge, mode, preset=preset, config=config, offline=offline or None,
        system=system, skills=cli_skills(skill, skills_from_repo), temperature=temperature,
        max_tokens=max_tokens, timeout=timeout,
        deadline=deadline, quorum=quorum, rounds=rounds, seed=seed, max_cost=max_cost,
        max_total_tokens=max_total_tokens,
    )
    from .traces import TraceStore  # SQLAlchemy loads only for commands that need it

    system_prompt = fusion.plan.options.system
    messages = [*([Message("system", system_prompt)] if system_prompt else []),
                Message("user", text)]
    with TraceStore.open(db, store_prompts=store_prompts) as store:  # bad --db: exit 2 now
        prepare_local_models(fusion, err)
        try:
            result = asyncio.run(_run(fusion, text, live=err.is_terminal and not as_json))
        except (AllMembersFailed, BudgetExceeded) as e:
            store.record(None, messages=messages, source="cli", preset=fusion.plan.preset,
                         error=e, mode=fusion.plan.mode)
            if as_json:
                print(json.dumps({"error": {"code": e.code, "message": str(e),
                                            "members": [m.to_dict() for m in e.members]}}))
            raise
        trace_id = store.record(result, messages=messages, source="cli",
                                preset=fusion.plan.preset)
    _print_result(result, as_json=as_json, show=show, trace_id=trace_id)


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


async def _run(fusion: Fusion, text: str, *, live: bool) -> FusionResult:
    result: FusionResult | None = None
    async with fusion:
        if live:
            with LiveProgress(err) as progress:
                async for event in fusion.stream(text):
                    progress.handle(event)
                    result = event.result or result
        else:
            async for event in fusion.stream(text):
                result = event.result or result
    assert result is not None
    return result


def _print_result(result: FusionResult, *, as_json: bool, show: bool,
                  trace_id: str | None = None) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    out = Console()
    if show:
        for m in result.members:
            body = m.content if m.ok else f"[{m.status}: {m.reason}] {m.error or ''}"
            out.print(RichPanel(body or "", title=m.model, title_align="left"))
    if out.is_terminal:
        out.print(Markdown(result.answer))
    else:
        print(result.answer)
    for m in result.members:
        if not m.ok:
            err.print(f"[yellow]{m.model} {m.status}: {m.reason}[/yellow] [dim]{m.error}[/dim]",
                      highlight=False)
    if result.checks is not None:  # verified mode: which checks each candidate passed
        for line in result.checks.lines():
            err.print(line, markup=False, highlight=False)  # model output: never markup
    ok = sum(m.ok for m in result.members)
    cost = f"${result.cost:.5f}" if result.cost is not None else "cost unknown"
    judge = result.judge
    judge_note = judge.status + (f" ({judge.reason})" if judge.reason else "")
    err.print(
        f"[dim]{result.mode} · {ok}/{len(result.members)} members ok · judge {judge_note} · "
        f"{result.usage.total_tokens} tokens · {cost} · "
        f"{result.timings.total_ms / 1000:.1f}s"
        + (f" · trace {trace_id[:8]}" if trace_id else "") + "[/dim]",
        highlight=False,
    )


@app.command()
@handle_errors
def models(
    config: Annotated[str | None, typer.Option(help="Config file.")] = None,
) -> None:
    """List providers (and whether each key is set), presets, and local models."""
    cfg = load_config(config)
    out = Console()
    providers = Table(title="providers", title_justify="left")
    for col in ("name", "kind", "base url", "key"):
        providers.add_column(col)
    for p in cfg.providers.values():
        providers.add_row(p.name, p.kind, p.base_url or "(SDK default)", p.key_status())
    out.print(providers)
    presets = Table(title="presets", title_justify="left")
    for col in ("name", "models", "judge", "mode"):
        presets.add_column(col)
    default = cfg.default()
    for preset in {**cfg.presets, default.name: default}.values():
        name = preset.name + (" (default)" if preset.name == default.name else "")
        presets.add_row(name, ", ".join(preset.models), preset.judge or "(first member)",
                        preset.mode)
    out.print(presets)
    if cfg.source:
        out.print(f"[dim]config: {cfg.source}[/dim]")
    from .local_cli import models_table

    out.print(models_table())


from .evals.cli import register as register_eval_command  # noqa: E402
from .local_cli import register as register_local_commands  # noqa: E402
from .review.cli import register as register_review_command  # noqa: E402
from .server.serve_cli import register as register_serve_command  # noqa: E402
from .trace_cli import register as register_trace_commands  # noqa: E402

register_local_commands(app)
register_eval_command(app)
register_serve_command(app)
register_trace_commands(app)
register_review_command(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
