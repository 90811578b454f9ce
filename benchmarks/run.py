"""The benchmark command: ``python -m benchmarks.run`` (scripts/benchmark.sh
installs the peers first, then runs this).

Runs the families of :mod:`benchmarks.suite`, prints the results table
and, for a full run of every family, writes it into docs/benchmarks.md.
``--quick`` runs each row once, for development; ``--only`` picks
families. Raw values go to ``last-run.json`` in the data folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import click

from benchmarks import machine, report
from benchmarks.data import DEFAULT_CACHE, PROJECT, Datasets
from benchmarks.measure import Stopwatch
from benchmarks.peers import ORTHANC, STORESCP
from benchmarks.rows import Row
from benchmarks.sending import STORESCU
from benchmarks.suite import FAMILIES, Context, Skipped

log = logging.getLogger("benchmarks")

FULL_REPEAT = 5
RESULTS_PAGE = PROJECT / "docs" / "benchmarks.md"


@click.command()
@click.option("--quick", is_flag=True,
              help="One repetition per row, for development.")
@click.option("--repeat", type=click.IntRange(1, 100), default=None,
              help=f"Repetitions per row (default {FULL_REPEAT}; 1 with "
                   f"--quick).")
@click.option("--only", default=",".join(FAMILIES), show_default=True,
              help="Comma-separated families to run.")
@click.option("--data", "data_root", type=click.Path(path_type=Path),
              default=DEFAULT_CACHE, show_default=True,
              help="Where the generated data sets are cached.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Results page to write (default: docs/benchmarks.md "
                   "for a full run of every family, none otherwise).")
def main(quick: bool, repeat: int | None, only: str, data_root: Path,
         output: Path | None) -> None:
    """Run pacsstore's benchmarks against its peers."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    log.setLevel(logging.INFO)
    quiet_pydicom()
    families = _families(only)
    _check_peers()
    repeat = repeat or (1 if quick else FULL_REPEAT)
    if output is None and not quick and set(families) == set(FAMILIES):
        output = RESULTS_PAGE
    with tempfile.TemporaryDirectory(prefix="pacsstore-bench-") as scratch, \
            Stopwatch() as whole:
        context = Context(Datasets(data_root), Path(scratch), repeat,
                          quick)
        rows, skipped, failed = _run_families(context, families)
        described = machine.machine(Path(scratch))
    found = machine.versions()
    for line in report.table(rows):
        click.echo(line)
    _save_raw(data_root / "last-run.json", rows)
    if output is not None:
        report.write(output, rows, skipped, failed, machine=described,
                     versions=found, repeat=repeat,
                     minutes=whole.seconds / 60)
        log.info("wrote %s", output)
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")


def quiet_pydicom() -> None:
    """pydicom logs and warns about the corpus's odd files (and pacsstore
    decodes text through pydicom.charset, which does too); the benchmark
    reads them on purpose, and its output is the table."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


def _families(only: str) -> list[str]:
    chosen = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        raise click.BadParameter(f"unknown families {', '.join(unknown)}; "
                                 f"choose from {', '.join(FAMILIES)}",
                                 param_hint="--only")
    return chosen


def _check_peers() -> None:
    missing = [tool for tool in (STORESCP, STORESCU, ORTHANC)
               if not Path(tool).exists()]
    if missing:
        raise click.ClickException(
            f"missing peers: {', '.join(missing)}; scripts/benchmark.sh "
            f"installs them (dcmtk, orthanc) with apt-get")


def _run_families(context: Context, families: list[str]
                  ) -> tuple[list[Row], dict[str, str], dict[str, str]]:
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for family in families:
        module = importlib.import_module(f"benchmarks.suite.{family}")
        log.info("%s ...", family)
        try:
            with Stopwatch() as watch:
                # Rows come as they are measured: a family that fails
                # part-way keeps the rows it had.
                for row in module.run(context):
                    rows.append(row)
        except Skipped as reason:
            skipped[family] = str(reason)
            log.info("%s skipped: %s", family, reason)
            continue
        except Exception as error:  # noqa: BLE001 - one family's failure
            # is reported in its place; the others still run.
            log.exception("%s failed", family)
            failed[family] = str(error)
            continue
        log.info("%s done in %.0f s", family, watch.seconds)
    return rows, skipped, failed


def _save_raw(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([dataclasses.asdict(r) for r in rows],
                               indent=1, default=str))


if __name__ == "__main__":
    main()
