"""Skills A/B: does `--skill coding` give smaller, still-correct fixes?

Each problem is a buggy HumanEval solution (a seeded bug the hidden tests catch, from
bench/seeded_bugs.py) and the request "fix the bug". The same model answers every problem
twice — without and with the coding pack, same seed, temperature 0 — through `Fusion`.
Scored: pass rate of the hidden tests (child process with a timeout) and diff size, the
changed lines between the buggy code and the answer's code: raw, and after normalising both
with ast (comments, docstrings, blank lines and formatting dropped).

    python bench/skills_ab.py [--problems 12] [-m local:qwen2.5-coder-1.5b ...]
        [--judge SPEC] [--max-tokens 512] [--log FILE] [--summarize FILE]

One member by default, so the judge is skipped: this measures the pack's instructions to
members. Several -m measure the fused panel, whose judge also gets the pack's rubric.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import difflib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from modelfusion import Fusion  # noqa: E402
from modelfusion.code.extract import extract_code  # noqa: E402
from seeded_bugs import Case, run_tests, seeded_cases  # noqa: E402

ASK = """This Python function has a bug: for some inputs it returns the wrong result. Fix the \
bug. Return the complete corrected code in one ```python block.

```python
{code}
```"""


def changed_lines(a: str, b: str) -> int:
    diff = difflib.unified_diff([x.rstrip() for x in a.splitlines()],
                                [x.rstrip() for x in b.splitlines()], lineterm="", n=0)
    return sum(1 for d in diff if d[:1] in "+-" and d[:3] not in ("+++", "---"))


def normalised(code: str) -> str | None:
    """The code as ast sees it: no comments, docstrings, blank lines or formatting."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.unparse(tree)


def score(case: Case, answer: str) -> dict[str, Any]:
    code = extract_code(answer)
    # The model may return the function without the file's imports: keep them available.
    program = code if "import" in code else case.after.split("def ")[0] + code
    passed = bool(code.strip()) and run_tests(program, case.test, case.entry_point)
    norm_a, norm_b = normalised(case.after), normalised(code)
    return {
        "passed": passed,
        "changed_raw": changed_lines(case.after, code),
        "changed_ast": changed_lines(norm_a, norm_b) if norm_a and norm_b else None,
        "answer_chars": len(answer),
        "code": code,
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = seeded_cases(args.problems, 0, seed=args.seed)
    arms = {"plain": (), "coding": ("coding",)}
    fusions = {name: Fusion(args.model, args.judge, args.mode, offline=True, skills=skills,
                            temperature=0.0, seed=args.seed, max_tokens=args.max_tokens,
                            timeout=600.0, deadline=900.0)
               for name, skills in arms.items()}
    rows = []
    for i, case in enumerate(cases, 1):
        # Alternate which arm goes first, so a warm cache or a busy moment favours neither.
        order = list(arms) if i % 2 else list(reversed(arms))
        for arm in order:
            started = time.monotonic()
            try:
                result = await fusions[arm].run(ASK.format(code=case.after.strip()))
                scored = await asyncio.to_thread(score, case, result.answer)
                row = {"task_id": case.task_id, "kind": case.kind, "arm": arm, **scored}
            except Exception as e:
                row = {"task_id": case.task_id, "kind": case.kind, "arm": arm,
                       "error": f"{type(e).__name__}: {e}"}
            row["seconds"] = round(time.monotonic() - started, 1)
            rows.append(row)
            print(f"[{i}/{len(cases)}] {case.task_id} {arm}: {row}", file=sys.stderr,
                  flush=True)
            if args.log:
                with Path(args.log).open("a", encoding="utf-8") as log:
                    log.write(json.dumps(row) + "\n")
    for f in fusions.values():
        await f.aclose()
    return rows


def summarize(rows: list[dict[str, Any]]) -> str:
    out = ["| arm | pass rate | changed lines, mean (median) | changed lines after ast "
           "normalisation, mean (median) | on problems both arms pass: mean changed lines | "
           "answer length, chars |",
           "|---|---|---|---|---|---|"]
    ok = [r for r in rows if "error" not in r]
    both = {t for t in {r["task_id"] for r in ok}
            if all(r["passed"] for r in ok if r["task_id"] == t)
            and sum(1 for r in ok if r["task_id"] == t) == 2}
    means: dict[str, float] = {}
    for arm in ("plain", "coding"):
        rs = [r for r in ok if r["arm"] == arm]
        if not rs:
            continue
        raw = [r["changed_raw"] for r in rs]
        norm = [r["changed_ast"] for r in rs if r["changed_ast"] is not None]
        shared = [r["changed_raw"] for r in rs if r["task_id"] in both]
        means[arm] = statistics.mean(shared) if shared else float("nan")
        out.append(f"| {arm} | {sum(r['passed'] for r in rs)}/{len(rs)} | "
                   f"{statistics.mean(raw):.1f} ({statistics.median(raw):g}) | "
                   + (f"{statistics.mean(norm):.1f} ({statistics.median(norm):g})"
                      if norm else "n/a")
                   + f" | {means[arm]:.1f} (n={len(shared)}) | "
                   f"{statistics.mean(r['answer_chars'] for r in rs):.0f} |")
    if means.get("plain") and both:
        change = 100 * (means["coding"] - means["plain"]) / means["plain"]
        out.append(f"\ndiff size with the pack vs without, on problems both arms fix: "
                   f"{change:+.0f} %")
    errors = [r for r in rows if "error" in r]
    if errors:
        out.append(f"{len(errors)} runs failed: {errors[0]['error']}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=12)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("-m", "--model", action="append")
    p.add_argument("--judge")
    p.add_argument("--mode", default="best-of")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--log")
    p.add_argument("--summarize")
    args = p.parse_args()
    args.model = args.model or ["local:qwen2.5-coder-1.5b"]
    if args.summarize:
        rows = [json.loads(line) for line in Path(args.summarize).read_text().splitlines()]
    else:
        rows = asyncio.run(main_async(args))
    print(summarize(rows))


if __name__ == "__main__":
    main()
