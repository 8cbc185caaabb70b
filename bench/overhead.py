"""Engine overhead against a loopback fake upstream: how close is a fusion to its ideal?

    python bench/overhead.py [--runs N] [--quorum-runs M] [--noise-floor]

Not a test: it asserts nothing about time, it prints figures next to their targets.

1. best-of, members 200/300/400 ms, judge 100 ms. Each iteration runs one fusion (one
   reused `Fusion`) and one "ideal": the same wire calls made by hand with a raw
   `openai.AsyncOpenAI` client (max_retries=0) against the same fake: the three members
   at once (asyncio.gather, streamed as the panel streams them), then the judge call
   (non-streamed, JSON-schema response format, as the judge sends it). Both pay the fake's
   own HTTP cost, so fused - ideal is what the engine adds. Fused and ideal runs are
   interleaved (and alternate which goes first) so noise hits both.
2. quorum=2, members 200/300 ms plus one at 5 s, judge 100 ms: the fusion must stop
   waiting after the second member; its ideal is the two fast members, then the judge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from openai import AsyncOpenAI  # noqa: E402
from tests.fake_upstream import FakeUpstream, Reply  # noqa: E402

from modelfusion import Fusion  # noqa: E402

JUDGE_DELAY = 0.1
VERDICT = json.dumps({"reason": "A is correct and complete.", "choice": "A"})
PROMPT = "In two sentences: why is the sky blue?"
WARMUP = 3  # iterations (fused + ideal) not counted: connection pools, first-call imports

TARGET_RATIO = 1.02
TARGET_P50_MS = 2.0
TARGET_P99_MS = 5.0


def answer(i: int) -> str:
    # Distinct per member (identical candidates would let the engine skip the judge).
    return (f"Candidate {i}: sunlight is scattered by the molecules of the air, and short "
            "blue wavelengths scatter far more than long red ones (Rayleigh scattering), so "
            "blue light reaches the eye from every part of the sky.")


def write_config(tmp: Path, base_url: str) -> Path:
    path = tmp / "fusion.toml"
    path.write_text(f'[providers.fake]\nbase_url = "{base_url}"\n', encoding="utf-8")
    return path


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (1..99) via statistics.quantiles (inclusive method)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def verdict_flag(ok: bool) -> str:
    return "ok" if ok else "MISSED"


# ---------------------------------------------------------------- the ideal, by hand


async def ideal_member(client: AsyncOpenAI, model: str) -> str:
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts: list[str] = []
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices or ():
                if choice.delta and choice.delta.content:
                    parts.append(choice.delta.content)
    return "".join(parts)


async def ideal_judge(client: AsyncOpenAI, candidates: list[str]) -> str:
    labels = "ABCDEFGH"
    fenced = "\n\n".join(f'<candidate label="{labels[i]}">\n{c}\n</candidate>'
                         for i, c in enumerate(candidates))
    schema = {
        "type": "object",
        "properties": {"reason": {"type": "string"},
                       "choice": {"type": "string", "enum": list(labels[: len(candidates)])}},
        "required": ["reason", "choice"],
        "additionalProperties": False,
    }
    resp = await client.chat.completions.create(
        model="judge",
        messages=[
            {"role": "system", "content": "You are the judge. Reply with JSON only."},
            {"role": "user", "content": f"<request>{PROMPT}</request>\n\n{fenced}"},
        ],
        temperature=0.0,
        max_tokens=2048,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "verdict", "schema": schema, "strict": False}},
    )
    return resp.choices[0].message.content or ""


async def ideal_once(client: AsyncOpenAI, members: list[str]) -> float:
    t0 = time.perf_counter()
    texts = await asyncio.gather(*(ideal_member(client, m) for m in members))
    await ideal_judge(client, list(texts))
    return time.perf_counter() - t0


@dataclass
class Samples:
    fused: list[float] = field(default_factory=list)  # wall, s
    ideal: list[float] = field(default_factory=list)  # wall, s
    engine_overhead: list[float] = field(default_factory=list)  # result.timings.overhead_ms
    fused_cpu: list[float] = field(default_factory=list)  # main-thread CPU, s
    ideal_cpu: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)  # second ideal - ideal, s (--noise-floor)
    good: int = 0  # fusions whose result passed the section's check


async def paired(fusion: Fusion, client: AsyncOpenAI, ideal_members: list[str], runs: int,
                 check: Any, noise_floor: bool) -> Samples:
    """Interleave fused and ideal runs (alternating which goes first); warm-up not counted.

    CPU is main-thread CPU (time.thread_time): the fake upstream runs in its own thread,
    so this is the client side only: the engine + SDK for fused, the SDK alone for ideal.
    """
    s = Samples()

    async def fused_once() -> tuple[float, float, Any]:
        t0, c0 = time.perf_counter(), time.thread_time()
        result = await fusion.run(PROMPT)
        return time.perf_counter() - t0, time.thread_time() - c0, result

    async def ideal_timed() -> tuple[float, float]:
        c0 = time.thread_time()
        wall = await ideal_once(client, ideal_members)
        return wall, time.thread_time() - c0

    for i in range(WARMUP + runs):
        if i % 2 == 0:
            f_wall, f_cpu, result = await fused_once()
            i_wall, i_cpu = await ideal_timed()
        else:
            i_wall, i_cpu = await ideal_timed()
            f_wall, f_cpu, result = await fused_once()
        second = (await ideal_timed())[0] if noise_floor else None
        if i < WARMUP:
            continue
        s.fused.append(f_wall)
        s.ideal.append(i_wall)
        s.fused_cpu.append(f_cpu)
        s.ideal_cpu.append(i_cpu)
        s.engine_overhead.append(result.timings.overhead_ms)
        if second is not None:
            s.noise.append(second - i_wall)
        s.good += bool(check(result))
    return s


def ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def report(title: str, s: Samples, nominal: float, *, overhead_targets: bool) -> None:
    fused, ideal = ms(s.fused), ms(s.ideal)
    ratios = [f / i for f, i in zip(fused, ideal, strict=True)]
    over = [f - i for f, i in zip(fused, ideal, strict=True)]
    r50 = statistics.median(ratios)
    mean_ratio = statistics.fmean(fused) / statistics.fmean(ideal)

    def row(label: str, values: list[float], unit: str = "ms", fmt: str = "8.1f") -> str:
        return (f"{label:<42}{statistics.median(values):{fmt}} / {pct(values, 99):{fmt}} / "
                f"{statistics.fmean(values):{fmt}}" + (f" {unit}" if unit else ""))

    print(f"== {title} ==")
    print(f"{'runs (after ' + str(WARMUP) + ' warm-up)':<42}{len(fused)}")
    print(f"{'':<42}{'p50':>8}   {'p99':>8}   {'mean':>8}")
    print(row("fused wall", fused))
    print(row("ideal wall (raw AsyncOpenAI, same fake)", ideal))
    print(row("ratio fused / ideal", ratios, "", "8.4f")
          + f"  target p50 <= {TARGET_RATIO:.2f}: {verdict_flag(r50 <= TARGET_RATIO)}"
          f" (mean/mean {mean_ratio:.4f})")
    print(row(f"ratio fused / nominal {nominal:.1f} s", [f / 1000 / nominal for f in fused],
              "", "8.4f"))
    print(row(f"ratio ideal / nominal {nominal:.1f} s", [i / 1000 / nominal for i in ideal],
              "", "8.4f") + "  (the fake's own HTTP + SDK cost)")
    o50, o99 = statistics.median(over), pct(over, 99)
    tail = ""
    if overhead_targets:
        flag = verdict_flag(o50 <= TARGET_P50_MS and o99 <= TARGET_P99_MS)
        tail = f"  target p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms: {flag}"
    print(row("overhead = fused - ideal", over, "ms", "8.2f") + tail)
    print(f"{'overhead p1 (compare with p99)':<42}{pct(over, 1):8.2f} ms")
    if s.noise:
        print(row("noise floor = ideal2 - ideal", ms(s.noise), "ms", "8.2f")
              + f"  (p1 {pct(ms(s.noise), 1):.2f})")
    print(row("engine timings.overhead_ms", s.engine_overhead, "ms", "8.2f")
          + "  (inside _execute only)")
    print(row("main-thread CPU fused", ms(s.fused_cpu), "ms", "8.2f"))
    print(row("main-thread CPU ideal", ms(s.ideal_cpu), "ms", "8.2f"))


# ---------------------------------------------------------------- sections


async def section_best_of(up: FakeUpstream, config: Path, runs: int, noise: bool) -> None:
    delays = {"m200": 0.2, "m300": 0.3, "m400": 0.4}
    for i, (model, delay) in enumerate(delays.items()):
        up.script(model, Reply(answer(i), delay=delay))
    up.script("judge", Reply(VERDICT, delay=JUDGE_DELAY))
    members = list(delays)

    def check(r: Any) -> bool:
        return r.judge.status == "ok" and r.chosen is not None and not r.degraded

    print(f"[1/2] best-of, 3 members + judge, {runs} paired runs", file=sys.stderr)
    async with (
        Fusion([f"fake:{m}" for m in members], judge="fake:judge", mode="best-of",
               config=config) as fusion,
        AsyncOpenAI(base_url=up.base_url, api_key="not-needed", max_retries=0) as client,
    ):
        s = await paired(fusion, client, members, runs, check, noise)
    nominal = max(delays.values()) + JUDGE_DELAY
    report("best-of: members 200/300/400 ms, judge 100 ms", s, nominal, overhead_targets=True)
    print(f"{'fusions judged ok, not degraded':<42}{s.good}/{runs}")


async def section_quorum(up: FakeUpstream, config: Path, runs: int, noise: bool) -> None:
    delays = {"q200": 0.2, "q300": 0.3, "q5000": 5.0}
    for i, (model, delay) in enumerate(delays.items()):
        up.script(model, Reply(answer(i), delay=delay))
    up.script("judge", Reply(VERDICT, delay=JUDGE_DELAY))

    def check(r: Any) -> bool:
        slow = r.members[2]
        return r.judge.status == "ok" and slow.status == "cancelled" and r.degraded

    print(f"[2/2] quorum=2 (one member at 5 s), {runs} paired runs", file=sys.stderr)
    async with (
        Fusion([f"fake:{m}" for m in delays], judge="fake:judge", mode="best-of", quorum=2,
               config=config) as fusion,
        AsyncOpenAI(base_url=up.base_url, api_key="not-needed", max_retries=0) as client,
    ):
        s = await paired(fusion, client, ["q200", "q300"], runs, check, noise)
    nominal = 0.3 + JUDGE_DELAY
    print()
    report("quorum=2: members 200/300 ms + one at 5 s, judge 100 ms", s, nominal,
           overhead_targets=False)
    r50 = statistics.median(s.fused) / nominal
    worst = max(s.fused) / nominal
    print(f"{'target fused <= 1.05 x (0.3 + 0.1) s':<42}p50 {r50:.4f}, worst {worst:.4f}: "
          f"{verdict_flag(r50 <= 1.05)}")
    waited = sum(f >= 1.0 for f in s.fused)
    print(f"{'runs that waited for the 5 s member':<42}{waited}/{runs}: "
          f"{verdict_flag(waited == 0)}")
    print(f"{'fusions judged ok, slow one cancelled':<42}{s.good}/{runs}")


async def main_async(args: argparse.Namespace) -> None:
    with FakeUpstream() as up, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), up.base_url)
        await section_best_of(up, config, args.runs, args.noise_floor)
        await section_quorum(up, config, args.quorum_runs, args.noise_floor)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100, help="best-of paired runs (default 100)")
    ap.add_argument("--quorum-runs", type=int, default=20,
                    help="quorum paired runs (default 20)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="also time a second ideal per iteration and print ideal2 - ideal, "
                         "the noise a p99 cannot get below on this machine (~1.5x runtime)")
    args = ap.parse_args(argv)
    if args.runs < 2 or args.quorum_runs < 2:
        ap.error("--runs and --quorum-runs must be at least 2")
    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} CPUs")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
