"""The web page reads like the tools people use (issue #14), in a real headless Chromium
against a real server and the loopback fake upstream (the `page` fixture skips, with the
reason, when Chromium or Playwright is missing).

Markdown with highlighted code and copy buttons, model HTML kept inert, the diff of the
candidates, permalinks (/?trace=<id>) and history, dark mode, a phone-width layout, the
keyboard shortcut and the stop button. The vendored libraries' pins: test_web_vendor.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.fake_upstream import FakeUpstream, Reply
from tests.helpers import ANALYSIS, FUSED, Served, watch

CODE = "def add(a, b):\n    return a + b\n"
ALPHA = f"Use this:\n\n```python\n{CODE}```\n\nDone."
BETA = ALPHA.replace("a + b", "a - b")
HOSTILE = ("<script>window.pwned = 1</script>\n\n<img src=x onerror=\"window.pwned = 2\">\n\n"
           "**bold** and [a link](javascript:window.pwned=3)\n\n"
           "| left | right |\n|:--|--:|\n| 1 | 2 |\n")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
JUDGED = {**ANALYSIS, "consensus": ["all use `def add`"]}


def script_code_panel(upstream: FakeUpstream) -> None:
    upstream.script("alpha", Reply(ALPHA, chunk_delay=0.01))
    upstream.script("beta", Reply(BETA, chunk_delay=0.01))
    upstream.script("gamma", Reply(HOSTILE, chunk_delay=0.01))
    upstream.script("judge", Reply(json.dumps({"analysis": JUDGED, "answer": ALPHA})))


def fuse_in_page(page: Any, served: Served, prompt: str) -> None:
    page.goto(served.url + "/")
    page.wait_for_selector("#preset option[value='fusion/trio']", state="attached")
    page.select_option("#preset", "fusion/trio")
    page.fill("#prompt", prompt)
    page.press("#prompt", "Control+Enter")  # the keyboard submits
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Done')")
    page.wait_for_selector("#answer p")  # painted on the next animation frame


def member(i: int) -> str:
    return f".member[data-member='{i}']"


def test_markdown_code_highlighting_copy_inert_html_and_the_diff(
        serve: Callable[..., Served], upstream: FakeUpstream, page: Any) -> None:
    served = serve()
    script_code_panel(upstream)
    errors, foreign = watch(page, served.url)  # a CSP violation is a console error
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    fuse_in_page(page, served, "Write add(a, b).")

    # Code is <pre><code> with highlight.js classes, in members and the answer.
    for where in (member(0), member(1), "#answer"):
        code = page.locator(f"{where} pre code.hljs.language-python")
        assert code.count() == 1, where
        assert code.locator("span.hljs-keyword", has_text="def").count() == 1
    assert page.inner_text(f"{member(1)} pre code").strip() == CODE.replace("+", "-").strip()
    assert page.locator(f"{member(0)} p", has_text="Done.").count() == 1

    # A model's HTML is text: no script, no image, no handler, no javascript: link.
    gamma = page.locator(f"{member(2)} .text")
    assert "<script>window.pwned = 1</script>" in gamma.inner_text()
    assert '<img src=x onerror="window.pwned = 2">' in gamma.inner_text()
    assert gamma.locator("script, img, a").count() == 0
    assert gamma.locator("strong", has_text="bold").count() == 1  # markdown still works
    # Table alignment is a class: a style attribute would be a CSP violation.
    assert gamma.locator("td.align-right", has_text="2").count() == 1
    assert page.locator(".md [style]").count() == 0
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("main [onerror], main img, main script").count() == 0
    # The judge's text is inline markdown too.
    assert page.locator("[data-section='consensus'] code", has_text="def add").count() == 1

    # Copy buttons: every code block, each member, the answer.
    assert page.locator(".codeblock button.copy").count() == 3
    assert page.locator(".member header button.copy").count() == 3
    page.click("#answer .codeblock button[aria-label='Copy code']")
    page.wait_for_selector("#answer .codeblock button.copy.done")
    assert page.evaluate("() => navigator.clipboard.readText()") == CODE
    page.click("#answer-tools button[aria-label='Copy the answer']")
    page.wait_for_function(f"async () => (await navigator.clipboard.readText()) === {ALPHA!r}")

    # The diff: each member against the answer by default, then any two members.
    assert page.is_visible("#diff-section")
    pairs = page.locator(".diff-pair")
    assert pairs.count() == 3
    assert "identical" in pairs.nth(0).inner_text()  # alpha's answer was chosen
    beta = pairs.nth(1)
    assert beta.locator(".line.del", has_text="return a - b").count() == 1
    assert beta.locator(".line.add", has_text="return a + b").count() == 1
    assert beta.locator(".line.same", has_text="def add(a, b):").count() == 1
    page.select_option("#diff-a", "0")
    page.select_option("#diff-b", "1")
    assert page.locator(".diff-pair").count() == 1
    assert "fake:alpha → fake:beta" in page.inner_text(".diff-pair h3")
    assert page.inner_text(".diff .line.del mark") == "+"
    assert page.inner_text(".diff .line.add mark") == "-"

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-markdown.png"), full_page=True)
    csp = httpx.get(served.url + "/", timeout=30).headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe" not in csp
    for module in ("app.js", "markdown.js", "vendor/highlight.min.js"):  # modules need it
        kind = httpx.get(f"{served.url}/static/{module}", timeout=30).headers["content-type"]
        assert kind.startswith("text/javascript"), (module, kind)
    assert errors == [] and foreign == []


def test_a_permalink_reopens_a_stored_fusion_and_history_and_back_follow(
        serve: Callable[..., Served], page: Any) -> None:
    served = serve()
    r = served.client().chat.completions.create(
        model="fusion", messages=[{"role": "user", "content": "Stored earlier?"}])
    stored = r.model_extra["fusion"]["trace_id"]  # type: ignore[index]
    assert served.store is not None
    served.store.flush()
    errors, _ = watch(page, served.url)

    page.goto(f"{served.url}/?trace={stored}")
    page.wait_for_function(f"() => document.querySelector('#answer').textContent === {FUSED!r}")
    assert page.input_value("#prompt") == "Stored earlier?"
    assert page.locator(".member").count() == 3
    assert page.get_attribute("#permalink", "href") == f"/?trace={stored}"

    # A fusion run here gets its own address; Back returns to the stored one.
    page.fill("#prompt", "Asked in the page")
    page.click("#run")
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Done')")
    page.wait_for_function(f"() => location.search.startsWith('?trace=') && "
                           f"!location.search.includes({stored!r})")
    fresh = page.evaluate("() => new URLSearchParams(location.search).get('trace')")
    assert page.get_attribute("#permalink", "href") == f"/?trace={fresh}"
    page.go_back()
    page.wait_for_function("() => document.querySelector('#prompt').value === 'Stored earlier?'")

    # The history list opens past fusions, and the address follows.
    page.wait_for_selector(f"#history button[data-trace='{fresh}']")
    page.click(f"#history button[data-trace='{fresh}']")
    page.wait_for_function("() => document.querySelector('#prompt').value === 'Asked in the page'")
    assert fresh in page.url
    page.reload()  # the permalink survives a reload
    page.wait_for_function("() => document.querySelector('#prompt').value === 'Asked in the page'")
    assert page.inner_text("#answer") == FUSED

    page.goto(f"{served.url}/?trace=0000nope")
    page.wait_for_function("() => document.querySelector('#status').classList.contains('error')")
    assert "0000nope" in page.inner_text("#status")
    assert errors == [] or all("404" in e for e in errors)  # the refused lookup itself


def test_dark_mode_a_phone_width_and_the_stop_button(
        serve: Callable[..., Served], upstream: FakeUpstream, page: Any) -> None:
    served = serve()
    script_code_panel(upstream)
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    fuse_in_page(page, served, "Write add(a, b).")

    background = page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor")
    assert background == "rgb(15, 18, 24)"  # --bg in dark mode
    code_bg = page.evaluate("() => getComputedStyle(document.querySelector("
                            "'#answer pre code')).backgroundColor")
    assert code_bg == "rgb(13, 17, 23)"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-dark-390.png"), full_page=True)
    page.emulate_media(color_scheme="light")
    assert page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor") \
        == "rgb(246, 247, 249)"

    # Stop: the fetch is aborted, the server sees the client leave and cancels the fusion.
    for name in ("alpha", "beta", "gamma"):
        upstream.script(name, Reply("slow " * 200, chunk_delay=0.2))
    page.fill("#prompt", "Take your time")
    page.click("#run")
    page.wait_for_selector("#stop:not([hidden])")
    page.wait_for_function("() => [...document.querySelectorAll('.member .badge')]"
                           ".some(b => b.textContent === 'running')")
    page.click("#stop")
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Stopped')")
    assert page.is_enabled("#run") and page.is_hidden("#stop")
    assert "stopped" in page.inner_text(".member .badge")
    deadline = time.monotonic() + 10
    while httpx.get(served.url + "/healthz", timeout=30).json()["active_fusions"]:
        assert time.monotonic() < deadline, "the fusion kept running after Stop"
        time.sleep(0.1)


def test_the_page_shows_what_adaptive_compute_spent(serve: Callable[..., Served],
                                                    page: Any) -> None:
    served = serve()
    client = served.client()
    ask = [{"role": "user", "content": "How much was spent?"}]
    adaptive = client.chat.completions.create(model="fusion", messages=ask,
                                              extra_body={"fusion": {"max_samples": 2}})
    fixed = client.chat.completions.create(model="fusion", messages=ask)
    assert served.store is not None
    served.store.flush()
    errors, _ = watch(page, served.url)

    page.goto(f"{served.url}/?trace={adaptive.model_extra['fusion']['trace_id']}")  # type: ignore[index]
    page.wait_for_selector("#summary .compute")
    account = adaptive.model_extra["fusion"]["compute"]  # type: ignore[index]
    assert page.inner_text("#summary .compute") == (
        f"Compute: {account['samples_used']} of 2 samples · "
        f"{account['stopped'].replace('_', ' ')} (lead {account['lead']})")
    # A fusion without adaptive compute has no such line.
    page.goto(f"{served.url}/?trace={fixed.model_extra['fusion']['trace_id']}")  # type: ignore[index]
    page.wait_for_selector("#summary .totals")
    assert page.locator("#summary .compute").count() == 0
    assert errors == []
