"""The plan of a fusion: which seats, which judge, which mode, which options.

The one place where the rules live: which preset supplies defaults, how its models, judge,
mode and options combine with the caller's, how a spec becomes seats (self-fusion copies:
temperature 0.7 and a seed per copy), the 16-member limit, the option checks, skills, and
the preflight of every provider and local model. `Fusion` resolves its plan here; `fusion
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
from .options import OPTION_FIELDS, FusionOptions
from .skills import member_text, resolve_skills, rubric_text
from .types import GenerationParams

SELF_FUSION_TEMPERATURE = 0.7
MAX_MEMBERS = 16
DEFAULT_MODE = "merge"


@dataclass(frozen=True, slots=True)
class Seat:
    """A resolved member (or judge) before it is bound to a live provider."""

    label: str
    provider: str
    model: str
    params: GenerationParams
    copy: int = 0  # which copy of a `model*N` spec: its seed is the fusion's seed + copy


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

    def with_seed(self, seed: int | None) -> Plan:
        """The same plan run with another seed: members get seed + copy, the judges (and
        the shuffle, which reads `options.seed`) the seed itself. None: unchanged."""
        if seed is None:
            return self

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
    else merge."""
    overrides = dict(options or {})
    unknown = set(overrides) - OPTION_FIELDS
    if unknown:
        raise UsageError(f"unknown fusion options {sorted(unknown)}; known: "
                         f"{sorted(OPTION_FIELDS)}")
    chosen = defaults_from(config, models, preset, default_preset)
    specs = list(models or (chosen.models if chosen else ()))
    if not specs:
        raise UsageError("no models: pass -m provider:model (repeatable) or --preset NAME")
    merged = {**(chosen.options if chosen else {}),
              **{k: v for k, v in overrides.items() if v is not None}}
    return Selection(
        preset=chosen, models=specs,
        judge=judge or (chosen.judge if chosen and chosen.judge else None) or specs[0],
        mode=mode or (chosen.mode if chosen else DEFAULT_MODE), options=merged)


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
        raise UsageError(f"unknown mode {sel.mode!r}; choose one of: {', '.join(sorted(MODES))}")

    specs = [parse_spec(spec) for spec in sel.models]
    seats = [seat for spec in specs for seat in _copies(spec, opts)]
    if len(seats) > MAX_MEMBERS:
        raise UsageError(f"{len(seats)} members: at most {MAX_MEMBERS} per fusion")
    opts.validate(len(seats))
    for spec in specs:
        preflight(config, spec)
    skills = resolve_skills(opts.skills)  # read once, here, not per request
    return Plan(
        seats=seats,
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
    seats = []
    for k in range(spec.count):
        temperature = opts.temperature
        if spec.count > 1 and temperature is None:
            temperature = SELF_FUSION_TEMPERATURE
        label = spec.id if spec.count == 1 else f"{spec.id}#{k + 1}"
        params = GenerationParams(temperature=temperature, max_tokens=opts.max_tokens,
                                  seed=None if opts.seed is None else opts.seed + k,
                                  json_schema=opts.response_schema)
        seats.append(Seat(label, spec.provider, spec.model, params, copy=k))
    return seats


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
