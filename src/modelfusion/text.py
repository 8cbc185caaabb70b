"""Text cut to fit: the one clipper behind terminal tables, result lines and judge prompts."""

from __future__ import annotations


def clip(text: str, limit: int, *, one_line: bool = False) -> str:
    """`text` in at most `limit` characters, the last one an ellipsis when it was cut.

    `one_line` first folds every run of whitespace (newlines included) into one space, for
    text that is shown inside a line.
    """
    if one_line:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
