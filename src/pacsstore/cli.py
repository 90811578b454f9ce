"""The ``pacsstore`` command: ingest files, serve the DICOM node, fetch,
find and count what a store holds.

Every command works on one store, ``--store`` or ``$PACSSTORE_PATH`` or
``./pacsstore-data``. Commands that only read open the store read-only, so
that they run beside a ``pacsstore serve`` writing to the same store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                           ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table
from rich.text import Text

from pacsstore.errors import PacsstoreError

logger = logging.getLogger(__name__)

DEFAULT_STORE = "pacsstore-data"
STORE_ENV = "PACSSTORE_PATH"

# Group commit works per store_many call: a batch shares one fsync. 64
# files or 256 MiB, whichever comes first, amortises the fsync well while
# keeping the memory of one batch modest.
BATCH_FILES = 64
BATCH_BYTES = 256 * 1024 * 1024

# Groups a DICOM stream without a preamble starts with: command (0000),
# file meta (0002), or the identifying group (0008) of a bare dataset.
_FIRST_GROUPS = {0x0000, 0x0002, 0x0008}

# How often serve looks at its stop flag; signals interrupt the wait
# anyway, the timeout only bounds the worst case.
SIGNAL_POLL_SECONDS = 0.5

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


def _open_archive(store: Path, *, readonly: bool, **options: Any) -> Any:
    from pacsstore import Archive

    if readonly and not store.exists():
        raise click.ClickException(
            f"no store at {store} (set --store or ${STORE_ENV})")
    return Archive(store, readonly=readonly, **options)


@contextlib.contextmanager
def _errors_as_messages() -> Iterator[None]:
    """Report pacsstore errors as one line and exit status 1."""
    try:
        yield
    except PacsstoreError as error:
        raise click.ClickException(str(error)) from error


def _configure_logging(verbose: int, level: str | None) -> None:
    if level is None:
        level = ("WARNING", "INFO", "DEBUG")[min(verbose, 2)]
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", type=click.Path(path_type=Path),
              envvar=STORE_ENV, default=DEFAULT_STORE, show_default=True,
              help=f"Store folder (also ${STORE_ENV}).")
@click.option("-v", "--verbose", count=True,
              help="More log output (-v info, -vv debug).")
@click.option("--log-level",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                case_sensitive=False),
              help="Log level; overrides -v.")
@click.version_option(package_name="pacsstore")
@click.pass_context
def main(ctx: click.Context, store: Path, verbose: int,
         log_level: str | None) -> None:
    """pacsstore: a DICOM archive."""
    _configure_logging(verbose, log_level)
    ctx.obj = store


# ----------------------------------------------------------------- ingest

def looks_like_dicom(head: bytes) -> bool:
    """A cheap first look: a Part 10 preamble, or a dataset that starts
    with a tag of group 0000, 0002 or 0008 in either byte order (files
    without preamble, ACR-NEMA style)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    little = int.from_bytes(head[0:2], "little")
    big = int.from_bytes(head[0:2], "big")
    return little in _FIRST_GROUPS or big in _FIRST_GROUPS


def _candidates(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _sniff(path: Path) -> bool:
    with path.open("rb") as handle:
        return looks_like_dicom(handle.read(132))


@dataclasses.dataclass
class IngestTally:
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: int = 0
    bytes_read: int = 0

    @property
    def instances(self) -> int:
        return sum(self.statuses.values())


class RateColumn(ProgressColumn):
    """Instances per second and MB per second of an ingest."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0:
            return Text("")
        mb = task.fields.get("bytes", 0) / 1e6
        return Text(f"{task.completed / elapsed:,.0f} inst/s "
                    f"{mb / elapsed:,.1f} MB/s")


def _batches(paths: Iterable[Path], tally: IngestTally
             ) -> Iterator[list[tuple[Path, int]]]:
    batch: list[tuple[Path, int]] = []
    size = 0
    for path in paths:
        if not _sniff(path):
            tally.skipped += 1
            logger.info("skipped %s: not DICOM", path)
            continue
        length = path.stat().st_size
        batch.append((path, length))
        size += length
        if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _store_batch(archive: Any, batch: list[tuple[Path, int]],
                 tally: IngestTally) -> None:
    results = archive.store_many([str(path) for path, _ in batch],
                                 skip_invalid=True)
    for (path, length), result in zip(batch, results):
        tally.statuses[result.status] += 1
        tally.bytes_read += length
        if result.status == "rejected":
            logger.warning("rejected %s: %s", path, result.error)


def _ingest(archive: Any, paths: list[Path], console: Console
            ) -> tuple[IngestTally, float]:
    tally = IngestTally()
    files = list(_candidates(paths))
    progress = Progress(TextColumn("ingest"), BarColumn(),
                        MofNCompleteColumn(), RateColumn(),
                        TimeElapsedColumn(), console=console,
                        disable=not console.is_terminal)
    started = time.perf_counter()
    with progress:
        task = progress.add_task("ingest", total=len(files), bytes=0)
        for batch in _batches(files, tally):
            _store_batch(archive, batch, tally)
            progress.update(task, completed=tally.instances + tally.skipped,
                            bytes=tally.bytes_read)
    return tally, time.perf_counter() - started


def _ingest_summary(tally: IngestTally, seconds: float) -> str:
    parts = [f"{count} {status}"
             for status, count in sorted(tally.statuses.items())]
    mb = tally.bytes_read / 1e6
    rate = (f"{tally.instances / seconds:,.1f} instances/s, "
            f"{mb / seconds:,.1f} MB/s") if seconds > 0 else ""
    return (f"ingested {tally.instances} files ({', '.join(parts) or 'none'})"
            f"; skipped {tally.skipped} non-DICOM; {mb:,.1f} MB in "
            f"{seconds:.1f} s ({rate})")


@main.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--on-conflict",
              type=click.Choice(["reject", "replace", "keep-first"]),
              default="reject", show_default=True,
              help="What a re-sent SOP Instance UID with new content does.")
@click.pass_obj
def ingest(store: Path, paths: tuple[Path, ...], on_conflict: str) -> None:
    """Store DICOM files and folders (recursively), skipping non-DICOM."""
    console = Console(stderr=True)
    with _errors_as_messages():
        with _open_archive(store, readonly=False,
                           on_conflict=on_conflict) as archive:
            tally, seconds = _ingest(archive, list(paths), console)
    click.echo(_ingest_summary(tally, seconds))


# ------------------------------------------------------------------ serve

@main.command()
@click.option("--ae-title", default="PACSSTORE", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=11112,
              show_default=True, help="TCP port; 0 picks a free one.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 for every interface.")
@click.option("--on-conflict",
              type=click.Choice(["reject", "replace", "keep-first"]),
              default="reject", show_default=True)
@click.pass_obj
def serve(store: Path, ae_title: str, port: int, host: str,
          on_conflict: str) -> None:
    """Run the DICOM node (C-ECHO, C-STORE) until SIGINT or SIGTERM."""
    from pacsstore.net import Node

    stop = threading.Event()
    with _errors_as_messages(), _open_archive(
            store, readonly=False, on_conflict=on_conflict) as archive:
        node = Node(archive, ae_title=ae_title, port=port, host=host)
        with _stop_on_signals(stop):
            with _bind_errors(host, port):
                node.start()
            try:
                click.echo(f"pacsstore: listening on {host}:{node.port} "
                           f"as {ae_title}, store {store}")
                sys.stdout.flush()
                while not stop.wait(SIGNAL_POLL_SECONDS):
                    pass
            finally:
                node.stop()
    statuses, received = node.counters.snapshot()
    click.echo(f"pacsstore: stopped; received {sum(statuses.values())} "
               f"instances ({received / 1e6:,.1f} MB): {statuses}")


@contextlib.contextmanager
def _bind_errors(host: str, port: int) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {error.strerror}") from error


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT and SIGTERM while inside the block."""
    def handler(signum: int, frame: object) -> None:
        logger.info("received signal %d, stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ------------------------------------------------------------ get, find

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
    output.write_bytes(data)
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


def _print_answers(level: str, answers: list[dict], output: str) -> None:
    columns = COLUMNS[level]
    if output == "json":
        click.echo(json.dumps(answers, indent=1, default=str))
    elif output == "tsv":
        click.echo("\t".join(columns))
        for answer in answers:
            click.echo("\t".join(_cell(answer.get(c)) for c in columns))
    else:
        table = Table(*columns, title=f"{len(answers)} {level} answers")
        for answer in answers:
            table.add_row(*(_cell(answer.get(c)) for c in columns))
        Console().print(table)


@main.command()
@click.option("--level", type=click.Choice(LEVELS), default="study",
              show_default=True)
@click.option("--patient-id")
@click.option("--patient-name", help="Exact, or with * wildcards.")
@click.option("--study-date", help="YYYYMMDD.")
@click.option("--modality")
@click.option("--accession-number")
@click.option("--study-uid")
@click.option("--series-uid")
@click.option("--format", "output", type=click.Choice(["table", "tsv",
                                                       "json"]),
              default="table", show_default=True)
@click.pass_obj
def find(store: Path, level: str, output: str, **filters: str | None
         ) -> None:
    """List the studies, series or instances that match the filters."""
    keys = _filters(**filters)
    if level == "study" and "Modality" in keys:
        # A study has modalities, not a modality (PS3.4 C.6.2.1.2).
        keys["ModalitiesInStudy"] = keys.pop("Modality")
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


if __name__ == "__main__":
    main()
