"""Output prediction from HumanEval itself: "What does `f(3, [1, 2])` return?"

Ground truth for text answers with no download. For each problem:

1. the calls in its hidden `check` whose arguments are all literals (`candidate(3, [1, 2])`,
   not `candidate(x)` in a loop), written with the function's own name, at most
   MAX_CALL_CHARS long, without the ones the docstring already shows (there the answer is
   in the question);
2. the canonical solution runs on them in the sandbox (one child per problem, each call
   under its own alarm), so the truth is what the solution returns, never the test's
   expected literal;
3. values whose repr is at most MAX_REPR_CHARS and reads back, by `ast.literal_eval`, as an
   equal value of the same type are kept; of those, at most PER_PROBLEM, chosen by a hash
   of the problem number and the call (deterministic, no RNG whose algorithm could change).

The questions are built once per problem and kept in the home cache (CACHE_NAME, written
atomically), keyed by a digest of the problem's text and the build rules.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..code.sandbox import run_python
from ..files import atomic_write, home_dir
from ..types import Message
from .dataset import Problem
from .grade import MEMORY_MB, Grade
from .outputs_grade import grade_answer, graded_text

if TYPE_CHECKING:  # suite.py imports this module to build the suite
    from .suite import BuildProgress, Task

MAX_CALL_CHARS = 160  # the question stays short
MAX_REPR_CHARS = 80  # the answer stays short and exact
PER_PROBLEM = 3
BUILD_VERSION = 1  # bump when a rule above changes: the cache is rebuilt
CACHE_NAME = f"outputs-v{BUILD_VERSION}.json"
RULES = (f"v{BUILD_VERSION}: literal calls in HumanEval's check (not in the docstring), "
         f"call <= {MAX_CALL_CHARS} chars, canonical solution's value, repr <= "
         f"{MAX_REPR_CHARS} chars and literal, <= {PER_PROBLEM} per problem by sha256")
PER_CALL_S = 2.0  # the canonical solutions answer in milliseconds; a hang is cut
PROBE_TIMEOUT_S = 60.0  # all of one problem's calls
PARALLEL = 2  # sandbox children at once while building

# What every member is asked (settings.json records it).
PROMPT_TEMPLATE = (
    "Here is a Python function:\n\n```python\n{source}```\n\n"
    "What does `{call}` return? Reply with only the Python value."
)


@dataclass(frozen=True, slots=True)
class Question:
    task_id: str  # "HumanEval/12#3": problem 12, its test's literal call 3
    number: int  # the problem's number: the seed source and the subset rule
    index: int  # the call's place among the test's distinct literal calls
    entry_point: str
    source: str  # prompt + canonical solution: what the member reads
    call: str  # "f(3, [1, 2])"
    expected: str  # repr of the canonical solution's value

    def messages(self) -> list[Message]:
        return [Message("user", PROMPT_TEMPLATE.format(source=self.source, call=self.call))]


# ---- 1. the calls


def _literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _render(entry_point: str, call: ast.Call) -> str | None:
    """`entry_point(args)` when every argument is a literal, else None."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords):
        return None
    if not all(_literal(a) for a in call.args) or not all(_literal(k.value)
                                                          for k in call.keywords):
        return None
    parts = [ast.unparse(a) for a in call.args]
    parts += [f"{k.arg}={ast.unparse(k.value)}" for k in call.keywords]
    return f"{entry_point}({', '.join(parts)})"


def literal_calls(problem: Problem) -> list[str]:
    """The distinct calls of `candidate` in the test with literal arguments, in source
    order (a question's index is its place here)."""
    found = []
    for node in ast.walk(ast.parse(problem.test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "candidate":
            text = _render(problem.entry_point, node)
            if text is not None:
                found.append(((node.lineno, node.col_offset), text))
    return list(dict.fromkeys(text for _, text in sorted(found)))


def example_calls(problem: Problem) -> set[str]:
    """The literal calls of the function written in its prompt (docstring examples), in the
    same rendering as literal_calls, so a question whose answer the prompt shows is left out."""
    found: set[str] = set()
    text, name = problem.prompt, problem.entry_point + "("
    start = text.find(name)
    while start != -1:
        end = _closing(text, start + len(name) - 1)
        if end is not None:
            try:
                node = ast.parse(text[start:end + 1], mode="eval").body
            except (SyntaxError, ValueError):
                node = None
            if isinstance(node, ast.Call):
                rendered = _render(problem.entry_point, node)
                if rendered is not None:
                    found.add(rendered)
        start = text.find(name, start + 1)
    return found


def _closing(text: str, open_at: int) -> int | None:
    """The index of the parenthesis closing the one at `open_at` (quotes respected)."""
    depth, quote = 0, ""
    for i in range(open_at, min(len(text), open_at + 4 * MAX_CALL_CHARS)):
        ch = text[i]
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return None


def candidate_calls(problem: Problem) -> list[tuple[int, str]]:
    """(index, call) worth asking: short, not shown in the docstring."""
    shown = example_calls(problem)
    return [(i, c) for i, c in enumerate(literal_calls(problem))
            if len(c) <= MAX_CALL_CHARS and c not in shown]


# ---- 2. the truth, from the canonical solution in the sandbox

# Runs after the solution's source. Each call under its own alarm; the model-free canonical
# code is still run caged, as all code is. A value is reported only when its repr is short
# and reads back as the same value of the same type (so nan, objects and long lists drop).
_PROBE = """

import ast as _ast, io as _io, json as _json, signal as _signal, sys as _sys

def _alarm(signum, frame):
    raise TimeoutError("call took too long")

_signal.signal(_signal.SIGALRM, _alarm)
_out, _sys.stdout = _sys.stdout, _io.StringIO()  # the solution's prints are not results
for _index, _call in _CALLS:
    _signal.setitimer(_signal.ITIMER_REAL, {per_call})
    try:
        _value = _call()
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        _text = repr(_value)
        if len(_text) > {max_repr}:
            _row = {{"index": _index, "skip": "long"}}
        else:
            _back = _ast.literal_eval(_text)
            _same = type(_back) is type(_value) and _back == _value
            _row = {{"index": _index, "repr": _text}} if _same else {{"index": _index,
                                                                       "skip": "not_literal"}}
    except BaseException as _e:  # a crash, a timeout, a repr that does not parse
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        _row = {{"index": _index, "skip": type(_e).__name__}}
    print(_json.dumps(_row), file=_out, flush=True)
"""


def probe_program(problem: Problem, calls: Sequence[tuple[int, str]]) -> str:
    """The solution, then each call as a lambda (the call text is code, never eval'd)."""
    table = ",\n".join(f"    ({i}, lambda: {c})" for i, c in calls)
    return (f"{problem.prompt}{problem.canonical_solution}\n\n_CALLS = [\n{table},\n]\n"
            + _PROBE.format(per_call=PER_CALL_S, max_repr=MAX_REPR_CHARS))


async def true_values(problem: Problem, calls: Sequence[tuple[int, str]]) -> dict[int, str]:
    """index -> repr of what the canonical solution returns, for the calls that qualify."""
    if not calls:
        return {}
    result = await run_python(probe_program(problem, calls), timeout=PROBE_TIMEOUT_S,
                              memory_mb=MEMORY_MB)
    values: dict[int, str] = {}
    for line in result.stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("repr"), str):
            values[int(row["index"])] = row["repr"]
    return values


def choose(number: int, eligible: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """At most PER_PROBLEM of (index, call), by a hash of the problem and the call; kept in
    the test's order."""
    def key(item: tuple[int, str]) -> str:
        return hashlib.sha256(f"{number}\n{item[1]}".encode()).hexdigest()
    return sorted(sorted(eligible, key=key)[:PER_PROBLEM])


async def build_problem(problem: Problem) -> list[Question]:
    calls = candidate_calls(problem)
    values = await true_values(problem, calls)
    picked = choose(problem.number, [(i, c) for i, c in calls if i in values])
    source = problem.prompt + problem.canonical_solution
    source += "" if source.endswith("\n") else "\n"
    return [Question(task_id=f"{problem.task_id}#{i}", number=problem.number, index=i,
                     entry_point=problem.entry_point, source=source, call=c,
                     expected=values[i]) for i, c in picked]


# ---- 3. the cache


def _digest(problem: Problem) -> str:
    text = "\0".join((RULES, problem.prompt, problem.canonical_solution, problem.test))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: rebuilt (it is only a cache)
    return data.get("problems", {}) if isinstance(data, dict) else {}


def _from_cache(problem: Problem, entry: Any) -> list[Question] | None:
    if not isinstance(entry, dict) or entry.get("digest") != _digest(problem):
        return None
    try:
        return [Question(**q) for q in entry["questions"]]
    except (KeyError, TypeError):
        return None


async def build(problems: Sequence[Problem], cache_path: Path, *,
                on_progress: BuildProgress | None = None) -> list[Question]:
    """The questions of `problems`, in problem order: from the cache, the missing ones built
    (PARALLEL sandbox children at a time) and the cache rewritten once, atomically."""
    cached = _load_cache(cache_path)
    found = {p.number: _from_cache(p, cached.get(str(p.number))) for p in problems}
    missing = [p for p in problems if found[p.number] is None]
    done, total = 0, len(missing)
    gate = asyncio.Semaphore(PARALLEL)

    async def one(problem: Problem) -> None:
        nonlocal done
        async with gate:
            found[problem.number] = await build_problem(problem)
        done += 1
        if on_progress is not None:
            on_progress(done, total, problem.task_id)

    await asyncio.gather(*(one(p) for p in missing))
    if missing:
        for p in missing:
            cached[str(p.number)] = {"digest": _digest(p), "task_id": p.task_id,
                                     "questions": [asdict(q) for q in found[p.number] or []]}
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_path, json.dumps({"rules": RULES, "problems": cached}, indent=1)
                     + "\n")
    return [q for p in problems for q in found[p.number] or []]


class OutputsSuite:
    """Output prediction (see the module docstring); graded by outputs_grade.py."""

    name = "outputs"
    prompt_template = PROMPT_TEMPLATE
    max_tokens = 128  # a value of at most MAX_REPR_CHARS characters, with room to spare
    unit = "questions"
    # the questions of one problem share its seed: the seed source stays the problem
    seed_rule = "seed + problem number (HumanEval/k#i -> seed + k)"
    member_answers = True  # a few tokens each: the records show who said what

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_path = (cache_dir or home_dir("cache") / "evals") / CACHE_NAME

    def grader_settings(self) -> dict[str, Any]:
        return {"questions": RULES, "compare": "ast.literal_eval, type-exact; floats "
                "math.isclose(rel_tol=1e-6, abs_tol=1e-9)"}

    async def tasks(self, problems: Sequence[Problem], *,
                    on_progress: BuildProgress | None = None) -> list[Task]:
        return list(await build(problems, self.cache_path, on_progress=on_progress))

    async def grade(self, task: Any, answer: str | None) -> Grade:
        return grade_answer(task.expected, task.entry_point, answer)

    def graded(self, task: Any, answer: str) -> str:
        return graded_text(task.entry_point, answer)
