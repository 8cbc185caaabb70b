"""The web page in a real headless Chromium (Playwright, Debian's /usr/bin/chromium; the
`page` fixture in conftest.py skips, with the reason, when either is missing).

The page is driven like a user drives it: type a prompt, press Fuse, watch the member
columns stream, read the analysis and the answer. A screenshot lands in artifacts/web.png.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fake_upstream import FakeUpstream, Reply
from tests.helpers import ANALYSIS, FUSED, Served, watch

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def script_panel(upstream: FakeUpstream) -> None:
    upstream.script("alpha", Reply("Paris is the capital of France, on the Seine, with "
                                   "about two million people.", chunk_delay=0.06))
    upstream.script("beta", Reply("I believe it is Lyon, a large city in the south-east.",
                                  chunk_delay=0.06))
    upstream.script("gamma", Reply("The capital is Paris. <img src=x onerror=alert(1)> "
                                   "<b>bold?</b>", chunk_delay=0.06))
    upstream.script("judge", Reply(json.dumps({"analysis": ANALYSIS, "answer": FUSED}),
                                   delay=0.3))


def test_page_streams_the_panel_then_shows_analysis_and_answer(
        serve: Callable[..., Served], upstream: FakeUpstream, page: Any) -> None:
    served = serve()
    script_panel(upstream)
    errors, foreign = watch(page, served.url)
    page.goto(served.url + "/")
    page.wait_for_selector("#preset option[value='fusion/trio']", state="attached")
    page.fill("#prompt", "What is the capital of France?")
    page.select_option("#preset", "fusion/trio")
    page.click("#run")

    # Columns appear and fill while their members are still running: streaming is visible.
    page.wait_for_function("() => document.querySelectorAll('.member').length === 3")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.member')].some(m => "
        "m.querySelector('.badge').textContent === 'running' && "
        "m.querySelector('.text').textContent.length > 0)")
    mid = [page.inner_text(f".member[data-member='{i}'] .text") for i in range(3)]
    assert any(mid) and page.inner_text("#answer") == ""  # tokens before the answer

    page.wait_for_function(f"() => document.querySelector('#answer').textContent === {FUSED!r}",
                           polling=50)
    page.wait_for_selector(".analysis")
    assert page.inner_text(".member[data-member='0'] .text").endswith("two million people.")
    badges = [page.inner_text(f".member[data-member='{i}'] .badge") for i in range(3)]
    assert badges == ["ok", "ok", "ok"]
    assert re.search(r"\d+ ms|\d\.\d s", page.inner_text(".member[data-member='1'] .meta"))
    for key, items in ANALYSIS.items():
        section = page.inner_text(f"[data-section='{key}']")
        assert all(item in section for item in items)
    assert "fake:judge" in page.inner_text("#judge-status")
    assert page.locator(".summary tbody tr").count() == 4  # 3 members + the judge
    assert page.inner_text("#status").startswith("Done: merge, 3/3")

    # Model text is text: the <img>/<b> in gamma's answer were not turned into elements.
    gamma = page.locator(".member[data-member='2'] .text")
    assert "<img src=x onerror=alert(1)>" in gamma.inner_text()
    assert gamma.locator("img, b").count() == 0

    # History comes from the trace store.
    page.wait_for_function("() => document.querySelectorAll('#history li button').length")
    assert "What is the capital of France?" in page.inner_text("#history")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True)
    assert errors == [] and foreign == []


def test_page_reopens_a_trace_and_reports_errors(
        serve: Callable[..., Served], upstream: FakeUpstream, page: Any) -> None:
    served = serve()
    served.client().chat.completions.create(
        model="fusion", messages=[{"role": "user", "content": "From history?"}])
    assert served.store is not None
    served.store.flush()
    page.goto(served.url + "/")
    page.click("#history li button")
    page.wait_for_function(f"() => document.querySelector('#answer').textContent === {FUSED!r}",
                           polling=50)
    assert page.input_value("#prompt") == "From history?"
    assert page.locator(".member").count() == 3

    # A 400 from the server is shown with the field it names.
    page.fill("#models", "fake:a, nope:b")
    page.fill("#prompt", "anything")
    page.click("#run")
    page.wait_for_function(
        "() => document.querySelector('#status').classList.contains('error')")
    assert "fusion.models[1]" in page.inner_text("#status")


def test_page_sends_the_api_key(serve: Callable[..., Served], page: Any) -> None:
    served = serve(api_keys=("sesame",))
    page.goto(served.url + "/")
    # Without the key the page says what is missing instead of failing silently.
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('API key')")
    page.fill("#api-key", "sesame")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#preset option[value='fusion/trio']", state="attached")
    page.fill("#prompt", "with a key")
    page.click("#run")
    page.wait_for_function(f"() => document.querySelector('#answer').textContent === {FUSED!r}",
                           polling=50)
