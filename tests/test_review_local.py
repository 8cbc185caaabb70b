"""One end-to-end review of a seeded bug on the embedded 0.5B: real llama.cpp members held
to the findings schema by a grammar, the review mode, and the merged report."""

from __future__ import annotations

import json

from modelfusion import Fusion
from modelfusion.review.diff import parse_diff, split
from modelfusion.review.findings import MEMBER_SCHEMA, SEVERITIES
from modelfusion.review.runner import REVIEW_SYSTEM, prompt
from tests.helpers import DIFF, MODEL, local_model


@local_model
async def test_local_review_of_a_seeded_bug(model_home):
    (chunk,) = [c for c in split(parse_diff(DIFF)) if c.path == "calc.py"]
    async with Fusion([f"local:{MODEL}*2"], judge=f"local:{MODEL}", mode="review",
                      offline=True, system=REVIEW_SYSTEM, response_schema=MEMBER_SCHEMA,
                      max_tokens=256, judge_max_tokens=256, temperature=0.0, seed=7) as f:
        result = await f.run(prompt(chunk))
    assert [m.status for m in result.members] == ["ok", "ok"]
    analysis = result.to_dict()["analysis"]
    # The grammar keeps replies to the schema; one cut off by max_tokens is listed, not lost.
    assert analysis["panel"] + len(analysis["unreadable"]) == 2
    assert analysis["panel"] >= 1
    for m in result.members:
        if m.model not in analysis["unreadable"]:
            assert isinstance(json.loads(m.content or "")["findings"], list)
    for finding in analysis["findings"]:
        assert finding["file"] == "calc.py"  # whatever path a member wrote, mapped to the chunk
        assert finding["severity"] in SEVERITIES
        assert 1 <= finding["agreed_by"] <= finding["panel"] == analysis["panel"]
    assert result.judge.status in {"ok", "fallback", "skipped"}
    assert json.loads(result.answer)["findings"] == analysis["findings"]
    assert result.cost == 0.0
