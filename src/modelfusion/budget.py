"""Spending limits for one fusion: `max_cost` (USD) and `max_total_tokens`.

Two checks. Before dispatch, the worst case — every member writing `max_tokens` on top of
its prompt, at its configured price — must fit, or the fusion is refused. While members
stream, a running total (settled usage of finished members plus ~1 token per streamed
chunk of the others) is kept; once it crosses a limit the running members are stopped and
the fusion ends with `BudgetExceeded`, saying what was spent.

A member with no configured price (e.g. OpenRouter, which reports cost afterwards) cannot
be bounded in advance: it adds nothing to the pre-check and its reported cost counts once
it arrives. `fusion` docs say so; set prices in fusion.toml for a hard bound.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .config import Price
from .errors import BudgetExceeded
from .types import Usage


def estimate_tokens(text: str) -> int:
    """Rough prompt size before any tokenizer runs: ~4 characters per token, rounded up."""
    return -(-len(text) // 4)


@dataclass(slots=True, kw_only=True)
class Budget:
    max_cost: float | None = None
    max_total_tokens: int | None = None
    tokens: int = 0
    cost: float = 0.0
    _live: dict[int, tuple[int, Price | None]] = field(default_factory=dict)
    _tripped: asyncio.Event | None = None

    @property
    def active(self) -> bool:
        return self.max_cost is not None or self.max_total_tokens is not None

    def precheck(self, seats: list[tuple[str, Price | None]], prompt_tokens: int,
                 max_tokens: int | None) -> None:
        """Refuse before dispatch when the members' worst case cannot fit."""
        if max_tokens is None:
            return  # unbounded answers: only the running check applies
        worst_tokens = len(seats) * (prompt_tokens + max_tokens)
        worst_cost = sum(p.cost(prompt_tokens, max_tokens) for _, p in seats if p)
        if self.max_total_tokens is not None and worst_tokens > self.max_total_tokens:
            raise BudgetExceeded(
                f"refused before dispatch: worst case {worst_tokens} tokens "
                f"({len(seats)} members × ({prompt_tokens} prompt + {max_tokens} max_tokens)) "
                f"exceeds --max-total-tokens {self.max_total_tokens}; lower --max-tokens or "
                "use fewer members", spent_tokens=0, spent_cost=0.0)
        if self.max_cost is not None and worst_cost > self.max_cost:
            raise BudgetExceeded(
                f"refused before dispatch: worst case ${worst_cost:.6f} exceeds --max-cost "
                f"${self.max_cost:g}; lower --max-tokens or use cheaper members",
                spent_tokens=0, spent_cost=0.0)

    # ---- running total ----

    def tripped(self) -> asyncio.Event:
        if self._tripped is None:
            self._tripped = asyncio.Event()
        return self._tripped

    def streamed(self, member: int, price: Price | None) -> None:
        """One streamed chunk (~1 token) of a running member."""
        count, _ = self._live.get(member, (0, price))
        self._live[member] = (count + 1, price)
        self._check()

    def settle(self, member: int, usage: Usage | None = None, cost: float | None = None) -> None:
        """A call ended: replace its estimate by what it really used (if it says)."""
        count, price = self._live.pop(member, (0, None))
        if usage is None:  # failed mid-way: the streamed estimate is all we know
            self.tokens += count
            self.cost += price.cost(0, count) if price else 0.0
        else:
            self.tokens += usage.total_tokens
            self.cost += cost or 0.0
        self._check()

    def spent(self) -> tuple[int, float]:
        live_tokens = sum(n for n, _ in self._live.values())
        live_cost = sum(p.cost(0, n) for n, p in self._live.values() if p)
        return self.tokens + live_tokens, self.cost + live_cost

    def over(self) -> bool:
        tokens, cost = self.spent()
        return bool((self.max_total_tokens is not None and tokens > self.max_total_tokens)
                    or (self.max_cost is not None and cost > self.max_cost))

    def _check(self) -> None:
        if self.over():
            self.tripped().set()

    def error(self) -> BudgetExceeded:
        tokens, cost = self.spent()
        limits = []
        if self.max_total_tokens is not None:
            limits.append(f"--max-total-tokens {self.max_total_tokens}")
        if self.max_cost is not None:
            limits.append(f"--max-cost ${self.max_cost:g}")
        return BudgetExceeded(
            f"budget exceeded ({', '.join(limits)}): spent {tokens} tokens, ${cost:.6f}; "
            "running members were stopped", spent_tokens=tokens, spent_cost=cost)
