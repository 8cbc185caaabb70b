"""What `fusion eval` runs on: a suite of tasks, each with the messages members get, and an
exact grade for an answer. The runner, the records and the report know only this protocol.

    humaneval  code: the answer's function runs against the problem's hidden tests
    outputs    output prediction: "What does `f(3, [1, 2])` return?", graded against the
               value HumanEval's canonical solution returns (outputs.py, outputs_grade.py)

Both are built from HumanEval's problems, so both share its subset rule: `--every K` takes
problems 0, K, 2K, ...; a task carries its problem's number, which is its seed source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import UsageError
from ..types import Message
from . import dataset
from .grade import MEMORY_MB, TIMEOUT_S, Grade, candidate_code, grade

# done, total, what was just done: how a suite reports preparing its tasks (outputs runs
# every selected problem's canonical solution once, then reads them from its cache).
BuildProgress = Callable[[int, int, str], None]


class Task(Protocol):
    """One thing to answer: a HumanEval problem, or one question built from one."""

    @property
    def task_id(self) -> str: ...

    @property
    def number(self) -> int: ...  # the HumanEval problem's number: the seed source

    def messages(self) -> list[Message]: ...


class Suite(Protocol):
    name: str
    prompt_template: str  # recorded in settings.json: a different template, a new experiment
    max_tokens: int  # per member answer unless --max-tokens or the preset says otherwise
    unit: str  # what a task is called in messages ("problems", "questions")
    seed_rule: str  # recorded in settings.json
    member_answers: bool  # keep each member's answer in the records (short answers only)

    def grader_settings(self) -> dict[str, Any]: ...

    async def tasks(self, problems: Sequence[dataset.Problem], *,
                    on_progress: BuildProgress | None = None) -> list[Task]: ...

    async def grade(self, task: Any, answer: str | None) -> Grade: ...

    def graded(self, task: Any, answer: str) -> str: ...  # what was graded: a record's `code`


class HumanEvalSuite:
    """Code: complete the function; graded by the hidden tests in the sandbox (grade.py)."""

    name = "humaneval"
    prompt_template = dataset.PROMPT_TEMPLATE
    max_tokens = 512
    unit = "problems"
    seed_rule = "seed + problem number (HumanEval/k -> seed + k)"
    member_answers = False  # whole functions: the records would triple in size

    def grader_settings(self) -> dict[str, Any]:
        return {"timeout_s": TIMEOUT_S, "memory_mb": MEMORY_MB}

    async def tasks(self, problems: Sequence[dataset.Problem], *,
                    on_progress: BuildProgress | None = None) -> list[Task]:
        return list(problems)

    async def grade(self, task: Any, answer: str | None) -> Grade:
        return await grade(task, answer)

    def graded(self, task: Any, answer: str) -> str:
        return candidate_code(answer)


SUITES = ("humaneval", "outputs")


def get(name: str, *, cache_dir: Path | None = None) -> Suite:
    """The suite called `name` (case-insensitive); UsageError naming the known ones."""
    key = name.lower()
    if key == "humaneval":
        return HumanEvalSuite()
    if key == "outputs":
        from .outputs import OutputsSuite  # the question builder: only when asked for

        return OutputsSuite(cache_dir=cache_dir)
    raise UsageError(f"unknown dataset {name!r}; known: {', '.join(SUITES)}")


def first(tasks: list[Task], limit: int | None) -> list[Task]:
    """The first `limit` tasks (all for None); --limit counts tasks, after --every."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})")
    return tasks[:limit] if limit is not None else tasks
