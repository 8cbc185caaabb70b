"""Run untrusted Python (a model's code) in a child process. Never `exec` in our process.

Each run gets a fresh temp dir as cwd and HOME, an environment with no secrets in it,
limits on memory, CPU time, file size and output, and a wall-clock timeout after which the
whole process tree is killed. Where the kernel allows it (`unshare`), the child also runs in
its own user, network and PID namespaces: no network interface but a dead loopback, and when
the child's init dies the kernel kills everything it started, even processes that called
setsid(). Without `unshare` a Python-level socket guard and a process-group kill remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
MAX_OUTPUT_CHARS = 64_000
_MAX_FILE_BYTES = 16 * 1024 * 1024

# Runs inside the child before the candidate: limits itself, cuts the network, then runs the
# candidate as __main__. Kept tiny and stdlib-only; `-I` keeps site dirs and PYTHON* out.
_RUNNER = """\
import resource, socket, sys
mem, cpu, fsize = (int(x) for x in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

class _NoNetwork(socket.socket):
    def __init__(self, family=-1, *args, **kwargs):
        if family != socket.AF_UNIX:  # the default (-1) means AF_INET
            raise OSError("network access is disabled in the sandbox")
        super().__init__(family, *args, **kwargs)

socket.socket = _NoNetwork
sys.argv = ["candidate.py"]
with open("candidate.py", encoding="utf-8") as f:
    source = f.read()
exec(compile(source, "candidate.py", "exec"), {"__name__": "__main__"})
"""


@dataclass(frozen=True, slots=True)
class SandboxResult:
    exit_code: int | None  # None when killed for the timeout; negative = killed by signal
    stdout: str
    stderr: str
    timed_out: bool
    duration_ms: float
    isolated: bool  # ran in its own network/PID namespaces

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@functools.cache
def namespace_prefix() -> tuple[str, ...]:
    """`unshare` arguments that isolate network and processes, or () where not allowed."""
    unshare = shutil.which("unshare")
    if not unshare or not sys.platform.startswith("linux"):
        return ()
    prefix = (unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()


def _clean_env(home: str) -> dict[str, str]:
    """Only what Python needs: no API keys or tokens reach the candidate."""
    return {"PATH": os.defpath, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


def _kill_tree(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the child leads its own process group


def _read(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(MAX_OUTPUT_CHARS * 4).decode("utf-8", "replace")[:MAX_OUTPUT_CHARS]


async def run_python(code: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                     memory_mb: int = DEFAULT_MEMORY_MB) -> SandboxResult:
    """Run `code` as a script in a sandboxed child; wait at most `timeout` seconds."""
    prefix = await asyncio.to_thread(namespace_prefix)
    with tempfile.TemporaryDirectory(prefix="fusion-sandbox-") as tmp:
        work = Path(tmp)
        (work / "candidate.py").write_text(code, encoding="utf-8")
        limits = (str(memory_mb * 1024 * 1024), str(max(1, int(timeout) + 1)),
                  str(_MAX_FILE_BYTES))
        # Output goes to files (bounded by RLIMIT_FSIZE), not pipes we would have to drain.
        with (work / "stdout.txt").open("wb") as fout, (work / "stderr.txt").open("wb") as ferr:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *prefix, sys.executable, "-I", "-c", _RUNNER, *limits,
                # Nothing to read: input() in model code gets EOF at once instead of waiting.
                cwd=tmp, env=_clean_env(tmp), stdin=asyncio.subprocess.DEVNULL, stdout=fout,
                stderr=ferr, start_new_session=True,
            )
            timed_out = False
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                timed_out = True
            finally:
                # Also on success or cancellation: nothing the candidate started outlives it.
                _kill_tree(proc.pid)
                await asyncio.shield(proc.wait())
            duration_ms = (time.monotonic() - started) * 1000
        return SandboxResult(
            exit_code=None if timed_out else proc.returncode,
            stdout=_read(work / "stdout.txt"),
            stderr=_read(work / "stderr.txt"),
            timed_out=timed_out,
            duration_ms=duration_ms,
            isolated=bool(prefix),
        )
