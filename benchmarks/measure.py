"""Timing repeated trials.

A trial does its own set-up and tear-down (a fresh store, a fresh peer)
and times only the part that is measured, by entering the stopwatch it
is given. The suite reports the median of the repetitions with their
minimum and maximum: on a machine others share, the median says what is
typical and the spread says how far to trust it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType


class Stopwatch:
    """Times the ``with`` block it guards; enter it once per trial."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None,
                 value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self._start


@dataclass(frozen=True)
class Sample:
    """Repeated values of one measure: seconds, bytes or a ratio."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Sample:
        if not values:
            raise ValueError("a sample needs at least one value")
        return cls(tuple(float(v) for v in values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def minimum(self) -> float:
        return min(self.values)

    @property
    def maximum(self) -> float:
        return max(self.values)

    def scaled(self, factor: float) -> Sample:
        return Sample(tuple(v * factor for v in self.values))


Trial = Callable[[Stopwatch], None]


def measure(trial: Trial, repeat: int) -> Sample:
    """Run ``trial`` ``repeat`` times; the seconds its stopwatch saw."""
    seconds = []
    for _ in range(repeat):
        watch = Stopwatch()
        trial(watch)
        if watch.seconds is None:
            raise RuntimeError(f"trial {trial.__name__} never entered its "
                               f"stopwatch")
        seconds.append(watch.seconds)
    return Sample.of(seconds)
