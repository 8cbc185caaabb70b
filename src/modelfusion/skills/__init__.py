"""Skills: instruction packs for the panel, with a rubric for the judge.

A pack is a markdown file in this package: a title, a short description, then
`## Instructions` (appended to every member's system prompt) and `## Rubric` (added to the
judge's rules). `repo_instructions()` builds a pack from the CLAUDE.md / AGENTS.md files of
the repository around a directory, so a panel follows the repo's own rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UsageError

REPO_FILES = ("CLAUDE.md", "AGENTS.md")
# Repo instruction files go into every member prompt and the judge's: keep them bounded so
# they cannot crowd the request out of a small model's context window.
REPO_MAX_CHARS = 6000


@dataclass(frozen=True, slots=True)
class Skill:
    name: str
    instructions: str  # for every member's system prompt
    rubric: str = ""  # for the judge; empty: the judge gets nothing extra
    description: str = ""  # the pack's own line about itself (what exports describe it by)


def available_skills() -> list[str]:
    root = resources.files(__name__)
    return sorted(p.name.removesuffix(".md") for p in root.iterdir() if p.name.endswith(".md"))


def load_skill(name: str) -> Skill:
    """A shipped pack by name; an unknown name is a usage error listing the known ones."""
    known = available_skills()
    if name not in known:
        raise UsageError(f"unknown skill {name!r}; available: {', '.join(known)}")
    text = resources.files(__name__).joinpath(f"{name}.md").read_text(encoding="utf-8")
    return parse_skill(name, text)


def parse_skill(name: str, text: str) -> Skill:
    sections = _sections(text)
    instructions = sections.get("instructions", "").strip()
    if not instructions:
        raise UsageError(f"skill {name!r} has no '## Instructions' section")
    return Skill(name, instructions, sections.get("rubric", "").strip(),
                 _description(text))


def _description(text: str) -> str:
    """The paragraph between the `# title` and the first `##` section, as one line."""
    head = re.split(r"^##\s", text, maxsplit=1, flags=re.M)[0]
    lines = [ln.strip() for ln in head.splitlines() if not ln.startswith("# ")]
    return " ".join(ln for ln in lines if ln)


def _sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    parts = re.split(r"^##\s+(.+?)\s*$", text, flags=re.M)
    for i in range(1, len(parts) - 1, 2):
        out[parts[i].strip().lower()] = parts[i + 1]
    return out


def resolve_skills(skills: tuple[str | Skill, ...]) -> list[Skill]:
    return [s if isinstance(s, Skill) else load_skill(s) for s in skills]


def repo_instructions(cwd: str | Path | None = None) -> Skill | None:
    """CLAUDE.md / AGENTS.md from `cwd` up to the git root (or the filesystem root).

    Outermost first, so the nearer (more specific) file comes last. Capped at
    REPO_MAX_CHARS in all, with a note saying what was cut. None if there are none.
    """
    start = Path(cwd or Path.cwd()).resolve()
    found: list[Path] = []
    for folder in (start, *start.parents):
        found[:0] = [folder / n for n in reversed(REPO_FILES) if (folder / n).is_file()]
        if (folder / ".git").exists():
            break
    if not found:
        return None
    blocks, left = [], REPO_MAX_CHARS
    for path in found:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if len(text) > left:
            text = (text[:max(left, 0)] + f"\n[truncated: {path.name} is {len(text)} characters; "
                    f"only the first {max(left, 0)} are used]")
        left -= len(text)
        blocks.append(f"From {path}:\n{text}")
    body = "\n\n".join(blocks)
    return Skill(
        "repo",
        "Follow this repository's own rules:\n\n" + body,
        "Prefer the candidate that follows this repository's rules:\n\n" + body,
    )


def member_text(skills: list[Skill]) -> str:
    return "\n\n".join(s.instructions for s in skills)


def rubric_text(skills: list[Skill]) -> str:
    return "\n\n".join(s.rubric for s in skills if s.rubric)
