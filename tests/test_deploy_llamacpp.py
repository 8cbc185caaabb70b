"""A real model server as a panel member: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server`, its `server` extra) on loopback, serving the shipped 0.5B
GGUF, fused through the built-in `llamacpp:` provider beside an embedded `local:` member.

Marked `local`; skips, saying why, without llama-cpp-python, its server's packages (the
dev extra has them) or the model's data packages. docs/server.md says the same for vLLM
and Ollama, which cannot run here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelfusion import Fusion
from modelfusion.providers.local import catalog
from tests.helpers import MODEL, local_model

ALIAS = "qwen-0.5b"  # the model id the llama.cpp server answers to
START_S = 180  # loading the GGUF on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def llama_server(model_home: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The llama.cpp server on a free loopback port, serving the shipped 0.5B (found
    through the catalog, assembled and sha256-checked); killed at the end."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server needs "
                        "its `server` extra (pip install -e '.[dev]' has its packages)")
    gguf = catalog.resolve(MODEL)
    port = free_port()
    log = tmp_path / "llama-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
             ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             "--n_threads", "2", "--seed", "7"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        end = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                pytest.fail(f"llama_cpp.server did not answer within {START_S} s")
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@local_model
async def test_llama_cpp_server_fuses_beside_an_embedded_member(
        llama_server: tuple[str, Path], tmp_path: Path) -> None:
    url, log = llama_server
    config = tmp_path / "fusion.toml"
    # The built-in `llamacpp` provider (max_parallel 1: this server decodes one request at
    # a time), pointed at this port.
    config.write_text(f'[providers.llamacpp]\nbase_url = "{url}"\nmax_parallel = 1\n',
                      encoding="utf-8")
    members = [f"llamacpp:{ALIAS}", f"local:{MODEL}"]
    async with Fusion(members, judge=f"local:{MODEL}", mode="best-of", config=config,
                      max_tokens=24, judge_max_tokens=160, seed=7, temperature=0.0) as fusion:
        result = await fusion.run("Write a one-line Python function that adds two numbers.")
    by_model = {m.model: m for m in result.members}
    assert set(by_model) == set(members)
    assert all(m.status == "ok" for m in result.members), [m.error for m in result.members]
    served = by_model[f"llamacpp:{ALIAS}"]
    # Its answer came from the llama.cpp server (its access log has the call), not from
    # the embedded model: the same weights, two engines. (Its streams carry no usage, so
    # the member's token counts are 0: docs/server.md.)
    assert served.content and served.content.strip()
    assert "POST /v1/chat/completions" in log.read_text(errors="replace")
    assert result.judge.status in {"ok", "fallback", "skipped"}
    assert result.answer.strip()
