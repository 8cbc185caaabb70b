"""Generated inputs (`code.variations`): simple variations of the request's example calls,
run in the real sandbox to tell candidates apart by behaviour."""

from __future__ import annotations

from modelfusion.code.checks import find_checks
from modelfusion.code.harness import run_checks
from modelfusion.code.variations import MAX_GENERATED, vary, with_generated
from modelfusion.types import Message

# HumanEval/0's shape: a list and a threshold, two doctest examples.
CLOSE = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
    True
    """
'''


def spec_of(text: str):
    return with_generated(find_checks([Message("user", text)]))


def test_each_argument_varies_alone_and_nothing_is_counted() -> None:
    spec = spec_of(CLOSE)
    generated = [c.source for c in spec.checks if c.kind == "generated"]
    assert spec.total == 2  # the two doctests; generated inputs are never checks
    # Two examples, each a list (4 neighbours) and a float (3): 14 in all.
    assert spec.inputs == len(generated) == 14
    # Round-robin over the examples, and within each over its arguments.
    assert generated[:4] == ["has_close_elements([], 0.5)",
                             "has_close_elements([], 0.3)",
                             "has_close_elements([1.0, 2.0, 3.0], 1.0)",
                             "has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.8)"]
    assert len(set(generated)) == len(generated)
    assert spec.counts()["generated"] == 14
    # More examples than that: the cap holds, and every example is varied before any twice.
    many = vary([f"f({n}, 'x')" for n in range(10, 20)], taken=set())
    assert len(many) == MAX_GENERATED
    assert many[:10] == [f"f({n + 1}, 'x')" for n in range(10, 20)]


def test_neighbours_by_type_and_what_is_left_alone() -> None:
    assert vary(["f(3)"], taken=set()) == ["f(4)", "f(2)", "f(0)", "f(-3)"]
    assert vary(["f('ab')"], taken=set()) == ["f('')", "f('ba')", "f('b')", "f('aba')"]
    assert vary(["f(True)"], taken=set()) == ["f(False)"]
    assert vary(["f(x=(1, 2))"], taken=set()) == ["f(x=())", "f(x=(2, 1))", "f(x=(1,))",
                                                  "f(x=(1, 1, 2))"]
    # Already in the request, not literal, a builtin, too large to walk to, nothing to vary.
    assert vary(["f(0)"], taken={"f(1)"}) == ["f(-1)"]
    assert vary(["f(xs)", "len([1, 2])", "f(10**9)", "f(None)", "f({})"], taken=set()) == []
    assert vary(["f(10000000)"], taken=set()) == []
    assert vary(["not python ("], taken=set()) == []


async def test_generated_inputs_separate_code_the_examples_cannot() -> None:
    spec = spec_of(CLOSE)
    right = ("def has_close_elements(numbers, threshold):\n"
             "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
             "               for b in numbers[i + 1:])\n")
    # Passes both examples, but `min()` of nothing raises on a list of fewer than two.
    gaps = ("def has_close_elements(numbers, threshold):\n"
            "    xs = sorted(numbers)\n"
            "    return min(b - a for a, b in zip(xs, xs[1:])) < threshold\n")
    runs = [await run_checks(spec, code, timeout=10) for code in (right, gaps, right)]
    for run in runs:
        counted = [run.results[i]["ok"] for i, c in enumerate(spec.checks) if c.counted]
        assert counted == [True, True]
    signature = [tuple(run.results[i]["sig"] for i in range(len(spec.checks))) for run in runs]
    assert signature[0] == signature[2] != signature[1]


async def test_an_input_that_loops_costs_a_bounded_time_and_keeps_the_checks() -> None:
    spec = spec_of('def halve(n):\n    """\n    >>> halve(4)\n    2\n    >>> halve(6)\n'
                   '    3\n    """\n')
    generated = [(i, c.source) for i, c in enumerate(spec.checks) if c.kind == "generated"]
    assert [s for _, s in generated] == ["halve(5)", "halve(7)", "halve(3)", "halve(0)",
                                         "halve(-4)", "halve(-6)"]
    loops = ("def halve(n):\n    k = 0\n    while n != 0:\n        n -= 2\n        k += 1\n"
             "    return k\n")  # never ends for odd or negative n
    run = await run_checks(spec, loops, timeout=10)
    assert run.done and not run.sandbox.timed_out
    assert run.results[0]["ok"] and run.results[1]["ok"]  # the visible checks still pass
    # 0.5 s per input, 2 s for all of them: after four time-outs the last is not run.
    assert [run.results[i]["sig"] for i, _ in generated][:3] == ["timeout"] * 3
    assert [run.results[i]["sig"] for i, _ in generated][4:] == ["timeout", "skipped"]
