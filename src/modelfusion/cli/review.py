"""`fusion review`: a multi-model first-pass code review of a diff, for terminals and CI."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..errors import UsageError
from ..files import atomic_write
from ..review import report
from ..review.diff import (
    DEFAULT_CHUNK_CHARS,
    DEFAULT_MAX_CHUNKS,
    DEFAULT_MAX_FILE_CHARS,
    bounded,
    parse_diff,
)
from ..review.findings import SEVERITIES, Finding, at_or_above
from ..review.runner import (
    PartReview,
    merged,
    panel_line,
    read_diff,
    review_chunks,
    review_fusion,
    summary,
)
from ..types import FusionEvent
from .common import OfflineOption, cli_skills, err, handle_errors, safe


def register(app: typer.Typer) -> None:

    @app.command()
    @handle_errors
    def review(
        base: Annotated[str | None, typer.Option(
            help="Review what this branch adds since REF: git diff REF...HEAD.")] = None,
        diff: Annotated[str | None, typer.Option(
            "--diff", help="Review a unified diff file ('-' reads stdin).")] = None,
        staged: Annotated[bool, typer.Option(help="Review the staged changes.")] = False,
        model: Annotated[list[str] | None, typer.Option(
            "-m", "--model", help="Panel member provider:model; repeat it. Default: the "
            "embedded local panel (nothing leaves the machine).")] = None,
        judge: Annotated[str | None, typer.Option(help="Judge provider:model.")] = None,
        preset: Annotated[str | None, typer.Option(help="A preset from fusion.toml.")] = None,
        skill: Annotated[list[str] | None, typer.Option(
            "--skill", help="Add a skills pack to every reviewer (repeatable).")] = None,
        skills_from_repo: Annotated[bool, typer.Option(
            help="Add the repo's CLAUDE.md / AGENTS.md rules.")] = False,
        fmt: Annotated[str, typer.Option(
            "--format", help=f"Output: {', '.join(report.FORMATS)}.")] = "table",
        output: Annotated[list[str] | None, typer.Option(
            help="Write the report to this file (atomically) instead of stdout; repeatable. "
            "A .sarif, .md or .json name picks its format, else --format.")] = None,
        fail_on: Annotated[str | None, typer.Option(
            help=f"Exit 1 if a finding at or above this severity is found: "
            f"{', '.join(SEVERITIES)}.")] = None,
        min_agreement: Annotated[int, typer.Option(
            help="Only findings that at least K members reported.")] = 1,
        chunk_chars: Annotated[int, typer.Option(
            help="Size of one review part, in characters of diff.")] = DEFAULT_CHUNK_CHARS,
        max_chunks: Annotated[int, typer.Option(
            help="At most this many parts (one fusion each); the files past it are left "
            "out and named.")] = DEFAULT_MAX_CHUNKS,
        max_file_chars: Annotated[int, typer.Option(
            help="Leave out (and name) a file whose diff is larger than this, in "
            "characters.")] = DEFAULT_MAX_FILE_CHARS,
        max_tokens: Annotated[int | None, typer.Option(help="Max tokens per review.")] = None,
        timeout: Annotated[float | None, typer.Option(help="Seconds per member.")] = None,
        deadline: Annotated[float | None, typer.Option(
            help="Seconds per part of the diff.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed for shuffle and sampling.")]
        = None,
        config: Annotated[str | None, typer.Option(help="Config file.")] = None,
        offline: OfflineOption = False,
    ) -> None:
        """Review a diff with every member independently; print the merged findings."""
        if fmt not in report.FORMATS:
            raise UsageError(f"--format {fmt!r}: choose one of {', '.join(report.FORMATS)}")
        if fail_on is not None and fail_on not in SEVERITIES:
            raise UsageError(f"--fail-on {fail_on!r}: choose one of {', '.join(SEVERITIES)}")
        if min_agreement < 1:
            raise UsageError("--min-agreement must be at least 1")
        fusion = review_fusion(model, judge, preset=preset, config=config,
                               offline=offline or None, deadline=deadline,
                               skills=cli_skills(skill, skills_from_repo),
                               max_tokens=max_tokens, timeout=timeout, seed=seed)
        text = read_diff(base=base, diff=diff, staged=staged, stdin_text=_stdin)
        chunks, left_out = bounded(parse_diff(text), chunk_chars, max_chunks=max_chunks,
                                   max_file_chars=max_file_chars)
        for item in left_out:
            err.print(safe(f"Left out {item.path}: {item.reason}.", "yellow"))
        if not chunks:
            err.print("Nothing to review: the diff is empty (or has only binary files and "
                      "deletions)." if not left_out else
                      "Nothing left to review within the limits; raise --max-file-chars "
                      "or --max-chunks to review the files above.", highlight=False)
            _write([], {"models": "no model", "chunks": 0, "failed": 0,
                        "left_out": [i.to_dict() for i in left_out]}, fmt, output or [])
            return
        from .local import prepare

        prepare(fusion, err)
        files = len({c.path for c in chunks})
        err.print(safe(f"Reviewing {files} file(s) in {len(chunks)} part(s) with "
                       f"{panel_line(fusion)}…"))

        def progress(i: int, part: PartReview) -> None:
            name = part.chunk.path + (f" ({part.chunk.part}/{part.chunk.parts})"
                                      if part.chunk.parts > 1 else "")
            state = (f"failed: {part.error}" if part.error
                     else f"{len(part.findings)} finding(s)")
            # the file name is the diff's, the error an upstream's
            err.print(safe(f"  [{i + 1}/{len(chunks)}] {name}: {state} ({part.seconds:.1f} s)"))

        def activity(i: int, event: FusionEvent) -> None:
            # Parts take minutes on a CPU: say what is happening inside each.
            if event.type in ("member_done", "member_failed") and event.member_result:
                m = event.member_result
                state = "reviewed" if m.ok else f"failed ({m.reason})"
                err.print(safe(f"  [{i + 1}/{len(chunks)}] {m.model} {state} in "
                               f"{m.latency_ms / 1000:.1f} s", "dim"))
            elif event.type == "judge_started":
                err.print(safe(f"  [{i + 1}/{len(chunks)}] judge {event.model} merging "
                               "findings", "dim"))

        parts = asyncio.run(review_chunks(fusion, chunks, progress, activity))
        findings = merged(parts, min_agreement)
        _write(findings, summary(fusion, parts, left_out), fmt, output or [])
        if left_out:
            err.print(safe(f"{len(left_out)} file(s) left out of the review (see above); "
                           "raise --max-chunks or --max-file-chars to include them.",
                           "yellow"))

        failed = [p for p in parts if p.error]
        if failed:
            err.print(f"[red]{len(failed)} of {len(parts)} part(s) could not be reviewed[/red] "
                      "(every member failed); the review is incomplete.", highlight=False)
            raise typer.Exit(1)
        if fail_on and (hits := at_or_above(findings, fail_on)):
            err.print(f"{len(hits)} finding(s) at or above {fail_on} (--fail-on {fail_on}).",
                      highlight=False)
            raise typer.Exit(1)


def _stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("--diff -: pipe a diff in (git diff | fusion review --diff -)")
    return sys.stdin.read()


SUFFIX_FORMATS = {".sarif": "sarif", ".md": "markdown", ".json": "json"}


def _write(findings: list[Finding], summary: dict[str, Any], fmt: str,
           outputs: list[str]) -> None:
    if not outputs:
        if fmt == "table":
            report.table(findings, Console())  # rich draws it for the terminal or the pipe
        else:
            sys.stdout.write(_render(findings, summary, fmt))
    for output in outputs:
        path = Path(output)
        atomic_write(path, _render(findings, summary,
                                   SUFFIX_FORMATS.get(path.suffix.lower(), fmt)))


def _render(findings: list[Finding], summary: dict[str, Any], fmt: str) -> str:
    if fmt == "markdown":
        return report.markdown(findings, summary)
    if fmt == "json":
        return report.as_json(findings, summary)
    if fmt == "sarif":
        return report.sarif(findings)
    buffer = io.StringIO()
    report.table(findings, Console(file=buffer, width=120, no_color=True))
    return buffer.getvalue()


