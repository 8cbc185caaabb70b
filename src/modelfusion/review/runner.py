"""Run a review: get the diff, cut it into chunks, one fusion (mode `review`) per chunk.

Every model call goes through `Fusion`; this module only feeds it chunks and collects the
merged findings each fusion's review mode returns.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_LOCAL_PRESET, Config
from ..errors import FusionError, UsageError
from ..fusion import Fusion
from ..types import FusionEvent, FusionResult
from .diff import Chunk, LeftOut
from .findings import (
    MEMBER_SCHEMA,
    Finding,
    ReviewAnalysis,
    anchor,
    parse_findings,
    sort_findings,
)

REVIEW_SYSTEM = """You are a careful code reviewer. You get part of a diff. Each line shows \
its line number in the new file (removed lines have none), then "+" for an added line, "-" \
for a removed line or " " for unchanged context.

Report only real problems that the change introduces: bugs (wrong logic, off-by-one, wrong \
comparison, wrong arguments, missing return, unhandled cases), security holes, broken error \
handling, performance traps. No praise, no summaries, no style nits. Report each problem \
once, on the line where it is. If the change is correct, report no findings.

Answer with JSON only:
{"findings": [{"file": "<path>", "line": <line number>, "severity": "info|low|medium|high|\
critical", "category": "bug|security|performance|error-handling|maintainability|style|test|\
other", "message": "<what is wrong and why>", "suggestion": "<how to fix it>"}]}
With no problems: {"findings": []}"""

# Seconds per part: three local members and a judge on a busy CPU.
REVIEW_DEADLINE = 600.0
# Chunks reviewed at once. Local members queue on their provider anyway; remote panels gain.
PARALLEL_CHUNKS = 4


@dataclass(slots=True)
class PartReview:
    chunk: Chunk
    result: FusionResult | None = None
    error: FusionError | None = None
    seconds: float = 0.0

    @property
    def findings(self) -> list[Finding]:
        if self.result is None or not isinstance(self.result.analysis, ReviewAnalysis):
            return []
        return list(self.result.analysis.findings)

    def member_findings(self) -> dict[str, list[Finding] | None]:
        """Each member's own findings (None: its reply was unreadable) — the solo view."""
        if self.result is None:
            return {}
        lines = [ln for h in self.chunk.hunks for ln in h.lines]
        out: dict[str, list[Finding] | None] = {}
        for m in self.result.members:
            found = parse_findings(m.content or "", files=[self.chunk.path], member=m.model) \
                if m.ok else None
            out[m.model] = None if found is None else [anchor(f, lines) for f in found]
        return out


def review_fusion(models: Sequence[str] | None, judge: str | None, *, preset: str | None,
                  config: Config | str | None, offline: bool | None = None,
                  deadline: float | None = None, **options: Any) -> Fusion:
    """The review's Fusion, for `fusion review` and the MCP `review` tool alike: mode
    `review`, the reviewer's prompt and schema, a deadline per part. With no models and no
    preset the panel is the embedded one, whatever default_preset a config names: code
    leaves the machine only when the user names a remote model or preset."""
    return Fusion(models or None, judge, "review", preset=preset,
                  default_preset=DEFAULT_LOCAL_PRESET.name, config=config, offline=offline,
                  system=REVIEW_SYSTEM, response_schema=MEMBER_SCHEMA,
                  deadline=deadline or REVIEW_DEADLINE, **options)


def panel_line(fusion: Fusion) -> str:
    """`2 model(s) (a, b), judge c`: who reviews, for a person."""
    seats = [s.label for s in fusion.plan.seats]
    return f"{len(seats)} model(s) ({', '.join(seats)}), judge {fusion.plan.judge.label}"


def merged(parts: list[PartReview], min_agreement: int = 1) -> list[Finding]:
    """Every part's findings that at least `min_agreement` members reported, worst first."""
    return sort_findings([f for p in parts for f in p.findings if f.agreed_by >= min_agreement])


def summary(fusion: Fusion, parts: list[PartReview], left_out: list[LeftOut]) -> dict[str, Any]:
    """The report's summary: who reviewed, how many parts, which failed, what was left out."""
    judged = [p.result.judge.status for p in parts if p.result]
    return {"models": panel_line(fusion), "chunks": len(parts),
            "failed": sum(1 for p in parts if p.error),
            "judge": {s: judged.count(s) for s in sorted(set(judged))},
            "left_out": [i.to_dict() for i in left_out]}


def prompt(chunk: Chunk) -> str:
    return "Review this change.\n\n" + chunk.render()


async def review_chunks(fusion: Fusion, chunks: list[Chunk],
                        on_part: Callable[[int, PartReview], None] | None = None,
                        on_event: Callable[[int, FusionEvent], None] | None = None
                        ) -> list[PartReview]:
    """Review every chunk (a few at a time); a part whose members all failed keeps its error.

    `on_event(i, event)` sees each part's fusion events (members done, judge started) for
    progress; `on_part(i, part)` is called as each part finishes.
    """
    gate = asyncio.Semaphore(PARALLEL_CHUNKS)
    loop = asyncio.get_running_loop()

    async def one(i: int, chunk: Chunk) -> PartReview:
        async with gate:
            part = PartReview(chunk)
            started = loop.time()
            try:
                async for event in fusion.stream(prompt(chunk)):
                    if on_event:
                        on_event(i, event)
                    part.result = event.result or part.result
            except FusionError as e:  # a failed part is reported, the others still run
                if isinstance(e, UsageError):
                    raise
                part.error = e
            part.seconds = loop.time() - started
            if on_part:
                on_part(i, part)
            return part

    async with fusion:
        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(chunks))))


# ---- where the diff comes from ----


def read_diff(*, base: str | None, diff: str | None, staged: bool,
              stdin_text: Callable[[], str]) -> str:
    chosen = sum(x for x in (base is not None, diff is not None, staged))
    if chosen > 1:
        raise UsageError("pass only one of --base REF, --diff FILE, --staged")
    if diff is not None:
        if diff == "-":
            return stdin_text()
        path = Path(diff)
        if not path.is_file():
            raise UsageError(f"--diff {diff}: no such file")
        return path.read_text(encoding="utf-8", errors="replace")
    _git("rev-parse", "--git-dir", what="not inside a git repository; run fusion review in "
         "one, or pass --diff FILE (or - for stdin)")
    if staged:
        return _git("diff", "--cached", what="git diff --cached failed")
    if base is not None:
        _git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}",
             what=f"--base {base}: no such commit, branch or tag in this repository "
                  "(in CI, fetch it first: actions/checkout with fetch-depth: 0)")
        return _git("diff", f"{base}...HEAD", what=f"git diff {base}...HEAD failed")
    # Nothing named: the uncommitted changes (staged and not) against HEAD.
    if _git_ok("rev-parse", "--verify", "--quiet", "HEAD"):
        return _git("diff", "HEAD", what="git diff HEAD failed")
    return _git("diff", "--cached", what="git diff --cached failed")  # no commit yet


def _git_args(*args: str) -> list[str]:
    return ["git", "-c", "core.quotepath=off", *args[:1],
            *(["--no-color", "--no-ext-diff"] if args[0] == "diff" else []), *args[1:]]


def _git(*args: str, what: str) -> str:
    try:
        proc = subprocess.run(_git_args(*args), capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=120)
    except FileNotFoundError:
        raise UsageError("git is not installed; pass --diff FILE (or - for stdin)") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise UsageError(what + (f" ({detail[-1]})" if detail else ""))
    return proc.stdout


def _git_ok(*args: str) -> bool:
    return subprocess.run(_git_args(*args), capture_output=True).returncode == 0
