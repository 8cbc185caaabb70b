"""The plan of a fusion: which seats, which judge, which mode, which options.

The one place where the rules live: which preset supplies defaults, how its models, judge,
mode and options combine with the caller's, how a spec becomes seats (self-fusion copies:
temperature 0.7 and a seed per copy), adaptive compute's two stages of seats (the lead
first), the 16-member limit, the option checks, skills, and the preflight of every provider
and local model. `Fusion` resolves its plan here; `fusion
eval` and the server ask `select()` which preset, judge and mode apply instead of working
it out again. Everything is checked before any request is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .config import Config, ModelSpec, Preset, parse_spec
from .errors import UsageError
from .modes import MODES
from .options import MAX_MEMBERS as MAX_MEMBERS  # re-exported: the limit lives with the options
from .options import OPTION_FIELDS, FusionOptions, check_option
from .skills import member_text, resolve_skills, rubric_text
from .types import GenerationParams

SELF_FUSION_TEMPERATURE = 0.7
LEAD_TEMPERATURE = 0.0  # adaptive compute's lead, when no temperature is set: greedy
DEFAULT_MODE = "merge"
ADAPTIVE_OPTIONS = ("max_samples", "effort")  # two ways to set one budget


@dataclass(frozen=True, slots=True)
class Seat:
    """A resolved member (or judge) before it is bound to a live provider."""

    label: str
    provider: str
    model: str
    params: GenerationParams
    copy: int = 0  # which copy of a `model*N` spec: its seed is the fusion's seed + copy
    # Adaptive compute's stage 2: this sample of the lead revises the lead's answer, told
    # why the mode did not take it (the `revise` option), when the mode says why.
    revises: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    seats: list[Seat]
    judge: Seat
    fallback_judge: Seat | None
    mode: str
    options: FusionOptions
    preset: str | None = None  # the preset that supplied defaults, if any
    instructions: str = ""  # skills' text for every member's system prompt
    rubric: str = ""  # skills' rubric for the judge
    # Adaptive compute (docs/adaptive.md): seats[:first] are stage 1 (the lead, and
    # samples of it as the mode's acceptance rule asks), seats[first:] stage 2, dispatched
    # only when the mode does not accept stage 1. None: off, every seat at once.
    first: int | None = None

    def with_seed(self, seed: int | None) -> Plan:
        """The same plan run with another seed: members get seed + copy, the judges (and
        the shuffle, which reads `options.seed`) the seed itself. None: unchanged."""
        if seed is None:
            return self
        check_option("seed", seed, len(self.seats))  # as if it had been the option

        def reseed(seat: Seat) -> Seat:
            return replace(seat, params=replace(seat.params, seed=seed + seat.copy))

        return replace(
            self, seats=[reseed(s) for s in self.seats], judge=reseed(self.judge),
            fallback_judge=reseed(self.fallback_judge) if self.fallback_judge else None,
            options=replace(self.options, seed=seed))


@dataclass(frozen=True, slots=True)
class Selection:
    """What the caller and the preset together ask for, before any of it is checked."""

    preset: Preset | None
    models: list[str]
    judge: str
    mode: str
    # The preset's options overlaid with the caller's (None means "not set"), as given:
    # `fusion eval` records them, so a TOML string stays a string here.
    options: dict[str, Any]


def defaults_from(config: Config, models: Sequence[str] | None, preset: str | None,
                  default_preset: str | None = None) -> Preset | None:
    """The preset that supplies defaults: the one named; else, when no models are given,
    `default_preset` or the config's default. Models without a preset mean no preset."""
    if preset:
        return config.preset(preset)
    if models:
        return None
    return config.preset(default_preset) if default_preset else config.default()


def select(config: Config, models: Sequence[str] | None = None, judge: str | None = None,
           mode: str | None = None, preset: str | None = None,
           options: Mapping[str, Any] | None = None, *,
           default_preset: str | None = None) -> Selection:
    """Models, judge, mode and options from the caller, then the preset, then the rules:
    the judge defaults to the preset's, else the first member; the mode to the preset's,
    else merge. A caller's `max_samples` or `effort` replaces the preset's either; a mode
    without an acceptance rule drops the preset's."""
    overrides = dict(options or {})
    unknown = set(overrides) - OPTION_FIELDS
    if unknown:
        raise UsageError(f"unknown fusion options {sorted(unknown)}; known: "
                         f"{sorted(OPTION_FIELDS)}")
    chosen = defaults_from(config, models, preset, default_preset)
    specs = list(models or (chosen.models if chosen else ()))
    if not specs:
        raise UsageError("no models: pass -m provider:model (repeatable) or --preset NAME")
    given = {k: v for k, v in overrides.items() if v is not None}
    defaults = dict(chosen.options if chosen else {})
    mode = mode or (chosen.mode if chosen else DEFAULT_MODE)
    # The caller's budget replaces the preset's; so does a mode of the caller's that has no
    # acceptance rule (`fusion review` on the `local` preset): the preset's budget was for
    # its own mode, not a refusal waiting to happen.
    unsupported = mode in MODES and MODES[mode].accept is None
    if unsupported or any(k in given for k in ADAPTIVE_OPTIONS):
        for k in ADAPTIVE_OPTIONS:
            defaults.pop(k, None)
    merged = {**defaults, **given}
    return Selection(
        preset=chosen, models=specs,
        judge=judge or (chosen.judge if chosen and chosen.judge else None) or specs[0],
        mode=mode, options=merged)


def resolve(config: Config, models: Sequence[str] | None = None, judge: str | None = None,
            mode: str | None = None, preset: str | None = None,
            options: Mapping[str, Any] | None = None, *,
            default_preset: str | None = None) -> Plan:
    """The checked plan. Option checks come before provider checks, so a bad option is
    named even where a provider would refuse too (the server relies on it)."""
    sel = select(config, models, judge, mode, preset, options, default_preset=default_preset)
    merged = dict(sel.options)
    if isinstance(merged.get("skills"), str):
        merged["skills"] = (merged["skills"],)
    if "skills" in merged:  # a TOML / JSON list becomes the tuple the option holds
        merged["skills"] = tuple(merged["skills"])
    opts = FusionOptions(**merged)
    if sel.mode not in MODES:
        raise UsageError(f"unknown mode {sel.mode!r}; choose one of: {', '.join(sorted(MODES))}",
                         option="mode")

    specs = [parse_spec(spec) for spec in sel.models]
    seats = [seat for spec in specs for seat in _copies(spec, opts)]
    if len(seats) > MAX_MEMBERS:
        raise UsageError(f"{len(seats)} members: at most {MAX_MEMBERS} per fusion")
    opts.validate(len(seats))
    first = None
    if opts.samples is not None:
        seats, first = _stages(specs, seats, opts, sel.mode)
        opts.validate(len(seats))  # quorum: at most the candidates there can be
    for spec in specs:
        preflight(config, spec)
    skills = resolve_skills(opts.skills)  # read once, here, not per request
    return Plan(
        seats=seats,
        first=first,
        judge=_judge_seat(config, sel.judge, opts),
        fallback_judge=_judge_seat(config, opts.fallback_judge, opts)
        if opts.fallback_judge else None,
        mode=sel.mode,
        options=opts,
        preset=sel.preset.name if sel.preset else None,
        instructions=member_text(skills),
        rubric=rubric_text(skills),
    )


def _copies(spec: ModelSpec, opts: FusionOptions) -> list[Seat]:
    """The seats of one spec: `model*N` is N copies that must differ, so each gets the
    self-fusion temperature (unless one is set) and its own seed."""
    if spec.count == 1:
        return [_seat(spec, 0, spec.id, opts.temperature, opts)]
    return [_copy(spec, k, opts) for k in range(spec.count)]


def _copy(spec: ModelSpec, k: int, opts: FusionOptions) -> Seat:
    """Copy k of a spec, as a self-fusion copy: label `spec#(k+1)`, the self-fusion
    temperature unless one is set, seed + k."""
    temperature = SELF_FUSION_TEMPERATURE if opts.temperature is None else opts.temperature
    return _seat(spec, k, f"{spec.id}#{k + 1}", temperature, opts)


def _seat(spec: ModelSpec, k: int, label: str, temperature: float | None,
          opts: FusionOptions) -> Seat:
    params = GenerationParams(temperature=temperature, max_tokens=opts.max_tokens,
                              seed=None if opts.seed is None else opts.seed + k,
                              top_p=opts.top_p, stop=tuple(opts.stop) or None,
                              json_schema=opts.response_schema)
    return Seat(label, spec.provider, spec.model, params, copy=k)


def _stages(specs: list[ModelSpec], seats: list[Seat], opts: FusionOptions, mode: str
            ) -> tuple[list[Seat], int]:
    """Adaptive compute's seats, in dispatch order, and how many form stage 1.

    The first listed model is the lead: it runs first, at the caller's temperature or
    greedy (0). Stage 1 is the lead plus the samples of it the mode's acceptance rule asks
    for (the lead's own `*N` copies, then new ones). Stage 2 is the panel's other seats,
    then new samples of the lead (`spec#k`, as self-fusion copies: 0.7 unless a temperature
    is set, seed + k), until `max_samples` candidates in all. With `revise` on, stage 2's
    samples of the lead model revise the lead's answer."""
    accept = MODES[mode].accept
    budget = opts.samples
    assert budget is not None
    if accept is None:
        supported = ", ".join(sorted(n for n, m in MODES.items() if m.accept))
        option = "max_samples" if opts.max_samples is not None else "effort"
        raise UsageError(f"--{option.replace('_', '-')}: mode {mode!r} has no acceptance "
                         f"rule for adaptive compute; use one of: {supported}", option=option)
    head = specs[0]
    lead = seats[0]
    temperature = LEAD_TEMPERATURE if opts.temperature is None else opts.temperature
    lead = replace(lead, params=replace(lead.params, temperature=temperature))
    new = [_copy(head, k, opts) for k in range(head.count, head.count + budget)]
    samples = [*seats[1:head.count], *new]
    stage1 = [lead, *samples[:min(accept.first, budget) - 1]]
    rest = [replace(s, revises=opts.revise and (s.provider, s.model) == (lead.provider,
                                                                          lead.model))
            for s in [*seats[1:], *new] if s not in stage1]
    return [*stage1, *rest[:budget - len(stage1)]], len(stage1)


def _judge_seat(config: Config, spec: str, opts: FusionOptions) -> Seat:
    parsed = parse_spec(spec)
    preflight(config, parsed)
    params = GenerationParams(temperature=opts.judge_temperature, seed=opts.seed,
                              max_tokens=opts.judge_max_tokens)
    return Seat(parsed.id, parsed.provider, parsed.model, params)


def preflight(config: Config, spec: ModelSpec) -> None:
    """Unknown provider, missing key, offline, a local model that can't load: fail now."""
    cfg = config.provider(spec.provider)
    if cfg.kind == "local":
        from .providers.local.runtime import check_model  # llama-cpp-python only when used

        check_model(spec.model)
