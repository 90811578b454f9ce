"""The main job, end to end: a node on the embedded store receives real
DICOM from a real peer, and what comes back is what was sent.

``python -m pacsstore.demo`` opens the store (``./pacsstore-data`` unless
``--store`` says otherwise), starts the node on a free port of 127.0.0.1,
sends pydicom's sample files and a generated CT series with DCMTK's
storescu (found by :func:`pacsstore.net.dcmtk.dcmtk_tool`, which passes
over pynetdicom's own ``storescu`` script in an activated virtual
environment; pynetdicom where DCMTK is absent or cannot read a file's
transfer syntax), lists the studies and series stored, fetches every
generated slice back and compares its dataset bytes with the file sent,
prints the throughput, and stops. Sending the same files again is a
re-send: the second run finds them already stored.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import click
import pydicom
from rich.console import Console
from rich.table import Table

from pacsstore._parse import parse
from pacsstore.errors import PacsstoreError
from pacsstore.net import Node
from pacsstore.net.peers import OutgoingFile, describe, send_files
from pacsstore.synthetic import write_ct_series

logger = logging.getLogger(__name__)

AE_TITLE = "PACSSTORE"


def pydicom_samples() -> list[Path]:
    """The sample files shipped inside pydicom (never downloaded)."""
    folder = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(folder.glob("*.dcm"))


def select(paths: Iterable[Path]) -> tuple[list[OutgoingFile], int]:
    """Files pydicom reads with a file meta group and a SOP Instance UID,
    one per SOP Instance UID (pydicom's samples include variants of one
    instance, which the reject policy would rightly refuse), and how many
    were left out."""
    chosen: dict[str, OutgoingFile] = {}
    left_out = 0
    for path in paths:
        outgoing = describe(path)
        if outgoing is None or outgoing.sop_instance_uid in chosen:
            left_out += 1
            continue
        chosen[outgoing.sop_instance_uid] = outgoing
    return list(chosen.values()), left_out


def dataset_bytes(part10: bytes) -> bytes:
    """The bytes after the file meta group."""
    return part10[parse(part10).dataset_offset:]


def verify(archive: object, files: Iterable[OutgoingFile]) -> list[str]:
    """SOP Instance UIDs whose stored dataset bytes differ from the file."""
    differing = []
    for outgoing in files:
        stored = archive.get(outgoing.sop_instance_uid)  # type: ignore
        sent = outgoing.path.read_bytes()
        if dataset_bytes(stored) != dataset_bytes(sent):
            differing.append(outgoing.sop_instance_uid)
    return differing


def show_contents(archive: object, console: Console) -> None:
    table = Table(title="Stored studies and series")
    for name, width in (("Patient", 12), ("Date", 8), ("Study", 24),
                        ("Series", 24), ("Mod", 6), ("Inst", 5)):
        table.add_column(name, max_width=width, min_width=min(width, 8),
                         no_wrap=True,
                         overflow="ellipsis")
    # One query per level, grouped here: filtering series by an empty
    # StudyInstanceUID would be DICOM's universal match (every series).
    by_study: dict[str, list[dict]] = {}
    for series in archive.find("series"):  # type: ignore[attr-defined]
        by_study.setdefault(series.get("StudyInstanceUID", ""),
                            []).append(series)
    for study in archive.find("study"):  # type: ignore[attr-defined]
        uid = study.get("StudyInstanceUID", "")
        for series in by_study.get(uid, []):
            table.add_row(
                str(study.get("PatientID") or "-"),
                str(study.get("StudyDate") or "-"),
                str(study.get("StudyDescription") or uid or "-"),
                str(series.get("SeriesDescription")
                    or series.get("SeriesInstanceUID") or "-"),
                str(series.get("Modality") or "-"),
                str(series.get("NumberOfSeriesRelatedInstances", "")))
    console.print(table)


def run(store: Path, slices: int, port: int, console: Console) -> bool:
    """The demo; True when every check passed."""
    from pacsstore import Archive

    with tempfile.TemporaryDirectory(prefix="pacsstore-demo-") as scratch:
        series = write_ct_series(Path(scratch) / "ct", slices)
        samples, left_out = select(pydicom_samples())
        generated, _ = select(series)
        console.print(f"sending {len(samples)} pydicom sample files "
                      f"({left_out} left out: unreadable, no meta or UID, "
                      f"or a variant of another) and {len(generated)} "
                      f"generated CT slices")
        with Archive(store) as archive, Node(archive, ae_title=AE_TITLE,
                                             port=port) as node:
            ok = _exchange(archive, node, samples + generated, generated,
                           console)
    return ok


def _exchange(archive: object, node: Node, files: list[OutgoingFile],
              generated: list[OutgoingFile], console: Console) -> bool:
    started = time.perf_counter()
    report = send_files(files, "127.0.0.1", node.port, AE_TITLE)
    seconds = time.perf_counter() - started
    statuses, received = node.counters.snapshot()
    for path, reason in report.failed:
        console.print(f"[yellow]not stored[/]: {path.name}: {reason}")
    # A file the sender could not read never went over the wire.
    unsent = set(report.unsent)
    sent = [f for f in files if f.path not in unsent]
    size = sum(f.path.stat().st_size for f in sent)
    console.print(f"node answered {sum(statuses.values())} C-STOREs: "
                  f"{_describe_statuses(statuses)}")
    console.print(f"sent {len(sent)} instances ({len(unsent)} not sent), "
                  f"{size / 1e6:.1f} MB in {seconds:.2f} s: "
                  f"{len(sent) / seconds:.1f} instances/s, "
                  f"{size / 1e6 / seconds:.1f} MB/s")
    show_contents(archive, console)
    lost = {f.path for f in generated} & {path for path, _ in report.failed}
    if lost:
        console.print(f"[red]{len(lost)} generated slices were not stored[/]")
        return False
    differing = verify(archive, generated)
    if differing:
        console.print(f"[red]byte-for-byte check FAILED[/] for "
                      f"{len(differing)} of {len(generated)} instances")
        return False
    console.print(f"byte-for-byte check passed: {len(generated)} of "
                  f"{len(generated)} generated instances came back as sent")
    # Failures of sample files are reported above, not fatal: some of
    # pydicom's samples are deliberately broken and the node refuses them.
    return True


def _describe_statuses(statuses: dict[str, int]) -> str:
    names = {"stored": "newly stored", "duplicate": "already stored"}
    return ", ".join(f"{count} {names.get(status, status)}"
                     for status, count in sorted(statuses.items())) or "none"


@click.command()
@click.option("--store", type=click.Path(path_type=Path),
              default="pacsstore-data", show_default=True)
@click.option("--slices", type=click.IntRange(1, 2000), default=100,
              show_default=True, help="Slices of the generated CT series.")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port of the node; 0 (default) picks a free one.")
@click.option("-v", "--verbose", is_flag=True, help="Log the node's work.")
def main(store: Path, slices: int, port: int, verbose: bool) -> None:
    """Run the pacsstore demonstration."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # pydicom logs every oddity of its own deliberately odd samples.
        logging.getLogger("pydicom").setLevel(logging.ERROR)
    # Off a terminal (a log file, CI) rich would wrap at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"pacsstore demo: store {store.resolve()}")
    try:
        passed = run(store, slices, port, console)
    except (PacsstoreError, OSError) as error:
        # A store path that is no store, a port in use: one line, as the
        # pacsstore command reports them.
        raise click.ClickException(str(error)) from error
    if not passed:
        sys.exit(1)
    console.print("demo finished")


if __name__ == "__main__":
    main()
