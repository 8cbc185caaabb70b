"""`fusion review`: diff parsing and splitting, finding de-duplication and agreement counting,
the review mode against the loopback fake, SARIF, the CLI's inputs, outputs and exit codes,
and the CI examples."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from modelfusion import Fusion, UsageError
from modelfusion.review.diff import Chunk, files_in, lines_in, parse_diff, split
from modelfusion.review.findings import (
    MEMBER_SCHEMA,
    Finding,
    anchor,
    at_or_above,
    group_nearby,
    merge_group,
    parse_findings,
)
from modelfusion.review.runner import REVIEW_SYSTEM, prompt
from modelfusion.review.sarif import to_sarif
from modelfusion.types import Message
from tests.fake_upstream import Reply
from tests.helpers import DIFF, fusion

ROOT = Path(__file__).resolve().parents[1]

BEFORE = "def total(xs):\n    s = 0\n    for i in range(len(xs)):\n        s += xs[i]\n" \
         "    return s\n\n\ndef first(xs):\n    return xs[0]\n"
AFTER = BEFORE.replace("range(len(xs))", "range(len(xs) - 1)").replace(
    "    return xs[0]", "    if not xs:\n        return None\n    return xs[0]")

def finding(member: str, line: int | None = 3, *, file: str = "calc.py", cat: str = "bug",
            sev: str = "high", msg: str = "off by one") -> Finding:
    return Finding(file=file, line=line, severity=sev, category=cat, message=msg,
                   members=(member,))


def findings_json(*items: dict) -> str:
    return json.dumps({"findings": list(items)})


OFF_BY_ONE = {"file": "calc.py", "line": 3, "severity": "high", "category": "bug",
              "message": "range stops one early: the last item is skipped",
              "suggestion": "use range(len(xs))"}
NONE_RETURN = {"file": "calc.py", "line": 10, "severity": "low", "category": "bug",
               "message": "returns None for an empty list", "suggestion": "raise instead"}


# ---- diff parsing and splitting ----


def test_parse_keeps_text_changes_with_new_line_numbers():
    files = parse_diff(DIFF)
    assert [(f.path, f.status) for f in files] == [("added.py", "added"), ("calc.py", "modified")]
    (hunk,) = files[1].hunks
    added = [(ln.new, ln.text) for ln in hunk.lines if ln.kind == "+"]
    assert added == [(3, "    for i in range(len(xs) - 1):"), (9, "    if not xs:"),
                     (10, "        return None")]
    removed = [ln for ln in hunk.lines if ln.kind == "-"]
    assert [ln.new for ln in removed] == [None]
    chunk = split(files)[1]
    assert chunk.changed_lines == {3, 9, 10}
    text = chunk.render()
    assert text.startswith("File: calc.py (modified)\n@@\n")  # no hunk numbers to copy
    assert "    3 +     for i in range(len(xs) - 1):" in text
    assert files_in([Message("user", prompt(chunk))]) == ["calc.py"]


def test_a_broken_diff_is_a_usage_error():
    with pytest.raises(UsageError, match="not a unified diff"):
        parse_diff("--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n")
    assert parse_diff("") == []


def big_diff(n_hunks: int, lines_per_hunk: int) -> str:
    out = ["diff --git a/big.py b/big.py", "--- a/big.py", "+++ b/big.py"]
    for h in range(n_hunks):
        start = 1 + h * 100
        out.append(f"@@ -{start},0 +{start},{lines_per_hunk} @@")
        out += [f"+line_{h}_{i} = {i}" for i in range(lines_per_hunk)]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("budget", [300, 1000, 5000])
def test_split_fits_the_budget_and_loses_no_line(budget):
    files = parse_diff(big_diff(n_hunks=6, lines_per_hunk=25))
    chunks = split(files, budget)
    assert all(c.path == "big.py" for c in chunks)
    assert [c.part for c in chunks] == list(range(1, len(chunks) + 1))
    assert {c.parts for c in chunks} == {len(chunks)}
    for c in chunks:
        assert len(c.render()) <= budget + 100  # the header line is on top of the budget
    kept = [ln.text for c in chunks for h in c.hunks for ln in h.lines]
    assert kept == [f"line_{h}_{i} = {i}" for h in range(6) for i in range(25)]
    if budget == 300:  # one hunk is bigger than the budget: cut into windows of lines
        assert any("(continued)" in h.header for c in chunks for h in c.hunks)
    if budget == 5000:
        assert len(chunks) == 1


def test_split_refuses_a_silly_budget():
    with pytest.raises(UsageError):
        split(parse_diff(DIFF), 10)


# ---- findings: parsing, grouping, agreement ----


def test_parse_findings_tolerates_what_models_write():
    files = ["src/calc.py"]
    plain = parse_findings(findings_json({**OFF_BY_ONE, "file": "calc.py"}), files=files,
                           member="m")
    assert plain is not None and plain[0].file == "src/calc.py"  # shortened path mapped back
    assert plain[0].members == ("m",) and plain[0].line == 3
    fenced = parse_findings("Here:\n```json\n" + findings_json(OFF_BY_ONE) + "\n```", files=files)
    assert fenced is not None and len(fenced) == 1
    bare = parse_findings(json.dumps([OFF_BY_ONE]), files=files)
    assert bare is not None and len(bare) == 1
    odd = parse_findings(findings_json({"file": "x", "line": "7", "severity": "Warning",
                                        "category": "Logic", "message": "m"}), files=files)
    assert odd is not None
    assert (odd[0].severity, odd[0].category, odd[0].line) == ("medium", "bug", 7)
    assert parse_findings("No issues found.", files=files) == []
    assert parse_findings('{"findings": []}', files=files) == []
    assert parse_findings("I think the code is wrong somewhere", files=files) is None
    assert parse_findings('{"findings": "none"}', files=files) is None
    assert parse_findings(findings_json({"file": "calc.py", "line": 1}), files=files) == []
    cut = findings_json(OFF_BY_ONE, NONE_RETURN)[:-30]  # a reply cut off by max_tokens
    salvaged = parse_findings(cut, files=files)
    assert salvaged is not None and [f.line for f in salvaged] == [3]
    assert parse_findings('{"findings": [{"file": "calc.py", "li', files=files) is None


def test_nearby_grouping_counts_members_not_reports():
    a1, b1, c1 = finding("a", 3), finding("b", 4), finding("c", 6)
    a2 = finding("a", 2, msg="again")  # the same member twice is not agreement
    style = finding("b", 3, cat="style")
    other = finding("c", 3, file="other.py")
    groups = group_nearby([a1, b1, c1, a2, style, other])
    merged = sorted((merge_group(g, panel=3) for g in groups), key=lambda f: f.agreed_by)
    counts = [(f.file, f.category, f.agreed_by) for f in merged]
    assert sorted(counts) == [("calc.py", "bug", 1), ("calc.py", "bug", 3),
                              ("calc.py", "style", 1), ("other.py", "bug", 1)]
    top = merged[-1]
    assert top.members == ("a", "b", "c") and top.panel == 3 and not top.single
    assert merged[0].single  # 1 of 3: kept, and marked


def test_anchor_moves_a_finding_to_the_line_it_quotes():
    (chunk,) = [c for c in split(parse_diff(DIFF)) if c.path == "calc.py"]
    lines = lines_in([Message("user", prompt(chunk))])["calc.py"]
    assert [(ln.kind, ln.new) for ln in lines if ln.kind != " "] == [
        ("-", None), ("+", 3), ("+", 9), ("+", 10)]
    hunk_start = finding("a", 1, msg="`for i in range(len(xs) - 1):` skips the last item")
    assert anchor(hunk_start, lines).line == 3  # quotes an added line
    removed = finding("a", 1, msg="`for i in range(len(xs)):` was right")
    assert anchor(removed, lines).line == 3  # quotes the removed line: its replacement
    spaced = finding("a", 2, msg="`return   None` hides the empty case")
    assert anchor(spaced, lines).line == 10
    on_added = finding("a", 9, msg="`for i in range(len(xs) - 1):`")
    assert anchor(on_added, lines).line == 9  # already on a changed line: trusted
    vague = finding("a", 1, msg="something is off with `frobnicate()`")
    assert anchor(vague, lines).line == 1


def test_merge_group_takes_the_most_severe_and_the_median_line():
    merged = merge_group([finding("a", 3, sev="low"), finding("b", 5, sev="critical"),
                          finding("c", 4, sev="medium")], panel=3)
    assert (merged.severity, merged.line, merged.agreed_by) == ("critical", 4, 3)
    assert at_or_above([merged], "high") == [merged]
    on_change = merge_group([finding("a", 8), finding("b", 11), finding("c", 9)], panel=3,
                            changed={11, 12})
    assert on_change.line == 11  # the member that pointed at the changed line wins
    assert at_or_above([merge_group([finding("a", sev="low")], 1)], "medium") == []


# ---- the review mode through Fusion, against the loopback fake ----


def chunk_prompt() -> str:
    return prompt(split(parse_diff(DIFF))[1])


async def review(fake_config, **options):
    async with Fusion(["fake:a", "fake:b", "fake:c"], judge="fake:judge", mode="review",
                      config=fake_config, system=REVIEW_SYSTEM,
                      response_schema=MEMBER_SCHEMA, **options) as f:
        return await f.run(chunk_prompt())


async def test_judge_groups_and_code_counts_agreement(upstream, fake_config):
    upstream.script("a", findings_json(OFF_BY_ONE, NONE_RETURN))
    upstream.script("b", findings_json({**OFF_BY_ONE, "line": 4, "message": "loop misses "
                                        "the last element"}))
    upstream.script("c", findings_json())

    def verdict(req):
        # Each member's first finding is the off-by-one: A1 and B1, whoever is A or B.
        text = req.messages[-1]["content"]
        ids = {line.split(":")[0] for line in text.splitlines() if line[:3] in
               {"A1:", "A2:", "B1:", "B2:"}}
        return Reply(json.dumps({"groups": [
            {"ids": ["A1", "B1"], "severity": "high", "message": "the loop skips the last item",
             "suggestion": "range(len(xs))", "agreed_by": 99},
            *({"ids": [i], "severity": "low", "message": "m", "suggestion": ""}
              for i in sorted(ids - {"A1", "B1"}))]}))

    upstream.script("judge", verdict)
    result = await review(fake_config)
    assert result.mode == "review" and result.judge.status == "ok"
    analysis = result.to_dict()["analysis"]
    assert analysis["grouping"] == "judge" and analysis["panel"] == 3
    agreed = sorted((f["agreed_by"], f["message"]) for f in analysis["findings"])
    # Whatever the judge claims about counts, agreement is counted from its grouping.
    assert agreed == [(1, "m"), (2, "the loop skips the last item")]
    assert json.loads(result.answer)["findings"] == analysis["findings"]
    members = [r for r in upstream.requests if r.model != "judge"]
    assert all(r.body["response_format"]["json_schema"]["schema"] == MEMBER_SCHEMA
               for r in members)
    judge_text = upstream.requests[-1].messages[-1]["content"]
    assert "Group the findings" in judge_text and "calc.py:3" in judge_text


async def test_a_judge_that_fails_falls_back_to_nearby_grouping(upstream, fake_config):
    upstream.script("a", findings_json(OFF_BY_ONE, NONE_RETURN))
    upstream.script("b", findings_json({**OFF_BY_ONE, "line": 4}))
    upstream.script("c", "I could not parse this diff, sorry")
    upstream.script("judge", "not json at all")
    result = await review(fake_config)
    assert result.judge.status == "fallback" and result.judge.reason == "judge_not_valid_json"
    analysis = result.to_dict()["analysis"]
    assert analysis["grouping"] == "nearby" and analysis["panel"] == 2
    assert analysis["unreadable"] == ["fake:c"]
    by_line = {f["line"]: f for f in analysis["findings"]}
    assert by_line[3]["agreed_by"] == 2 or by_line[4]["agreed_by"] == 2
    lone = [f for f in analysis["findings"] if f["agreed_by"] == 1]
    assert len(lone) == 1 and lone[0]["single_member"] is True


async def test_a_judge_grouping_across_files_is_refused(upstream, fake_config):
    upstream.script("a", findings_json(OFF_BY_ONE))
    upstream.script("b", findings_json({**OFF_BY_ONE, "file": "added.py", "line": 1}))
    lumped = {"groups": [{"ids": ["A1", "B1"], "severity": "high", "message": "x",
                          "suggestion": ""}]}
    upstream.script("judge", json.dumps(lumped))
    two_files = "\n".join(c.render() for c in split(parse_diff(DIFF)))
    async with Fusion(["fake:a", "fake:b"], judge="fake:judge", mode="review",
                      config=fake_config) as f:
        result = await f.run("Review this change.\n\n" + two_files)
    assert upstream.calls("judge") == 2  # refused, told why, refused again
    assert "mixes files" in upstream.requests[-1].messages[-1]["content"]
    assert result.judge.status == "fallback" and result.judge.reason == "judge_wrong_schema"
    findings = result.to_dict()["analysis"]["findings"]
    assert sorted((f["file"], f["agreed_by"]) for f in findings) == [
        ("added.py", 1), ("calc.py", 1)]


async def test_no_findings_means_no_judge(upstream, fake_config):
    for m in ("a", "b", "c"):
        upstream.script(m, findings_json())
    result = await review(fake_config)
    analysis = result.to_dict()["analysis"]
    assert analysis["findings"] == [] and analysis["panel"] == 3
    assert upstream.calls("judge") == 0
    assert result.judge.status == "skipped" and result.judge.reason == "nothing_to_merge"


async def test_review_rubric_from_skills_reaches_the_judge(upstream, fake_config):
    upstream.script("a", findings_json(OFF_BY_ONE))
    upstream.script("b", findings_json(OFF_BY_ONE))
    upstream.script("judge", json.dumps({"groups": [{"ids": ["A1", "B1"], "severity": "high",
                                                     "message": "m", "suggestion": ""}]}))
    result = await review(fake_config, skills=("coding",))
    assert result.to_dict()["analysis"]["findings"][0]["agreed_by"] == 2
    (judge,) = [r for r in upstream.requests if r.model == "judge"]
    assert "smallest correct change" in judge.messages[0]["content"]


# ---- SARIF ----


def test_sarif_is_valid_2_1_0():
    from sarif_pydantic import Level, Sarif

    findings = [merge_group([finding("a"), finding("b", 4)], panel=3),
                Finding(file="src/x y.py", line=None, severity="info", category="style",
                        message="m | n", members=("c",), panel=3)]
    doc = to_sarif(findings, version="0.1.0")
    log = Sarif.model_validate(json.loads(json.dumps(doc)))
    assert log.version == "2.1.0" and doc["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log.runs
    assert run.tool.driver.name == "modelfusion-review"
    rule_ids = [r.id for r in run.tool.driver.rules]
    first, second = run.results
    assert first.level == Level.ERROR and second.level == Level.NOTE
    assert rule_ids[first.rule_index] == first.rule_id == "bug"
    loc = first.locations[0].physical_location
    assert loc.artifact_location.uri == "calc.py" and loc.region.start_line == 3
    assert second.locations[0].physical_location.region is None  # no line: file-level
    assert first.properties["agreedBy"] == 2 and second.properties["singleMember"] is True
    assert "Agreed by 2 of 3" in first.message.text


# ---- the CLI, as a user runs it ----


def review_args(cfg, *extra: str) -> list[str]:
    return ["review", "-m", "fake:a", "-m", "fake:b", "--judge", "fake:judge", "--config",
            str(cfg), *extra]


def about_calc(*items: dict):
    """A member that reports `items` on the calc.py part of the diff, nothing elsewhere."""
    def reply(req) -> Reply:
        on_calc = "File: calc.py" in req.messages[-1]["content"]
        return Reply(findings_json(*items) if on_calc else findings_json())

    return reply


@pytest.fixture
def scripted(upstream):
    upstream.script("a", about_calc(OFF_BY_ONE, NONE_RETURN))
    upstream.script("b", about_calc({**OFF_BY_ONE, "line": 4}))
    upstream.script("judge", "not json")  # deterministic grouping: exact counts below
    return upstream


@pytest.mark.parametrize(("fail_on", "code"), [("critical", 0), ("high", 1), ("low", 1),
                                                (None, 0)])
def test_fail_on_sets_the_exit_code(scripted, fake_config, tmp_path, fail_on, code):
    diff = tmp_path / "change.diff"
    diff.write_text(DIFF)
    extra = ["--fail-on", fail_on] if fail_on else []
    proc = fusion(*review_args(fake_config, "--diff", str(diff), "--format", "json", *extra),
                  home=str(tmp_path / "home"))
    assert proc.returncode == code, proc.stderr
    out = json.loads(proc.stdout)
    assert sorted((f["line"], f["agreed_by"]) for f in out["findings"]) == [(3, 2), (10, 1)]
    assert out["summary"]["chunks"] == 2
    assert "Reviewing 2 file(s) in 2 part(s)" in proc.stderr
    assert "fake:a reviewed in" in proc.stderr and "[2/2] calc.py: 2 finding(s)" in proc.stderr
    if code:
        assert "at or above" in proc.stderr


def test_min_agreement_filters_and_stdin_works(scripted, fake_config, tmp_path):
    proc = fusion(*review_args(fake_config, "--diff", "-", "--format", "json",
                               "--min-agreement", "2", "--fail-on", "low"),
                  stdin=DIFF, home=str(tmp_path / "home"))
    assert proc.returncode == 1, proc.stderr
    assert [f["line"] for f in json.loads(proc.stdout)["findings"]] == [3]


def test_outputs_are_written_whole_in_the_format_of_their_suffix(scripted, fake_config,
                                                                  tmp_path):
    from sarif_pydantic import Sarif

    diff = tmp_path / "change.diff"
    diff.write_text(DIFF)
    sarif, md = tmp_path / "out.sarif", tmp_path / "out.md"
    proc = fusion(*review_args(fake_config, "--diff", str(diff), "--output", str(sarif),
                               "--output", str(md)), home=str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert len(Sarif.model_validate_json(sarif.read_text()).runs[0].results) == 2
    text = md.read_text()
    assert text.startswith("## modelfusion review") and "| `calc.py:3` |" in text
    assert "1/2 (single member)" in text
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_table_is_the_default(scripted, fake_config, tmp_path):
    proc = fusion(*review_args(fake_config, "--diff", "-"), stdin=DIFF,
                  home=str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    assert "calc.py:3" in proc.stdout and "2/2" in proc.stdout
    assert "single member" in proc.stdout


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "calc.py").write_text(BEFORE)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    git(repo, "checkout", "-qb", "feature")
    (repo / "calc.py").write_text(AFTER)
    git(repo, "commit", "-qam", "change")
    return repo


def run_in(repo: Path, cfg, *extra: str):
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "OPENAI_"))}
    env.update({"MODELFUSION_HOME": str(repo.parent / "home"), "NO_COLOR": "1",
                "COLUMNS": "200"})
    return subprocess.run([sys.executable, "-m", "modelfusion", *review_args(cfg, *extra)],
                          cwd=repo, capture_output=True, text=True, env=env, timeout=60)


def test_base_and_staged_read_git(scripted, fake_config, repo):
    proc = run_in(repo, fake_config, "--base", "main", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert {f["file"] for f in json.loads(proc.stdout)["findings"]} == {"calc.py"}
    before = len(scripted.requests)
    proc = run_in(repo, fake_config, "--staged")  # nothing staged
    assert proc.returncode == 0 and "Nothing to review" in proc.stderr
    assert len(scripted.requests) == before  # no model was asked
    (repo / "calc.py").write_text(BEFORE)
    git(repo, "add", "calc.py")
    proc = run_in(repo, fake_config, "--staged", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert len(scripted.requests) > before


@pytest.mark.parametrize(("args", "message"), [
    (["--base", "no-such-branch"], "--base no-such-branch: no such commit"),
    (["--base", "main", "--staged"], "only one of"),
    (["--format", "xml"], "--format 'xml'"),
    (["--fail-on", "severe"], "--fail-on 'severe'"),
    (["--diff", "missing.diff"], "no such file"),
    (["--skill", "nope"], "unknown skill 'nope'; available: coding"),
    (["--offline"], "offline mode is on"),  # the fake is a network provider
])
def test_user_mistakes_exit_2(fake_config, repo, upstream, args, message):
    proc = run_in(repo, fake_config, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert upstream.requests == []


def test_outside_a_git_repo_exits_2(fake_config, tmp_path, upstream):
    outside = tmp_path / "plain"
    outside.mkdir()
    proc = run_in(outside, fake_config, "--base", "main")
    assert proc.returncode == 2 and "not inside a git repository" in proc.stderr


def test_every_member_failing_exits_1(upstream, fake_config, tmp_path):
    from tests.fake_upstream import Fault

    for m in ("a", "b"):
        upstream.script(m, Fault("status", status=400))
    proc = fusion(*review_args(fake_config, "--diff", "-"), stdin=DIFF,
                  home=str(tmp_path / "home"))
    assert proc.returncode == 1
    assert "2 of 2 part(s) could not be reviewed" in proc.stderr


# ---- CI examples ----


def check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the GitHub workflow schema it ships (no network)."""
    import sys

    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_the_github_workflow_example_is_valid(tmp_path):
    example = ROOT / "examples" / "github" / "fusion-review.yml"
    proc = check_workflow(example)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workflow = yaml.safe_load(example.read_text())
    runs = " ".join(s.get("run", "") for s in workflow["jobs"]["review"]["steps"])
    assert "fusion review" in runs and "--fail-on" in runs and "--offline" in runs
    broken = tmp_path / "broken.yml"  # the check can fail: a job with no runs-on
    broken.write_text(example.read_text().replace("runs-on: ubuntu-latest", "runs-onn: x"))
    assert check_workflow(broken).returncode == 1


def test_the_pre_commit_hook_entry():
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "fusion-review"
    assert {"name", "entry", "language"} <= set(hook)
    assert hook["entry"].startswith("fusion review --staged")
    assert hook["pass_filenames"] is False


def test_chunk_render_round_trips_its_path():
    c = Chunk("a b/c.py", "renamed", ())
    assert files_in([Message("user", c.render())]) == ["a b/c.py"]
