"""`FusionOptions` and the one table of what each option accepts.

Every option is a field of `FusionOptions`; its `Rule` (types, range, who may set it) rides
in the field's metadata, so the dataclass *is* the table. Everything else derives from it:
`FusionOptions.validate`, the options a preset may set (`config.OPTION_NAMES`), the options
a server request may set and their types (`server/schemas.OPTION_TYPES`) and the ranges in
the served OpenAPI document (`server/openapi`). A new option is one field here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

from .errors import UsageError
from .skills import Skill, resolve_skills

MAX_SECONDS = 24 * 3600.0  # a fusion that runs longer than a day is a mistake
MAX_MEMBERS = 16  # seats per fusion, and so candidates (max_samples)
# One answer's token budget, members' and the judge's alike: above what any model writes in
# one answer, so only a mistake is refused (a server caps both lower, `max_tokens_cap`).
MAX_TOKENS = 131_072
# Seeds are 32-bit: what a fresh seed is drawn from and what llama.cpp takes (unsigned;
# -1 there means "random"); OpenAI-compatible servers take them too. Copies and eval
# problems add their number to it.
MAX_SEED = 2**32 - 1
# `effort` in samples: the one place that says what each level spends (docs/adaptive.md).
# "off" (every seat at once, as without it) lets a caller override a preset's budget.
EFFORT_SAMPLES: dict[str, int] = {"low": 2, "medium": 4, "high": 8}
EFFORT_OFF = "off"
MAX_STOP = 4  # stop sequences per request, OpenAI's own limit

T = TypeVar("T")
INT: tuple[type, ...] = (int,)
NUMBER: tuple[type, ...] = (int, float)
STR: tuple[type, ...] = (str,)
BOOL: tuple[type, ...] = (bool,)
_KINDS = {INT: "an integer", NUMBER: "a number", STR: "a string", BOOL: "true or false"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """What one option accepts, and who may set it."""

    types: tuple[type, ...]
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False  # the minimum itself is refused (a timeout of 0)
    up_to_members: bool = False  # quorum: at most the number of members
    flag: bool = False  # messages name it as the CLI flag (--max-tokens), else by its name
    unit: str = ""  # after the range in messages: " seconds"
    says: str | None = None  # the range in words, where the numbers read badly
    choices: tuple[str, ...] | None = None  # the only values accepted (effort's levels)
    preset: bool = True  # a preset in fusion.toml may set it
    request: bool = True  # a server request may set it (`fusion.NAME`)

    def label(self, name: str) -> str:
        return "--" + name.replace("_", "-") if self.flag else name

    def wants(self, n_members: int) -> str:
        """The accepted values in words, as an error message ends."""
        if self.says is not None:
            return self.says
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        lo, hi = _number(self.minimum), _number(self.maximum)
        if self.up_to_members:
            return f"between {lo} and the number of members ({n_members})"
        if lo is not None and hi is not None:
            return f"between {lo} and {hi}{self.unit}"
        if lo is not None:
            return f"at least {lo}{self.unit}"
        return _KINDS.get(self.types, "of type " + "/".join(t.__name__ for t in self.types))

    def accepts(self, value: Any, n_members: int) -> bool:
        numeric = self.types in (INT, NUMBER)
        # bool is an int to Python, never a number to a caller; NaN and infinities are no
        # amounts (comparisons with NaN are all false, so the range checks catch it too).
        if not isinstance(value, self.types) or (numeric and isinstance(value, bool)):
            return False
        if numeric and isinstance(value, float) and not math.isfinite(value):
            return False
        if self.choices is not None:
            return value in self.choices
        lo = self.minimum
        hi = n_members if self.up_to_members else self.maximum
        number = cast(float, value)  # only numeric options have bounds
        if lo is not None and not (lo < number if self.above_minimum else lo <= number):
            return False
        return hi is None or number <= hi


def _number(x: float | None) -> str | None:
    """A bound as a person reads it: 4294967295, not 4.29497e+09."""
    if x is None:
        return None
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _option(default: T, types: tuple[type, ...], **rule: Any) -> T:
    """A FusionOptions field with its rule attached."""
    return field(default=default, metadata={"rule": Rule(types=types, **rule)})


_TOKENS = {"minimum": 1, "maximum": MAX_TOKENS}
_SECONDS = {"minimum": 0, "maximum": MAX_SECONDS, "above_minimum": True, "flag": True,
            "unit": " seconds"}


@dataclass(frozen=True, slots=True, kw_only=True)
class FusionOptions:
    """Knobs of one fusion. Presets and callers set them by these names."""

    quorum: int | None = _option(None, INT, minimum=1, up_to_members=True, flag=True)
    rounds: int = _option(1, INT, minimum=0, maximum=5, flag=True)
    # Members; None = provider default (0.7 for self-fusion copies).
    temperature: float | None = _option(None, NUMBER, minimum=0, maximum=2)
    judge_temperature: float = _option(0.0, NUMBER, minimum=0, maximum=2)
    # Members' nucleus sampling; None = provider default. Not the judge's: it is greedy.
    top_p: float | None = _option(None, NUMBER, minimum=0, maximum=1, above_minimum=True)
    # Where the answer ends (OpenAI's `stop`): members stop there, and an answer the judge
    # wrote is cut at the first one (never sent to the judge: its JSON would break there).
    stop: tuple[str, ...] = _option((), (tuple, list),
                                    says=f"at most {MAX_STOP} non-empty strings")
    # Room for a merge answer plus its analysis.
    judge_max_tokens: int = _option(2048, INT, **_TOKENS)
    max_tokens: int | None = _option(None, INT, **_TOKENS, flag=True)
    # The bound on the final answer where a judge writes it (merge, debate): its writing
    # verdict gets at most this many tokens (and at most judge_max_tokens). None:
    # judge_max_tokens alone. The server sets it from a request's max_tokens (an OpenAI
    # client's bound is on the answer it gets); the CLI's --max-tokens stays per member.
    answer_max_tokens: int | None = _option(None, INT, **_TOKENS)
    timeout: float = _option(120.0, NUMBER, **_SECONDS)  # per member
    deadline: float = _option(300.0, NUMBER, **_SECONDS)  # whole fusion
    retries: int = _option(2, INT, minimum=0, maximum=10)
    # First backoff in seconds; doubles per attempt.
    retry_backoff: float = _option(0.5, NUMBER, minimum=0, maximum=60, unit=" seconds")
    system: str | None = _option(None, STR)
    # Shuffle seed (and sampling seed where supported).
    seed: int | None = _option(None, INT, minimum=0, maximum=MAX_SEED)
    fallback_judge: str | None = _option(None, STR)
    max_cost: float | None = _option(None, NUMBER, minimum=0, above_minimum=True, flag=True,
                                     says="a positive amount of USD")  # the whole fusion
    max_total_tokens: int | None = _option(None, INT, minimum=1, flag=True)
    # best-of: candidates that address the judge lose; the pick must survive a reversed order.
    demote_suspicious: bool = _option(True, BOOL)
    judge_both_orders: bool = _option(False, BOOL)
    # Instruction packs (names of shipped skills, or Skill objects): their text goes to
    # every member's system prompt, their rubric to the judge. A request names shipped
    # packs only (the server parses this one itself: never a path).
    skills: tuple[str | Skill, ...] = _option((), (tuple, list))
    # JSON schema the members' answers must follow, where the provider can enforce it
    # (llama.cpp grammar, OpenAI json_schema). Set by `fusion review`; not a preset option.
    response_schema: dict[str, Any] | None = _option(None, (dict,), preset=False,
                                                      request=False)
    # Adaptive compute (docs/adaptive.md): at most this many candidates, the first listed
    # model (the lead) asked first; the mode's acceptance rule says whether its answer
    # stands or the rest of the budget is spent. None: off, every seat at once.
    max_samples: int | None = _option(None, INT, minimum=1, maximum=MAX_MEMBERS, flag=True)
    # The same budget in words: EFFORT_SAMPLES says how many samples each level means.
    effort: str | None = _option(None, STR, choices=(*EFFORT_SAMPLES, EFFORT_OFF), flag=True)
    # Adaptive compute's stage 2: the new samples of the lead see its answer and why the
    # mode did not take it (verified: the visible checks it failed, with what its code
    # did), and revise it — execution feedback, as in Self-Debugging (arXiv 2304.05128).
    # Off by default: the embedded 1.5B mostly repeats its answer (docs/adaptive.md: 0 of
    # 12 revisions passed where 3 of 12 fresh samples did); fresh samples answer afresh.
    revise: bool = _option(False, BOOL)
    # Fusion depth of the incoming request: the server sets it from X-Fusion-Depth.
    depth: int = _option(0, INT, preset=False, request=False)

    @property
    def samples(self) -> int | None:
        """The adaptive budget: max_samples, else what `effort` names; None when off."""
        if self.max_samples is not None:
            return self.max_samples
        return EFFORT_SAMPLES.get(self.effort) if self.effort is not None else None

    def validate(self, n_members: int) -> None:
        """Every option against its rule; the error names the option (`UsageError.option`)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue  # unset
            check_option(f.name, value, n_members)
        if len(self.stop) > MAX_STOP or not all(isinstance(s, str) and s for s in self.stop):
            raise UsageError(f"stop must be {RULES['stop'].wants(n_members)}", option="stop")
        if self.max_samples is not None and self.effort is not None:
            raise UsageError("set --max-samples or --effort, not both", option="effort")
        try:
            resolve_skills(tuple(self.skills))  # an unknown name fails here, listing the known
        except UsageError as e:
            e.option = "skills"
            raise


RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(FusionOptions)}


def check_option(name: str, value: Any, n_members: int) -> None:
    """One option against its rule; the error names the option (`UsageError.option`)."""
    rule = RULES[name]
    if not rule.accepts(value, n_members):
        raise UsageError(f"{rule.label(name)} must be {rule.wants(n_members)}", option=name)
OPTION_FIELDS = frozenset(RULES)
PRESET_OPTIONS = frozenset(name for name, rule in RULES.items() if rule.preset)
REQUEST_OPTIONS = frozenset(name for name, rule in RULES.items() if rule.request)
