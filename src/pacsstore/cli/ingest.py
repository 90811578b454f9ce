"""``pacsstore ingest``: store files and folders through group commit."""

from __future__ import annotations

import dataclasses
import logging
import signal
import stat
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
from rich.text import Text

from pacsstore.cli.app import (_errors_as_messages, _open_archive,
                               _stop_on_signals, main)
from pacsstore.wording import counted

logger = logging.getLogger(__name__)

# Group commit works per store_many call: a batch shares one fsync. 64
# files or 256 MiB, whichever comes first, amortises the fsync well while
# keeping the memory of one batch modest.
BATCH_FILES = 64
BATCH_BYTES = 256 * 1024 * 1024

# Groups a DICOM stream without a preamble starts with: command (0000),
# file meta (0002), or the identifying group (0008) of a bare dataset.
_FIRST_GROUPS = {0x0000, 0x0002, 0x0008}


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


def _ingest_summary(tally: IngestTally, seconds: float) -> str:
    """One line: the files stored, duplicate, rejected and skipped, and
    the MB the store now holds of them (stored or confirmed duplicate)."""
    statuses = Counter(tally.statuses)
    parts = [f"{counted(statuses.pop('stored', 0), 'file')} stored",
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
