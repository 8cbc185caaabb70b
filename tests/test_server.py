"""`fusion serve` end to end: uvicorn on loopback, the real openai client, the fake upstream.

Nothing is mocked: requests go client -> server (a real uvicorn in a thread) -> Fusion ->
the loopback fake upstream, and traces go to a real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import typer
from typer.testing import CliRunner

from modelfusion.cli.serve import register
from tests.fake_upstream import FakeUpstream, Fault, RecordedRequest, Reply
from tests.helpers import ANALYSIS, ASK, FUSED, TRIO, Served, error_of


def fusion_of(completion: Any) -> dict[str, Any]:
    """The `fusion` object the server adds to a chat.completion."""
    return dict((completion.model_extra or {})["fusion"])


def body_of(e: openai.APIError) -> dict[str, Any]:
    assert isinstance(e.body, dict)
    return e.body


def calls(up: FakeUpstream, model: str) -> list[RecordedRequest]:
    return [r for r in up.requests if r.model == model]


def raw_frames(text: str) -> list[str]:
    return [f for f in text.split("\n\n") if f]


def progress_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(f.removeprefix(": fusion ")) for f in raw_frames(text)
            if f.startswith(": fusion ")]


# ---------------------------------------------------------------- the happy paths


def test_sync_client_gets_a_fused_chat_completion(served: Served, upstream: FakeUpstream):
    r = served.client().chat.completions.create(model="fusion", messages=ASK)
    assert r.object == "chat.completion"
    assert r.model == "fusion"
    assert r.choices[0].message.content == FUSED
    assert r.choices[0].finish_reason == "stop"
    fusion = fusion_of(r)
    assert fusion["mode"] == "merge"
    assert [m["model"] for m in fusion["members"]] == TRIO
    assert fusion["analysis"] == ANALYSIS
    assert fusion["trace_id"]
    member_tokens = sum(m["usage"]["prompt_tokens"] + m["usage"]["completion_tokens"]
                        for m in fusion["members"])
    judge = fusion["judge"]["usage"]
    assert r.usage is not None
    assert r.usage.total_tokens == member_tokens + judge["prompt_tokens"] \
        + judge["completion_tokens"]
    assert len(calls(upstream, "judge")) == 1


def test_sync_client_streams_the_answer(served: Served):
    stream = served.client().chat.completions.create(
        model="fusion/trio", messages=ASK, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FUSED
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.total_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


async def test_async_client_stream_and_not(served: Served):
    client = served.aclient()
    r = await client.chat.completions.create(model="fusion", messages=ASK)
    assert r.choices[0].message.content == FUSED
    stream = await client.chat.completions.create(model="fusion", messages=ASK, stream=True)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == FUSED
    # Several at once through the one shared ProviderPool.
    many = await asyncio.gather(*(client.chat.completions.create(model="fusion", messages=ASK)
                                  for _ in range(5)))
    assert {m.choices[0].message.content for m in many} == {FUSED}
    await client.close()


def test_extra_body_fusion_options(served: Served, upstream: FakeUpstream):
    upstream.script("a1", "Paris.")
    upstream.script("b1", "Lyon.")
    upstream.script("judge", Reply(json.dumps({"reason": "right", "choice": "A"})))
    r = served.client().chat.completions.create(
        model="fusion", messages=ASK, temperature=0.3, max_tokens=77, seed=5,
        extra_body={"fusion": {"models": ["fake:a1", "fake:b1"], "judge": "fake:judge",
                               "mode": "best-of", "system": "Be brief."}})
    fusion = fusion_of(r)
    assert fusion["mode"] == "best-of"
    assert [m["model"] for m in fusion["members"]] == ["fake:a1", "fake:b1"]
    assert fusion["judge"]["shuffle_seed"] == 5
    (a1,) = calls(upstream, "a1")
    assert a1.body["temperature"] == 0.3
    assert a1.body["max_tokens"] == 77
    assert a1.body["seed"] == 5
    assert a1.messages[0] == {"role": "system", "content": "Be brief."}
    assert not calls(upstream, "alpha")  # the preset's panel was replaced


def test_preset_supplies_judge_mode_and_options_when_models_are_given(
        served: Served, upstream: FakeUpstream):
    upstream.script("judge", Reply(json.dumps({"reason": "right", "choice": "B"})))
    r = served.client().chat.completions.create(
        model="fusion/quick", messages=ASK,
        extra_body={"fusion": {"models": ["fake:x1", "fake:x2"], "seed": 1}})
    fusion = fusion_of(r)
    assert fusion["mode"] == "best-of"  # from the preset
    assert fusion["judge"]["model"] == "fake:judge"
    assert [m["model"] for m in fusion["members"]] == ["fake:x1", "fake:x2"]


def test_openrouter_plugin_shape(served: Served, upstream: FakeUpstream):
    r = served.client().chat.completions.create(
        model="fake:top", messages=ASK,
        extra_body={"plugins": [{"id": "fusion", "analysis_models": ["fake:p1", "fake:p2"],
                                 "model": "fake:judge"}]})
    assert r.choices[0].message.content == FUSED
    assert [m["model"] for m in fusion_of(r)["members"]] == ["fake:p1", "fake:p2"]
    assert len(calls(upstream, "judge")) == 1
    assert not calls(upstream, "top")


def test_passthrough_is_a_one_member_fusion_without_judge(served: Served,
                                                          upstream: FakeUpstream):
    upstream.script("solo", Reply("streamed one word at a time", chunk_delay=0.01))
    client = served.client()
    r = client.chat.completions.create(model="fake:solo", messages=ASK)
    assert r.choices[0].message.content == "streamed one word at a time"
    assert r.model == "fake:solo"
    fusion = fusion_of(r)
    assert fusion["judge"]["status"] == "skipped"
    assert fusion["judge"]["reason"] == "single_candidate"
    assert not calls(upstream, "judge")
    # Streamed passthrough relays the member's own tokens as they arrive.
    chunks = [c.choices[0].delta.content for c in client.chat.completions.create(
        model="fake:solo", messages=ASK, stream=True) if c.choices and c.choices[0].delta.content]
    assert len(chunks) >= 5
    assert "".join(chunks) == "streamed one word at a time"


def test_models_and_healthz(served: Served):
    ids = [m.id for m in served.client().models.list()]
    assert ids[0] == "fusion"
    assert {"fusion", "fusion/trio", "fusion/quick", "fake:alpha", "fake:judge"} <= set(ids)
    assert not any(i.startswith("keyed:") for i in ids)  # its key is missing here
    health = httpx.get(f"{served.url}/healthz").json()
    assert health["status"] == "ok" and health["active_fusions"] == 0


# ---------------------------------------------------------------- the progress stream


def test_progress_is_in_the_raw_stream_and_ignored_by_the_sdk(served: Served,
                                                              upstream: FakeUpstream):
    upstream.script("alpha", Reply("alpha says Paris", chunk_delay=0.005))
    body = {"model": "fusion", "messages": ASK, "stream": True}
    with httpx.stream("POST", f"{served.v1}/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    frames = raw_frames(text)
    assert frames[-1] == "data: [DONE]"
    assert all(f.startswith(("data: ", ": fusion ")) for f in frames)
    events = progress_events(text)
    types = [e["type"] for e in events]
    assert types.count("member_started") == 3
    assert types.count("member_done") == 3
    assert "member_delta" in types and "judge_started" in types and "judge_done" in types
    deltas = "".join(e["text"] for e in events if e["type"] == "member_delta"
                     and e["member"] == 0)
    assert deltas == "alpha says Paris"
    done = events[-1]
    assert done["type"] == "done" and done["trace_id"]
    assert done["result"]["answer"] == FUSED and done["result"]["analysis"] == ANALYSIS

    # The same stream through the SDK: only chunks, nothing of the progress leaks in.
    chunks = list(served.client().chat.completions.create(model="fusion", messages=ASK,
                                                          stream=True))
    assert all(type(c).__name__ == "ChatCompletionChunk" for c in chunks)
    assert all(c.choices and c.choices[0].delta is not None for c in chunks)
    assert not any((c.model_extra or {}).get("type") for c in chunks)


def test_failure_mid_stream_is_an_openai_error_event(served: Served, upstream: FakeUpstream):
    for m in ("alpha", "beta", "gamma"):
        upstream.script(m, Fault("status", status=500, message=f"{m} is down"))
    with pytest.raises(openai.APIError) as info:
        for _ in served.client().chat.completions.create(model="fusion", messages=ASK,
                                                         stream=True):
            pass
    assert body_of(info.value)["code"] == "all_members_failed"
    assert {m["reason"] for m in body_of(info.value)["members"]} == {"upstream_error"}
    raw = served.post({"model": "fusion", "messages": ASK, "stream": True}).text
    error_frames = [json.loads(f[6:]) for f in raw_frames(raw)
                    if f.startswith("data: {\"error\"")]
    assert error_frames and error_frames[0]["error"]["type"] == "server_error"
    assert "[DONE]" not in raw


# ---------------------------------------------------------------- errors, one per status


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"messages": ASK}, "model", "missing_required_parameter"),
    ({"model": "fusion"}, "messages", "missing_required_parameter"),
    ({"model": "fusion", "messages": [{"role": "tool", "content": "x"}]},
     "messages[0].role", "invalid_value"),
    ({"model": "fusion", "messages": ASK, "temperature": 7}, "temperature", "invalid_value"),
    ({"model": "fusion", "messages": ASK, "n": 2}, "n", "unsupported_parameter"),
    ({"model": "fusion", "messages": ASK, "tools": [{"type": "function"}]}, "tools",
     "unsupported_parameter"),
    ({"model": "fusion", "messages": ASK, "max_tokens": 10**6}, "max_tokens",
     "max_tokens_too_large"),
    ({"model": "fusion", "messages": ASK, "fusion": {"quorum": 9}}, "fusion.quorum",
     "invalid_value"),
    ({"model": "fusion", "messages": ASK, "fusion": {"bogus": 1}}, "fusion.bogus",
     "unknown_parameter"),
    ({"model": "fusion", "messages": ASK, "fusion": {"mode": "chaos"}}, "fusion.mode",
     "invalid_value"),
    ({"model": "fusion", "messages": ASK, "fusion": {"rounds": "two"}}, "fusion.rounds",
     "invalid_value"),
    ({"model": "fusion", "messages": ASK, "fusion": {"models": ["fake:a", "nope:b"]}},
     "fusion.models[1]", "invalid_model"),
    ({"model": "fusion", "messages": ASK, "fusion": {"judge": "nope:j"}}, "fusion.judge",
     "invalid_model"),
    ({"model": "fusion", "messages": ASK, "fusion": {"models": ["http://10.0.0.1/v1:m"]}},
     "fusion.models[0]", "url_not_allowed"),
    ({"model": "fusion", "messages": ASK, "fusion": {"models": ["fake:https://x.test/v1"]}},
     "fusion.models[0]", "url_not_allowed"),
    ({"model": "https://evil.test/v1", "messages": ASK}, "model", "url_not_allowed"),
    ({"model": "nope:m", "messages": ASK}, "model", "invalid_model"),
    ({"model": "keyed:m", "messages": ASK}, "model", "provider_unavailable"),
    ({"model": "fusion", "messages": ASK, "fusion": {"models": ["fake:a*9"]}},
     "fusion.models", "too_many_members"),
    ({"model": "fusion", "messages": ASK,
      "fusion": {"models": [f"fake:m{i}" for i in range(9)]}}, "fusion.models",
     "too_many_members"),
    ({"model": "fusion", "messages": ASK,
      "plugins": [{"id": "fusion", "analysis_models": ["evil:x"]}]},
     "plugins[fusion].analysis_models[0]", "invalid_model"),
    ({"model": "fusion", "messages": ASK, "plugins": [{"id": "web"}]}, "plugins[0].id",
     "unsupported_parameter"),
])
def test_bad_requests_are_400_naming_the_field(served: Served, upstream: FakeUpstream,
                                               body: dict[str, Any], param: str, code: str):
    resp = served.post(body)
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert err["type"] == "invalid_request_error"
    assert (err["param"], err["code"]) == (param, code)
    assert "MODELFUSION_TEST_UNSET_KEY" not in err["message"]  # no server env var names
    assert not upstream.requests  # refused before anything went upstream


def test_bad_request_through_the_sdk(served: Served):
    with pytest.raises(openai.BadRequestError) as info:
        served.client().chat.completions.create(
            model="fusion", messages=ASK, extra_body={"fusion": {"models": ["evil:x"]}})
    assert info.value.status_code == 400
    assert body_of(info.value)["param"] == "fusion.models[0]"


def test_invalid_json_is_400(served: Served):
    resp = httpx.post(f"{served.v1}/chat/completions", content=b"{nope",
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400 and error_of(resp)["code"] == "invalid_json"


def test_unknown_preset_or_model_is_404(served: Served):
    with pytest.raises(openai.NotFoundError) as info:
        served.client().chat.completions.create(model="fusion/nope", messages=ASK)
    assert body_of(info.value)["code"] == "model_not_found"
    assert body_of(info.value)["param"] == "model"
    resp = served.post({"model": "gpt-4o", "messages": ASK})
    assert resp.status_code == 404 and error_of(resp)["code"] == "model_not_found"
    resp = httpx.get(f"{served.v1}/nothing-here")
    assert resp.status_code == 404 and error_of(resp)["code"] == "not_found"


def test_body_too_large_is_413(serve: Callable[..., Served]):
    served = serve(max_body_bytes=4096)
    big: Any = {"model": "fusion", "messages": [{"role": "user", "content": "x" * 5000}]}
    resp = served.post(big)
    assert resp.status_code == 413 and error_of(resp)["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut off while streaming in
        yield json.dumps(big).encode()

    resp = httpx.post(f"{served.v1}/chat/completions", content=chunked(), timeout=30,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 413
    with pytest.raises(openai.APIStatusError) as info:
        served.client().chat.completions.create(model="fusion", messages=big["messages"])
    assert info.value.status_code == 413


def test_saturated_server_is_429_with_retry_after(serve: Callable[..., Served],
                                                   upstream: FakeUpstream):
    served = serve(max_concurrent=1, retry_after_s=3)
    # The first request holds the only slot for 4 s: room for the two refused requests
    # below to arrive while it does, on a busy machine too.
    upstream.script("slow", Reply("finally", delay=4.0))
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(served.client().chat.completions
                                                           .create(model="fake:slow",
                                                                   messages=ASK)))
    first.start()
    deadline = time.monotonic() + 5
    while not calls(upstream, "slow") and time.monotonic() < deadline:
        time.sleep(0.01)
    resp = served.post({"model": "fusion", "messages": ASK})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "3"
    assert error_of(resp)["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        served.client().chat.completions.create(model="fusion", messages=ASK)
    first.join(30)
    assert results[0].choices[0].message.content == "finally"
    # The slot came back: the next request is served.
    assert served.client().chat.completions.create(model="fusion", messages=ASK)


def test_all_members_failed_is_502_with_member_reasons(served: Served,
                                                       upstream: FakeUpstream):
    upstream.script("alpha", Fault("status", status=500))
    upstream.script("beta", Fault("status", status=429, retry_after="0"))
    upstream.script("gamma", Fault("malformed_json"))
    with pytest.raises(openai.InternalServerError) as info:
        served.client().chat.completions.create(model="fusion", messages=ASK)
    err = body_of(info.value)
    assert info.value.status_code == 502
    assert err["code"] == "all_members_failed" and err["type"] == "server_error"
    reasons = {m["model"]: m["reason"] for m in err["members"]}
    assert reasons == {"fake:alpha": "upstream_error", "fake:beta": "rate_limited",
                       "fake:gamma": "bad_response"}
    assert err["trace_id"]


def test_deadline_is_504(served: Served, upstream: FakeUpstream):
    for m in ("alpha", "beta", "gamma"):
        upstream.script(m, Fault("hang"))
    started = time.monotonic()
    # Unenforced, the deadline would leave the hang to the member timeout (30 s).
    resp = served.post({"model": "fusion", "messages": ASK,
                        "fusion": {"deadline": 0.5, "timeout": 30}})
    assert time.monotonic() - started < 10
    assert resp.status_code == 504
    err = error_of(resp)
    assert err["code"] == "deadline_exceeded"
    assert {m["reason"] for m in err["members"]} == {"timeout"}


# ---------------------------------------------------------------- auth


def test_auth_on(serve: Callable[..., Served]):
    served = serve(api_keys=("k-one", "k-two"))
    for key in (None, "wrong"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        resp = served.post({"model": "fusion", "messages": ASK}, headers=headers)
        assert resp.status_code == 401
        assert error_of(resp)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        served.client("wrong").chat.completions.create(model="fusion", messages=ASK)
    for key in ("k-one", "k-two"):
        r = served.client(key).chat.completions.create(model="fusion", messages=ASK)
        assert r.choices[0].message.content == FUSED
    for path in ("/v1/models", "/v1/fusion/traces", "/v1/fusion/traces/abc"):
        assert httpx.get(served.url + path).status_code == 401
    assert httpx.get(served.url + "/v1/models",
                     headers={"Authorization": "Bearer k-two"}).status_code == 200
    # The page and the health check stay open: the page asks for the key itself.
    assert httpx.get(served.url + "/healthz").status_code == 200
    assert httpx.get(served.url + "/").status_code == 200


def test_auth_off_needs_no_key(served: Served):
    resp = served.post({"model": "fusion", "messages": ASK})
    assert resp.status_code == 200


def test_non_loopback_bind_without_keys_refuses_to_start(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FUSION_API_KEYS", raising=False)
    app = typer.Typer()
    app.command("noop")(lambda: None)  # typer needs two commands to keep `serve` a subcommand
    register(app)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2
    assert "FUSION_API_KEYS" in result.output and "--insecure" in result.output


# ---------------------------------------------------------------- recursion


def test_depth_header_is_passed_on(served: Served, upstream: FakeUpstream):
    served.post({"model": "fusion", "messages": ASK})
    assert {r.headers["x-fusion-depth"] for r in upstream.requests} == {"1"}


def test_nested_request_is_served_by_the_first_member_only(served: Served,
                                                           upstream: FakeUpstream):
    upstream.script("alpha", "alpha alone")
    r = served.client(default_headers={"X-Fusion-Depth": "1"}).chat.completions.create(
        model="fusion", messages=ASK)
    assert r.choices[0].message.content == "alpha alone"
    assert [m["model"] for m in fusion_of(r)["members"]] == ["fake:alpha"]
    assert [r.model for r in upstream.requests] == ["alpha"]  # no panel, no judge
    assert upstream.requests[0].headers["x-fusion-depth"] == "2"


def test_depth_at_the_limit_is_refused(serve: Callable[..., Served], upstream: FakeUpstream):
    served = serve(max_depth=2)
    resp = served.post({"model": "fusion", "messages": ASK}, headers={"X-Fusion-Depth": "2"})
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "recursion_limit"
    assert error_of(resp)["param"] == "X-Fusion-Depth"
    bad = served.post({"model": "fusion", "messages": ASK}, headers={"X-Fusion-Depth": "x"})
    assert bad.status_code == 400
    assert not upstream.requests


# ---------------------------------------------------------------- traces


def test_every_fusion_is_traced_and_listed(served: Served, upstream: FakeUpstream):
    client = served.client()
    ok = client.chat.completions.create(model="fusion", messages=ASK)
    list(client.chat.completions.create(model="fake:alpha", messages=ASK, stream=True))
    for m in ("alpha", "beta", "gamma"):
        upstream.script(m, Fault("status", status=500))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fusion", messages=ASK)
    failed_id = body_of(info.value)["trace_id"]
    assert served.store is not None
    served.store.flush()

    listed = httpx.get(f"{served.v1}/fusion/traces").json()["data"]
    assert len(listed) == 3
    assert [t["status"] for t in listed] == ["failed", "ok", "ok"]  # newest first
    assert {t["source"] for t in listed} == {"server"}
    assert listed[0]["id"] == failed_id
    assert listed[0]["error"]["code"] == "all_members_failed"
    assert listed[2]["preset"] == "trio"

    trace = httpx.get(f"{served.v1}/fusion/traces/{fusion_of(ok)['trace_id']}")
    assert trace.status_code == 200
    record = trace.json()
    assert record["answer"] == FUSED and record["analysis"] == ANALYSIS
    assert record["messages"] == ASK
    prefix = httpx.get(f"{served.v1}/fusion/traces/{failed_id[:10]}").json()
    assert prefix["id"] == failed_id and prefix["status"] == "failed"
    missing = httpx.get(f"{served.v1}/fusion/traces/0000deadbeef")
    assert missing.status_code == 404 and error_of(missing)["code"] == "trace_not_found"
    assert httpx.get(f"{served.v1}/fusion/traces?limit=0").status_code == 400


def test_no_store_prompts(serve: Callable[..., Served]):
    served = serve(store_prompts=False)
    r = served.client().chat.completions.create(model="fusion", messages=ASK)
    assert served.store is not None
    served.store.flush()
    record = httpx.get(f"{served.v1}/fusion/traces/{fusion_of(r)['trace_id']}")
    assert record.json()["messages"] is None


def test_without_a_store_traces_are_404(serve: Callable[..., Served]):
    served = serve(traces=False)
    r = served.client().chat.completions.create(model="fusion", messages=ASK)
    assert fusion_of(r)["trace_id"] is None
    resp = httpx.get(f"{served.v1}/fusion/traces")
    assert resp.status_code == 404 and error_of(resp)["code"] == "traces_disabled"


# ---------------------------------------------------------------- robustness


def test_client_gone_mid_stream_frees_the_slot(serve: Callable[..., Served],
                                               upstream: FakeUpstream):
    served = serve(max_concurrent=1)
    upstream.script("alpha", Reply("slow words " * 20, chunk_delay=0.05))
    body = {"model": "fusion", "messages": ASK, "stream": True}
    with httpx.stream("POST", f"{served.v1}/chat/completions", json=body, timeout=30) as resp:
        for line in resp.iter_lines():
            if "member_delta" in line:
                break  # hang up mid-stream
    deadline = time.monotonic() + 5
    while httpx.get(f"{served.url}/healthz").json()["active_fusions"] and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{served.url}/healthz").json()["active_fusions"] == 0
    upstream.script("alpha")
    assert served.post({"model": "fusion", "messages": ASK}).status_code == 200
    assert served.store is not None
    served.store.flush()
    gone, ok = httpx.get(f"{served.v1}/fusion/traces").json()["data"][::-1]
    assert gone["status"] == "failed" and gone["error"]["code"] == "run_failed"
    assert ok["status"] == "ok"


def test_a_retry_mid_stream_does_not_repeat_text(served: Served, upstream: FakeUpstream):
    # The member's first stream is cut after "partial answer "; the retry sends the full
    # text. A passthrough client must see each word once.
    upstream.script("flaky", Fault("sse_cut"), Reply("partial answer and the rest"))
    chunks = served.client().chat.completions.create(
        model="fake:flaky", messages=ASK, stream=True,
        extra_body={"fusion": {"retries": 1}})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == "partial answer and the rest"


def test_a_diverging_retry_mid_stream_is_an_error_not_garbage(served: Served,
                                                              upstream: FakeUpstream):
    upstream.script("flaky", Fault("sse_cut"), Reply("something else entirely"))
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for c in served.client().chat.completions.create(
                model="fake:flaky", messages=ASK, stream=True,
                extra_body={"fusion": {"retries": 1}}):
            got.extend(c.choices[0].delta.content or "" for _ in [0] if c.choices)
    assert body_of(info.value)["code"] == "stream_diverged"
    assert "".join(got) == "partial answer "
