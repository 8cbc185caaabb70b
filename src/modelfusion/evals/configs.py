"""Which configurations an eval runs, all on the same problems:

- solo: each distinct member model alone (one sample; a one-member Fusion, judge skipped),
- greedy: the lead (the first listed model) alone at temperature 0, `solo M t=0`: the way
  a user runs a model on its own, the baseline a fusion has to beat (unless the whole
  run is at temperature 0: then `solo M` is that baseline already),
- fused: the panel in each requested mode (with `--max-samples` / `--effort`: adaptive
  compute, named `fused MODE max_samples=N` / `fused MODE effort=LEVEL`),
- self: the self-fusion baseline, one model sampled as many times as the panel has seats,
  judged by the same judge in the first mode (default model: the judge's).

A config's own `options` override the run's fusion options for it alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import parse_spec
from ..errors import UsageError

SOLO_MODE = "best-of"  # one candidate: every mode but vote skips the judge; best-of is plainest
GREEDY = {"temperature": 0.0}  # the lead alone, as a user runs it: no sampling


@dataclass(frozen=True, slots=True)
class EvalConfig:
    name: str
    kind: str  # solo | greedy | fused | self
    models: tuple[str, ...]
    judge: str
    mode: str
    # Fusion options for this config only, over the run's (the greedy solo's temperature).
    options: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What defines the config (settings.json compares these between runs). `options`
        only when set, so configs without them read as they always did."""
        out: dict[str, Any] = {"kind": self.kind, "models": list(self.models),
                               "judge": self.judge, "mode": self.mode}
        if self.options:
            out["options"] = dict(self.options)
        return out


def self_fusion_note(panel: list[str], self_fusion: str | None) -> str | None:
    """Why the default self-fusion baseline is left out, for the user; None if it runs."""
    if self_fusion is None and sum(parse_spec(s).count for s in panel) < 2:
        return ("one-member panel: no self-fusion baseline (pass --self-fusion SPEC*N to "
                "add one)")
    return None


def build_configs(panel: list[str], judge: str, modes: list[str],
                  self_fusion: str | None, adaptive: Mapping[str, Any] | None = None,
                  temperature: float | None = None) -> list[EvalConfig]:
    """`self_fusion`: None = the default (judge model × seats), "none" = skip, else a spec.
    `adaptive`: `max_samples` or `effort` for the fused configs (named after it).
    `temperature`: the run's; at 0 the solo configs are greedy already, so no second one."""
    specs = [parse_spec(s) for s in panel]
    seats = sum(s.count for s in specs)
    configs: list[EvalConfig] = []
    for model in dict.fromkeys(s.id for s in specs):  # distinct, in the order given
        configs.append(EvalConfig(f"solo {model}", "solo", (model,), model, SOLO_MODE))
    lead = specs[0].id
    if temperature != 0:
        configs.append(EvalConfig(f"solo {lead} t=0", "greedy", (lead,), lead, SOLO_MODE,
                                  options=GREEDY))
    if len(set(modes)) != len(modes):
        raise UsageError(f"--mode given twice: {modes}")
    budget = {k: v for k, v in (adaptive or {}).items() if v is not None}
    suffix = "".join(f" {k}={v}" for k, v in budget.items())
    for mode in modes:
        configs.append(EvalConfig(f"fused {mode}{suffix}", "fused", tuple(panel), judge, mode,
                                  options=budget))
    if self_fusion is None and seats < 2:
        pass  # one seat: nothing to sample it against (self_fusion_note says so)
    elif self_fusion is None or self_fusion.lower() != "none":
        spec = parse_spec(self_fusion or parse_spec(judge).id)
        count = spec.count if self_fusion and "*" in self_fusion else seats
        if count < 2:
            raise UsageError("self-fusion needs at least 2 samples: pass --self-fusion SPEC*N "
                             "(N >= 2) or --self-fusion none")
        model = f"{spec.id}*{count}"
        configs.append(EvalConfig(f"self {model} {modes[0]}", "self", (model,), judge,
                                  modes[0]))
    return configs
