"""The eval loop: task-major (each task through every config before the next), so a
partial run still compares every config on the same tasks. Every config runs through
one `Fusion`, built once and run once per task with its problem's seed; this module
only chooses what to run, has the suite grade it (suite.py) and records it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, parse_spec
from ..errors import AllMembersFailed, BudgetExceeded
from ..fusion import Fusion, ProviderPool
from ..types import FusionResult, MemberResult, spent
from .configs import EvalConfig
from .grade import Grade
from .record import EvalMember, EvalRecord
from .replay import TALLY, CallCache, LivePool, ReplayPool, ReplayTally
from .store import RunDir
from .suite import HumanEvalSuite, Suite, Task

RecordHook = Callable[[EvalRecord], None]


def problem_seed(seed: int, problem: Task) -> int:
    """Per-problem seed: fixed by the problem's own number, whatever subset is run, so a
    replayed call is the sample a live run would draw (an outputs question: its problem's)."""
    return seed + problem.number


@dataclass(kw_only=True)
class Runner:
    configs: list[EvalConfig]
    tasks: list[Task]
    run_dir: RunDir
    config: Config
    options: dict[str, Any]
    seed: int
    replay: bool
    records: dict[tuple[str, str], EvalRecord]
    suite: Suite = field(default_factory=HumanEvalSuite)
    on_start: Callable[[EvalConfig, Task], None] | None = None
    on_record: RecordHook | None = None
    on_problem: Callable[[], object] | None = None
    _grades: dict[tuple[str, str], Grade] = field(default_factory=dict, init=False)
    _fusions: dict[str, Fusion] = field(default_factory=dict, init=False)
    _pool: ProviderPool | None = field(default=None, init=False)

    def pending(self) -> int:
        return sum((c.name, t.task_id) not in self.records
                   for t in self.tasks for c in self.configs)

    @property
    def pool(self) -> ProviderPool:
        """Every config's providers: replayed from the run folder's cache, or live."""
        if self._pool is None:
            self._pool = (ReplayPool(self.config, CallCache(self.run_dir.calls_path))
                          if self.replay else LivePool(self.config))
        return self._pool

    def fusion(self, cfg: EvalConfig) -> Fusion:
        """The one Fusion of a config, built (so checked) on first use: the CLI asks for
        every config's up front. It carries the base seed (settings.json records each
        seat's offset from it); each problem runs it with the problem's own seed."""
        if cfg.name not in self._fusions:
            options = {**self.options, **cfg.options}
            seats = sum(parse_spec(m).count for m in cfg.models)
            if options.get("quorum") and options["quorum"] > seats:
                options.pop("quorum")  # a solo member cannot wait for a quorum of three
            self._fusions[cfg.name] = Fusion(
                list(cfg.models), judge=cfg.judge, mode=cfg.mode, config=self.config,
                pool=self.pool, seed=self.seed, **options)
        return self._fusions[cfg.name]

    async def run(self) -> None:
        pool = self.pool
        try:
            with self.run_dir.appender() as writer:
                for problem in self.tasks:
                    ran = False
                    for cfg in self.configs:
                        if (cfg.name, problem.task_id) in self.records:
                            continue
                        if self.on_start is not None:
                            self.on_start(cfg, problem)
                        record = await self._one(cfg, problem)
                        writer.append(record)
                        self.records[(cfg.name, problem.task_id)] = record
                        ran = True
                        if self.on_record is not None:
                            self.on_record(record)
                    if ran and self.on_problem is not None:
                        self.on_problem()
        finally:
            await pool.aclose()

    async def _one(self, cfg: EvalConfig, problem: Task) -> EvalRecord:
        seed = problem_seed(self.seed, problem)
        fusion = self.fusion(cfg)
        tally = ReplayTally()
        token = TALLY.set(tally)  # the panel's tasks inherit it
        started = time.monotonic()
        result: FusionResult | None = None
        failure: AllMembersFailed | BudgetExceeded | None = None
        try:
            result = await fusion.run(problem.messages(), seed=seed)
        except (AllMembersFailed, BudgetExceeded) as e:
            failure = e
        finally:
            TALLY.reset(token)
        wall_ms = (time.monotonic() - started) * 1000
        members = result.members if result is not None else failure.members if failure else []
        answer = result.answer if result is not None else None
        grades = await asyncio.gather(self._grade(problem, answer),
                                      *(self._grade(problem, m.content) for m in members))
        verdict, member_grades = grades[0], grades[1:]
        usage = result.usage if result is not None else spent(members)[0]
        fusion_ms = result.timings.total_ms if result is not None else wall_ms
        return EvalRecord(
            config=cfg.name, task_id=problem.task_id, seed=seed,
            passed=verdict.passed, error=verdict.error, error_detail=verdict.detail,
            answer=answer, code=self.suite.graded(problem, answer) if answer else "",
            tokens=usage,
            cost=result.cost if result is not None else None,
            latency_ms=round(fusion_ms + tally.replayed_ms, 1),
            fusion_ms=round(fusion_ms, 1), replayed_ms=round(tally.replayed_ms, 1),
            replayed_calls=tally.replayed_calls, live_calls=tally.live_calls,
            chosen=result.chosen if result is not None else None,
            reason=result.reason if result is not None else str(failure),
            judge_status=result.judge.status if result is not None else None,
            judge_reason=result.judge.reason if result is not None else None,
            members=[_member(m, g, keep=self.suite.member_answers)
                     for m, g in zip(members, member_grades, strict=True)],
            compute=result.compute if result is not None else None,
        )

    async def _grade(self, problem: Task, answer: str | None) -> Grade:
        if answer is None:
            return Grade(False, "no_answer")
        key = (problem.task_id, hashlib.sha256(answer.encode()).hexdigest())
        if key not in self._grades:  # solo and panel often give the very same answer
            self._grades[key] = await self.suite.grade(problem, answer)
        return self._grades[key]


def _member(m: MemberResult, g: Grade, *, keep: bool) -> EvalMember:
    return EvalMember(model=m.model, status=m.status, reason=m.reason,
                      passed=g.passed if m.ok else None, error=g.error if m.ok else None,
                      latency_ms=round(m.latency_ms, 1), tokens=m.usage,
                      answer=m.content if keep and m.ok else None)
