"""The OpenAI-compatible server says what happened, as OpenAI clients read it (issue 15,
part 5): finish_reason, max_tokens in every mode, the sampling fields, no retry of a
failed fusion, the model endpoints and unknown APIs.

The engine's side runs on the scripted provider; the server's through the real openai SDK
against uvicorn on loopback and the fake upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from modelfusion import Fusion, ProviderError, UsageError
from modelfusion.server.schemas import parse_chat_request
from modelfusion.testing import Call, Reply, ScriptedProvider, choose
from tests.fake_upstream import FakeUpstream, Fault, RecordedRequest
from tests.fake_upstream import Reply as UpReply
from tests.helpers import ANALYSIS, ASK, FUSED, Served

LONG = " ".join(f"word{i}" for i in range(300))  # the 301-word answer of the issue, near enough


def merged(answer: str) -> str:
    return json.dumps({"analysis": ANALYSIS, "answer": answer})


def obeying(text: str) -> Any:
    """A fake-upstream step that honours max_tokens (a word a token) and stop, as a real
    upstream does: cut text says finish_reason "length"."""

    def step(req: RecordedRequest) -> UpReply:
        words, limit = text.split(" "), req.body.get("max_tokens")
        out = " ".join(words[:limit]) if limit else text
        for stop in req.body.get("stop") or ():
            out = out.split(stop, 1)[0]
        cut = limit is not None and len(words) > limit
        return UpReply(out, finish_reason="length" if cut else "stop")

    return step


def calls(up: FakeUpstream, model: str) -> list[RecordedRequest]:
    return [r for r in up.requests if r.model == model]


# ---------------------------------------------------------------- the engine


def scripted_fusion(scripted: ScriptedProvider, mode: str, **options: Any) -> Fusion:
    return Fusion(["scripted:a", "scripted:b"], judge="scripted:j", mode=mode,
                  config=scripted.config(), retries=0, seed=1, **options)


def test_the_answer_carries_the_finish_reason_of_the_call_that_wrote_it():
    scripted = ScriptedProvider()
    # best-of picks b, whose answer was cut: the fused answer was cut.
    scripted.enqueue("a", "Lyon.")
    scripted.enqueue("b", Reply("Paris is", finish_reason="length"))
    scripted.enqueue("j", choose("Paris"))
    result = scripted_fusion(scripted, "best-of").run_sync("Capital of France?")
    assert result.answer == "Paris is" and result.finish_reason == "length"
    assert [m.finish_reason for m in result.members] == ["stop", "length"]
    assert result.to_dict()["members"][1]["finish_reason"] == "length"
    # merge: the judge wrote the answer, so its finish reason is the answer's.
    scripted.enqueue("a", Reply("Lyon.", finish_reason="length"))
    scripted.enqueue("b", Reply("Paris is", finish_reason="length"))
    scripted.enqueue("j", merged(FUSED))
    result = scripted_fusion(scripted, "merge").run_sync("Capital of France?")
    assert result.answer == FUSED and result.finish_reason == "stop"
    scripted.enqueue("a", "Lyon.")
    scripted.enqueue("b", "Paris.")
    scripted.enqueue("j", Reply(merged(FUSED), finish_reason="length"))
    result = scripted_fusion(scripted, "merge").run_sync("Capital of France?")
    assert result.finish_reason == "length"
    # Nothing to judge: the one answer, and its reason.
    scripted.enqueue("a", Reply("Paris", finish_reason="length"))
    scripted.enqueue("b", ProviderError("upstream_error", "down"))
    result = scripted_fusion(scripted, "merge").run_sync("Capital of France?")
    assert result.judge.reason == "single_candidate" and result.finish_reason == "length"


def test_answer_max_tokens_bounds_the_judge_that_writes_the_answer_not_one_that_picks():
    scripted = ScriptedProvider()
    for mode, verdict in (("merge", merged(FUSED)), ("best-of", choose("Paris"))):
        scripted.enqueue("a", "Lyon.")
        scripted.enqueue("b", "Paris.")
        scripted.enqueue("j", verdict)
        scripted_fusion(scripted, mode, answer_max_tokens=10).run_sync("Capital of France?")
    scripted.enqueue("a", "Lyon.")
    scripted.enqueue("b", "Paris.")
    scripted.enqueue("j", merged(FUSED))
    scripted_fusion(scripted, "merge", max_tokens=10).run_sync("Capital of France?")
    judged = [c.params.max_tokens for c in scripted.calls if c.model == "j"]
    # merge's writer: the answer's bound; best-of's pick: its own; the library's max_tokens
    # alone stays the members' (the CLI's --max-tokens, evals)
    assert judged == [10, 256, 2048]


def test_stop_and_top_p_go_to_members_and_the_judges_answer_ends_at_stop():
    scripted = ScriptedProvider()
    scripted.enqueue("a", "Lyon.")
    scripted.enqueue("b", "Paris.")
    scripted.enqueue("j", merged("Paris.\n\nAlso: Lyon is not the capital."))
    result = scripted_fusion(scripted, "merge", stop=["\n\n"], top_p=0.5).run_sync("Capital?")
    assert result.answer == "Paris." and result.finish_reason == "stop"
    by_model: dict[str, Call] = {c.model: c for c in scripted.calls}
    assert by_model["a"].params.stop == ("\n\n",) and by_model["a"].params.top_p == 0.5
    # The judge's JSON would end at a stop string; the judge is greedy anyway.
    assert by_model["j"].params.stop is None and by_model["j"].params.top_p is None


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], [""], [3]])
def test_a_bad_stop_list_is_a_usage_error_naming_it(stop: list[Any]):
    with pytest.raises(UsageError) as info:
        scripted_fusion(ScriptedProvider(), "merge", stop=stop)
    assert info.value.option == "stop" and "at most 4 non-empty strings" in str(info.value)


def test_zero_penalties_and_empty_logit_bias_pass_as_clients_send_them():
    body = {"model": "fusion", "messages": ASK, "presence_penalty": 0, "frequency_penalty": 0.0,
            "logit_bias": {}, "reasoning_effort": None, "top_p": 1, "stop": "END"}
    req = parse_chat_request(json.dumps(body).encode())
    assert req.options["stop"] == ("END",) and req.options["top_p"] == 1


# ---------------------------------------------------------------- the server


def test_finish_reason_length_in_json_and_stream(served: Served, upstream: FakeUpstream):
    upstream.script("solo", UpReply("cut short", finish_reason="length"))
    client = served.client()
    r = client.chat.completions.create(model="fake:solo", messages=ASK, max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.model_extra and r.model_extra["fusion"]["members"][0]["finish_reason"] == "length"
    chunks = list(client.chat.completions.create(model="fake:solo", messages=ASK,
                                                 max_tokens=2, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_max_tokens_bounds_a_merged_answer(served: Served, upstream: FakeUpstream):
    for member in ("alpha", "beta", "gamma"):
        upstream.script(member, obeying(f"{member}: {LONG}"))  # they differ: a judge merges
    upstream.script("judge", obeying(merged(LONG)))
    r = served.client().chat.completions.create(model="fusion", messages=ASK, max_tokens=10)
    assert len((r.choices[0].message.content or "").split()) <= 10
    assert r.choices[0].finish_reason == "length"
    assert {j.body["max_tokens"] for j in calls(upstream, "judge")} == {10}


def test_stop_and_top_p_are_forwarded_to_members(served: Served, upstream: FakeUpstream):
    r = served.client().chat.completions.create(model="fusion", messages=ASK,
                                                stop=["capital"], top_p=0.5)
    assert r.choices[0].message.content == FUSED.split("capital")[0]
    assert r.choices[0].finish_reason == "stop"
    alpha, = calls(upstream, "alpha")
    assert alpha.body["stop"] == ["capital"] and alpha.body["top_p"] == 0.5
    judge, = calls(upstream, "judge")
    assert "stop" not in judge.body and "top_p" not in judge.body


@pytest.mark.parametrize(("field", "value"), [
    ("presence_penalty", 0.5), ("frequency_penalty", -1), ("logit_bias", {"50256": -100}),
    ("reasoning_effort", "low"), ("stop", ["a", "b", "c", "d", "e"]), ("top_p", 0),
    ("stop", 7),
])
def test_sampling_fields_not_honoured_are_400_naming_them(served: Served, upstream: FakeUpstream,
                                                         field: str, value: Any):
    with pytest.raises(openai.BadRequestError) as info:
        served.client().chat.completions.create(model="fusion", messages=ASK,
                                                extra_body={field: value})
    assert isinstance(info.value.body, dict) and info.value.body["param"] == field
    assert not upstream.requests


def test_a_failed_fusion_is_not_retried_by_the_sdk(served: Served, upstream: FakeUpstream):
    client = openai.OpenAI(base_url=served.v1, api_key="none", timeout=30)  # 2 retries
    for member in ("alpha", "beta", "gamma"):
        upstream.script(member, Fault("status", status=500))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fusion", messages=ASK)
    assert info.value.status_code == 502
    assert info.value.response.headers["x-should-retry"] == "false"
    assert [len(calls(upstream, m)) for m in ("alpha", "beta", "gamma")] == [1, 1, 1]
    upstream.reset()
    for member in ("alpha", "beta", "gamma"):
        upstream.script(member, Fault("hang"))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="fusion", messages=ASK,
                                       extra_body={"fusion": {"deadline": 0.5}})
    assert info.value.status_code == 504
    assert [len(calls(upstream, m)) for m in ("alpha", "beta", "gamma")] == [1, 1, 1]


def test_retrieve_a_model(served: Served):
    client = served.client()
    for model in ("fusion", "fusion/trio", "fake:alpha", "fake:any-model-it-serves"):
        card = client.models.retrieve(model)
        assert (card.id, card.object) == (model, "model")
    assert client.models.retrieve("fusion/quick").owned_by == "modelfusion"
    assert client.models.retrieve("fake:alpha").owned_by == "fake"
    for model in ("fusion/nope", "gpt-4o", "keyed:x", "http://evil/x"):
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve(model)
        body = info.value.body
        assert isinstance(body, dict) and body["code"] == "model_not_found", model


def test_models_lists_no_local_model_without_llama_cpp(served: Served,
                                                        monkeypatch: pytest.MonkeyPatch):
    from modelfusion.providers.local import loader

    monkeypatch.setattr(loader, "llama_cpp", None)
    ids = [m.id for m in served.client().models.list()]
    assert "fusion/trio" in ids and "fake:alpha" in ids
    assert "fusion/local" not in ids and not any(i.startswith("local:") for i in ids)
    with pytest.raises(openai.NotFoundError):
        served.client().models.retrieve("fusion/local")


def test_an_unknown_api_is_404_saying_which_are_served(served: Served):
    with pytest.raises(openai.NotFoundError) as info:
        served.client().embeddings.create(model="fusion", input="hi")
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "not_found"
    assert "POST /v1/embeddings is not an API of this server" in body["message"]
    for api in ("POST /v1/chat/completions", "GET /v1/models", "GET /v1/models/{model_id}"):
        assert api in body["message"]
    other = httpx.get(f"{served.url}/nothing-here")  # outside /v1: the plain 404
    assert other.status_code == 404
