"""Finding the Python code in a model's answer (fenced blocks, or bare code)."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$",
                    re.MULTILINE | re.DOTALL)
# Info tags of a fence that holds a Python program ("" = untagged). checks.py adds "pycon"
# (a doctest session) for the request's examples; an answer's program is never one.
PYTHON_TAGS = frozenset({"python", "py", "python3", ""})
# An opened fence never closed (an answer cut off by max_tokens), untagged or tagged Python.
_OPENED = re.compile(r"^[ \t]*```[ \t]*(?:"
                     + "|".join(sorted((t for t in PYTHON_TAGS if t), key=len, reverse=True))
                     + r")?[ \t]*\n", re.MULTILINE | re.IGNORECASE)


def fences(text: str) -> list[re.Match[str]]:
    """Closed fenced blocks in `text`: group(2) is the info tag, group(3) the body."""
    return list(_FENCE.finditer(text))


def parses(code: str) -> bool:
    """Whether `code` is a syntactically valid Python module."""
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def extract_code(answer: str) -> str:
    """The Python program an answer contains.

    Fenced blocks tagged python (or untagged) are preferred, largest first among those that
    parse; an unclosed fence (a cut-off answer) counts from its opening line. With no fence,
    the answer itself if it parses as Python, else "" (no code found).
    """
    blocks = [m.group(3) for m in _FENCE.finditer(answer)
              if m.group(2).lower() in PYTHON_TAGS]
    if not blocks:
        opened = _OPENED.search(answer)
        if opened:
            blocks = [answer[opened.end():]]
    if blocks:
        parsing = [b for b in blocks if parses(b)]
        return max(parsing or blocks, key=len).strip("\n") + "\n"
    return answer.strip("\n") + "\n" if parses(answer) and answer.strip() else ""


def defines(code: str, name: str) -> bool:
    """Whether `code` defines a top-level function (or class) called `name`."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
               and node.name == name for node in tree.body)
