"""A compare run's groups of units, how they are shared among worker processes, and what
they produce.

A group is the work that must stay in one process (an adapter's training, then its
evaluations, which load the file it wrote). Shares are balanced by each group's estimated
cost (longest first, each to the least loaded worker), the same in every process, so the
workers need no coordination beyond the unit cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Group", "Plan", "Results"]


@dataclass
class Results:
    """What the groups produce, gathered for the report."""

    evaluations: list[dict[str, Any]] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)
    kohya: list[dict[str, Any]] = field(default_factory=list)
    solves: list[dict[str, Any]] = field(default_factory=list)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        return asdict(self)


@dataclass(frozen=True)
class Group:
    """Units that run in one process: a name, an estimated cost (seconds), how many units it
    caches (for the progress bar), and the work (it appends to a :class:`Results`)."""

    name: str
    cost: float
    units: int
    work: Callable[[Results], None]


@dataclass(frozen=True)
class Plan:
    """The run's groups, in report order."""

    groups: Sequence[Group]

    def share(self, index: int, count: int) -> list[Group]:
        """Worker ``index``'s groups (of ``count`` workers), in report order."""
        if not 0 <= index < count:
            raise ValueError(f"worker index {index} is not in 0..{count - 1}")
        load = [0.0] * count
        owner: dict[int, int] = {}
        by_cost = sorted(range(len(self.groups)), key=lambda i: -self.groups[i].cost)
        for i in by_cost:
            least = min(range(count), key=lambda w: (load[w], w))
            owner[i] = least
            load[least] += self.groups[i].cost
        return [g for i, g in enumerate(self.groups) if owner[i] == index]

    @staticmethod
    def units(groups: Sequence[Group]) -> int:
        return sum(g.units for g in groups)

    @staticmethod
    def execute(groups: Sequence[Group], results: Results) -> Results:
        for group in groups:
            group.work(results)
        return results
