"""docs/benchmarks.md: the results table of a run.

The page has hand-written parts (how to run, what the rows mean, the
profiles that explain each missed target) and one generated part
between two markers, which a run replaces: the machine, the versions
and the table. A page without the markers gets a fresh skeleton.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from benchmarks.machine import Machine
from benchmarks.rows import Comparison, Row

BEGIN = "<!-- results: begin (written by benchmarks/report.py) -->"
END = "<!-- results: end -->"

SKELETON = f"""# Benchmarks

{BEGIN}
{END}
"""


def write(path: Path, rows: Sequence[Row], skipped: dict[str, str],
          failed: dict[str, str], *, machine: Machine,
          versions: dict[str, str], repeat: int, minutes: float) -> None:
    page = path.read_text() if path.exists() else SKELETON
    if BEGIN not in page or END not in page:
        page = SKELETON + "\n" + page
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = results(rows, skipped, failed, machine=machine,
                   versions=versions, repeat=repeat, minutes=minutes)
    path.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def results(rows: Sequence[Row], skipped: dict[str, str],
            failed: dict[str, str], *, machine: Machine,
            versions: dict[str, str], repeat: int, minutes: float) -> str:
    """The generated part: when and where, then the table."""
    today = datetime.date.today().isoformat()
    lines = [f"Run of {today}: {repeat} repetition(s) per row, median "
             f"(min–max); {minutes:.1f} minutes in all.", ""]
    lines += [f"- {line}" for line in machine.lines()]
    lines.append("- versions: " + ", ".join(
        f"{name} {version}" for name, version in versions.items()))
    lines += ["", *table(rows), ""]
    met, missed = _tally(rows)
    lines.append(f"Targets met: {met}; missed: {missed}.")
    for family, reason in skipped.items():
        lines.append(f"Not run: {family} ({reason}).")
    for family, error in failed.items():
        lines.append(f"Failed part-way, rows after the failure missing: "
                     f"{family} ({error}).")
    notes = _numbered_notes(rows)
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"{number}. {text}" for text, number in notes.items()]
    return "\n".join(lines)


def table(rows: Sequence[Row]) -> list[str]:
    notes = _numbered_notes(rows)
    lines = ["| row | pacsstore | peer | peer's result | ratio | target "
             "| met |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        marks = "".join(f"<sup>{notes[n]}</sup>" for n in row.notes)
        ours = row.quantity.show_sample(row.ours)
        title = f"{row.title}{marks}"
        if not row.comparisons:
            lines.append(f"| {title} | {ours} | | | | | |")
        for index, comparison in enumerate(row.comparisons):
            first = index == 0
            lines.append("| " + " | ".join([
                title if first else "↳", ours if first else "",
                *_cells(row, comparison)]) + " |")
    return lines


def _cells(row: Row, comparison: Comparison) -> list[str]:
    sample = comparison.sample
    shown = row.quantity.show_sample(sample) if sample else "—"
    ratio = row.ratio(comparison)
    target = comparison.target
    verdict = row.verdict(comparison)
    return [comparison.peer, shown,
            "—" if ratio is None else f"{ratio:.2f}x",
            target.text(row.quantity) if target else "",
            {True: "met", False: "**missed**", None: ""}[verdict]]


def _tally(rows: Sequence[Row]) -> tuple[int, int]:
    verdicts = [row.verdict(c) for row in rows for c in row.targets()]
    return verdicts.count(True), verdicts.count(False)


def _numbered_notes(rows: Sequence[Row]) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for row in rows:
        for note in row.notes:
            numbers.setdefault(note, len(numbers) + 1)
    return numbers
