"""What a request or an upstream can send that the server must survive (issue 12, items 5,
6, 7, 17, 19): bad Retry-After headers, non-finite usage figures, lone surrogates, line
breaks JSON readers disagree on, a repeated X-Fusion-Depth, HEAD /.

Real parts: the served app in a thread, the loopback fake upstream, httpx and the openai
client against the server.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from modelfusion import Fusion
from modelfusion.errors import AllMembersFailed
from tests.fake_upstream import FakeUpstream, Fault, Reply
from tests.helpers import ASK, Served, error_of


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and ±Infinity, as JSON.parse in a browser does."""
    def refuse(name: str) -> Any:
        raise ValueError(f"non-JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- item 5: Retry-After

BAD_RETRY_AFTER = ["soon, maybe", "Fri, 01 Jan 10000 00:00:00 GMT", "inf", "-5", "nan",
                   "Mon, 99 Foo 2024 99:99:99 GMT"]


@pytest.mark.parametrize("value", BAD_RETRY_AFTER)
def test_a_bad_retry_after_gets_the_normal_backoff(served: Served, upstream: FakeUpstream,
                                                   value: str):
    upstream.script("solo", Fault("status", status=429, retry_after=value), Reply("fine"))
    r = served.post({"model": "fake:solo", "messages": ASK,
                     "fusion": {"retry_backoff": 0.01}})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "fine"
    member = r.json()["fusion"]["members"][0]
    assert (member["status"], member["attempts"]) == ("ok", 2)


@pytest.mark.parametrize("value", BAD_RETRY_AFTER[:3])
async def test_a_persistent_bad_retry_after_fails_typed(fake_config: Any,
                                                        upstream: FakeUpstream, value: str):
    upstream.script("m", *[Fault("status", status=429, retry_after=value)] * 3)
    async with Fusion(["fake:m"], config=fake_config, retries=2, retry_backoff=0.01) as f:
        with pytest.raises(AllMembersFailed) as caught:
            await f.run("hi")
    (member,) = caught.value.members
    assert (member.status, member.reason, member.attempts) == ("failed", "rate_limited", 3)
    assert "HTTP 429" in (member.error or "")


def test_a_bad_retry_after_on_the_judge_is_no_500(served: Served, upstream: FakeUpstream):
    upstream.script("judge", *[Fault("status", status=429, retry_after="soon, maybe")] * 3)
    r = served.post({"model": "fusion", "messages": ASK,
                     "fusion": {"retry_backoff": 0.01, "retries": 0}})
    assert r.status_code == 200, r.text
    judge = r.json()["fusion"]["judge"]
    assert (judge["status"], judge["reason"]) == ("fallback", "judge_upstream_error")


# ---------------------------------------------------------------- item 6: NaN and friends

ODD_FIGURES = [{"cost": float("nan")}, {"cost": float("inf")}, {"cost": -0.5},
               {"prompt_tokens": float("inf")}, {"completion_tokens": float("nan")},
               {"prompt_tokens": -7}]


@pytest.mark.parametrize("figures", ODD_FIGURES, ids=lambda f: json.dumps(f))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_odd_usage_figures_become_unknown(served: Served, upstream: FakeUpstream,
                                          figures: dict[str, Any], stream: bool):
    for name in ("alpha", "beta"):
        upstream.script(name, Reply(f"Paris ({name}).", **figures))
    body = {"model": "fusion/quick", "messages": ASK, "stream": stream,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{served.v1}/chat/completions", json=body, timeout=30) as r:
        text = r.read().decode()
    assert r.status_code == 200, text
    if stream:
        frames = [line.split(" ", 2)[-1] if line.startswith(": fusion ") else line[6:]
                  for line in text.splitlines() if line.startswith(("data: {", ": fusion "))]
        events = [strict_json(f) for f in frames]  # the web page's JSON.parse reads them
        result = next(e["result"] for e in events if e.get("type") == "done")
        assert text.rstrip().endswith("data: [DONE]")
    else:
        result = strict_json(text)["fusion"]
    members = result["members"]
    assert all(m["status"] == "ok" for m in members)
    for m in members:
        assert m["cost"] is None or m["cost"] >= 0
        assert m["usage"]["prompt_tokens"] >= 0 and m["usage"]["completion_tokens"] >= 0


# ---------------------------------------------------------------- item 7: lone surrogates

SURROGATE_CASES = [
    ('"model": "fake:so\\ud800lo"', "model"),
    ('"model": "\\udfff"', "model"),
    ('"model": "fusion", "fusion": {"models": ["fake:a", "fake:\\ud83d"]}',
     "fusion.models[1]"),
    ('"model": "fusion", "fusion": {"judge": "fake:\\udc00j"}', "fusion.judge"),
]


def _post_raw(served: Served, raw: str) -> httpx.Response:
    return httpx.post(f"{served.v1}/chat/completions", content=raw.encode(), timeout=30,
                      headers={"content-type": "application/json"})


@pytest.mark.parametrize("stream", ["false", "true"])
@pytest.mark.parametrize(("fields", "param"), SURROGATE_CASES)
def test_lone_surrogates_in_names_are_400s(served: Served, upstream: FakeUpstream,
                                           fields: str, param: str, stream: str):
    raw = f'{{{fields}, "stream": {stream}, "messages": [{{"role": "user", "content": "hi"}}]}}'
    r = _post_raw(served, raw)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert (err["param"], err["code"]) == (param, "invalid_unicode")
    assert not upstream.requests


@pytest.mark.parametrize("stream", ["false", "true"])
def test_lone_surrogates_in_content_are_400s(served: Served, upstream: FakeUpstream,
                                             stream: str):
    raw = ('{"model": "fusion", "stream": ' + stream + ', "messages": [{"role": "user", '
           '"content": "ok"}, {"role": "user", "content": [{"type": "text", '
           '"text": "bad \\ud800 half"}]}]}')
    r = _post_raw(served, raw)
    assert r.status_code == 400, r.text
    assert error_of(r)["param"] == "messages[1].content[0].text"
    assert not upstream.requests


def test_surrogate_pairs_are_fine(served: Served, upstream: FakeUpstream):
    raw = '{"model": "fake:solo", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    r = _post_raw(served, raw)
    assert r.status_code == 200, r.text
    assert upstream.requests[0].messages[0]["content"] == "\U0001f600"


# ---------------------------------------------------------------- item 17: line breaks in SSE


def test_sse_lines_survive_unicode_line_breaks(served: Served, upstream: FakeUpstream):
    odd = "one\u2028two\u2029three\x85four"
    upstream.script("solo", Reply(odd))
    body = {"model": "fake:solo", "messages": ASK, "stream": True}
    with httpx.stream("POST", f"{served.v1}/chat/completions", json=body, timeout=30) as r:
        raw = r.read()
    text = raw.decode()
    assert raw.isascii()
    lines = [ln for ln in text.splitlines() if ln.startswith(("data: {", ": fusion "))]
    frames = [json.loads(ln.split(" ", 2)[-1] if ln.startswith(":") else ln[6:]) for ln in lines]
    streamed = "".join(f["choices"][0]["delta"].get("content") or ""
                       for f in frames if f.get("choices"))
    assert streamed == odd


# ---------------------------------------------------------------- item 19: headers, HEAD


def test_a_repeated_depth_header_is_refused(served: Served, upstream: FakeUpstream):
    headers = [("content-type", "application/json"), ("X-Fusion-Depth", "0"),
               ("X-Fusion-Depth", "5")]
    r = httpx.post(f"{served.v1}/chat/completions", timeout=30, headers=headers,
                   content=json.dumps({"model": "fusion", "messages": ASK}).encode())
    assert r.status_code == 400, r.text
    assert (error_of(r)["param"], error_of(r)["code"]) == ("X-Fusion-Depth", "invalid_header")
    assert not upstream.requests


def test_head_of_the_page_is_answered(served: Served):
    r = httpx.head(f"{served.url}/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.content == b""
