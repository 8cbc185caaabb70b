"""The sandbox that runs model-written code: real child processes, real limits."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time

import pytest

from modelfusion.code.extract import defines, extract_code, fences, parses
from modelfusion.code.sandbox import namespace_prefix, run_python


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_runs_code_and_reports_exit_code_and_output() -> None:
    ok = await run_python("print(6 * 7)")
    assert ok.ok and ok.stdout == "42\n" and ok.exit_code == 0
    failed = await run_python("assert 1 == 2, 'nope'")
    assert not failed.ok and failed.exit_code == 1 and "AssertionError: nope" in failed.stderr


async def test_timeout_kills_the_child_and_everything_it_started(tmp_path) -> None:
    # The candidate starts a grandchild in its own session (escaping the process group) and
    # a plain one, reports both pids through a file we can read, then hangs.
    pids = tmp_path / "pids"
    # A duration no other process on the machine has: only this test's sleeps are looked for.
    marker = f"300.{secrets.randbelow(10**6):06d}"
    code = f"""
import subprocess, time
a = subprocess.Popen(["sleep", {marker!r}])
b = subprocess.Popen(["sleep", {marker!r}], start_new_session=True)
open({str(pids)!r}, "w").write(f"{{a.pid}} {{b.pid}}")
time.sleep(300)
"""
    os.chmod(tmp_path, 0o777)
    started = time.monotonic()
    result = await run_python(code, timeout=2)
    assert result.timed_out and result.exit_code is None and not result.ok
    assert time.monotonic() - started < 10
    if not namespace_prefix():
        pytest.skip("no unshare here: host pids are not visible to check")
    # Inside a PID namespace the pids are namespace-local: find the sleeps on the host. The
    # kernel tears a namespace down asynchronously: on a busy machine that takes a moment,
    # so wait for it (bounded) rather than look once.
    deadline = time.monotonic() + 30
    while True:
        leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _alive(int(p))
                     and _cmdline(int(p)) == f"sleep {marker}"]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert leftovers == []
    assert pids.exists()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


async def test_memory_limit_stops_a_big_allocation() -> None:
    result = await run_python("x = bytearray(3 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not result.ok and "allocated" not in result.stdout
    assert "MemoryError" in result.stderr


async def test_no_network_even_to_loopback() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(5)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(server.accept())

    t = threading.Thread(target=accept)
    t.start()
    code = f"""
import _socket
try:
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)  # below the Python guard
    s.settimeout(2)
    s.connect(("127.0.0.1", {port}))
    print("connected")
except OSError as e:
    print("refused", type(e).__name__)
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("connected")
except OSError as e:
    print("refused", e)
"""
    result = await run_python(code, timeout=10)
    server.close()
    t.join()
    assert accepted == []
    lines = result.stdout.splitlines()
    assert lines[1].startswith("refused"), result  # the socket guard
    if namespace_prefix():  # the namespace also stops code that goes around the guard
        assert lines[0].startswith("refused"), result


async def test_no_secrets_and_a_fresh_working_dir(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sentinel-should-not-leak")
    result = await run_python("import os; print(dict(os.environ)); print(os.listdir('.'))")
    assert "sk-sentinel" not in result.stdout
    assert "candidate.py" in result.stdout and "OPENAI_API_KEY" not in result.stdout


async def test_output_is_bounded() -> None:
    result = await run_python("import sys\nfor _ in range(10**6): sys.stdout.write('x' * 100)",
                              timeout=20)
    assert len(result.stdout) <= 64_000


def test_extract_code_prefers_python_fences_and_handles_cut_off_answers() -> None:
    answer = "Sure:\n```python\ndef f(x):\n    return x + 1\n```\nUsage:\n```\nf(1)\n```"
    assert extract_code(answer) == "def f(x):\n    return x + 1\n"
    assert extract_code("```python\ndef g():\n    return 1\n") == "def g():\n    return 1\n"
    assert extract_code("def h():\n    return 2") == "def h():\n    return 2\n"
    assert extract_code("No code, just prose.") == ""
    assert defines(extract_code(answer), "f") and not defines(extract_code(answer), "g")


def test_fences_and_parses_are_what_the_check_finder_builds_on() -> None:
    text = "Intro\n```py\nx = 1\n```\nmid\n~~~\nnot python (\n~~~\n"
    blocks = fences(text)
    assert [(m.group(2), m.group(3)) for m in blocks] == [("py", "x = 1\n"),
                                                         ("", "not python (\n")]
    assert parses("x = 1\n") and not parses("not python (\n")
