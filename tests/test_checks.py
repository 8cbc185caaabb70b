"""Finding the visible checks (and the context code) in a request: `modelfusion.checks`."""

from __future__ import annotations

from modelfusion.code.checks import Check, find_checks
from modelfusion.types import Message

HUMANEVAL_STYLE = '''from typing import List


def is_palindrome(string: str) -> bool:
    """ Test if given string is a palindrome """
    return string == string[::-1]


def make_palindrome(string: str) -> str:
    """ Find the shortest palindrome that begins with a supplied string.
    >>> make_palindrome('')
    ''
    >>> make_palindrome('cat')
    'catac'
    """
'''


def spec_of(*texts: str, role: str = "user"):
    return find_checks([Message(role, t) for t in texts])  # type: ignore[arg-type]


def test_humaneval_prompt_gives_doctests_context_and_entry() -> None:
    spec = spec_of(HUMANEVAL_STYLE)
    assert spec.checks == (
        Check("doctest", "make_palindrome('')", "''\n"),
        Check("doctest", "make_palindrome('cat')", "'catac'\n"),
    )
    assert spec.entries == ("make_palindrome",)
    # The import and the helper with a body are context; the stub to write is not.
    assert "from typing import List" in spec.context
    assert "def is_palindrome" in spec.context and "make_palindrome" not in spec.context
    assert spec.total == 2 and spec.counts() == {"doctest": 2, "assert": 0, "example": 0,
                                                    "probe": 0, "generated": 0}


def test_multi_line_output_continuation_lines_and_setup_steps() -> None:
    spec = spec_of('''Write `grid(n)` and `total(xs)`.

>>> for row in grid(2):
...     print(row)
[0, 0]
[0, 0]
>>> xs = [1.5, 2.25]
>>> total(xs)
3.75
>>> total([])
0.0
''')
    kinds = [c.kind for c in spec.checks]
    assert kinds == ["doctest", "setup", "doctest", "doctest"]
    loop = spec.checks[0]
    assert loop.source == "for row in grid(2):\n    print(row)"
    assert loop.expected == "[0, 0]\n[0, 0]\n"
    assert spec.checks[2] == Check("doctest", "total(xs)", "3.75\n")
    assert spec.total == 3  # the setup step runs but is not counted


def test_strings_and_expected_exceptions() -> None:
    spec = spec_of('''```python
def parse(text: str) -> int:
    """
    >>> parse("12")
    12
    >>> parse("x")
    Traceback (most recent call last):
      ...
    ValueError: not a number: 'x'
    >>> parse("  7 ") == 7
    """
```''')
    assert spec.checks[0] == Check("doctest", 'parse("12")', "12\n")
    assert spec.checks[1].exception == "ValueError: not a number: 'x'"
    # `>>> expr == value` with no output line, as HumanEval writes some, means "is true".
    assert spec.checks[2] == Check("assert", 'assert parse("  7 ") == 7')
    assert spec.entries == ("parse",)


def test_asserts_in_code_blocks_and_in_prose() -> None:
    spec = spec_of('''Implement `add`.

```python
def add(a, b):
    ...

assert add(1, 2) == 3
if __name__ == "__main__":
    assert add(-1, 1) == 0
```

Also it must hold that:
    assert add(0.1, 0.2) == 0.30000000000000004
    assert add(
        2, 2) == 4
''')
    assert [c.source for c in spec.checks] == [
        "assert add(1, 2) == 3", "assert add(-1, 1) == 0",
        "assert add(0.1, 0.2) == 0.30000000000000004", "assert add(\n2, 2) == 4"]
    assert all(c.kind == "assert" for c in spec.checks)


def test_example_lines_need_a_known_function_and_literals() -> None:
    spec = spec_of('''def is_multiply_prime(a):
    """True if a is the product of 3 primes.
    Example:
    is_multiply_prime(30) == True
    is_multiply_prime(7) ➞ False
    is_happy(abc) => False
    len([1]) == 1
    30 = 2 * 3 * 5
    """
''')
    assert spec.checks == (Check("example", "is_multiply_prime(30)", "True"),
                           Check("example", "is_multiply_prime(7)", "False"))


def test_no_examples_no_checks() -> None:
    spec = spec_of("Write a Python function that checks if a string is a palindrome.")
    assert spec.checks == () and spec.total == 0 and spec.context == ""


def test_only_user_messages_are_read() -> None:
    spec = find_checks([
        Message("system", ">>> secret(1)\n2"),
        Message("user", "Write double(x).\n>>> double(2)\n4"),
        Message("assistant", "assert double(3) == 7"),
    ])
    assert [c.source for c in spec.checks] == ["double(2)"]


def test_duplicate_checks_are_counted_once_and_imports_in_prose_are_context() -> None:
    spec = spec_of("import math\n\nWrite root(x).\n>>> root(4)\n2.0",
                   "Again:\n>>> root(4)\n2.0\n")
    assert spec.total == 1
    assert spec.context == "import math"


def test_unfenced_code_after_prose_is_found() -> None:
    spec = spec_of('''Complete this function:

from typing import List

def head(xs: List[int]) -> int:
    """First element.
    >>> head([3, 4])
    3
    """

Thanks!''')
    assert spec.entries == ("head",)
    assert spec.context == "from typing import List"
    assert spec.checks == (Check("doctest", "head([3, 4])", "3\n"),)


def test_calls_without_a_usable_expected_value_are_probes_not_checks() -> None:
    spec = spec_of('''def fruit(s, n):
    """Count the mangoes.
    fruit("5 apples and 6 oranges", 19) ->19 - 5 - 6 = 8
    fruit("0 apples and 1 oranges", 3) -> 2
    is_simple_power(1, 4) => true
    Call fruit(s) with a variable, or fruit(x, 1): not literal, no probe.
    """
''')
    assert spec.checks == (Check("example", 'fruit("0 apples and 1 oranges", 3)', "2"),
                           Check("probe", 'fruit("5 apples and 6 oranges", 19)'))
    assert spec.total == 1 and spec.inputs == 1  # a probe is run, never counted


def test_lowercase_true_and_returns_comments_are_examples() -> None:
    spec = spec_of('''def is_simple_power(x, n):
    """
    is_simple_power(1, 4) => true
    is_simple_power(3, 2) => false
    to_bin(15)   # returns "1111"
    """

def to_bin(n):
    ...
''')
    assert [(c.source, c.expected) for c in spec.checks] == [
        ("is_simple_power(1, 4)", "True"), ("is_simple_power(3, 2)", "False"),
        ("to_bin(15)", '"1111"')]


def test_one_broken_example_does_not_hide_the_others() -> None:
    # A literal newline inside a string breaks doctest's parse of the whole docstring.
    spec = spec_of('''def strip_vowels(text):
    """
    >>> strip_vowels('')
    ''
    >>> strip_vowels("ab
    cd")
    'bcd'
    >>> strip_vowels('aaa')
    ''
    """
''')
    assert [c.source for c in spec.checks] == ["strip_vowels('')", "strip_vowels('aaa')"]


def test_list_markers_and_a_lone_equals_sign_are_example_lines() -> None:
    # The two styles HumanEval/88 and /144 use: without them these requests had no checks.
    spec = spec_of('''def sort_array(array):
    """Examples:
    * sort_array([]) => []
    * sort_array([5]) => [5]
    - sort_array([2, 1]) == [1, 2]
    1. sort_array([3]) ➞ [3]
    sort_array([1, 0]) = [0, 1]
    find x such that sort_array(x) = 0
    sort_array(x) = [0]
    """
''')
    assert [(c.source, c.expected) for c in spec.checks] == [
        ("sort_array([])", "[]"), ("sort_array([5])", "[5]"), ("sort_array([2, 1])", "[1, 2]"),
        ("sort_array([3])", "[3]"), ("sort_array([1, 0])", "[0, 1]")]
