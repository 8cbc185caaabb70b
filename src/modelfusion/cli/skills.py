"""`fusion skills export`: a skills pack as a CLAUDE.md, an AGENTS.md or a Claude Code
plugin, from the same pack the panel gets with --skill."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..skills import available_skills, load_skill
from ..skills.export import FORMATS, SINGLE_FILES, export, write
from .common import err, handle_errors, safe

EXPORT_HELP = """Write a skills pack as a CLAUDE.md, an AGENTS.md or a Claude Code plugin.

The pack is the one modelfusion's panel follows with --skill NAME (its instructions), \
written in the file a coding agent reads.

\b
Formats:
""" + "\n".join(f"  {name:<14} {what}" for name, what in FORMATS.items()) + """

Without --out, claude-md and agents-md print to stdout; claude-plugin needs --out, the \
plugin's folder (made if missing). Each file is written whole (atomically), and a file \
that is already there is replaced only with --force.

\b
Examples:
  fusion skills export coding --format claude-md > CLAUDE.md
  fusion skills export coding --format agents-md --out .
  fusion skills export coding --format claude-plugin --out ./fusion-plugin
  claude --plugin-dir ./fusion-plugin     # the skill is /modelfusion:coding
"""


def register(app: typer.Typer) -> None:
    skills = typer.Typer(help="Skills packs: instructions for the panel and its judge, "
                         "exportable for coding agents.", no_args_is_help=True)

    @skills.command("export", help=EXPORT_HELP)
    @handle_errors
    def export_command(
        name: Annotated[str, typer.Argument(
            metavar="NAME", help=f"The pack: {', '.join(available_skills())}.",
            show_default=False)],
        fmt: Annotated[str, typer.Option(
            "--format", help=f"One of {', '.join(FORMATS)}.", show_default=False)],
        out: Annotated[Path | None, typer.Option(
            help="Folder to write into (claude-md: OUT/CLAUDE.md; agents-md: OUT/AGENTS.md; "
            "claude-plugin: the plugin's root).")] = None,
        force: Annotated[bool, typer.Option(
            "--force", help="Replace files that are already there.")] = False,
    ) -> None:
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
        if out is None and fmt not in SINGLE_FILES:
            raise UsageError(f"--format {fmt} writes a folder: pass --out DIR")
        files = export(load_skill(name), fmt)
        if out is None:
            sys.stdout.write(files[0].text)
            return
        for path in write(files, out, force=force):
            err.print(safe(f"wrote {path}"))

    app.add_typer(skills, name="skills")
