"""A row of the results table: what pacsstore measured, what its peers
measured on the same data in the same run, and the verdict of each
target.

A row measures one quantity, lower being better: seconds (a rate is
shown as amount per second, but kept and compared as seconds) or bytes.
The ratio against a peer always reads "how many times better":
``peer / pacsstore`` for seconds (3x: pacsstore took a third of the
time), ``pacsstore / peer`` for bytes (0.5x: half the bytes). A target
bounds that ratio, or, for an absolute target, the median itself.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.measure import Sample

SECONDS = "seconds"
BYTES = "bytes"

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "<": operator.lt,
}


@dataclass(frozen=True)
class Quantity:
    """What a row's values are and how to show them: seconds shown as
    such or as a rate (``amount`` per second, in ``unit``), or bytes."""

    kind: str
    unit: str = ""
    amount: float | None = None

    def show(self, value: float) -> str:
        number, unit = self._parts(value, value)
        return f"{number} {unit}"

    def show_sample(self, sample: Sample) -> str:
        """Median, then the spread in the median's unit (a rate's best
        run is its shortest time, so its spread reads the other way)."""
        median, unit = self._parts(sample.median, sample.median)
        if len(sample.values) == 1:
            return f"{median} {unit}"
        low, high = sample.minimum, sample.maximum
        if self.amount is not None:
            low, high = high, low
        low_text, _ = self._parts(low, sample.median)
        high_text, _ = self._parts(high, sample.median)
        return f"{median} {unit} ({low_text}–{high_text})"

    def _parts(self, value: float, scale_of: float) -> tuple[str, str]:
        if self.kind == BYTES:
            return f"{value / 1e6:,.1f}", "MB"
        if self.amount is not None:
            return _significant(self.amount / value), self.unit
        factor, unit = _time_unit(scale_of)
        return _significant(value * factor), unit

    def ratio(self, ours: float, peer: float) -> float:
        return peer / ours if self.kind == SECONDS else ours / peer


def rate(unit: str, amount: float) -> Quantity:
    return Quantity(SECONDS, unit, amount)


def duration() -> Quantity:
    return Quantity(SECONDS)


def size() -> Quantity:
    return Quantity(BYTES)


@dataclass(frozen=True)
class Target:
    """``ratio <op> bound``, or ``median <op> bound`` when absolute."""

    op: str
    bound: float
    absolute: bool = False
    label: str = ""

    def met(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.bound)

    def text(self, quantity: Quantity) -> str:
        if self.label:
            return self.label
        shown = quantity.show(self.bound) if self.absolute \
            else f"{self.bound:g}x"
        return f"{self.op.replace('>=', '≥').replace('<=', '≤')} {shown}"


@dataclass(frozen=True)
class Comparison:
    """One peer of a row, with the target against it if there is one."""

    peer: str
    sample: Sample | None
    target: Target | None = None


@dataclass
class Row:
    key: str
    title: str
    quantity: Quantity
    ours: Sample
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ratio(self, comparison: Comparison) -> float | None:
        if comparison.sample is None:
            return None
        return self.quantity.ratio(self.ours.median,
                                   comparison.sample.median)

    def verdict(self, comparison: Comparison) -> bool | None:
        """True when the target is met, None when there is none."""
        target = comparison.target
        if target is None:
            return None
        if target.absolute:
            return target.met(self.ours.median)
        ratio = self.ratio(comparison)
        return None if ratio is None else target.met(ratio)

    def targets(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.target is not None]


def _significant(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 1:
        return 1.0, "s"
    if seconds >= 1e-3:
        return 1e3, "ms"
    return 1e6, "µs"
