"""``pacsstore get``, ``find`` and ``stats``: read-only views of a store."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pacsstore.cli.app import _errors_as_messages, _open_archive, main

logger = logging.getLogger(__name__)

# Width a table gets when standard output is not a terminal: wide enough
# for every column of every level in full (UIDs are up to 64 characters).
TABLE_WIDTH_OFF_TERMINAL = 1000

LEVELS = ("study", "series", "instance")
COLUMNS = {
    "study": ("PatientID", "PatientName", "StudyDate", "StudyDescription",
              "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances", "StudyInstanceUID"),
    "series": ("PatientID", "StudyDate", "Modality", "SeriesNumber",
               "SeriesDescription", "NumberOfSeriesRelatedInstances",
               "SeriesInstanceUID"),
    "instance": ("PatientID", "Modality", "SeriesInstanceUID",
                 "InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
}


@main.command()
@click.argument("uid")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="File to write; standard output when absent or '-'.")


@click.pass_obj
def get(store: Path, uid: str, output: Path | None) -> None:
    """Write the stored Part 10 file of SOP Instance UID to a file."""
    with _errors_as_messages():
        with _open_archive(store, readonly=True) as archive:
            data = archive.get(uid)
    if output is None or str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        output.write_bytes(data)
    except OSError as error:
        raise click.ClickException(
            f"cannot write {output}: {error.strerror or error}") from error
    logger.info("wrote %d bytes to %s", len(data), output)


def _filters(**options: str | None) -> dict[str, str]:
    keywords = {
        "patient_id": "PatientID", "patient_name": "PatientName",
        "study_date": "StudyDate", "modality": "Modality",
        "study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
        "accession_number": "AccessionNumber",
    }
    return {keywords[name]: value for name, value in options.items()
            if value is not None}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\\".join(str(item) for item in value)
    return str(value)


def _tsv_cell(value: Any) -> str:
    # A tab or newline inside a value would shift the columns.
    return _cell(value).replace("\t", " ").replace("\n", " ")


def _print_answers(level: str, answers: list[dict], output: str) -> None:
    """Print in ``output`` format; ``auto`` is a table on a terminal and
    tab-separated values otherwise, where a table would be cut to 80
    columns and a program wants whole values."""
    columns = COLUMNS[level]
    if output == "auto":
        output = "table" if sys.stdout.isatty() else "tsv"
    if output == "json":
        click.echo(json.dumps(answers, indent=1, default=str))
    elif output == "tsv":
        click.echo("\t".join(columns))
        for answer in answers:
            click.echo("\t".join(_tsv_cell(answer.get(c))
                                  for c in columns))
    else:
        table = Table(*columns, title=f"{len(answers)} {level} answers")
        for answer in answers:
            table.add_row(*(_cell(answer.get(c)) for c in columns))
        _table_console().print(table)


def _table_console() -> Console:
    """A terminal's width on a terminal; elsewhere room for every value,
    since nothing would show what a cut left out."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=TABLE_WIDTH_OFF_TERMINAL)


@main.command()
@click.option("--level", type=click.Choice(LEVELS), default="study",
              show_default=True)


@click.option("--patient-id")
@click.option("--patient-name", help="Exact, or with * wildcards.")
@click.option("--study-date",
              help="A date (YYYYMMDD), a year or month, or a range "
                   "(D1-D2, -D2, D1-).")
@click.option("--modality")
@click.option("--accession-number")
@click.option("--study-uid")
@click.option("--series-uid")
@click.option("--format", "output",
              type=click.Choice(["auto", "table", "tsv", "json"]),
              default="auto", show_default=True,
              help="auto: a table on a terminal, tsv when piped.")


@click.pass_obj
def find(store: Path, level: str, output: str, **filters: str | None
         ) -> None:
    """List the studies, series or instances that match the filters."""
    keys = _filters(**filters)
    with _errors_as_messages():
        with _open_archive(store, readonly=True) as archive:
            answers = archive.find(level, **keys)
    _print_answers(level, answers, output)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def stats(store: Path, as_json: bool) -> None:
    """Counts and sizes of the store."""
    with _errors_as_messages():
        with _open_archive(store, readonly=True) as archive:
            numbers = dataclasses.asdict(archive.stats())
    if as_json:
        click.echo(json.dumps(numbers, indent=1))
        return
    for name, value in numbers.items():
        shown = (f"{value:,} ({value / 1e6:,.1f} MB)"
                 if name.endswith("bytes") else f"{value:,}")
        click.echo(f"{name:>18}: {shown}")
