"""Grading an output-prediction answer exactly: parse the value, compare it with the truth.

Parsing takes the first reading that `ast.literal_eval` accepts, in this order: the first
code fence's content, the whole answer, its first line. Each is tried as written, then
unwrapped (inline backticks, a leading "The answer is" / "Output:" / "It returns", an echo
of the call such as "`f(3)` returns", a sentence's full stop: "The answer is 5." reads 5,
while a bare "5." is the float it says). Nothing is executed: an answer that is not a
Python literal is `unparsable`, never an error of the grader.

Comparison is type-exact (True is not 1, 5 is not 5.0, a tuple is not a list), containers
element by element, floats with math.isclose(rel_tol=REL_TOL, abs_tol=ABS_TOL).
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

from ..text import clip
from .grade import Grade

REL_TOL = 1e-6
ABS_TOL = 1e-9  # a true 0.0 computed as 1e-17 by another route still counts
MAX_ANSWER_CHARS = 4000  # a longer reading is no short value: not parsed at all

_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_PREFIX = re.compile(
    r"^(?:(?:so|thus|therefore|hence),?\s+)?(?:the\s+)?(?:final\s+)?"
    r"(?:answer|output|result|return\s+value|value|returned\s+value)"
    r"(?:\s+(?:is|would\s+be|will\s+be))?\s*[:=]?\s*", re.I)
_RETURNS = re.compile(r"^(?:it\s+|this\s+|the\s+function\s+)?(?:returns?|gives|outputs?)"
                      r"\s*[:=]?\s*", re.I)
_AFTER_CALL = re.compile(r"^\s*(?:returns?|gives|outputs?|==|->|=>|=|:|is)\s*", re.I)


class _NoValue(Exception):
    pass


def _eval(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _NoValue from None


def _unwrap_call(text: str, entry_point: str) -> str:
    """`f(3, [1, 2])` returns 5 -> 5: drop an echo of the call and its verb."""
    if not entry_point or not text.startswith(entry_point + "("):
        return text
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return _AFTER_CALL.sub("", text[i + 1:].lstrip("` "), count=1)
    return text


def _trim(text: str) -> str:
    """Without the sentence's full stop and inline backticks around it."""
    t = text.strip()
    if t.endswith(".") and not t.endswith(".."):
        t = t[:-1]
    return t.strip().strip("`").strip()


def _readings(text: str, entry_point: str) -> list[str]:
    """The ways of reading one candidate text: as written first, then unwrapped."""
    out = [text.strip()]
    t = text
    for _ in range(2):  # "The answer is `f(3)` returns `5`." needs two passes
        t = _RETURNS.sub("", _PREFIX.sub("", _trim(t), count=1), count=1)
        t = _trim(_unwrap_call(_trim(t), entry_point))
        out.append(t)
    return list(dict.fromkeys(out))


def parse_value(answer: str, entry_point: str = "") -> tuple[Any, str] | None:
    """(value, the text it was read from), or None when no reading is a literal. A reading
    longer than MAX_ANSWER_CHARS is not tried (never cut: a cut number is another number)."""
    text = answer.strip()
    fence = _FENCE.search(text)
    sources = [fence.group(1)] if fence else []
    sources.append(text)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("```")]
    if lines:
        sources.append(lines[0])
    for source in dict.fromkeys(sources):
        for reading in _readings(source, entry_point):
            if len(reading) > MAX_ANSWER_CHARS:
                continue
            try:
                return _eval(reading), reading.strip()
            except _NoValue:
                continue
    return None


def same(truth: Any, value: Any) -> bool:
    """Equal and of the same type, all the way down (floats within the tolerances)."""
    if type(truth) is not type(value):
        return False
    if isinstance(truth, float):
        return truth == value or math.isclose(truth, value, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(truth, complex):
        return same(truth.real, value.real) and same(truth.imag, value.imag)
    if isinstance(truth, list | tuple):
        return len(truth) == len(value) and all(map(same, truth, value))
    if isinstance(truth, dict):
        return len(truth) == len(value) and all(
            any(same(k, j) and same(v, value[j]) for j in value) for k, v in truth.items())
    if isinstance(truth, set | frozenset):
        return len(truth) == len(value) and all(any(same(t, v) for v in value)
                                                for t in truth)
    return bool(truth == value)


def graded_text(entry_point: str, answer: str) -> str:
    """The literal an answer was read as ("" when none): a record's `code` field."""
    parsed = parse_value(answer, entry_point)
    return parsed[1] if parsed else ""


def grade_answer(expected: str, entry_point: str, answer: str | None) -> Grade:
    """Grade `answer` against `expected` (a repr the builder checked reads back). Error
    kinds: no_answer, unparsable, wrong_answer."""
    if answer is None:
        return Grade(False, "no_answer")
    parsed = parse_value(answer, entry_point)
    if parsed is None:
        return Grade(False, "unparsable", clip(answer.strip(), 120, one_line=True))
    truth = ast.literal_eval(expected)
    if same(truth, parsed[0]):
        return Grade(True)
    detail = clip(f"expected {expected}, got {parsed[1]}", 300, one_line=True)
    return Grade(False, "wrong_answer", detail)
