"""The visible checks in a request: the examples a user (or a HumanEval prompt) shows.

Only the request's user messages are read — never anything else. Three kinds of check:

- doctest: `>>> expr` followed by the expected output (multi-line output, `...`
  continuations, an expected `Traceback`), parsed by the stdlib's `doctest` parser; a
  `>>>` statement with no output (`>>> xs = [3, 1]`) is a setup step, run but not counted;
- assert: `assert ...` statements at the top level of the request's code, or on a line of
  its prose (and `>>> expr == value` with no output line, as HumanEval writes some);
- example: a line `name(args) == value` (also `=`, `=>`, `==>`, `➞`, `→`, `->`, `# returns`,
  after a list marker such as `*` or `1.`)
  whose left side calls a function the request defines, with literal arguments, and whose
  right side is a Python literal (or `true`/`false`) — the style of many HumanEval
  docstrings (`is_multiply_prime(30) == True`).

Calls to the request's functions with literal arguments that come with no usable expected
value (`fruit_distribution("5 apples and 6 oranges", 19) ->19 - 5 - 6 = 8`) become *probes*:
run, never counted as checks, they only tell which candidates behave alike. So do the
*generated* inputs: simple variations of the arguments of every such call (`variations`),
where candidates that all pass the examples can still differ (added by verified mode, not
found here).

Besides the checks, the request's *context*: its import lines and the helper functions and
classes it defines with a real body, so that a candidate which leaves out
`from typing import List`, or relies on a helper the prompt gave, still runs. Functions the
request only declares (a body of just a docstring, `pass` or `...`) are the ones to write:
their names are the `entries`.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..types import Message
from .extract import PYTHON_TAGS, fences, parses

CheckKind = Literal["doctest", "assert", "example", "setup", "probe", "generated"]
# Kinds run only to compare candidates' behaviour: no expected value, never counted.
INPUT_KINDS = ("probe", "generated")
MAX_CHECKS = 64  # a request with more examples than this gets the first 64 checked
MAX_CHARS = 100_000  # of each message: the parsing below must stay cheap on any request
# Characters handed to the parser while looking for unfenced code in prose, all attempts
# together: a failing parse of a big text is slow (CPython parses it twice to explain).
_PARSE_BUDGET = 300_000

_CODE_TAGS = PYTHON_TAGS | {"pycon"}  # a request may show its examples as a pycon session
# A list marker may lead the line (`* f(x) => y`, `- f(x) == y`, `1. f(x) ➞ y`), and a lone
# `=` separates the sides as often as `==` does in prose (`simplify("1/5", "5/1") = True`).
_ARROW = re.compile(r"^\s*(?:[*\-•]\s+|\d{1,2}[.)]\s+)?(?P<lhs>[A-Za-z_]\w*\s*\(.*\))\s*"
                    r"(?:==>|=>|==|=(?!=)|➞|→|->|#\s*returns?)"
                    r"\s*(?P<rhs>.+?)\s*[.,;]?\s*$")
_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(")
_WORDS = {"true": "True", "false": "False", "none": "None"}
_CODE_START = re.compile(r"^(?:def |class |async def |from \S+ import |import |@)", re.M)


@dataclass(frozen=True, slots=True)
class Check:
    kind: CheckKind
    source: str  # the statement(s)/expression as written (an assert: the whole statement)
    expected: str | None = None  # doctest: expected output; example: the value's literal
    exception: str | None = None  # doctest: the exception line expected ("ValueError: ...")

    @property
    def counted(self) -> bool:
        return self.kind != "setup" and self.kind not in INPUT_KINDS

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "source": self.source, "expected": self.expected,
                "exception": self.exception}


@dataclass(frozen=True, slots=True)
class CheckSpec:
    checks: tuple[Check, ...]
    context: str  # import lines and helpers from the request, prepended to every candidate
    entries: tuple[str, ...]  # functions the request declares without a body

    @property
    def total(self) -> int:
        return sum(c.counted for c in self.checks)

    @property
    def inputs(self) -> int:
        """Calls run only to compare candidates' behaviour: probes and generated inputs."""
        return sum(c.kind in INPUT_KINDS for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {kind: sum(c.kind == kind for c in self.checks)
                for kind in ("doctest", "assert", "example", *INPUT_KINDS)}


def find_checks(messages: Sequence[Message]) -> CheckSpec:
    """The checks and context in the user's messages (system and assistant turns ignored)."""
    checks: list[Check] = []
    context: list[str] = []
    entries: list[str] = []
    names: set[str] = set()  # functions the request defines: example lines must call one
    for message in messages:
        if message.role != "user":
            continue
        code, prose = _segments(message.content[:MAX_CHARS])
        for segment in code:
            tree = ast.parse(segment)
            names |= _defined(tree)
            context.extend(_context(segment, tree))
            entries.extend(_stubs(tree))
        for segment in code:
            tree = ast.parse(segment)
            checks.extend(_code_checks(segment, tree, names))
        for text in prose:
            context.extend(_import_lines(text))
            checks.extend(_text_checks(text, names))
    return CheckSpec(checks=tuple(_dedupe(checks))[:MAX_CHECKS],
                     context="\n\n".join(dict.fromkeys(context)),
                     entries=tuple(dict.fromkeys(entries)))


# ---------------------------------------------------------------- code vs prose


def _segments(text: str) -> tuple[list[str], list[str]]:
    """(code, prose): Python that parses, and everything else."""
    blocks = fences(text)
    if not blocks:
        if parses(text):
            return [text], []
        return _split_unfenced(text)
    code: list[str] = []
    prose: list[str] = []
    pos = 0
    for m in blocks:
        prose.append(text[pos:m.start()])
        pos = m.end()
        body = m.group(3)
        (code if m.group(2).lower() in _CODE_TAGS and parses(body) else prose).append(body)
    prose.append(text[pos:])
    return code, prose


def _split_unfenced(text: str) -> tuple[list[str], list[str]]:
    """Prose with code pasted in, unfenced: the longest parsing run from the first line
    that starts like code ("def ", "import "...) to as far down as still parses."""
    start = _CODE_START.search(text)
    if start is None:
        return [], [text]
    lines = text[start.start():].splitlines(keepends=True)
    # Code ends before a line that is not indented (or at the end): try those, longest first.
    ends = [end for end in range(len(lines), 0, -1)
            if end == len(lines) or not lines[end][:1].isspace()]
    budget = _PARSE_BUDGET
    for end in ends:
        chunk = "".join(lines[:end])
        budget -= len(chunk)
        if budget < 0:
            break
        if parses(chunk):
            return [chunk], [text[:start.start()], "".join(lines[end:])]
    return [], [text]


# ---------------------------------------------------------------- context


def _defined(tree: ast.Module) -> set[str]:
    return {n.name for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def _is_stub(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    """A declaration to fill in: only a docstring, `pass`, `...`, imports or
    `raise NotImplementedError`."""
    for stmt in node.body:
        if isinstance(stmt, ast.Pass | ast.Import | ast.ImportFrom):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # the docstring, or `...`
        if isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt):
            continue
        return False
    return True


def _stubs(tree: ast.Module) -> list[str]:
    return [n.name for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and _is_stub(n)]


def _context(source: str, tree: ast.Module) -> list[str]:
    """Imports, and helpers with a real body, as written (in order)."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(ast.get_source_segment(source, node) or ast.unparse(node))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) \
                and not _is_stub(node):
            segment = ast.get_source_segment(source, node, padded=True) or ast.unparse(node)
            decorators = "".join(f"@{ast.unparse(d)}\n" for d in node.decorator_list)
            out.append(decorators + segment)
    return out


def _import_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if re.match(r"^\s*(?:from \S+ import |import )", line) and parses(line.strip())]


# ---------------------------------------------------------------- checks


def _code_checks(source: str, tree: ast.Module, names: set[str]) -> list[Check]:
    checks: list[Check] = []
    docs = [ast.get_docstring(tree)]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            docs.append(ast.get_docstring(node))
    for doc in docs:
        if doc:
            checks.extend(_doctests(doc))
            checks.extend(_examples(doc, names))
            checks.extend(_probes(doc, names))
    for node in _top_level_asserts(tree):
        checks.append(Check("assert", ast.get_source_segment(source, node) or ast.unparse(node)))
    return checks


def _top_level_asserts(tree: ast.Module) -> list[ast.Assert]:
    """Asserts at module level, and in an `if __name__ == "__main__":` block."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assert):
            found.append(node)
        elif isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            found.extend(n for n in node.body if isinstance(n, ast.Assert))
    return found


def _text_checks(text: str, names: set[str]) -> list[Check]:
    return [*_doctests(text), *_prose_asserts(text), *_examples(text, names),
            *_probes(text, names)]


def _doctests(text: str) -> list[Check]:
    try:
        examples = doctest.DocTestParser().get_examples(text)
    except ValueError:  # inconsistent indentation somewhere: parse example by example
        examples = []
        for part in re.split(r"(?m)^(?=[ \t]*>>>)", text):
            try:
                examples.extend(doctest.DocTestParser().get_examples(part))
            except ValueError:
                continue
    checks = []
    for ex in examples:
        source = ex.source.rstrip("\n")
        if not parses(source):
            continue
        if ex.exc_msg is not None:
            last = ex.exc_msg.strip().splitlines()[-1] if ex.exc_msg.strip() else ""
            checks.append(Check("doctest", source, ex.want, exception=last or "Exception"))
        elif ex.want.strip():
            checks.append(Check("doctest", source, ex.want))
        elif _is_comparison(source):  # `>>> f(1) == 2` with no output line: meant as true
            checks.append(Check("assert", f"assert {source}"))
        elif _is_expression(source):  # doctest's meaning: the value is None
            checks.append(Check("doctest", source, ex.want))
        else:
            checks.append(Check("setup", source))
    return checks


def _is_comparison(source: str) -> bool:
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError:
        return False
    return isinstance(node, ast.Compare) and len(node.ops) == 1 \
        and isinstance(node.ops[0], ast.Eq | ast.Is)


def _is_expression(source: str) -> bool:
    try:
        ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    return True


def _prose_asserts(text: str) -> list[Check]:
    """`assert` lines outside code (a statement may run over up to 5 lines)."""
    lines = text.splitlines()
    checks = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("assert "):
            continue
        for end in range(i + 1, min(i + 6, len(lines) + 1)):
            chunk = "\n".join(x.strip() for x in lines[i:end])
            try:
                tree = ast.parse(chunk)
            except SyntaxError:
                continue
            if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
                checks.append(Check("assert", chunk))
            break
    return checks


def _examples(text: str, names: set[str]) -> list[Check]:
    """`f(x) == y` / `f(x) ➞ y` lines: a call to a function of the request, a literal value.

    With no function defined in the request, any call that is not a builtin qualifies.
    """
    checks = []
    for line in text.splitlines():
        m = _ARROW.match(line)
        if not m:
            continue
        lhs, rhs = m["lhs"].strip(), m["rhs"].strip()
        rhs = _WORDS.get(rhs.lower(), rhs)
        try:
            call = ast.parse(lhs, mode="eval").body
            ast.literal_eval(rhs)
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
                continue
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                ast.literal_eval(arg)  # `is_happy(abc)`: prose, not Python
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            continue
        name = call.func.id
        if (names and name not in names) or (not names and hasattr(builtins, name)):
            continue
        checks.append(Check("example", lhs, rhs))
    return checks


def _probes(text: str, names: set[str]) -> list[Check]:
    """Calls to the request's own functions with literal arguments, anywhere in the text."""
    probes = []
    for m in _CALL.finditer(text):
        if m.group(1) not in names:
            continue
        source = _balanced_call(text, m.start(), m.end() - 1)
        if source is None:
            continue
        try:
            call = ast.parse(source, mode="eval").body
            if not isinstance(call, ast.Call) or not (call.args or call.keywords):
                continue
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                ast.literal_eval(arg)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            continue
        probes.append(Check("probe", source))
    return probes


def _balanced_call(text: str, start: int, paren: int) -> str | None:
    """`name(...)` from `start`, up to its closing parenthesis on the same line."""
    depth = 0
    for i in range(paren, min(len(text), paren + 500)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        elif text[i] == "\n":
            return None
    return None


def _dedupe(checks: list[Check]) -> list[Check]:
    """One check per (kind, source, expected); a probe only for a call not checked already."""
    checked = [c.source for c in checks if c.kind != "probe"]
    checks = [c for c in checks
              if c.kind != "probe" or not any(c.source in source for source in checked)]
    seen: set[tuple[str, str, str | None]] = set()
    out = []
    for c in checks:
        key = (c.kind if c.kind != "example" else "doctest", c.source,
               (c.expected or "").strip())
        if c.kind == "setup" or key not in seen:
            out.append(c)
        seen.add(key)
    return out
