"""Benchmarks for the embedded `local:` provider. Run on demand: `python bench/local.py`.

1. overhead: LocalProvider vs bare llama-cpp-python, same model, prompt and settings,
   alternating runs in one process: time to first token and decode tokens/s, and their
   ratio (goal: provider >= 0.95 of bare).
2. schedule: two different local models answering at once, run one after the other
   (LOCAL_CONCURRENCY=1) vs concurrently (2): total wall time and when the first answer
   is complete.
3. memory: peak RSS with both shipped models loaded.
4. fusion: wall time of the default local fusion (`fusion ask` with no flags) vs one 1.5B
   answer to the same prompt, same max_tokens, in one run.
5. batch: N samples of one prompt one after the other, as one batch through the provider
   (complete_many), and through llama.cpp's own `llama-batched-bench` (the limit: C++,
   prompt shared), same model, prompt and token count (a prompt that never stops early).

Every measurement prints how much CPU other processes used meanwhile ("foreign", in
cores): on a 2-core machine any foreign load distorts the numbers, so read them with it.
Uses MODELFUSION_HOME like the rest of modelfusion (assembles the models if needed).

`time_async(make_call, runs)` is the helper for end-to-end timings (e.g. a fused answer
vs a single model): pass a zero-argument function returning a fresh coroutine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelfusion.config import builtin_providers  # noqa: E402
from modelfusion.providers.local import catalog as local_models  # noqa: E402
from modelfusion.providers.local import runtime as local  # noqa: E402
from modelfusion.types import GenerationParams, Message  # noqa: E402

SMALL = "qwen2.5-coder-0.5b"
LARGE = "qwen2.5-coder-1.5b"
PROMPT = [
    Message("system", "You are a careful Python programmer."),
    Message("user", "Write a Python function `merge_intervals(intervals)` that merges "
                    "overlapping intervals, with a docstring, and explain it briefly."),
]


# ---------------------------------------------------------------------------------------
# Helpers


class Foreign:
    """Average number of cores used by *other* processes while the block ran."""

    def __enter__(self) -> Foreign:
        self._busy, self._own, self._t = _busy_s(), _own_s(), time.monotonic()
        self.cores = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._t
        other = (_busy_s() - self._busy) - (_own_s() - self._own)
        self.cores = max(0.0, other / wall) if wall > 0 else 0.0


def _busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB."""
    current = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def time_async(make_call: Callable[[], Awaitable[Any]], runs: int = 3) -> list[float]:
    """Wall seconds of `runs` sequential awaits of fresh coroutines from `make_call`."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await make_call()
        times.append(time.perf_counter() - start)
    return times


@dataclass
class Run:
    ttft: float  # seconds from the call to the first streamed text
    decode_tps: float  # tokens/s after the first token
    tokens: int
    text: str
    foreign: float


def on_decode_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run llama.cpp work on the provider's decode thread, as the provider itself does.

    Every thread that enters llama.cpp gets an OpenMP team, and more teams than cores
    slow everything (see providers/local.py), so the bench adds none of its own.
    """
    return local._DECODE_EXECUTOR.submit(fn, *args).result()


def _rate(tokens: int, first: float, last: float) -> float:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


# ---------------------------------------------------------------------------------------
# 1. Provider vs bare llama-cpp-python


def bare_run(llama: Any, params: GenerationParams) -> Run:
    """The same request, straight through llama-cpp-python (streaming, fresh prompt eval)."""
    with Foreign() as fg:
        llama.reset()  # the provider re-evaluates the prompt when a seed is given; so do we
        start = time.perf_counter()
        first = last = 0.0
        parts: list[str] = []
        for chunk in llama.create_chat_completion(
            [m.to_dict() for m in PROMPT], temperature=params.temperature,
            max_tokens=params.max_tokens, seed=params.seed, stream=True,
        ):
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                last = time.perf_counter()
                first = first or last
                parts.append(text)
    # Rates count streamed pieces on both sides (one per token, bar held-back UTF-8 bytes).
    n = len(parts)
    return Run(first - start, _rate(n, first, last), n, "".join(parts), fg.cores)


async def provider_run(provider: local.LocalProvider, params: GenerationParams) -> Run:
    stamps: list[float] = []
    parts: list[str] = []

    def on_delta(text: str) -> None:
        stamps.append(time.perf_counter())
        parts.append(text)

    with Foreign() as fg:
        start = time.perf_counter()
        done = await provider.complete(SMALL, PROMPT, params, on_delta=on_delta)
    n = len(parts)
    return Run(stamps[0] - start, _rate(n, stamps[0], stamps[-1]), n, done.content, fg.cores)


def bench_overhead(runs: int, max_tokens: int) -> None:
    import llama_cpp

    print(f"\n== overhead: LocalProvider vs bare llama-cpp-python ({SMALL}, "
          f"max_tokens={max_tokens}, {local.n_threads()} threads, {runs} runs each) ==")
    path = local_models.resolve(SMALL)
    bare = on_decode_thread(local._load_llama, path, llama_cpp.Llama)
    provider = local.LocalProvider(builtin_providers()["local"])
    params = GenerationParams(temperature=0.0, seed=0, max_tokens=max_tokens)
    asyncio.run(provider_run(provider, params))  # load + warm both before timing
    on_decode_thread(bare_run, bare, params)
    b_runs: list[Run] = []
    p_runs: list[Run] = []
    for _ in range(runs):  # alternate, so drift in machine load hits both sides alike
        b_runs.append(on_decode_thread(bare_run, bare, params))
        p_runs.append(asyncio.run(provider_run(provider, params)))
    for label, rs in (("bare", b_runs), ("provider", p_runs)):
        print(f"  {label:9s} ttft " + " ".join(f"{r.ttft * 1000:6.0f}ms" for r in rs)
              + "  decode " + " ".join(f"{r.decode_tps:5.1f}" for r in rs)
              + " tok/s  foreign " + " ".join(f"{r.foreign:.2f}" for r in rs))
    same = all(r.text == b_runs[0].text for r in b_runs + p_runs)
    tps = statistics.median(r.decode_tps for r in p_runs) / statistics.median(
        r.decode_tps for r in b_runs)
    ttft = statistics.median(r.ttft for r in b_runs) / statistics.median(
        r.ttft for r in p_runs)
    print(f"  identical text on every run: {same}; tokens {p_runs[0].tokens}")
    print(f"  RATIO provider/bare: decode tokens/s {tps:.3f}, time-to-first-token "
          f"(bare/provider) {ttft:.3f}   goal >= 0.95")
    bare.close()
    local.unload_all()


# ---------------------------------------------------------------------------------------
# 2. Scheduling: two local members one after the other vs at once


async def _two_members(provider: local.LocalProvider, max_tokens: int) -> dict[str, float]:
    params = GenerationParams(temperature=0.0, seed=0, max_tokens=max_tokens)
    start = time.perf_counter()
    finished: dict[str, float] = {}

    async def one(model: str) -> None:
        await provider.complete(model, PROMPT, params)
        finished[model] = time.perf_counter() - start

    await asyncio.gather(one(SMALL), one(LARGE))
    return {"total": time.perf_counter() - start, "first": min(finished.values()),
            SMALL: finished[SMALL], LARGE: finished[LARGE]}


def _set_slots(slots: int) -> None:
    old, local._DECODE_EXECUTOR = local._DECODE_EXECUTOR, local._decode_executor(slots)
    old.shutdown(wait=True)  # its threads exit, and their OpenMP teams with them


def bench_schedule(runs: int, max_tokens: int) -> None:
    print(f"\n== scheduling: {SMALL} + {LARGE} together, max_tokens={max_tokens} ==")
    provider = local.LocalProvider(builtin_providers()["local"])
    asyncio.run(_two_members(provider, 8))  # load both before timing
    try:
        for _ in range(runs):
            for slots in (1, 2):
                _set_slots(slots)
                with Foreign() as fg:
                    t = asyncio.run(_two_members(provider, max_tokens))
                name = "one after the other" if slots == 1 else "concurrently       "
                print(f"  {name} total {t['total']:6.2f}s  first answer {t['first']:6.2f}s  "
                      f"(0.5b {t[SMALL]:5.2f}s, 1.5b {t[LARGE]:5.2f}s)  foreign {fg.cores:.2f}")
    finally:
        _set_slots(local.LOCAL_CONCURRENCY)
    current, peak = rss_mb()
    print(f"\n== memory: both models loaded: RSS {current:,.0f} MB, peak {peak:,.0f} MB; "
          f"estimated {sum(s for _, s in local.loaded_models()) / 2**20:,.0f} MB "
          f"against a budget of {local.memory_budget_bytes() / 2**20:,.0f} MB ==")


def bench_load() -> None:
    print("\n== load times (first load after the file is in the page cache) ==")
    for name in (SMALL, LARGE):
        path = local_models.resolve(name)
        start = time.perf_counter()
        llama = on_decode_thread(local._load_llama, path)
        print(f"  {name}: {time.perf_counter() - start:.2f}s")
        llama.close()


PROMPT = "Write a Python function that checks if a string is a palindrome"


def bench_fusion(runs: int) -> None:
    from modelfusion import Fusion
    from modelfusion.config import DEFAULT_LOCAL_PRESET

    max_tokens = DEFAULT_LOCAL_PRESET.options["max_tokens"]
    print(f"\n== default local fusion vs one {LARGE} answer (max_tokens {max_tokens}) ==")

    async def measure() -> tuple[list[float], list[float]]:
        async with Fusion(preset=DEFAULT_LOCAL_PRESET.name, seed=1) as fused, \
                Fusion([f"local:{LARGE}"], max_tokens=max_tokens, seed=1) as single:
            await single.run("warm up")  # load the models once, outside the timings
            fused_s = await time_async(lambda: fused.run(PROMPT), runs)
            single_s = await time_async(lambda: single.run(PROMPT), runs)
        return fused_s, single_s

    fused_s, single_s = asyncio.run(measure())
    f, s = statistics.median(fused_s), statistics.median(single_s)
    print(f"  fused {f:.1f}s  single {s:.1f}s  ratio {f / s:.2f}x  (medians of {runs})")


# ---------------------------------------------------------------------------------------
# 5. Batched samples: N samples of one prompt, ours vs llama.cpp's own batched decode

COUNTING = [Message("user", "Count from 1 to 1000, one number per line, nothing else.")]


async def _samples(provider: local.LocalProvider, model: str, n: int, max_tokens: int,
                   together: bool) -> tuple[float, list[int]]:
    params = [GenerationParams(temperature=0.7, seed=k, max_tokens=max_tokens)
              for k in range(n)]
    start = time.perf_counter()
    if together:
        done = await provider.complete_many(model, COUNTING, params, on_delta=[None] * n)
    else:
        done = [await provider.complete(model, COUNTING, p) for p in params]
    return time.perf_counter() - start, [c.usage.completion_tokens for c in done]


def _llama_batched_bench(binary: str, gguf: Path, prompt: int, tokens: int, n: int
                         ) -> dict[int, float]:
    """llama.cpp's batched-bench, prompt shared: total seconds for 1 and n sequences.
    --no-repack: as modelfusion loads models, without the extra (AMX, repacked) buffers
    that fault on these VMs (docs/local.md, AMX)."""
    import json
    import subprocess

    out = subprocess.run(
        [binary, "-m", str(gguf), "-c", str(local.n_ctx()), "-b", "2048", "-ub", "512",
         "-npp", str(prompt), "-ntg", str(tokens), "-npl", f"1,{n}", "-pps",
         "-t", str(local.n_threads()), "--no-repack", "--output-format", "jsonl"],
        capture_output=True, text=True, check=True, timeout=1800).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {int(r["pl"]): float(r["t"]) for r in rows}


def bench_batch(model: str, n: int, max_tokens: int, binary: str | None) -> None:
    print(f"\n== batched samples: {n} samples of one prompt, {model}, {max_tokens} tokens "
          f"each, {local.n_threads()} threads ==")
    provider = local.LocalProvider(builtin_providers()["local"])
    asyncio.run(_samples(provider, model, 1, 4, together=False))  # load before timing
    with Foreign() as fg:
        one, _ = asyncio.run(_samples(provider, model, 1, max_tokens, together=False))
        apart, _ = asyncio.run(_samples(provider, model, n, max_tokens, together=False))
        ours, tokens = asyncio.run(_samples(provider, model, n, max_tokens, together=True))
    print(f"  one sample                  {one:7.2f}s")
    print(f"  {n} one after the other       {apart:7.2f}s  ({apart / one:.2f}x one)")
    print(f"  {n} as one batch (ours)       {ours:7.2f}s  ({ours / one:.2f}x one)  "
          f"tokens {tokens}  foreign {fg.cores:.2f}")
    if binary is None:
        print("  llama.cpp's own batched decode: pass --batched-bench PATH (docs/local.md "
              "says how to build llama-batched-bench from the vendored source)")
        return
    from modelfusion.providers.local import batch

    loaded = local._CACHE.acquire(local_models.resolve(model))
    prompt = len(on_decode_thread(batch._prompt_tokens, loaded.llama, COUNTING)[0])
    local._CACHE.release(loaded)
    local.unload_all()  # one model in memory while llama.cpp's own tool runs
    with Foreign() as fg:
        limit = _llama_batched_bench(binary, local_models.resolve(model), prompt,
                                     max_tokens, n)
    print(f"  llama-batched-bench (prompt shared, {prompt} tokens): one {limit[1]:.2f}s, "
          f"{n} {limit[n]:.2f}s ({limit[n] / limit[1]:.2f}x one)  foreign {fg.cores:.2f}")
    print(f"  RATIO ours/llama.cpp for {n} samples: {ours / limit[n]:.3f}   goal <= 1.10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--only", choices=["overhead", "schedule", "load", "fusion", "batch"])
    parser.add_argument("--samples", type=int, default=4, help="batch: samples of one prompt")
    parser.add_argument("--model", default=LARGE, help="batch: the catalogue model")
    parser.add_argument("--batched-bench", metavar="PATH",
                        help="batch: llama.cpp's llama-batched-bench binary, the limit")
    args = parser.parse_args()
    print(f"llama-cpp threads {local.n_threads()}, n_ctx {local.n_ctx()}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}, cores {os.cpu_count()}")
    if args.only in (None, "load"):
        bench_load()
    if args.only in (None, "overhead"):
        bench_overhead(args.runs, args.max_tokens)
    if args.only in (None, "schedule"):
        bench_schedule(args.runs, args.max_tokens)
    if args.only in (None, "fusion"):
        bench_fusion(args.runs)
    if args.only in (None, "batch"):
        bench_batch(args.model, args.samples, args.max_tokens, args.batched_bench)


if __name__ == "__main__":
    main()
