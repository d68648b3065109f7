"""Named stages of a long job, each with its wall time, CPU time and minor page faults.

`Stages` is what ``modelsoup reproduce`` records its timings with and what
``benchmarks/bench_reproduce.py`` prints: ``with stages("fine-tune model_3"): ...``
adds one `Stage`. CPU time and page faults come from ``getrusage``: every thread of this
process, plus the child processes that ended (and were waited for) during the stage.
Stages may nest; a nested stage is recorded with its parent's name as a prefix
(``"analyses/pair soups"``), and the parent's figures include the child's.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Stage:
    """One finished stage: seconds of wall, user and system time, minor page faults."""

    name: str
    wall: float
    user: float
    sys: float
    minflt: int

    def to_json(self) -> dict[str, float | int | str]:
        return asdict(self)


def usage(children: bool = True) -> tuple[float, float, float, int]:
    """``(wall clock, user CPU s, system CPU s, minor page faults)`` of this process,
    and of its waited-for children too with ``children``."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    if not children:
        return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        time.perf_counter(),
        r.ru_utime + c.ru_utime,
        r.ru_stime + c.ru_stime,
        r.ru_minflt + c.ru_minflt,
    )


@dataclass
class Stages:
    """The stages of a job, in the order they finished (children before parents)."""

    done: list[Stage] = field(default_factory=list)
    _open: list[str] = field(default_factory=list)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = usage()
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            wall, user, sys_, flt = (b - a for a, b in zip(start, usage()))
            self.add(Stage(name, wall, user, sys_, int(flt)))

    def add(self, stage: Stage) -> None:
        """Record a finished stage (measured here, or in a worker process) under the
        stages open now."""
        full = "/".join([*self._open, stage.name])
        self.done.append(Stage(full, stage.wall, stage.user, stage.sys, stage.minflt))

    def mark(self) -> int:
        """A position to pass to `children` later."""
        return len(self.done)

    def children(self, mark: int) -> dict[str, float]:
        """Wall seconds of the stages finished since ``mark`` one level below the stages
        open now, by their own name (repeated names are summed)."""
        depth = len(self._open)
        out: dict[str, float] = {}
        for s in self.done[mark:]:
            parts = s.name.split("/")
            if len(parts) == depth + 1:
                out[parts[-1]] = out.get(parts[-1], 0.0) + s.wall
        return out

    def to_json(self) -> list[dict[str, float | int | str]]:
        return [s.to_json() for s in self.done]
