"""More inputs than the request shows: simple variations of its examples' arguments.

Verified mode tells candidates apart by what their code does (AlphaCode's clustering,
MBR-exec): two candidates that return the same on many inputs are likely the same program.
The request's own examples are few (HumanEval shows two or three), and every passing
candidate agrees on them by definition. So each call the request makes to one of its own
functions with literal arguments (`f(3, [1, 2])`) is varied one argument at a time — an int
by ±1, 0 and its negation; a string emptied, reversed, or shortened; a list emptied,
reversed, cut to one element, or with its first element repeated — and every candidate runs
on those calls too. They have no expected value: they are *generated* inputs, never counted
as checks; only whether candidates produce the same outputs on them matters.

The variations stay small on purpose (a value's neighbours, not random data): they must
stay cheap to run in the sandbox, and near the inputs the request's author had in mind.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from .checks import Check, CheckSpec

MAX_GENERATED = 16  # generated inputs per request, across all of its example calls
_MAX_MAGNITUDE = 10**6  # an int beyond this is not varied (a loop to it could be slow)


def with_generated(spec: CheckSpec) -> CheckSpec:
    """`spec` with generated inputs after its checks: variations of every literal call in
    its checks and probes to a function that is not a builtin (the request's own)."""
    sources = [c.source for c in spec.checks if c.kind != "setup"]
    generated = vary(sources, taken={c.source.strip() for c in spec.checks})
    return replace(spec, checks=(*spec.checks, *(Check("generated", s) for s in generated)))


def vary(sources: Sequence[str], taken: set[str]) -> list[str]:
    """New call sources from the literal calls in `sources`, none of them in `taken`;
    round-robin over the calls so that the cap keeps variations of each example rather
    than all of the first one's."""
    per_call = [list(_variants(call)) for call in _calls(sources)]
    out: list[str] = []
    seen = set(taken)
    for round_no in range(max((len(v) for v in per_call), default=0)):
        for variants in per_call:
            if round_no < len(variants) and variants[round_no] not in seen:
                seen.add(variants[round_no])
                out.append(variants[round_no])
                if len(out) == MAX_GENERATED:
                    return out
    return out


def _calls(sources: Sequence[str]) -> Iterator[tuple[str, list[Any], list[tuple[str, Any]]]]:
    """(name, positional values, keyword values) of each call with literal arguments to a
    function that is not a builtin (`len([1])` in an assert is not the request's)."""
    for source in sources:
        try:
            tree = ast.parse(source.strip(), mode="exec")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and not hasattr(builtins, node.func.id) and (node.args or node.keywords)):
                continue
            try:
                args = [ast.literal_eval(a) for a in node.args]
                kwargs = [(k.arg, ast.literal_eval(k.value)) for k in node.keywords
                          if k.arg is not None]
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue  # `f(*xs)` or a non-literal argument: nothing to vary safely
            if len(kwargs) == len(node.keywords):
                yield node.func.id, args, kwargs


def _variants(call: tuple[str, list[Any], list[tuple[str, Any]]]) -> Iterator[str]:
    """The call with one argument changed at a time, interleaved across arguments."""
    name, args, kwargs = call
    slots: list[list[str]] = []
    for i, value in enumerate(args):
        slots.append([_render(name, [*args[:i], new, *args[i + 1:]], kwargs)
                      for new in _neighbours(value)])
    for i, (key, value) in enumerate(kwargs):
        slots.append([_render(name, args, [*kwargs[:i], (key, new), *kwargs[i + 1:]])
                      for new in _neighbours(value)])
    for round_no in range(max((len(s) for s in slots), default=0)):
        for options in slots:
            if round_no < len(options):
                yield options[round_no]


def _neighbours(value: Any) -> list[Any]:
    """Values near `value` of the same type, most telling first; never `value` itself."""
    out: list[Any]
    if isinstance(value, bool):
        out = [not value]
    elif isinstance(value, int):
        out = [] if abs(value) > _MAX_MAGNITUDE else [value + 1, value - 1, 0, -value]
    elif isinstance(value, float):
        out = [value + 0.5, -value, 0.0]
    elif isinstance(value, str):
        out = ["", value[::-1], value[1:], value + value[:1]]
    elif isinstance(value, list | tuple):
        kind = type(value)
        out = [kind(), kind(value[::-1]), kind(value[:1]), kind([*value[:1], *value])]
    else:
        out = []  # dicts, sets, None: no obvious neighbour worth running
    return [v for i, v in enumerate(out)
            if not _same(v, value) and not any(_same(v, w) for w in out[:i])]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)


def _render(name: str, args: list[Any], kwargs: list[tuple[str, Any]]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs]
    return f"{name}({', '.join(parts)})"
