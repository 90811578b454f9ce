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
import shutil
import signal
import stat
import sys
import threading
import time
import warnings
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

from pacsstore.errors import PacsstoreError, StoreLockedError

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


def _open_archive(store: Path, *, readonly: bool, **options: Any) -> Any:
    from pacsstore import Archive

    if readonly and not store.exists():
        raise click.ClickException(
            f"no store at {store} (set --store or ${STORE_ENV})")
    if store.exists() and not store.is_dir():
        raise click.ClickException(
            f"{store} is not a directory; --store names a store folder")
    try:
        return Archive(store, readonly=readonly, **options)
    except StoreLockedError as error:
        raise click.ClickException(
            f"{store} is being written by another pacsstore process (such "
            f"as `pacsstore serve`); get, find and stats work beside "
            f"it") from error
    except OSError as error:
        raise click.ClickException(
            f"cannot open the store {store}: {error.strerror or error}"
        ) from error


@contextlib.contextmanager
def _errors_as_messages() -> Iterator[None]:
    """Report pacsstore errors as one line and exit status 1."""
    try:
        yield
    except PacsstoreError as error:
        raise click.ClickException(str(error)) from error


class WarningsOnce:
    """Show each of pydicom's complaints once, through logging.

    pydicom reports a problem twice: it logs the message (logger
    ``pydicom``) and then warns with the same text. As a filter on the log
    handler this remembers, per thread, the last message pydicom logged;
    as ``warnings.showwarning`` it logs a warning unless it repeats that
    message, so warnings of other origin are still shown, once, in the
    format of the log.
    """

    def __init__(self) -> None:
        self._last = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.partition(".")[0] == "pydicom":
            self._last.message = record.getMessage()
        return True

    def showwarning(self, message: Warning | str, category: type[Warning],
                    filename: str, lineno: int, file: Any = None,
                    line: str | None = None) -> None:
        text = str(message)
        if getattr(self._last, "message", None) == text:
            self._last.message = None
            return
        logging.getLogger("py.warnings").warning(
            "%s: %s", category.__name__, text)


_WARNINGS_ONCE = WarningsOnce()


def _configure_logging(verbose: int, level: str | None) -> None:
    if level is None:
        level = ("WARNING", "INFO", "DEBUG")[min(verbose, 2)]
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WARNINGS_ONCE)
    warnings.showwarning = _WARNINGS_ONCE.showwarning


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
    """The arguments, with folders replaced by what is under them (every
    entry but folders: a FIFO or socket in a tree is counted, not lost)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if not p.is_dir())
        else:
            yield path


def _sniff(path: Path) -> bool:
    with path.open("rb") as handle:
        return looks_like_dicom(handle.read(132))


# The statuses whose file the archive holds once the batch returns
# (kept-first acknowledges a file but holds the earlier content).
KEPT_STATUSES = ("stored", "duplicate", "replaced")


@dataclasses.dataclass
class IngestTally:
    """What an ingest did, file by file."""

    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    non_dicom: int = 0
    not_regular: int = 0
    unreadable: int = 0
    bytes_kept: int = 0
    signal_name: str | None = None

    @property
    def looked_at(self) -> int:
        return (sum(self.statuses.values()) + self.non_dicom
                + self.not_regular + self.unreadable)


class RateColumn(ProgressColumn):
    """Instances per second and MB per second of an ingest."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0:
            return Text("")
        mb = task.fields.get("bytes", 0) / 1e6
        return Text(f"{task.completed / elapsed:,.0f} inst/s "
                    f"{mb / elapsed:,.1f} MB/s")


def _admit(path: Path, tally: IngestTally) -> int | None:
    """The size of ``path`` when it is a regular file that looks like
    DICOM; otherwise count why not and return None. Opening a FIFO would
    block until a writer comes, so the type is checked first."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            tally.not_regular += 1
            logger.info("skipped %s: not a regular file", path)
            return None
        if not _sniff(path):
            tally.non_dicom += 1
            logger.info("skipped %s: not DICOM", path)
            return None
    except OSError as error:
        tally.unreadable += 1
        logger.warning("skipped %s: %s", path, error.strerror or error)
        return None
    return info.st_size


def _batches(paths: Iterable[Path], tally: IngestTally,
             stop: threading.Event) -> Iterator[list[tuple[Path, int]]]:
    batch: list[tuple[Path, int]] = []
    size = 0
    for path in paths:
        if stop.is_set():
            return  # the batch being gathered is not stored yet: drop it
        length = _admit(path, tally)
        if length is None:
            continue
        batch.append((path, length))
        size += length
        if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch and not stop.is_set():
        yield batch


def _store_batch(archive: Any, batch: list[tuple[Path, int]],
                 tally: IngestTally) -> None:
    results = archive.store_many([str(path) for path, _ in batch],
                                 skip_invalid=True)
    for (path, length), result in zip(batch, results):
        tally.statuses[result.status] += 1
        if result.status in KEPT_STATUSES:
            tally.bytes_kept += length
        if result.status == "rejected":
            logger.warning("rejected %s: %s", path, result.error)


def _ingest(archive: Any, paths: list[Path], console: Console,
            stop: threading.Event) -> tuple[IngestTally, float]:
    tally = IngestTally()
    files = list(_candidates(paths))
    progress = Progress(TextColumn("ingest"), BarColumn(),
                        MofNCompleteColumn(), RateColumn(),
                        TimeElapsedColumn(), console=console,
                        disable=not console.is_terminal)
    started = time.perf_counter()
    with progress:
        task = progress.add_task("ingest", total=len(files), bytes=0)
        for batch in _batches(files, tally, stop):
            _store_batch(archive, batch, tally)
            progress.update(task, completed=tally.looked_at,
                            bytes=tally.bytes_kept)
            if stop.is_set():
                break
    return tally, time.perf_counter() - started


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _ingest_summary(tally: IngestTally, seconds: float) -> str:
    """One line: the files stored, duplicate, rejected and skipped, and
    the MB the store now holds of them (stored or confirmed duplicate)."""
    statuses = Counter(tally.statuses)
    parts = [f"{_count(statuses.pop('stored', 0), 'file')} stored",
             f"{statuses.pop('duplicate', 0)} duplicate",
             f"{statuses.pop('rejected', 0)} rejected"]
    parts += [f"{count} {status}" for status, count in sorted(
        statuses.items())]
    skipped = [f"{tally.non_dicom} non-DICOM"]
    if tally.not_regular:
        skipped.append(f"{tally.not_regular} not a regular file")
    if tally.unreadable:
        skipped.append(f"{tally.unreadable} unreadable")
    mb = tally.bytes_kept / 1e6
    kept = sum(tally.statuses[s] for s in KEPT_STATUSES)
    rate = (f" ({kept / seconds:,.1f} files/s, {mb / seconds:,.1f} MB/s)"
            if seconds > 0 else "")
    line = (f"{', '.join(parts)}; skipped {', '.join(skipped)}; "
            f"{mb:,.1f} MB in {seconds:.1f} s{rate}")
    if tally.signal_name:
        line = (f"interrupted by {tally.signal_name}, everything counted "
                f"is durable: {line}")
    return line


# Exit status after a signal, as a shell reports a process it killed.
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@main.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--on-conflict",
              type=click.Choice(["reject", "replace", "keep-first"]),
              default="reject", show_default=True,
              help="What a re-sent SOP Instance UID with new content does.")
@click.pass_obj
def ingest(store: Path, paths: tuple[Path, ...], on_conflict: str) -> None:
    """Store DICOM files and folders (recursively), skipping non-DICOM.

    SIGINT or SIGTERM stops it after the batch being stored; the summary
    then says what was stored so far."""
    console = Console(stderr=True)
    stop = threading.Event()
    received: list[int] = []
    with _errors_as_messages():
        with _open_archive(store, readonly=False,
                           on_conflict=on_conflict) as archive, \
                _stop_on_signals(stop, received):
            tally, seconds = _ingest(archive, list(paths), console, stop)
    if received:
        tally.signal_name = signal.Signals(received[0]).name
    click.echo(_ingest_summary(tally, seconds))
    if received:
        sys.exit(SIGNAL_EXIT[received[0]])


# ------------------------------------------------------------------ serve

def _ae_title(ctx: click.Context, param: click.Parameter,
              value: str) -> str:
    """Check --ae-title before anything is opened or bound."""
    from pacsstore.net.node import check_ae_title

    try:
        check_ae_title(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    return value


@main.command()
@click.option("--ae-title", default="PACSSTORE", show_default=True,
              callback=_ae_title,
              help="1-16 characters, no backslash, not all spaces.")
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
    with _errors_as_messages(), _removed_if_left_empty(store), \
            _open_archive(store, readonly=False,
                          on_conflict=on_conflict) as archive:
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
def _removed_if_left_empty(store: Path) -> Iterator[None]:
    """Remove the store again when the block fails, if the block created
    it and it holds no instance: a serve that cannot listen must not
    leave an empty store behind for the next command to trip on."""
    existed = store.exists()
    try:
        yield
    except (click.ClickException, PacsstoreError):
        if not existed and _holds_nothing(store):
            shutil.rmtree(store, ignore_errors=True)
        raise


def _holds_nothing(store: Path) -> bool:
    from pacsstore import Archive

    try:
        with Archive(store, readonly=True) as archive:
            return archive.stats().instances == 0
    except (PacsstoreError, OSError):
        return False


@contextlib.contextmanager
def _bind_errors(host: str, port: int) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {error.strerror}") from error


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event,
                     received: list[int] | None = None) -> Iterator[None]:
    """Set ``stop`` on SIGINT and SIGTERM while inside the block, and
    append the signal numbers to ``received``."""
    def handler(signum: int, frame: object) -> None:
        logger.info("received signal %d, stopping", signum)
        if received is not None:
            received.append(signum)
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
@click.option("--study-date", help="YYYYMMDD.")
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
