"""Grading a candidate: its code, the problem's own imports/helpers, the hidden tests,
run in the sandbox (a child process; never `exec` here).

The program is assembled so that the prompt's imports and helper functions stay available
whatever the model wrote: the prompt with a `pass` stub first, then the candidate's code
(whose definitions override the stub), then the hidden `check` and `check(entry_point)`.
An answer that gives only the function body is indented under the prompt's signature.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass

from ..code.extract import defines, extract_code, parses
from ..code.sandbox import run_python
from .dataset import Problem

TIMEOUT_S = 10.0
MEMORY_MB = 1024


@dataclass(frozen=True, slots=True)
class Grade:
    passed: bool
    # Why it failed; stable strings (records.jsonl): no_answer, no_code, syntax_error,
    # wrong_answer, runtime_error, timeout, memory.
    error: str | None = None
    detail: str = ""  # the last line of the traceback, shortened
    duration_ms: float = 0.0


def candidate_code(answer: str) -> str:
    """The code in an answer: a fenced block or a bare program, else a bare (indented) body."""
    code = extract_code(answer)
    if code or not answer.strip():
        return code
    body = textwrap.dedent(answer).strip("\n")
    return answer.strip("\n") + "\n" if parses(body) else ""


def assemble(problem: Problem, code: str) -> str:
    """The program the sandbox runs for `code` (see the module docstring)."""
    if defines(code, problem.entry_point):
        solution = f"{problem.prompt}    pass\n\n\n{code}"
    else:  # only the body: it goes under the prompt's own signature
        body = textwrap.indent(textwrap.dedent(code).strip("\n"), "    ")
        solution = f"{problem.prompt}{body}\n"
    return f"{solution}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


async def grade(problem: Problem, answer: str | None, *, timeout: float = TIMEOUT_S) -> Grade:
    if answer is None:
        return Grade(False, "no_answer")
    code = candidate_code(answer)
    if not code.strip():
        return Grade(False, "no_code")
    program = assemble(problem, code)
    try:
        ast.parse(program)
    except (SyntaxError, ValueError) as e:
        return Grade(False, "syntax_error", f"{type(e).__name__}: {e}"[:300])
    result = await run_python(program, timeout=timeout, memory_mb=MEMORY_MB)
    if result.ok:
        return Grade(True, duration_ms=result.duration_ms)
    if result.timed_out:
        return Grade(False, "timeout", f"no result within {timeout:g} s", result.duration_ms)
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else f"exit code {result.exit_code}"
    return Grade(False, _kind(last), last[:300], result.duration_ms)


def _kind(last_line: str) -> str:
    name = last_line.split(":", 1)[0].strip()
    if name == "AssertionError":
        return "wrong_answer"
    if name in ("SyntaxError", "IndentationError", "TabError"):
        return "syntax_error"
    if name == "MemoryError":
        return "memory"
    return "runtime_error"

