"""verified: run the candidates' code against the checks visible in the request; candidates
that pass win, and the judge only breaks ties.

The decision rule (docs/verified.md):

1. The visible checks come from the request's user messages only (`checks.find_checks`):
   doctest examples, `assert` statements, `f(x) == y` example lines. Nothing else is read —
   for HumanEval that means the docstring's examples, never the hidden tests.
2. Every candidate's code (`code.extract_code`) runs against them in the sandbox, two at a
   time per process (all fusions together), at most 10 s each. An answer with no code
   fails every check; so does code that crashes or hangs.
3. Behaviour (CodeT / MBR-exec / AlphaCode style): every candidate also runs on inputs
   that carry no expected value — the request's own example calls without one (probes)
   and simple variations of every example call's arguments (generated, `variations`).
   Candidates with exactly the same outputs on everything form a behaviour group.
4. - exactly one candidate passes every check: it is the answer; the judge is skipped;
   - several pass: their largest behaviour group wins, and in it the first-listed
     member; the judge is skipped. Only when the largest groups tie does the judge pick,
     among one candidate of each (best-of's judging, told that they all passed); with no
     inputs beyond the checks, the judge picks among all passers. If the judge fails: the
     passer with the highest agreement (ties: the first-listed member);
   - none pass: the most checks passed wins, then the highest agreement, then the
     first-listed member; no judge (it cannot run the code, and on the development set it
     read its way to a right answer on none of these);
   - no checks found, but example calls to run: the largest behaviour group wins as
     above; on a tie the judge picks among one of each tied group (among all when no two
     candidates agree). With nothing at all to run, the judge picks among all; if it
     fails, `consensus_pick`.
   A judge pool of one candidate, or of identical answers, skips the judge.
5. Adaptive compute (`max_samples`, docs/adaptive.md): the lead runs alone first and its
   answer stands when its code passes every visible check (there must be at least one), or
   when the request has nothing to run at all; otherwise the rest of the budget runs and
   this rule applies to every candidate. Stage 2's samples of the lead model are shown the
   lead's answer and the checks it failed (`lead_feedback`), and revise it.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from ..accounts import CandidateChecks, CheckOutcome, ChecksReport
from ..code.checks import INPUT_KINDS, Check, CheckSpec, find_checks
from ..code.extract import defines, extract_code
from ..code.harness import CheckRun, run_checks
from ..code.variations import with_generated
from ..judge import consensus_pick, nothing_to_judge
from ..types import MemberResult
from .base import Acceptance, ModeContext, ModeOutcome, register
from .best_of import pick_best

CONCURRENCY = 2  # sandboxes at once in this process, all fusions together
TIMEOUT_S = 10.0  # per candidate: every check, plus loading its code
MEMORY_MB = 512
_MIN_RUN_S = 0.5  # less fusion deadline left than this: the candidate is not run


async def _spec(ctx: ModeContext) -> CheckSpec:
    """The request's visible checks and generated inputs, found once per fusion (kept in
    `ctx.memo`)."""
    if "verified.spec" not in ctx.memo:  # CPU work: off the loop
        ctx.memo["verified.spec"] = await asyncio.to_thread(
            lambda: with_generated(find_checks(ctx.messages)))
    spec: CheckSpec = ctx.memo["verified.spec"]
    return spec


async def lead_passes_checks(ctx: ModeContext) -> str | None:
    """Adaptive compute's stage 1 (docs/adaptive.md): the lead's answer stands when its code
    passes every visible check in the request, and there is at least one — or when the
    request gives nothing to run at all (no checks, no example calls): then more samples
    could only be told apart by reading them, which is what a small judge does worse than
    the lead alone (docs/results.md)."""
    spec = await _spec(ctx)
    if ctx.lead is None:
        return None
    if not spec.checks:
        return "nothing_to_verify"
    if not spec.total:
        return None
    report = await _check_all(ctx, spec, [ctx.lead])
    return "lead_passed_checks" if report.passing == [0] else None


FEEDBACK_CHECKS = 4  # failing checks shown to the samples that revise the lead's answer


async def lead_feedback(ctx: ModeContext) -> str | None:
    """Why the lead's answer was not taken, for stage 2's samples that revise it: the
    visible checks its code failed, with what the code did (execution feedback, as in
    Self-Debugging, arXiv 2304.05128). None when it failed none (no checks at all)."""
    spec = await _spec(ctx)
    if ctx.lead is None or not spec.total:
        return None
    report = await _check_all(ctx, spec, [ctx.lead])
    mine = report.candidates[0]
    if mine.passed == mine.total:
        return None
    if mine.status != "ran":  # no code, a timeout, a crash: no check result to show
        found = f"Your code could not be checked against the request's examples: {mine.error}."
    else:
        failed = [r for r in mine.results if not r.ok]
        lines = [f"- `{r.check}`: expected `{r.expected}`, got `{r.actual}`"
                 if r.expected is not None else f"- `{r.check}` failed: {r.actual}"
                 for r in failed[:FEEDBACK_CHECKS]]
        if len(failed) > FEEDBACK_CHECKS:
            lines.append(f"- and {len(failed) - FEEDBACK_CHECKS} more")
        if mine.error:
            lines.insert(0, f"- loading it: {mine.error}")
        found = (f"Your code was run on the request's {mine.total} examples and failed "
                 f"{len(failed)}:\n" + "\n".join(lines))
    return (f"{found}\n\nFind the mistake and fix it, so that every example in the request "
            "gives its expected result. Reply with the complete corrected code in a single "
            "```python code block.")


# Even one candidate is run against the checks: the result says which it passed.
@register("verified", shortcut=False,
          accept=Acceptance(first=1, test=lead_passes_checks, feedback=lead_feedback))
async def verified(ctx: ModeContext) -> ModeOutcome:
    spec = await _spec(ctx)
    report = await _check_all(ctx, spec)
    by_index = {m.index: m for m in ctx.candidates}
    found = ", ".join(f"{n} {kind}" for kind, n in report.found.items()
                      if n and kind not in INPUT_KINDS)
    if report.rule == "one_passed":
        return _chosen(ctx, by_index[report.passing[0]], "one_candidate_passed_checks",
                       f"the only candidate passing all {spec.total} visible checks ({found})",
                       report)
    if report.rule == "none_passed":
        # What the code did decides, not a reading of it: on the development set the small
        # judge chose right on none of these, at the cost of its longest prompts.
        best = max(c.passed for c in report.candidates)
        return _chosen(ctx, _fallback_order(list(ctx.candidates), report)[0],
                       nothing_to_judge(ctx.candidates) or "no_candidate_passed_checks",
                       f"no candidate passed all {spec.total} visible checks (best {best}/"
                       f"{spec.total}): chose by checks passed, then behaviour agreement, "
                       "then member order", report)
    if report.rule == "several_passed":
        pool = [by_index[i] for i in report.passing]
        head = f"{len(pool)} candidates passed all {spec.total} visible checks ({found})"
        evidence = (f"We ran every candidate's code against the {spec.total} checks visible "
                    "in the user's request: each candidate below passed all of them. Choose "
                    "on what those checks do not cover: other inputs, edge cases, clarity.")
    else:
        pool = list(ctx.candidates)
        head = ("no visible checks found in the request (doctest examples, asserts, "
                "`f(x) == y` lines)")
        evidence = ""
        if not spec.inputs:
            return await _judge(ctx, pool, report, spec, f"{head}: nothing to run", evidence)
    groups = _groups(pool, report)
    if spec.inputs and groups and (len(groups) == 1 or len(groups[0]) > len(groups[1])):
        alike = (f"{len(groups[0])} of {len(pool)} behave alike" if len(groups[0]) > 1
                 else "the only one whose code ran")
        # The largest group behaving alike; in it, the first listed.
        return _chosen(ctx, groups[0][0], "behaviour_majority",
                       f"{head}; {alike} on {spec.inputs} more inputs: chose the first "
                       "listed of them", report)
    if spec.inputs and groups:
        # Behaviour cannot separate the largest groups: the judge picks one of them, shown
        # one candidate per group (the first listed).
        top = [g[0] for g in groups if len(g) == len(groups[0])]
        if len(groups[0]) > 1:
            head += (f"; {len(top)} groups of {len(groups[0])} behave alike on "
                     f"{spec.inputs} more inputs: the judge saw one of each")
            pool = top
        else:
            head += f"; no two candidates behave alike on {spec.inputs} more inputs"
            pool = top if report.rule == "several_passed" else pool
    return await _judge(ctx, pool, report, spec, head, evidence)


async def _judge(ctx: ModeContext, pool: list[MemberResult], report: ChecksReport,
                 spec: CheckSpec, head: str, evidence: str) -> ModeOutcome:
    ranked = _fallback_order(pool, report)
    skip = nothing_to_judge(pool)
    if skip:
        return _chosen(ctx, ranked[0], skip,
                       f"{head}; judge skipped ({skip.replace('_', ' ')})", report)
    labeled = ctx.labeled(pool)
    ctx.judge.show(labeled)  # the pool may be a subset: say which the judge saw
    picked = await pick_best(ctx, labeled, evidence=evidence)
    if picked is None:
        by_text = report.rule == "no_checks" and not spec.inputs
        winner = consensus_pick(pool) if by_text else ranked[0]
        why = ("the candidate whose text agrees most with the others" if by_text
               else "by checks passed, then behaviour agreement, then member order")
        reason = f"{head}; judge failed, chose {why}"
    else:
        winner, judge_reason = picked
        reason = f"{head}; judge: {judge_reason}"
    return ModeOutcome.picked(winner, reason=reason, checks=report)


def _chosen(ctx: ModeContext, winner: MemberResult, why: str, reason: str,
            report: ChecksReport) -> ModeOutcome:
    """The answer without a judge call: `why` is the judge's skip reason."""
    ctx.judge.skip(why)
    ctx.judge.show([])
    return ModeOutcome.picked(winner, reason=reason, checks=report)


def _groups(pool: list[MemberResult], report: ChecksReport) -> list[list[MemberResult]]:
    """The pool's candidates by behaviour group (same outputs on every input), largest
    first, ties in member order; candidates that cannot be compared are left out."""
    group = {c.member: c.group for c in report.candidates}
    groups: dict[int, list[MemberResult]] = {}
    for member in pool:
        key = group.get(member.index)
        if key is not None:
            groups.setdefault(key, []).append(member)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0].index))


def _fallback_order(pool: list[MemberResult], report: ChecksReport) -> list[MemberResult]:
    """Most checks passed, then highest behaviour agreement, then the first-listed."""
    stats = {c.member: c for c in report.candidates}
    return sorted(pool, key=lambda m: (-stats[m.index].passed,
                                       -(stats[m.index].agreement or 0), m.index))


# ---------------------------------------------------------------- running the checks


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
    weakref.WeakKeyDictionary()


def _gate() -> asyncio.Semaphore:
    """One limit per event loop, shared by every fusion on it (a server runs many): each
    sandbox is a whole Python process, and the machine has only so many cores."""
    loop = asyncio.get_running_loop()
    if loop not in _gates:
        _gates[loop] = asyncio.Semaphore(CONCURRENCY)
    return _gates[loop]


async def _check_all(ctx: ModeContext, spec: CheckSpec,
                     members: list[MemberResult] | None = None) -> ChecksReport:
    """Run `members` (default: every candidate) against the checks. A candidate's run is
    kept in `ctx.memo`, so the lead checked in adaptive compute's stage 1 is not run again."""
    started = time.monotonic()
    gate = _gate()
    members = ctx.candidates if members is None else members
    codes = {m.index: extract_code(m.content or "") for m in members}

    async def one(member: MemberResult) -> CheckRun | None:
        key = ("verified.run", member.index, member.content)
        if key in ctx.memo:
            run: CheckRun | None = ctx.memo[key]
            return run
        code = codes[member.index]
        if not code or not spec.checks:
            return None
        async with gate:
            timeout = min(TIMEOUT_S, ctx.deadline_at - time.monotonic())
            if timeout < _MIN_RUN_S:
                return None
            run = await run_checks(spec, code, timeout=timeout, memory_mb=MEMORY_MB)
        ctx.memo[key] = run
        return run

    runs = await asyncio.gather(*(one(m) for m in members))
    candidates = [_candidate(m, spec, codes[m.index], run)
                  for m, run in zip(members, runs, strict=True)]
    # Code that did not load cleanly (a SyntaxError, a crash at import) is comparable to
    # nothing: two broken answers failing alike do not "agree".
    signatures = {c.member: _signature(spec, run)
                  if c.status == "ran" and run is not None and run.load_error is None else None
                  for c, run in zip(candidates, runs, strict=True)}
    first: dict[tuple[str, ...], int] = {}
    for c in candidates:
        mine = signatures[c.member]
        if mine is None:
            continue
        c.group = first.setdefault(mine, c.member)
        c.agreement = sum(1 for i, s in signatures.items() if i != c.member and s == mine)
    total = spec.total
    passing = [c.member for c in candidates if total and c.passed == total]
    rule = ("no_checks" if not total else "one_passed" if len(passing) == 1
            else "several_passed" if passing else "none_passed")
    return ChecksReport(total=total, found=spec.counts(), rule=rule, passing=passing,
                        candidates=candidates,
                        duration_ms=(time.monotonic() - started) * 1000)


def _candidate(member: MemberResult, spec: CheckSpec, code: str,
               run: CheckRun | None) -> CandidateChecks:
    counted = [(i, c) for i, c in enumerate(spec.checks) if c.counted]
    results = []
    for i, check in counted:
        line = run.results.get(i) if run else None
        results.append(CheckOutcome(check=check.source, expected=_expected(check),
                                    ok=bool(line and line.get("ok")),
                                    actual=str(line["actual"]) if line else None))
    status, error = _status(spec, code, run)
    if code and spec.entries and not any(defines(code, name) for name in spec.entries):
        missing = f"the code defines none of: {', '.join(spec.entries)}"
        error = f"{error}; {missing}" if error else missing
    return CandidateChecks(member=member.index, model=member.model,
                           passed=sum(r.ok for r in results), total=len(results),
                           agreement=None, status=status, error=error,
                           isolated=bool(run and run.sandbox.isolated), results=results)


def _status(spec: CheckSpec, code: str, run: CheckRun | None) -> tuple[str, str | None]:
    if not code:
        return "no_code", "no Python code in the answer"
    if not spec.checks:
        return "not_run", "no visible checks or example inputs to run"
    if run is None:
        return "not_run", "not run: the fusion's deadline left no time"
    if run.sandbox.timed_out:
        return "timeout", f"timed out after {run.sandbox.duration_ms / 1000:.1f} s"
    if not run.loaded or not run.done:
        tail = run.sandbox.stderr.strip().splitlines()[-1:] or [f"exit {run.sandbox.exit_code}"]
        return "crashed", f"the check program stopped: {tail[0][:200]}"
    return "ran", run.load_error


def _expected(check: Check) -> str | None:
    if check.exception is not None:
        return check.exception
    return check.expected.strip() if check.expected is not None else None


def _signature(spec: CheckSpec, run: CheckRun | None) -> tuple[str, ...] | None:
    """What the code produced on every check's input; None if any is missing."""
    if run is None:
        return None
    sigs = []
    for i, check in enumerate(spec.checks):
        if check.kind == "setup":
            continue
        line = run.results.get(i)
        if line is None:
            return None
        sigs.append(str(line.get("sig")))
    return tuple(sigs)
