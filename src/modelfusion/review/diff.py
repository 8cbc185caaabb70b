"""A unified diff in, review-sized chunks out.

Parsing is unidiff's. A chunk is one file's consecutive hunks up to a size budget (a hunk
bigger than the budget is cut into windows of lines), rendered with the new file's line
numbers in the margin so that a model can name the line it means.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from ..errors import UsageError
from ..types import Message

# ~1,400 tokens of diff: with the review instructions and a 512-token answer this fits the
# embedded models' 4,096-token context, and the judge's prompt (diff + findings) too.
DEFAULT_CHUNK_CHARS = 5000
# What one review may cost: a 50 MB diff once made 23,810 upstream calls (issue 12, item
# 12). A file whose diff is larger than max_file_chars is left out (a generated file, a
# lock file, a vendored tree: not what a reviewer reads), and past max_chunks parts the
# remaining files are; the report says which, and why.
DEFAULT_MAX_CHUNKS = 200  # ~1 MB of diff
DEFAULT_MAX_FILE_CHARS = 200_000  # 40 parts of one file


@dataclass(frozen=True, slots=True)
class Line:
    kind: str  # "+", "-" or " "
    text: str
    new: int | None  # line number in the new file; None for a removed line


@dataclass(frozen=True, slots=True)
class Hunk:
    header: str  # "@@ -10,6 +10,7 @@ def f():"
    lines: tuple[Line, ...]

    def render(self) -> str:
        # The header's numbers are left out: models copied the hunk's start line into their
        # findings instead of the numbered line they meant (measured, docs/results.md).
        rows = ["@@" + self.header.rsplit("@@", 1)[-1].rstrip()]
        for line in self.lines:
            number = "" if line.new is None else str(line.new)
            rows.append(f"{number:>5} {line.kind} {line.text}")
        return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class FileDiff:
    path: str
    status: str  # added | modified | removed | renamed
    hunks: tuple[Hunk, ...]


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str
    status: str
    hunks: tuple[Hunk, ...]
    part: int = 1  # this chunk's number among its file's chunks
    parts: int = 1

    def render(self) -> str:
        head = f"File: {self.path} ({self.status})"  # files_in() reads this line back
        if self.parts > 1:
            head += f", part {self.part} of {self.parts}"
        return head + "\n" + "\n".join(h.render() for h in self.hunks)

    @property
    def changed_lines(self) -> set[int]:
        return {ln.new for h in self.hunks for ln in h.lines if ln.kind == "+" and ln.new}


def parse_diff(text: str) -> list[FileDiff]:
    """Files with reviewable text changes; binary files and deletions are left out."""
    try:
        patch = PatchSet(text)
    except UnidiffParseError as e:
        raise UsageError(f"not a unified diff ({e}); pass the output of `git diff`") from None
    files = []
    for pf in patch:
        if pf.is_binary_file or pf.is_removed_file:
            continue
        status = ("added" if pf.is_added_file else "renamed" if pf.is_rename else "modified")
        hunks = tuple(
            Hunk(
                header=f"@@ -{h.source_start},{h.source_length} +{h.target_start},"
                       f"{h.target_length} @@ {h.section_header}".rstrip(),
                lines=tuple(Line(ln.line_type, ln.value.rstrip("\n"), ln.target_line_no)
                            for ln in h if ln.line_type in "+- "),
            )
            for h in pf
        )
        if hunks:
            files.append(FileDiff(pf.path, status, hunks))
    return files


def split(files: list[FileDiff], max_chars: int = DEFAULT_CHUNK_CHARS) -> list[Chunk]:
    """Pack each file's hunks into chunks of at most ~max_chars rendered characters."""
    if max_chars < 200:
        raise UsageError("the chunk size must be at least 200 characters")
    chunks: list[Chunk] = []
    for f in files:
        groups: list[list[Hunk]] = [[]]
        size = 0
        for hunk in (piece for h in f.hunks for piece in _cut(h, max_chars)):
            n = len(hunk.render()) + 1
            if groups[-1] and size + n > max_chars:
                groups.append([])
                size = 0
            groups[-1].append(hunk)
            size += n
        for i, group in enumerate(groups, 1):
            chunks.append(Chunk(f.path, f.status, tuple(group), i, len(groups)))
    return chunks


@dataclass(frozen=True, slots=True)
class LeftOut:
    path: str
    reason: str  # why it was not reviewed, with the option that would let it in

    def to_dict(self) -> dict[str, str]:
        return {"file": self.path, "reason": self.reason}


def size(f: FileDiff) -> int:
    """About the characters of diff a file's hunks render to (without rendering them)."""
    return sum(len(h.header) + 1 + sum(len(ln.text) + 9 for ln in h.lines) for h in f.hunks)


def bounded(files: list[FileDiff], max_chars: int = DEFAULT_CHUNK_CHARS, *,
            max_chunks: int = DEFAULT_MAX_CHUNKS,
            max_file_chars: int = DEFAULT_MAX_FILE_CHARS) -> tuple[list[Chunk], list[LeftOut]]:
    """`split`, within the limits: whole files in diff order while their parts fit in
    `max_chunks`; what does not fit, or is too big alone, is left out (and named)."""
    if max_chunks < 1 or max_file_chars < 1:
        raise UsageError("--max-chunks and --max-file-chars must be at least 1")
    chunks: list[Chunk] = []
    left: list[LeftOut] = []
    for f in files:
        chars = size(f)
        if chars > max_file_chars:
            left.append(LeftOut(f.path, f"its diff has {chars:,} characters, over "
                                        f"--max-file-chars {max_file_chars:,}"))
            continue
        parts = split([f], max_chars)
        if len(chunks) + len(parts) > max_chunks:
            left.append(LeftOut(f.path, f"past --max-chunks {max_chunks:,} (the review "
                                        f"had {len(chunks):,} parts; this file needs "
                                        f"{len(parts):,})"))
            continue
        chunks += parts
    return chunks, left


def _cut(hunk: Hunk, max_chars: int) -> list[Hunk]:
    """A hunk too big for one chunk, cut into windows of whole lines."""
    if len(hunk.render()) <= max_chars:
        return [hunk]
    pieces: list[Hunk] = []
    window: list[Line] = []
    size = len(hunk.header) + 20
    for line in hunk.lines:
        n = len(line.text) + 10
        if window and size + n > max_chars:
            pieces.append(Hunk(hunk.header + " (continued)" * bool(pieces), tuple(window)))
            window, size = [], len(hunk.header) + 20
        window.append(line)
        size += n
    if window:
        pieces.append(Hunk(hunk.header + " (continued)" * bool(pieces), tuple(window)))
    return pieces


_FILE_LINE = re.compile(r"^File: (.+?) \((?:added|modified|renamed)\)", re.M)
_ROW = re.compile(r"^([ \d]{5}) ([+\- ]) (.*)$")


def files_in(messages: Sequence[Message]) -> list[str]:
    """The paths of the chunks rendered into a conversation (for the review mode)."""
    return list(lines_in(messages))


def lines_in(messages: Sequence[Message]) -> dict[str, list[Line]]:
    """The diff lines of each rendered chunk, read back from the conversation's text."""
    out: dict[str, list[Line]] = {}
    current: list[Line] | None = None
    for m in messages:
        if m.role != "user":
            continue
        for row in m.content.splitlines():
            head = _FILE_LINE.match(row)
            if head:
                current = out.setdefault(head.group(1), [])
            elif current is not None and (cell := _ROW.match(row)):
                number = cell.group(1).strip()
                current.append(Line(cell.group(2), cell.group(3),
                                    int(number) if number else None))
    return out
