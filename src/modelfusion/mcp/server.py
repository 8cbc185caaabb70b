"""The MCP server behind `fusion mcp`: tools `fuse` and `review` on the official SDK.

Each call builds its `Fusion` as `fusion ask` / `fusion review` do (plan.select/resolve
decide the preset, panel, judge, mode and options) with the config loaded once at start,
and runs it with its own provider pool, closed when the call ends. A user's mistake (an
unknown model, mode or option, an empty prompt, a broken diff) comes back as a tool error
whose message says what to change; a failed fusion as a tool error naming each member's
failure. Members finishing are reported as MCP progress notifications when the client asks
for progress.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from .. import __version__
from ..config import Config
from ..errors import FusionError, RunError, UsageError
from ..fusion import Fusion
from ..modes import MODES
from ..options import EFFORT_OFF, EFFORT_SAMPLES
from ..review.diff import (
    DEFAULT_CHUNK_CHARS,
    DEFAULT_MAX_CHUNKS,
    DEFAULT_MAX_FILE_CHARS,
    bounded,
    parse_diff,
)
from ..review.runner import PartReview, merged, review_chunks, review_fusion, summary
from ..traces.store import TraceStore
from ..types import FusionEvent, FusionResult, Message
from .results import failure_text, fuse_payload, fuse_text, review_payload, review_text

INSTRUCTIONS = (
    "modelfusion asks a panel of models the same question and fuses their answers into one "
    "(best-of, merge, debate, vote, verified for code with visible checks). Use `fuse` for a "
    "second opinion that several models agree on, `review` for a first-pass review of a "
    "unified diff. With no models and no preset, the configured default preset runs (out of "
    "the box: embedded local models, nothing leaves the machine)."
)

Models = Annotated[list[str] | None, Field(
    description="Panel members as provider:model (openai:gpt-4o-mini, local:qwen2.5-coder-"
    "1.5b); model*3 samples one model 3 times. Default: the preset's members.")]
Judge = Annotated[str | None, Field(
    description="The judge as provider:model. Default: the preset's judge, else the first "
    "member.")]
Preset = Annotated[str | None, Field(
    description="A preset named in fusion.toml (its members, judge, mode and options).")]
Skills = Annotated[list[str] | None, Field(
    description="Skills packs for every member and the judge, e.g. ['coding'].")]


def build_server(config: Config, *, store: TraceStore | None = None) -> MCPServer:
    """The server, its tools bound to `config` and (when traces are on) `store`."""
    server: MCPServer = MCPServer("modelfusion", version=__version__,
                                  instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(structured_output=False)
    async def fuse(
        prompt: Annotated[str, Field(description="The question or task for the panel.")],
        ctx: Context,
        models: Models = None,
        judge: Judge = None,
        mode: Annotated[str | None, Field(
            description=f"How to fuse: {', '.join(sorted(MODES))}. Default: the preset's, "
            "else merge.")] = None,
        preset: Preset = None,
        max_samples: Annotated[int | None, Field(
            description="Adaptive compute: at most N candidates; the first model answers "
            "first, more are asked only when the mode does not accept its answer.")] = None,
        effort: Annotated[str | None, Field(
            description="Adaptive compute in words: "
            + ", ".join(f"{k} ({n} samples at most)" for k, n in EFFORT_SAMPLES.items())
            + f", or {EFFORT_OFF}.")] = None,
        skills: Skills = None,
        show_members: Annotated[bool, Field(
            description="Include every member's own answer in the structured result.")]
        = False,
    ) -> CallToolResult:
        """Ask a panel of models and get one fused answer, with each member's status, how
        the answer was decided (chosen member and reason, vote split, checks), tokens, cost
        and the trace id."""
        try:
            if not prompt.strip():
                raise UsageError("the prompt is empty")
            fusion = Fusion(models or None, judge, mode, preset=preset, config=config,
                            skills=tuple(skills) if skills else None,
                            max_samples=max_samples, effort=effort)
        except UsageError as e:
            raise _tool_error(e) from None
        system = fusion.plan.options.system
        messages = [*([Message("system", system)] if system else []), Message("user", prompt)]
        try:
            result = await _fused(fusion, prompt, ctx)
        except UsageError as e:
            raise _tool_error(e) from None
        except RunError as e:
            trace_id = _record(store, None, messages, fusion, error=e)
            raise ToolError(failure_text(e, trace_id=trace_id)) from None
        except FusionError as e:
            raise ToolError(f"fusion failed ({e.code}): {e}") from None
        trace_id = _record(store, result, messages, fusion)
        return CallToolResult(
            content=[TextContent(type="text", text=result.answer),
                     TextContent(type="text", text=fuse_text(result, trace_id=trace_id))],
            structured_content=fuse_payload(result, trace_id=trace_id,
                                            show_members=show_members))

    @server.tool(structured_output=False)
    async def review(
        diff: Annotated[str, Field(description="A unified diff (git diff output).")],
        ctx: Context,
        models: Models = None,
        judge: Judge = None,
        preset: Preset = None,
        min_agreement: Annotated[int, Field(
            ge=1, description="Only findings that at least K members reported.")] = 1,
        skills: Skills = None,
    ) -> CallToolResult:
        """Review a unified diff with every panel member independently and get the merged
        findings (file, line, severity, category, message, suggestion, how many members
        agreed). With no models and no preset the embedded local panel reviews, so the
        code leaves the machine only when a remote model or preset is named."""
        try:
            fusion = review_fusion(models, judge, preset=preset, config=config,
                                   skills=tuple(skills) if skills else None)
            chunks, left_out = bounded(parse_diff(diff), DEFAULT_CHUNK_CHARS,
                                       max_chunks=DEFAULT_MAX_CHUNKS,
                                       max_file_chars=DEFAULT_MAX_FILE_CHARS)
            if not chunks:
                raise UsageError("nothing to review: the diff is empty (or has only binary "
                                 "files and deletions)" if not left_out else
                                 "nothing to review within the limits: every file is too "
                                 "large")
            progress = _Progress(ctx, total=len(chunks))
            try:
                parts = await review_chunks(fusion, chunks, progress.part_done)
            finally:
                await progress.flush()
        except UsageError as e:
            raise _tool_error(e) from None
        failed = [p for p in parts if p.error]
        if len(failed) == len(parts):
            raise ToolError(f"review failed: every member failed on every part ({failed[0].error})")
        findings = merged(parts, min_agreement)
        report = summary(fusion, parts, left_out)
        return CallToolResult(content=[TextContent(type="text",
                                                   text=review_text(findings, report))],
                              structured_content=review_payload(findings, report))

    return server


def _tool_error(e: UsageError) -> ToolError:
    """A user's mistake for the caller to fix; an option is named as its argument
    (max_samples), not as the CLI flag the engine's message names (--max-samples)."""
    text = str(e)
    if e.option:
        text = text.replace("--" + e.option.replace("_", "-"), e.option)
    return ToolError(text)


async def _fused(fusion: Fusion, prompt: str, ctx: Context) -> FusionResult:
    result: FusionResult | None = None
    progress = _Progress(ctx)
    try:
        async with fusion:
            async for event in fusion.stream(prompt):
                if (note := _progress_note(event)) is not None:
                    progress.send(note)
                result = event.result or result
    finally:
        await progress.flush()
    assert result is not None
    return result


def _progress_note(event: FusionEvent) -> str | None:
    m = event.member_result
    if event.type == "member_done" and m is not None:
        return f"{m.model} answered in {m.latency_ms / 1000:.1f} s"
    if event.type == "member_failed" and m is not None:
        return f"{m.model} failed ({m.reason})"
    if event.type == "judge_started":
        return f"judge {event.model} deciding"
    return None


class _Progress:
    """MCP progress notifications (a no-op unless the client asked for progress), sent from
    plain callbacks: each goes out as a task on the loop, and `flush()` waits for them so
    that none comes after the tool's answer. Progress counts steps, one per note."""

    def __init__(self, ctx: Context, total: int | None = None) -> None:
        self.ctx, self.total, self.step = ctx, total, 0
        self._sent: list[asyncio.Task[None]] = []

    def send(self, message: str) -> None:
        self.step += 1
        self._sent.append(asyncio.ensure_future(
            self.ctx.report_progress(self.step, self.total, message=message)))

    def part_done(self, _: int, part: PartReview) -> None:
        state = f"failed: {part.error}" if part.error else f"{len(part.findings)} finding(s)"
        self.send(f"{part.chunk.path}: {state}")

    async def flush(self) -> None:
        # A notification that could not be sent (the client went away) fails nothing.
        await asyncio.gather(*self._sent, return_exceptions=True)


def _record(store: TraceStore | None, result: FusionResult | None, messages: list[Message],
            fusion: Fusion, *, error: Exception | None = None) -> str | None:
    if store is None:
        return None
    return store.record(result, messages=messages, source="cli", preset=fusion.plan.preset,
                        error=error, mode=fusion.plan.mode)
