"""The web page's screenshots in docs/server.md, taken by this test (issue #14).

A real server over the loopback fake upstream, a real headless Chromium (the `page`
fixture skips, with the reason, when Chromium or Playwright is missing). The members
answer a small coding question with fenced code; the judge picks the answer that strips
punctuation (best-of), or merges the three with an analysis (merge). Each shot is checked
for what it must show before it is saved.

The PNGs go to tmp_path, unless FUSION_SCREENSHOTS names a folder (relative to the repo
root): `FUSION_SCREENSHOTS=docs/images pytest tests/test_web_screenshots.py` retakes the
ones in docs/.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from modelfusion.files import atomic_write
from tests.fake_upstream import FakeUpstream, RecordedRequest, Reply
from tests.helpers import Served, watch

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ("Write is_palindrome(s) in Python: true when s reads the same both ways, "
          "ignoring case and punctuation.")
REGEX = '''Strip everything that is not a letter or a digit, lower-case it, and compare it with \
its reverse:

```python
import re


def is_palindrome(s: str) -> bool:
    """True if s reads the same both ways, ignoring case and punctuation."""
    cleaned = re.sub(r"[^a-z0-9]", "", s.lower())
    return cleaned == cleaned[::-1]
```

`is_palindrome("A man, a plan, a canal: Panama")` returns `True`.'''
POINTERS = '''Two pointers, skipping what is not alphanumeric, so no copy of the string is made:

```python
def is_palindrome(s: str) -> bool:
    i, j = 0, len(s) - 1
    while i < j:
        if not s[i].isalnum():
            i += 1
        elif not s[j].isalnum():
            j -= 1
        elif s[i].lower() != s[j].lower():
            return False
        else:
            i, j = i + 1, j - 1
    return True
```'''
NAIVE = '''```python
def is_palindrome(s):
    s = s.lower()
    return s == s[::-1]
```

This ignores case.'''
MERGED = '''Keep only letters and digits, lower-cased, and compare with the reverse. \
`str.isalnum` keeps accented letters too, which a `[a-z0-9]` pattern would drop:

```python
def is_palindrome(s: str) -> bool:
    """True if s reads the same both ways, ignoring case and punctuation."""
    cleaned = [c.lower() for c in s if c.isalnum()]
    return cleaned == cleaned[::-1]
```

`is_palindrome("A man, a plan, a canal: Panama")` is `True`; `is_palindrome("été")` is \
`True`. For very long strings the two-pointer loop avoids the copy.'''
ANALYSIS = {
    "consensus": ["compare the cleaned string with its reverse, lower-cased"],
    "contradictions": ["one answer keeps punctuation, so `\"A man, a plan, a canal: "
                       "Panama\"` comes out `False`"],
    "partial_coverage": ["only one answer shows an example call"],
    "unique_insights": ["the two-pointer loop needs no copy of the string"],
    "blind_spots": ["a `[a-z0-9]` pattern drops accented letters; `str.isalnum` keeps them"],
}
CHOSEN_REASON = ("strips punctuation and case in one step and shows the example; another "
                 "answer keeps punctuation and fails it")


def judge(req: RecordedRequest) -> Reply:
    """Best-of: the label of the candidate that uses `re.sub` (labels are shuffled, so it
    is read from the fenced candidates); merge: the merged answer and its analysis."""
    text = "\n".join(str(m.get("content")) for m in req.messages)
    if '"choice"' in text[-1500:]:
        for label, body in re.findall(r'<candidate-[0-9a-f]+ label="([A-Z])">(.*?)</candidate',
                                      text, flags=re.S):
            if "re.sub" in body:
                return Reply(json.dumps({"reason": CHOSEN_REASON, "choice": label}))
        raise AssertionError("the regex answer is not among the candidates")
    return Reply(json.dumps({"analysis": ANALYSIS, "answer": MERGED}), delay=0.3)


def shots_dir(tmp_path: Path) -> Path:
    where = os.environ.get("FUSION_SCREENSHOTS")
    if not where:
        return tmp_path
    path = Path(where) if Path(where).is_absolute() else ROOT / where
    path.mkdir(parents=True, exist_ok=True)
    return path


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def fuse(page: Any, served: Served, mode: str) -> None:
    page.goto(served.url + "/")
    page.wait_for_selector("#preset option[value='fusion/trio']", state="attached")
    page.select_option("#preset", "fusion/trio")
    page.select_option("#mode", mode)
    page.fill("#prompt", PROMPT)
    page.click("#run")
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Done')", timeout=30_000)
    page.wait_for_selector("#answer pre code.hljs")  # painted on the next animation frame


def shoot(page: Any, out: Path, name: str, width: int) -> Path:
    """The page from its top to the end of the Answer card (the diff below is left out:
    it would double the file)."""
    page.evaluate("() => window.scrollTo(0, 0)")
    box = page.locator("section:has(#answer)").bounding_box()
    data = page.screenshot(full_page=True, animations="disabled",
                           clip={"x": 0, "y": 0, "width": width,
                                 "height": box["y"] + box["height"] + 16})
    assert png_size(data) == (width, round(box["y"] + box["height"] + 16))
    # 256 colours: a page of text loses nothing visible and the file a half or more.
    small = io.BytesIO()
    Image.open(io.BytesIO(data)).quantize(256).save(small, "PNG", optimize=True)
    atomic_write(out / name, small.getvalue())
    size = len(small.getvalue())
    assert size < 200_000, f"{name}: {size} bytes; docs/ keeps them under 200 KB"
    return out / name


def test_screenshots_of_a_best_of_and_a_merge_fusion(
        serve: Callable[..., Served], upstream: FakeUpstream, page: Any, tmp_path: Path) -> None:
    served = serve()
    upstream.script("alpha", Reply(REGEX, chunk_delay=0.005))
    upstream.script("beta", Reply(POINTERS, chunk_delay=0.005))
    upstream.script("gamma", Reply(NAIVE, chunk_delay=0.005))
    upstream.script("judge", judge)
    errors, foreign = watch(page, served.url)
    out = shots_dir(tmp_path)

    # Best-of, light, desktop width: the judge's pick and its reason, the picked code.
    page.set_viewport_size({"width": 1200, "height": 900})
    page.emulate_media(color_scheme="light")
    fuse(page, served, "best-of")
    assert page.is_visible("#answer pre code.hljs.language-python")
    assert "re.sub" in page.inner_text("#answer pre code")
    assert page.inner_text("#analysis").startswith("Chosen: fake:alpha — strips punctuation")
    assert page.locator(".member").count() == 3
    assert page.locator(".member pre code.hljs.language-python").count() == 3
    assert "identical" in page.inner_text(".diff-pair >> nth=0")  # alpha's answer is the answer
    shoot(page, out, "web-best-of-light.png", 1200)

    # Merge, dark: the analysis sections and the merged code.
    page.emulate_media(color_scheme="dark")
    fuse(page, served, "merge")
    assert page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor") \
        == "rgb(15, 18, 24)"
    assert page.is_visible("#answer pre code.hljs.language-python")
    assert "c.isalnum()" in page.inner_text("#answer pre code")
    for section, words in (("consensus", "reverse"), ("contradictions", "Panama"),
                           ("blind_spots", "isalnum")):
        assert words in page.inner_text(f"[data-section='{section}'] li"), section
    assert page.locator("[data-section='contradictions'] li code").count() == 2
    shoot(page, out, "web-merge-dark.png", 1200)

    # The same fusion at a phone's width, light: no sideways scrolling, though a line of
    # the code (the docstring) is longer than the screen is wide: its block scrolls.
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("() => document.documentElement.scrollWidth <= 390")
    assert page.is_visible("#answer pre code.hljs.language-python")
    assert page.evaluate("() => { const c = document.querySelector('#answer pre code'); "
                         "return c.scrollWidth > c.clientWidth; }")
    shoot(page, out, "web-merge-390.png", 390)

    assert errors == [] and foreign == []
