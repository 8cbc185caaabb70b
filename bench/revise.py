"""Revising the lead's answer vs fresh samples, on adaptive compute's stage 2. Run on demand:
`python bench/revise.py` (defaults: the development-set problems where the greedy 1.5B
fails a visible example, 4 samples).

For each problem, two fusions of one local model in verified mode with the same seed (the
eval's rule: problem number): `revise` off (stage 2's samples answer the request afresh) and
on (they see the lead's answer and the checks it failed). Every sample is graded against
the hidden tests (evals/grade.py); printed: per arm, how many stage-2 samples passed and how
many problems the fusion got right. One JSON line per fusion goes to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelfusion import Fusion  # noqa: E402
from modelfusion.evals import dataset  # noqa: E402
from modelfusion.evals.grade import grade  # noqa: E402

DEV_FAILS = "32,128,132,148"  # where the greedy 1.5B failed a visible example (dev set)


async def run(model: str, numbers: list[int], samples: int, out: Path) -> None:
    problems = {p.number: p for p in dataset.load("humaneval")}
    totals: dict[bool, list[int]] = {}
    with out.open("w", encoding="utf-8") as log:
        for revise in (False, True):
            passed = right = 0
            async with Fusion([model], mode="verified", max_samples=samples, max_tokens=512,
                              revise=revise, judge=model) as fusion:
                for k in numbers:
                    problem = problems[k]
                    started = time.monotonic()
                    result = await fusion.run(problem.messages(), seed=k)
                    grades = [(await grade(problem, m.content)).passed for m in result.members]
                    final = (await grade(problem, result.answer)).passed
                    passed += sum(grades[1:])
                    right += final
                    line = {"revise": revise, "task": problem.task_id, "passed": grades,
                            "final": final, "chosen": result.chosen,
                            "seconds": round(time.monotonic() - started, 1),
                            "compute": result.compute.to_dict() if result.compute else None}
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    print(json.dumps(line), file=sys.stderr)
            totals[revise] = [passed, right]
    stage2 = len(numbers) * (samples - 1)
    for revise, (passed, right) in totals.items():
        name = "revisions" if revise else "fresh samples"
        print(f"{name:>14}: {passed} of {stage2} stage-2 samples passed; "
              f"{right} of {len(numbers)} problems right")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="local:qwen2.5-coder-1.5b")
    ap.add_argument("--problems", default=DEV_FAILS,
                    help="HumanEval problem numbers, comma-separated (keep to the dev set: "
                         "multiples of 4)")
    ap.add_argument("--samples", type=int, default=4, help="the budget (max_samples)")
    ap.add_argument("--out", type=Path, default=Path("revise.jsonl"))
    args = ap.parse_args()
    numbers = [int(n) for n in args.problems.split(",")]
    if any(n % 4 for n in numbers):
        ap.error("--problems: only development-set problems (multiples of 4)")
    asyncio.run(run(args.model, numbers, args.samples, args.out))


if __name__ == "__main__":
    main()
