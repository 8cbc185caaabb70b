"""Run one candidate's code against the visible checks, in the sandbox, and read its report.

The program sent to the sandbox is a fixed harness (below) with the request's context, the
candidate's code and the checks embedded as JSON data. In the child it runs the context and
the candidate as a module named "candidate" (so an `if __name__ == "__main__":` block in
the answer does not run), then each check in try/except with its own time limit, and prints
one JSON line per check behind a per-run marker — as it goes, so a candidate that hangs on
its fifth check still has its first four reported when the sandbox kills it. Inputs that
only compare behaviour (probes, generated) get a shorter limit, and a shared one.

Comparison is doctest's, made a little more forgiving: an expression's value is compared
with the expected output evaluated as Python (`==` on the same builtin type; int and float
compared with a relative tolerance of 1e-6), falling back to doctest's own text comparison
(`OutputChecker`, NORMALIZE_WHITESPACE and ELLIPSIS) of what it printed plus its repr —
so a function that prints debug output still passes when it returns the right value.
An expected exception passes when the same exception type is raised.

Every check also yields a signature of what the code produced (a hash of the repr, or the
exception type): candidates with equal signatures behave identically on the examples'
inputs (`agreement`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from .checks import INPUT_KINDS, CheckSpec
from .sandbox import SandboxResult, run_python

ACTUAL_CHARS = 200  # how much of each actual output the report keeps
PER_CHECK_S = 3.0
# Inputs with no expected value (probes, generated) only compare behaviour: a candidate that
# loops on one must not cost the fusion seconds. Each gets this long, all together INPUTS_S;
# what is left unrun then reads "skipped" (the same for every candidate that slow).
INPUT_S = 0.5
INPUTS_S = 2.0

HARNESS = r'''
import ast, builtins, doctest, hashlib, io, json, math, signal, sys, time
from contextlib import redirect_stdout

SPEC = json.loads(%(spec)s)
OUT, MARK, LIMIT = sys.stdout, SPEC["marker"], SPEC["actual_chars"]

def emit(obj):
    OUT.write(MARK + json.dumps(obj) + "\n")
    OUT.flush()

class CheckTimeout(BaseException):
    pass

def on_alarm(signum, frame):
    raise CheckTimeout()

signal.signal(signal.SIGALRM, on_alarm)

def limited(seconds, fn, *args):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

def short(text):
    return text if len(text) <= LIMIT else text[:LIMIT] + "..."

def sig(text):
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]

def safe_repr(value):
    try:
        return repr(value)
    except BaseException as e:
        return "<repr failed: %%s>" %% type(e).__name__

def same(a, b, depth=0):
    if depth > 40:
        return False
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        try:
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        except OverflowError:
            return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, depth + 1) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], depth + 1) for k in a)
    return bool(a == b)

def run_source(source, ns):
    tree = ast.parse(source)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    body = tree.body[:-1] if last is not None else tree.body
    exec(compile(ast.Module(body=body, type_ignores=[]), "<check>", "exec"), ns)
    if last is None:
        return None, False
    return eval(compile(ast.Expression(body=last.value), "<check>", "eval"), ns), True

def expected_value(text):
    return eval(text, dict(CONTEXT_NS))

def exc_text(e):
    return "%%s: %%s" %% (type(e).__name__, e) if str(e) else type(e).__name__

def one_tuple(value, want, expected):
    # Prose writes a tuple of one as `("Venus")`, which Python reads as the string: a
    # 1-tuple holding the expected value matches it too.
    text = want.strip()
    return (isinstance(value, tuple) and len(value) == 1 and text.startswith("(")
            and text.endswith(")") and not isinstance(expected, tuple)
            and same(value[0], expected))

def check_output(check, ns):
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            value, is_expr = run_source(check["source"], ns)
    except CheckTimeout:
        raise
    except BaseException as e:
        got = exc_text(e)
        want = check["exception"]
        if want is not None:
            name = want.split(":", 1)[0].strip().rsplit(".", 1)[-1]
            return type(e).__name__ == name, got, "raise:" + type(e).__name__
        return False, got, "raise:" + type(e).__name__
    printed = buf.getvalue()
    got = printed + (safe_repr(value) + "\n" if value is not None else "")
    if check["exception"] is not None:
        return False, got or "no exception", sig(got)
    want = check["expected"] or ""
    if is_expr:
        # By value first: debug prints inside the function do not fail it.
        shown = safe_repr(value)
        try:
            expected = expected_value(want)
            if same(value, expected) or one_tuple(value, want, expected):
                return True, shown, sig(shown)
        except Exception:
            pass
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    ok = doctest.OutputChecker().check_output(want if want.endswith("\n") or not want
                                              else want + "\n", got, flags)
    shown = safe_repr(value) if is_expr and value is not None else got
    return ok, got.rstrip("\n"), sig(shown)

def check_assert(check, ns):
    test = ast.parse(check["source"]).body[0].test
    try:
        with redirect_stdout(io.StringIO()):
            if isinstance(test, ast.Compare) and len(test.ops) == 1 \
                    and isinstance(test.ops[0], ast.Eq):
                left = eval(compile(ast.Expression(body=test.left), "<check>", "eval"), ns)
                right = eval(compile(ast.Expression(body=test.comparators[0]), "<check>",
                                     "eval"), ns)
                got = safe_repr(left)
                return same(left, right), got, sig(got)
            value = eval(compile(ast.Expression(body=test), "<check>", "eval"), ns)
    except CheckTimeout:
        raise
    except BaseException as e:
        return False, exc_text(e), "raise:" + type(e).__name__
    got = safe_repr(value)
    return bool(value), got, sig(got)

CONTEXT_NS = {"__name__": "candidate", "__builtins__": builtins}
ns = {"__name__": "candidate", "__builtins__": builtins}
load_error = None
for name, source, targets in (("<request>", SPEC["context"], (CONTEXT_NS, ns)),
                              ("<candidate>", SPEC["code"], (ns,))):
    for target in targets if source.strip() else ():
        try:
            with redirect_stdout(io.StringIO()):
                limited(SPEC["per_check_s"] * 2, exec, compile(source, name, "exec"), target)
        except CheckTimeout:
            load_error = "%%s timed out while loading" %% name
        except BaseException as e:
            load_error = "%%s %%s" %% (name, exc_text(e))
emit({"event": "loaded", "error": load_error and short(load_error)})
inputs_left = SPEC["inputs_s"]
for i, check in enumerate(SPEC["checks"]):
    is_input = check["kind"] in SPEC["input_kinds"]
    if is_input and inputs_left <= 0:
        emit({"event": "check", "i": i, "ok": False, "actual": "not run: no time left",
              "sig": "skipped"})
        continue
    seconds = min(SPEC["input_s"], inputs_left) if is_input else SPEC["per_check_s"]
    started = time.monotonic()
    try:
        if check["kind"] == "assert":
            ok, got, signature = limited(seconds, check_assert, check, ns)
        else:
            ok, got, signature = limited(seconds, check_output, check, ns)
    except CheckTimeout:
        ok, got, signature = False, "timed out after %%gs" %% seconds, "timeout"
    except BaseException as e:
        ok, got, signature = False, exc_text(e), "raise:" + type(e).__name__
    if is_input:
        inputs_left -= time.monotonic() - started
    emit({"event": "check", "i": i, "ok": bool(ok), "actual": short(got), "sig": signature})
emit({"event": "done"})
'''


@dataclass(slots=True)
class CheckRun:
    """What one candidate's program reported."""

    sandbox: SandboxResult
    loaded: bool = False  # the harness started and reported the load
    load_error: str | None = None
    done: bool = False
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # check index -> line


def program(spec: CheckSpec, code: str, marker: str, *,
            per_check_s: float = PER_CHECK_S) -> str:
    """The whole check program for one candidate: the harness with its data embedded."""
    data = {"marker": marker, "context": spec.context, "code": code,
            "checks": [c.to_dict() for c in spec.checks], "per_check_s": per_check_s,
            "input_s": min(INPUT_S, per_check_s), "inputs_s": INPUTS_S,
            "input_kinds": list(INPUT_KINDS),
            "actual_chars": ACTUAL_CHARS}
    return HARNESS % {"spec": repr(json.dumps(data))}


async def run_checks(spec: CheckSpec, code: str, *, timeout: float,
                     memory_mb: int = 512) -> CheckRun:
    """Run `code` against `spec` in the sandbox; never raises for anything the code does."""
    marker = f"@@fusion-check-{secrets.token_hex(8)}@@ "
    per_check = min(PER_CHECK_S, max(0.5, timeout / 2))
    result = await run_python(program(spec, code, marker, per_check_s=per_check),
                              timeout=timeout, memory_mb=memory_mb)
    run = CheckRun(sandbox=result)
    for line in result.stdout.splitlines():
        if not line.startswith(marker):
            continue
        try:
            event = json.loads(line[len(marker):])
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        if kind == "loaded":
            run.loaded, run.load_error = True, event.get("error")
        elif kind == "check" and isinstance(event.get("i"), int):
            run.results[event["i"]] = event
        elif kind == "done":
            run.done = True
    return run
