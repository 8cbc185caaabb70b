"""pass@k and the per-config summary (pass@1, tokens, cost, latency, ratios to the best solo)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from math import comb
from typing import Any

from .record import EvalRecord


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem from n samples of which c passed (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement hold a pass."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean_pass_at_k(samples: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k over problems: the mean of pass_at_k(n, c, k) over (n, c) per problem."""
    values = [pass_at_k(n, c, k) for n, c in samples]
    return sum(values) / len(values) if values else 0.0


@dataclass(slots=True)
class ConfigSummary:
    name: str
    kind: str  # solo | greedy | fused | self
    n: int  # problems with a record
    passed: int
    pass_at_1: float  # 0..1
    tokens: int  # total over the problems (members + judge)
    tokens_mean: float
    cost: float | None  # USD total; None if any call's cost is unknown
    latency_p50_s: float
    latency_mean_s: float
    replayed_calls: int
    delta_points: float | None = None  # pass@1 minus the best solo's, in points
    tokens_x: float | None = None  # tokens_mean ÷ the best solo's
    cost_x: float | None = None
    latency_x: float | None = None
    # Adaptive compute: the mean candidates dispatched per problem (None: not adaptive).
    samples_mean: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass@1"] = d.pop("pass_at_1")
        return d


def summarise(name: str, kind: str, records: Sequence[EvalRecord]) -> ConfigSummary:
    """One config's figures from its records (one per problem, one sample each)."""
    latencies = [r.latency_ms / 1000 for r in records]
    costs = [r.cost for r in records]
    tokens = sum(r.tokens.total_tokens for r in records)
    passed = sum(bool(r.passed) for r in records)
    n = len(records)
    used = [r.compute.samples_used for r in records if r.compute]
    return ConfigSummary(
        name=name, kind=kind, n=n, passed=passed,
        pass_at_1=mean_pass_at_k(((1, int(bool(r.passed))) for r in records), 1),
        tokens=tokens, tokens_mean=tokens / n if n else 0.0,
        cost=None if any(c is None for c in costs) else round(sum(costs), 8),  # type: ignore[arg-type]
        latency_p50_s=statistics.median(latencies) if latencies else 0.0,
        latency_mean_s=statistics.fmean(latencies) if latencies else 0.0,
        replayed_calls=sum(r.replayed_calls for r in records),
        samples_mean=statistics.fmean(used) if used else None,
    )


SOLO_KINDS = ("solo", "greedy")  # one member alone: sampled as configured, or at t=0


def best_solo(summaries: Sequence[ConfigSummary]) -> ConfigSummary | None:
    """The reference: the member alone (sampled or greedy) with the highest pass@1; ties go
    to the greedy run (how a user runs a model alone), then the faster one."""
    solos = [s for s in summaries if s.kind in SOLO_KINDS and s.n]
    return max(solos, key=lambda s: (s.pass_at_1, s.kind == "greedy", -s.latency_mean_s)
               ) if solos else None


def add_ratios(summaries: Sequence[ConfigSummary]) -> ConfigSummary | None:
    """Fill Δ pass@1 (points) and the ×-ratios against the best solo; return that solo."""
    ref = best_solo(summaries)
    if ref is None:
        return None
    for s in summaries:
        if not s.n:
            continue
        s.delta_points = round((s.pass_at_1 - ref.pass_at_1) * 100, 2)
        s.tokens_x = _ratio(s.tokens_mean, ref.tokens_mean)
        s.latency_x = _ratio(s.latency_mean_s, ref.latency_mean_s)
        if s.cost is not None and ref.cost is not None:
            s.cost_x = _ratio(s.cost / s.n, ref.cost / ref.n)
    return ref


def _ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 3) if reference > 0 else None  # free or instant: no ratio
