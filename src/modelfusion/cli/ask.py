"""The `fusion` command. Parses flags, builds a Fusion, renders its events. No dispatch here."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel as RichPanel
from rich.table import Table
from rich.text import Text

from ..config import load_config
from ..errors import AllMembersFailed, BudgetExceeded, UsageError
from ..fusion import Fusion
from ..modes import MODES
from ..providers.base import warm
from ..text import printable
from ..types import FusionResult, Message
from .common import (
    EFFORT_HELP,
    ConfigOption,
    DbOption,
    OfflineOption,
    StorePromptsOption,
    cli_skills,
    cost_text,
    err,
    handle_errors,
    safe,
)
from .local import prepare as prepare_local_models
from .progress import LiveProgress

# What `fusion ask` reads from a pipe at most (as much as the server takes in a request body):
# a stream need have no end (`yes | fusion ask`), and what is read goes to every member and
# into the trace. A file named with --prompt-file has a size, so it is read whole.
MAX_STDIN_BYTES = 1 << 20


def _read_prompt(prompt: str | None, prompt_file: Path | None = None) -> str:
    if prompt_file is not None:
        if prompt not in (None, "-"):
            raise UsageError("give the prompt once: as an argument or with --prompt-file")
        prompt = _read_file(prompt_file)
    elif prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError('no prompt: fusion ask "your question" (or pipe it: echo ... | '
                             "fusion ask -)")
        prompt = _read_stdin()
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    return prompt


def _read_stdin() -> str:
    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise UsageError(f"stdin holds more than {MAX_STDIN_BYTES:,} bytes (1 MiB), the most "
                         "fusion ask reads from a pipe; for a longer prompt, save it to a "
                         "file and pass --prompt-file PATH")
    return _decode(data, "stdin")


def _read_file(path: Path) -> str:
    # A FIFO or a device (/dev/zero) has no size to read up to: regular files only.
    if not path.is_file():
        raise UsageError(f"--prompt-file {path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"--prompt-file {path}: {e.strerror}") from None
    return _decode(data, f"--prompt-file {path}")


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not UTF-8 text") from None


@handle_errors
def ask(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; '-' or omit to read stdin "
                                                 "(at most 1 MiB).")]
    = None,
    prompt_file: Annotated[Path | None, typer.Option(
        help="Read the prompt from this file (UTF-8) instead.")] = None,
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
    max_samples: Annotated[int | None, typer.Option(
        help="Adaptive compute: at most N candidates. The first listed model (the lead) "
        "answers first; more are asked only when the mode does not accept its answer "
        "(docs/adaptive.md).")] = None,
    effort: Annotated[str | None, typer.Option(
        help="Adaptive compute in words: " + EFFORT_HELP + ".")]
    = None,
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
    config: ConfigOption = None,
    offline: OfflineOption = False,
    db: DbOption = None,
    store_prompts: StorePromptsOption = True,
) -> None:
    """Ask the panel; print the fused answer (progress goes to stderr)."""
    text = _read_prompt(prompt, prompt_file)
    fusion = Fusion(
        model or None, judge, mode, preset=preset, config=config, offline=offline or None,
        system=system, skills=cli_skills(skill, skills_from_repo), temperature=temperature,
        max_tokens=max_tokens, timeout=timeout,
        deadline=deadline, quorum=quorum, rounds=rounds, seed=seed, max_cost=max_cost,
        max_total_tokens=max_total_tokens, max_samples=max_samples, effort=effort,
    )
    from ..traces.store import TraceStore  # SQLAlchemy loads only for commands that need it

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


async def _run(fusion: Fusion, text: str, *, live: bool) -> FusionResult:
    result: FusionResult | None = None
    async with fusion:
        # The SDK's import and each client's set-up happen here, not in the timed panel.
        plan = fusion.plan
        seats = [*plan.seats, plan.judge, *([plan.fallback_judge] if plan.fallback_judge else [])]
        warm(fusion.pool.get, dict.fromkeys(s.provider for s in seats))
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
            out.print(RichPanel(safe(body or ""), title=safe(m.model), title_align="left"))
    if out.is_terminal:  # links shown with their address: the answer is a model's text
        out.print(Markdown(printable(result.answer), hyperlinks=False))
    else:
        print(result.answer)  # piped: the answer exactly as it came
    for m in result.members:
        if not m.ok:
            err.print(Text.assemble(safe(f"{m.model} {m.status}: {m.reason}", "yellow"), " ",
                                    safe(m.error or "", "dim")))
    if result.checks is not None:  # verified mode: which checks each candidate passed
        for line in result.checks.lines():
            err.print(safe(line))
    ok = sum(m.ok for m in result.members)
    cost = cost_text(result.cost)
    judge = result.judge
    judge_note = judge.status + (f" ({judge.reason})" if judge.reason else "")
    spent = f"{result.compute.line()} · " if result.compute else ""
    err.print(safe(
        f"{result.mode} · {spent}{ok}/{len(result.members)} members ok · "
        f"judge {judge_note} · "
        f"{result.usage.total_tokens} tokens · {cost} · "
        f"{result.timings.total_ms / 1000:.1f}s"
        + (f" · trace {trace_id[:8]}" if trace_id else ""), "dim"))


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
        where = "(in-process)" if p.kind == "local" else _masked(p.base_url) or "(SDK default)"
        providers.add_row(*map(safe, (p.name, p.kind, where, p.key_status())))
    out.print(providers)
    presets = Table(title="presets", title_justify="left")
    for col in ("name", "models", "judge", "mode"):
        presets.add_column(col)
    default = cfg.default()
    for preset in {**cfg.presets, default.name: default}.values():
        name = preset.name + (" (default)" if preset.name == default.name else "")
        presets.add_row(*map(safe, (name, ", ".join(preset.models),
                                    preset.judge or "(first member)", preset.mode)))
    out.print(presets)
    if cfg.source:
        out.print(safe(f"config: {cfg.source}", "dim"))
    from .local import models_table

    out.print(models_table())


def _masked(url: str | None) -> str | None:
    """A base_url without the password it may carry (https://user:secret@host)."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url) if url else url


def register(app: typer.Typer) -> None:
    app.command()(ask)
    app.command()(models)
