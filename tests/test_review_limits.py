"""`fusion review` within a size budget (issue 12, item 12): a file whose diff is too big
is left out, so are the files past --max-chunks parts, and the report names each one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfusion import UsageError
from modelfusion.review.diff import bounded, parse_diff, size
from tests.fake_upstream import FakeUpstream, Reply
from tests.helpers import DIFF, fusion

NO_FINDINGS = json.dumps({"findings": []})


def many_files(n: int, lines: int = 3) -> str:
    """A diff adding `n` files of `lines` lines each."""
    out = []
    for i in range(n):
        body = "".join(f"+line {j} of file {i}\n" for j in range(lines))
        out.append(f"diff --git a/f{i}.py b/f{i}.py\nnew file mode 100644\nindex 0000000..1111111\n"
                   f"--- /dev/null\n+++ b/f{i}.py\n@@ -0,0 +1,{lines} @@\n{body}")
    return "".join(out)


def test_bounded_keeps_whole_files_in_order_and_names_the_rest():
    files = parse_diff(many_files(5) + many_files(1, lines=400).replace("f0.py", "big.py"))
    chunks, left = bounded(files, 1000, max_chunks=3, max_file_chars=size(files[0]) * 10)
    assert [c.path for c in chunks] == ["f0.py", "f1.py", "f2.py"]
    assert [(i.path, "--max-chunks 3" in i.reason) for i in left] == [
        ("f3.py", True), ("f4.py", True), ("big.py", False)]
    assert "--max-file-chars" in left[-1].reason


def test_bounded_refuses_silly_limits():
    with pytest.raises(UsageError, match="at least 1"):
        bounded(parse_diff(DIFF), max_chunks=0)


def review(cfg: Path, tmp_path: Path, *extra: str, stdin: str):
    return fusion("review", "-m", "fake:a", "-m", "fake:b", "--judge", "fake:judge",
                  "--config", str(cfg), "--diff", "-", "--format", "json", *extra,
                  stdin=stdin, home=str(tmp_path / "home"))


def test_a_review_past_max_chunks_reviews_that_many_and_says_what_was_left(
        upstream: FakeUpstream, fake_config: Path, tmp_path: Path):
    for m in ("a", "b"):
        upstream.script(m, *[Reply(NO_FINDINGS)] * 20)
    proc = review(fake_config, tmp_path, "--max-chunks", "3", stdin=many_files(8))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary["chunks"] == 3
    assert [i["file"] for i in summary["left_out"]] == [f"f{i}.py" for i in range(3, 8)]
    assert len([r for r in upstream.requests if r.model == "a"]) == 3  # one call a part
    assert "Left out f3.py: past --max-chunks 3" in proc.stderr
    assert "5 file(s) left out of the review" in proc.stderr and "Traceback" not in proc.stderr


def test_a_file_over_max_file_chars_is_left_out(upstream: FakeUpstream, fake_config: Path,
                                                tmp_path: Path):
    proc = review(fake_config, tmp_path, "--max-file-chars", "30", stdin=DIFF)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {i["file"] for i in out["summary"]["left_out"]} == {"added.py", "calc.py"}
    assert "Nothing left to review within the limits" in proc.stderr
    assert upstream.requests == []


def test_markdown_lists_what_was_left_out(upstream: FakeUpstream, fake_config: Path,
                                          tmp_path: Path):
    for m in ("a", "b"):
        upstream.script(m, *[Reply(NO_FINDINGS)] * 4)
    proc = review(fake_config, tmp_path, "--max-chunks", "1", "--format", "markdown",
                  stdin=DIFF)
    assert proc.returncode == 0, proc.stderr
    assert "**1 file(s) left out** of the review:" in proc.stdout
    assert "- `calc.py`: past --max-chunks 1" in proc.stdout
