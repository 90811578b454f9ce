"""The benchmark's own arithmetic: which way a ratio reads, when a target
is met, and that the results page keeps its hand-written parts."""

from __future__ import annotations

import shutil

from benchmarks import report
from benchmarks.machine import Machine
from benchmarks.measure import Sample, Stopwatch, measure
from benchmarks.rows import Comparison, Row, Target, duration, rate, size
from benchmarks.suite import cfind

MACHINE = Machine("a CPU", 2, 8.0, "a disk", "6.0")


def _row(ours, peer, target, quantity=None):
    return Row("key", "a row", quantity or duration(), Sample.of(ours),
               [Comparison("peer", Sample.of(peer), target)])


def test_time_ratio_reads_as_times_faster():
    row = _row([1.0, 2.0, 3.0], [6.0], Target(">=", 3))
    comparison = row.comparisons[0]
    assert row.ratio(comparison) == 3.0   # median 2 s against 6 s
    assert row.verdict(comparison) is True


def test_size_ratio_reads_as_fraction_of_the_peer():
    row = _row([40e6], [100e6], Target("<=", 0.8), size())
    assert row.ratio(row.comparisons[0]) == 0.4
    assert row.verdict(row.comparisons[0]) is True


def test_absolute_target_bounds_the_median():
    row = Row("key", "a row", duration(), Sample.of([0.004, 0.02, 0.005]),
              [Comparison("(absolute)", None,
                          Target("<", 0.010, absolute=True))])
    assert row.verdict(row.comparisons[0]) is True
    assert row.ratio(row.comparisons[0]) is None


def test_comparison_without_target_has_no_verdict():
    row = _row([1.0], [2.0], None)
    assert row.verdict(row.comparisons[0]) is None
    assert row.targets() == []


def test_rate_shows_amount_per_second_spread_slowest_to_fastest():
    quantity = rate("files/s", 100)
    shown = quantity.show_sample(Sample.of([0.5, 1.0, 2.0]))
    assert shown == "100 files/s (50.0–200)"


def test_duration_spread_uses_the_median_unit():
    shown = duration().show_sample(Sample.of([0.0009, 0.0012, 0.002]))
    assert shown == "1.20 ms (0.90–2.00)"


def test_measure_times_only_the_stopwatch_block():
    calls = []

    def trial(watch: Stopwatch) -> None:
        calls.append("setup")
        with watch:
            pass

    sample = measure(trial, 3)
    assert calls == ["setup"] * 3 and len(sample.values) == 3
    assert all(v >= 0 for v in sample.values)


def test_report_replaces_only_the_generated_part(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\nby hand\n\n{report.BEGIN}\nold\n"
                    f"{report.END}\n\n## Misses\n\nalso by hand\n")
    row = _row([1.0], [0.5], Target(">=", 0.8))
    report.write(page, [row], {"cfind": "absent"}, {}, machine=MACHINE,
                 versions={"pacsstore": "0"}, repeat=5, minutes=1.0)
    text = page.read_text()
    assert "by hand" in text and "also by hand" in text
    assert "old" not in text
    assert "| a row | 1.00 s | peer | 500 ms | 0.50x | ≥ 0.8x | " \
           "**missed** |" in text
    assert "Targets met: 0; missed: 1." in text
    assert "Not run: cfind (absent)." in text


def test_the_population_key_follows_what_the_engine_writes(tmp_path,
                                                           monkeypatch):
    package = tmp_path / "src" / "pacsstore"
    shutil.copytree(cfind.PROJECT / "src" / "pacsstore" / "store",
                    package / "store",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("parsing.py", "filemeta.py"):
        shutil.copy(cfind.PROJECT / "src" / "pacsstore" / name, package)
    monkeypatch.setattr(cfind, "PROJECT", tmp_path)
    before = cfind._sources_digest()
    # A module that only reads: the stored population is still valid.
    with open(package / "store" / "reader.py", "a") as reader:
        reader.write("\n# changed\n")
    assert cfind._sources_digest() == before
    # A module of the write path: the population is built again.
    with open(package / "store" / "prepare.py", "a") as prepare:
        prepare.write("\n# changed\n")
    assert cfind._sources_digest() != before
