"""Text cut to fit (the one clipper behind terminal tables, result lines and judge prompts)
and made fit to show (`printable`: what a terminal would act on, removed)."""

from __future__ import annotations

import re
from collections.abc import Sequence

# What a terminal acts on rather than shows: ESC starts colour, title, clipboard and
# hyperlink sequences, CR and BS overwrite what was shown, 0x80-0x9f are the 8-bit forms
# of such sequences. Tab and newline are text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clip(text: str, limit: int, *, one_line: bool = False) -> str:
    """`text` in at most `limit` characters, the last one an ellipsis when it was cut.

    `one_line` first folds every run of whitespace (newlines included) into one space, for
    text that is shown inside a line.
    """
    if one_line:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def until_stop(text: str, stops: Sequence[str]) -> str | None:
    """`text` up to the first of the `stops` it holds (OpenAI's `stop`: the sequence is not
    part of the answer); None when it holds none."""
    ends = [i for s in stops if s and (i := text.find(s)) >= 0]
    return text[:min(ends)] if ends else None


def printable(text: str) -> str:
    """Text from outside (a prompt, a model's name, answer or error, a file name in a diff)
    without the control characters a terminal would act on: it shows what was written."""
    return _CONTROL.sub("", text)
