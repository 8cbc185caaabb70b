"""Review quality: recall and false positives of `fusion review`, solo members vs fused.

Diffs with one seeded bug each (HumanEval canonical solutions, mutated; only mutants the
hidden tests catch — bench/seeded_bugs.py) plus clean diffs (a local variable renamed,
tests still pass). Each diff is reviewed once by the panel, exactly as `fusion review`
does (same prompt, schema, chunking, mode). "Solo" figures are each member's own findings
from that same run, before the judge merged them — no extra model calls.

A bug counts as caught when a finding points within ±LINE_TOLERANCE lines of the mutated
line. On clean diffs any finding is a false positive.

    python bench/review_quality.py [--buggy 10] [--clean 5] [--preset local]
        [-m SPEC ... --judge SPEC] [--max-tokens N] [--log FILE] [--summarize FILE]

Runs offline on the embedded models by default; prints a table at the end and writes one
JSON line per diff to --log as it goes (--summarize FILE reprints the table from a log).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from modelfusion import Fusion  # noqa: E402
from modelfusion.review.diff import parse_diff, split  # noqa: E402
from modelfusion.review.findings import MEMBER_SCHEMA, Finding, ReviewAnalysis  # noqa: E402
from modelfusion.review.runner import REVIEW_SYSTEM, PartReview, prompt  # noqa: E402
from seeded_bugs import Case, seeded_cases  # noqa: E402

LINE_TOLERANCE = 2


def _hits(findings: list[Finding] | None, case: Case) -> dict[str, Any]:
    found = findings or []
    near = [f for f in found if case.line is not None and f.line is not None
            and abs(f.line - case.line) <= LINE_TOLERANCE]
    return {"readable": findings is not None, "findings": len(found), "caught": bool(near),
            "off_target": len(found) - len(near)}


async def review_case(fusion: Fusion, case: Case) -> dict[str, Any]:
    chunks = split(parse_diff(case.diff()))
    row: dict[str, Any] = {"task_id": case.task_id, "kind": case.kind, "line": case.line,
                           "fused": {}, "fused_agree2": {}, "solo": {}, "seconds": 0.0}
    started = time.monotonic()
    fused: list[Finding] = []
    solo: dict[str, list[Finding] | None] = {}
    for chunk in chunks:
        part = PartReview(chunk)
        try:
            part.result = await fusion.run(prompt(chunk))
        except Exception as e:  # a failed review is a row with the reason, not a crash
            row["error"] = f"{type(e).__name__}: {e}"
            continue
        fused += part.findings
        for member, found in part.member_findings().items():
            if found is None and member not in solo:
                solo[member] = None
            elif found is not None:
                solo[member] = [*(solo.get(member) or []), *found]
        row.setdefault("replies", []).append(
            {m.model: m.content if m.ok else f"[{m.reason}]" for m in part.result.members})
        row["judge"] = part.result.judge.status
        analysis = part.result.analysis
        row["grouping"] = analysis.grouping if isinstance(analysis, ReviewAnalysis) else None
    row["seconds"] = round(time.monotonic() - started, 1)
    row["fused"] = _hits(fused, case)
    row["fused_agree2"] = _hits([f for f in fused if f.agreed_by >= 2], case)
    row["solo"] = {m: _hits(f, case) for m, f in solo.items()}
    row["fused_findings"] = [f.to_dict() for f in fused]
    return row


def summarize(rows: list[dict[str, Any]]) -> str:
    buggy = [r for r in rows if r["kind"] != "clean" and "error" not in r]
    clean = [r for r in rows if r["kind"] == "clean" and "error" not in r]
    views: dict[str, list[tuple[dict, dict]]] = {"fused": [], "fused, agreed_by >= 2": []}
    for r in rows:
        if "error" in r:
            continue
        views["fused"].append((r, r["fused"]))
        views["fused, agreed_by >= 2"].append((r, r["fused_agree2"]))
        for member, hit in r["solo"].items():
            views.setdefault(f"solo {member}", []).append((r, hit))
    out = [f"{len(buggy)} buggy + {len(clean)} clean diffs reviewed "
           f"({sum(1 for r in rows if 'error' in r)} failed)", "",
           "| reviewer | recall (bugs caught) | clean diffs flagged (FP rate) | "
           "findings per clean diff | off-target findings per buggy diff | unreadable replies |",
           "|---|---|---|---|---|---|"]
    for name, pairs in views.items():
        b = [h for r, h in pairs if r["kind"] != "clean"]
        c = [h for r, h in pairs if r["kind"] == "clean"]
        caught = sum(h["caught"] for h in b)
        flagged = sum(h["findings"] > 0 for h in c)
        per_clean = sum(h["findings"] for h in c) / len(c) if c else 0.0
        off = sum(h["off_target"] for h in b) / len(b) if b else 0.0
        unreadable = sum(not h["readable"] for h in b + c)
        out.append(f"| {name} | {caught}/{len(b)} ({_pct(caught, len(b))}) | {flagged}/{len(c)} "
                   f"({_pct(flagged, len(c))}) | {per_clean:.1f} | {off:.1f} | "
                   f"{unreadable}/{len(b) + len(c)} |")
    kinds: dict[str, list[bool]] = {}
    for r in buggy:
        kinds.setdefault(r["kind"], []).append(r["fused"]["caught"])
    out += ["", "fused recall by mutation: " + ", ".join(
        f"{k} {sum(v)}/{len(v)}" for k, v in sorted(kinds.items()))]
    secs = [r["seconds"] for r in rows]
    if secs:
        out.append(f"seconds per diff: mean {sum(secs) / len(secs):.0f}, max {max(secs):.0f}")
    return "\n".join(out)


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f} %" if b else "n/a"


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = seeded_cases(args.buggy, args.clean, seed=args.seed)
    fusion = Fusion(args.model or None, args.judge, "review",
                    preset=None if args.model else args.preset, offline=not args.model,
                    system=REVIEW_SYSTEM, response_schema=MEMBER_SCHEMA, seed=args.seed,
                    max_tokens=args.max_tokens, deadline=900.0, timeout=600.0)
    rows = []
    print(f"{len(cases)} diffs; panel: {[s.label for s in fusion.plan.seats]}, judge "
          f"{fusion.plan.judge.label}", file=sys.stderr, flush=True)
    async with fusion:
        for i, case in enumerate(cases, 1):
            row = await review_case(fusion, case)
            rows.append(row)
            print(f"[{i}/{len(cases)}] {case.task_id} {case.kind}: fused {row['fused']}, "
                  f"{row['seconds']} s", file=sys.stderr, flush=True)
            if args.log:
                with Path(args.log).open("a", encoding="utf-8") as log:
                    log.write(json.dumps(row) + "\n")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--buggy", type=int, default=10)
    p.add_argument("--clean", type=int, default=5)
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--preset", default="local")
    p.add_argument("-m", "--model", action="append")
    p.add_argument("--judge")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--log")
    p.add_argument("--summarize", help="print the table from an existing log and exit")
    args = p.parse_args()
    if args.summarize:
        rows = [json.loads(line) for line in Path(args.summarize).read_text().splitlines()]
    else:
        rows = asyncio.run(main_async(args))
    print(summarize(rows))


if __name__ == "__main__":
    main()
