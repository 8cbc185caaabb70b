"""pass@k of one local model on the HumanEval development set: the ceiling that selecting
among its samples can reach. Run on demand: `python bench/passk.py`.

Each problem (every 4th from 0, the development set) gets N samples of the model at the
temperature adaptive compute samples at (0.7), seeds `seed + problem + k`, decoded as one
llama.cpp batch through the provider, each graded against the hidden tests in the
sandbox (evals/grade.py). Prints pass@1, pass@k for k = 1, 2, 4 ... N (the unbiased
estimator, evals/metrics.py), and the greedy answer's pass rate from the same run for
comparison; writes one JSON line per problem to --out so a run can be read afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelfusion.config import builtin_providers  # noqa: E402
from modelfusion.evals import dataset  # noqa: E402
from modelfusion.evals.grade import grade  # noqa: E402
from modelfusion.evals.metrics import mean_pass_at_k  # noqa: E402
from modelfusion.plan import LEAD_TEMPERATURE, SELF_FUSION_TEMPERATURE  # noqa: E402
from modelfusion.providers.local import runtime as local  # noqa: E402
from modelfusion.types import GenerationParams  # noqa: E402


async def run(model: str, n: int, every: int, limit: int | None, seed: int, max_tokens: int,
              out: Path) -> None:
    problems = dataset.select(dataset.load("humaneval"), every=every, limit=limit)
    provider = local.LocalProvider(builtin_providers()["local"])
    done = {json.loads(line)["task_id"]: json.loads(line)
            for line in out.read_text().splitlines()} if out.exists() else {}
    started = time.monotonic()
    for i, problem in enumerate(problems, 1):
        if problem.task_id in done:
            continue
        base = seed + problem.number
        temperatures = [LEAD_TEMPERATURE] + [SELF_FUSION_TEMPERATURE] * n
        params = [GenerationParams(temperature=t, seed=base + k, max_tokens=max_tokens)
                  for k, t in enumerate(temperatures)]
        t = time.monotonic()
        greedy = await provider.complete(model, problem.messages(), params[0])
        samples = await provider.complete_many(model, problem.messages(), params[1:],
                                               on_delta=[None] * n)
        grades = await asyncio.gather(*(grade(problem, c.content)
                                        for c in [greedy, *samples]))
        row = {"task_id": problem.task_id, "greedy": grades[0].passed,
               "passed": [g.passed for g in grades[1:]], "seconds": time.monotonic() - t}
        done[problem.task_id] = row
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        verdict = "pass" if row["greedy"] else "FAIL"
        print(f"[{i}/{len(problems)}] {problem.task_id}: greedy {verdict}, "
              f"samples {sum(row['passed'])}/{n}, {row['seconds']:.0f}s "
              f"({time.monotonic() - started:.0f}s so far)", flush=True)
    rows = [done[p.task_id] for p in problems if p.task_id in done]
    counts = [(len(r["passed"]), sum(r["passed"])) for r in rows]
    ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= n]
    print(f"\n{model}, {len(rows)} problems, {n} samples each at {SELF_FUSION_TEMPERATURE}:")
    print("  greedy (t=0): " + f"{sum(r['greedy'] for r in rows) / len(rows) * 100:.1f} %")
    for k in ks:
        print(f"  pass@{k}: {mean_pass_at_k(counts, k) * 100:.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("passk.jsonl"),
                        help="one JSON line per problem; rerun to resume")
    args = parser.parse_args()
    asyncio.run(run(args.model, args.samples, args.every, args.limit, args.seed,
                    args.max_tokens, args.out))


if __name__ == "__main__":
    main()
