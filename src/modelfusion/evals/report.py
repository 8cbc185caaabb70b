"""results.json, results.md and chart.png from the records; all written atomically."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import UsageError
from ..files import atomic_write
from .dataset import EXTRA_HINT
from .metrics import ConfigSummary, add_ratios, summarise
from .record import EvalRecord
from .store import RunDir

UNITS = {"outputs": "questions"}  # what a task is called in results.md (else problems)
KIND_ORDER = {"solo": 0, "greedy": 1, "fused": 2, "self": 3}
LATENCY_NOTE = (
    "latency = the fusion's measured wall time + the recorded latency of the calls it "
    "replayed from the cache; exact for embedded models (one call at a time), an upper bound "
    "for panels whose members run in parallel (cloud). --no-replay measures everything live.")


def require_matplotlib() -> None:
    """Fail before the run, not after it, when the chart cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"the eval chart needs matplotlib: {EXTRA_HINT}") from None


def summaries(settings: Mapping[str, Any], task_ids: Sequence[str],
              records: Mapping[tuple[str, str], EvalRecord]
              ) -> tuple[list[ConfigSummary], ConfigSummary | None]:
    """One summary per config known to the folder, over this run's problems."""
    names = sorted(settings["configs"],
                   key=lambda n: KIND_ORDER.get(settings["configs"][n]["kind"], 9))
    out = []
    for name in names:
        rows = [records[(name, t)] for t in task_ids if (name, t) in records]
        out.append(summarise(name, settings["configs"][name]["kind"], rows))
    return out, add_ratios(out)


def write(run_dir: RunDir, settings: Mapping[str, Any], task_ids: Sequence[str],
          records: Mapping[tuple[str, str], EvalRecord]) -> list[ConfigSummary]:
    rows, ref = summaries(settings, task_ids, records)
    results = {
        "dataset": settings["dataset"],
        "n_problems": len(task_ids),
        "task_ids": list(task_ids),
        "reference": ref.name if ref else None,
        "pass@1": {s.name: round(s.pass_at_1, 4) for s in rows if s.n},
        "configs": [s.to_dict() for s in rows],
        "latency_note": LATENCY_NOTE,
        "settings": settings,
    }
    results["paths"] = decision_paths(rows, ref, task_ids, records)
    atomic_write(run_dir.path / "results.json", json.dumps(results, indent=2) + "\n")
    unit = UNITS.get(settings["dataset"], "problems")
    atomic_write(run_dir.path / "results.md", markdown(rows, ref, len(task_ids), unit)
                 + paths_markdown(results["paths"]))
    atomic_write(run_dir.path / "chart.png", chart(rows))
    return rows


def path_of(record: EvalRecord) -> str:
    """How a fusion decided: adaptive compute's stop, then what the judge did."""
    parts = []
    if record.compute is not None:
        parts.append(f"stage {record.compute.stages}: {record.compute.stopped}")
    if record.judge_status is None:
        parts.append("fusion failed")
    elif record.judge_status == "skipped":
        parts.append(f"judge skipped ({record.judge_reason})")
    else:
        parts.append(f"judge {record.judge_status}"
                     + (f" ({record.judge_reason})" if record.judge_reason else ""))
    return " · ".join(parts)


def decision_paths(rows: Sequence[ConfigSummary], ref: ConfigSummary | None,
                   task_ids: Sequence[str], records: Mapping[tuple[str, str], EvalRecord]
                   ) -> dict[str, Any]:
    """Per fused / self config: how many problems took each decision path and how many of
    those passed; and the problems it won or lost against the reference (the best solo)."""
    out: dict[str, Any] = {}
    for s in rows:
        if s.kind not in ("fused", "self") or not s.n:
            continue
        counts: dict[str, list[int]] = {}
        gained: list[str] = []
        lost: list[str] = []
        for task in task_ids:
            record = records.get((s.name, task))
            if record is None:
                continue
            tally = counts.setdefault(path_of(record), [0, 0])
            tally[0] += 1
            tally[1] += record.passed
            base = records.get((ref.name, task)) if ref else None
            if base is not None and record.passed != base.passed:
                (gained if record.passed else lost).append(task)
        out[s.name] = {"paths": {k: {"problems": n, "passed": p}
                                 for k, (n, p) in sorted(counts.items(), key=lambda i: -i[1][0])},
                       "gained": gained, "lost": lost}
    return out


def paths_markdown(paths: Mapping[str, Any]) -> str:
    lines = []
    for name, info in paths.items():
        lines += ["", f"**{name}**: decision paths", "", "| path | problems | passed |",
                  "|---|---|---|"]
        lines += [f"| {k} | {v['problems']} | {v['passed']} |" for k, v in info["paths"].items()]
        lines += ["", f"Against the reference: gained {len(info['gained'])} "
                  f"({', '.join(info['gained']) or 'none'}), lost {len(info['lost'])} "
                  f"({', '.join(info['lost']) or 'none'})."]
    return "\n".join(lines) + ("\n" if lines else "")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table_rows(rows: Sequence[ConfigSummary]) -> list[list[str]]:
    out = []
    for s in rows:
        cost = "—" if s.cost is None else f"${s.cost / s.n:.5f}" if s.n else "—"
        out.append([
            s.name, str(s.n), f"{s.pass_at_1 * 100:.1f} %" if s.n else "—",
            _fmt(s.delta_points, "+.1f"), f"{s.tokens_mean:,.0f}", cost,
            f"{s.latency_p50_s:.1f} s", f"{s.latency_mean_s:.1f} s",
            _fmt(s.latency_x, ".2f", "×"), _fmt(s.tokens_x, ".2f", "×"),
            _fmt(s.cost_x, ".2f", "×"),
        ])
    return out


HEADERS = ["config", "n", "pass@1", "Δ pts", "tokens/problem", "cost/problem",
           "latency p50", "latency mean", "latency ×", "tokens ×", "cost ×"]


def markdown(rows: Sequence[ConfigSummary], ref: ConfigSummary | None, n_problems: int,
             unit: str = "problems") -> str:
    lines = [f"| {' | '.join(HEADERS)} |", f"|{'---|' * len(HEADERS)}"]
    lines += [f"| {' | '.join(cells)} |" for cells in table_rows(rows)]
    note = (f"\nΔ and × are against the best solo member ({ref.name}). "
            if ref else "\nNo solo member finished a problem yet: no ratios. ")
    note += (f"{n_problems} {unit} selected; n is how many each config has finished. "
             f"{LATENCY_NOTE}\n")
    return "\n".join(lines) + "\n" + note


def chart(rows: Sequence[ConfigSummary]) -> bytes:
    """pass@1 vs mean latency, one labelled point per config (PNG bytes)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in threads and on servers
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    ax = fig.add_subplot()
    markers = {"solo": "o", "greedy": "D", "fused": "s", "self": "^"}
    colours = matplotlib.colormaps["tab10"]
    # Full names would overlap (configs cluster), so each point carries its number and the
    # legend below the axes names it.
    for i, s in enumerate((s for s in rows if s.n), start=1):
        x, y = s.latency_mean_s, s.pass_at_1 * 100
        ax.scatter(x, y, color=colours((i - 1) % 10), marker=markers.get(s.kind, "o"), s=60,
                   zorder=3, label=f"{i}  {s.name} (n={s.n})")
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if any(s.n for s in rows):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    ax.set_xlabel("mean latency per problem (s)")
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(-5, 105)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_title("pass@1 vs latency per config")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
