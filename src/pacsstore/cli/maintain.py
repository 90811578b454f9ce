"""``pacsstore verify`` and ``rebuild-index``: checking a store, and
rebuilding its index from the segments.

Both print the problems they found, one table row (or JSON object) each,
then a summary line, and exit with status 1 when there was any problem:
a script that runs ``verify`` nightly needs nothing but the status.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Column, Table

from pacsstore.cli.app import _errors_as_messages, _open_archive, main

if TYPE_CHECKING:
    from pacsstore.store.verify import Problem

# Exit status when the store has problems (0 when it has none).
PROBLEMS_FOUND = 1


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON.")


@click.option("--scratch", type=click.Path(exists=True, file_okay=False,
                                           path_type=Path),
              help="Folder for temporary tables (default: the system's "
                   "temporary folder; about 250 bytes a block).")


@click.pass_obj
def verify(store: Path, as_json: bool, scratch: Path | None) -> None:
    """Check every block, instance and index entry of the store."""
    with _errors_as_messages():
        with _open_archive(store, readonly=True) as archive:
            report = archive.verify(scratch_dir=scratch)
    _print_report(report.problems, report.summary(), report.as_dict(),
                  as_json)
    if not report.ok:
        sys.exit(PROBLEMS_FOUND)


@main.command("rebuild-index")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON.")


@click.pass_obj
def rebuild_index(store: Path, as_json: bool) -> None:
    """Build a new index from the segments alone and swap it in; the old
    index is kept beside it as index.old-<time>."""
    from pacsstore import rebuild_index as rebuild

    if not store.is_dir():
        raise click.ClickException(
            f"no store at {store} (set --store or $PACSSTORE_PATH)")
    with _errors_as_messages():
        report = rebuild(store)
    _print_report(report.problems, report.summary(), report.as_dict(),
                  as_json)
    if not report.ok:
        sys.exit(PROBLEMS_FOUND)


def _print_report(problems: list[Problem], summary: str,
                  as_dict: dict[str, Any], as_json: bool) -> None:
    """JSON, or the problems and the summary: a table on a terminal, a
    line per problem elsewhere (a log, a mail from cron), where a table
    would be cut or padded to some width."""
    if as_json:
        click.echo(json.dumps(as_dict, indent=1))
        return
    if problems and sys.stdout.isatty():
        # Folded, not cut: a UID or an offset is copied from here.
        table = Table(*(Column(name, overflow="fold") for name in (
            "kind", "segment", "offset", "SOP Instance UID", "problem")))
        for problem in problems:
            table.add_row(problem.kind, _cell(problem.segment),
                          _cell(problem.offset),
                          _cell(problem.sop_instance_uid), problem.message)
        Console().print(table)
    else:
        for problem in problems:
            click.echo(str(problem))
    click.echo(summary)


def _cell(value: object) -> str:
    return "" if value is None else str(value)
