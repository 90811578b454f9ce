"""Sending Part 10 files to a storage SCP as a peer would: with DCMTK's
storescu where it is installed, with pynetdicom where it is not.

Both send each file in its own transfer syntax, without transcoding:
storescu is driven by a generated configuration that proposes one
presentation context per (SOP class, transfer syntax) pair of the files,
because its default proposals cover only uncompressed syntaxes and it
cannot decompress on the fly. Files in a syntax this DCMTK does not know
(HTJ2K in DCMTK 3.6.7, for example) go through pynetdicom, which sends a
file's dataset bytes as they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from pacsstore.net.dcmtk import dcmtk_tool

logger = logging.getLogger(__name__)

# Syntaxes DCMTK 3.6.7's storescu reads and sends unchanged (dcxfer.cc).
DCMTK_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
    *(f"1.2.840.10008.1.2.4.{n}" for n in
      (50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66,
       70, 80, 81, 90, 91, 92, 93, 94, 95, 100, 101, 102, 103, 104, 105,
       106, 107, 108)),
})

# A-ASSOCIATE-RQ carries at most 128 presentation contexts (PS3.8 9.3.2:
# odd context IDs 1-255).
MAX_CONTEXTS = 128


@dataclass(frozen=True)
class OutgoingFile:
    """A file to send and the two UIDs its association must propose."""

    path: Path
    sop_class_uid: str
    transfer_syntax: str
    sop_instance_uid: str


@dataclass
class SendReport:
    """Statuses of a send: status code -> count, and the failures.

    A status of -1 is a file that got no status from the peer. The files
    among them that were never sent at all (the sender could not read
    them, or the peer accepted no context for them) are also in
    ``unsent``, so that a count of what went over the wire can leave them
    out.
    """

    statuses: dict[int, int] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    unsent: list[Path] = field(default_factory=list)

    def add(self, status: int, count: int = 1) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + count

    def not_sent(self, path: Path, reason: str) -> None:
        self.add(-1)
        self.failed.append((path, reason))
        self.unsent.append(path)

    def merge(self, other: SendReport) -> None:
        for code, count in other.statuses.items():
            self.add(code, count)
        self.failed += other.failed
        self.unsent += other.unsent


def describe(path: Path) -> OutgoingFile | None:
    """The UIDs of a Part 10 file, or None when pydicom cannot read its
    header or it has no file meta or SOP Instance UID."""
    try:
        with warnings.catch_warnings():
            # Odd samples make pydicom warn; describe() only wants UIDs.
            warnings.simplefilter("ignore")
            ds = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        logger.debug("not sending %s: %s", path, error)
        return None
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    sop_class = ds.get("SOPClassUID") or getattr(
        meta, "MediaStorageSOPClassUID", None)
    uid = ds.get("SOPInstanceUID")
    if not (syntax and sop_class and uid):
        return None
    return OutgoingFile(path, str(sop_class), str(syntax), str(uid))


def storescu_config(files: Sequence[OutgoingFile]) -> str:
    """A storescu configuration whose profile ``Files`` proposes each
    (SOP class, transfer syntax) pair of ``files`` in its own context."""
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax) for f in files})
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(f"{len(pairs)} (SOP class, transfer syntax) "
                         f"pairs, at most {MAX_CONTEXTS} fit an association")
    syntaxes = sorted({syntax for _, syntax in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for number, syntax in enumerate(syntaxes, 1):
        lines += [f"[TS{number}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[FilesContexts]"]
    for number, (sop_class, syntax) in enumerate(pairs, 1):
        group = syntaxes.index(syntax) + 1
        lines.append(f"PresentationContext{number} = {sop_class}\\TS{group}")
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = "
              "FilesContexts", ""]
    return "\n".join(lines)


def storescu_available() -> bool:
    return dcmtk_tool("storescu") is not None


def send_with_storescu(files: Sequence[OutgoingFile], host: str, port: int,
                       called_ae: str, calling_ae: str = "STORESCU",
                       ) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association; storescu goes on past failures
    (``--no-halt``). Nagle is off on its socket (TCP_NODELAY=1)."""
    storescu = dcmtk_tool("storescu")
    if storescu is None:
        raise FileNotFoundError("DCMTK's storescu is not on PATH")
    env = dict(os.environ, TCP_NODELAY="1")
    with tempfile.TemporaryDirectory(prefix="pacsstore-scu-") as scratch:
        config = Path(scratch) / "storescu.cfg"
        config.write_text(storescu_config(files), encoding="ascii")
        command = [storescu, "--verbose", "--no-halt",
                   "-xf", str(config), "Files", "-aet", calling_ae,
                   "-aec", called_ae, "--max-pdu", "131072", host,
                   str(port), *(str(f.path) for f in files)]
        return subprocess.run(command, env=env, capture_output=True,
                              text=True, check=False)


def send_with_pynetdicom(files: Sequence[OutgoingFile], host: str,
                         port: int, called_ae: str,
                         calling_ae: str = "PACSSTORE-SCU") -> SendReport:
    """Send ``files`` in one association with pynetdicom, which passes
    each file's dataset bytes through unchanged."""
    from pacsstore.net.identity import pacsstore_ae
    from pacsstore.net.requested import OUTGOING_HANDLERS

    ae = pacsstore_ae(calling_ae)
    for sop_class, syntax in sorted({(f.sop_class_uid, f.transfer_syntax)
                                     for f in files}):
        ae.add_requested_context(sop_class, syntax)
    report = SendReport()
    assoc = ae.associate(host, port, ae_title=called_ae,
                         evt_handlers=OUTGOING_HANDLERS)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_ae} at "
                              f"{host}:{port} was not established")
    try:
        with raw_file_sending():
            for outgoing in files:
                _send_one(assoc, outgoing, report)
    finally:
        assoc.release()
    return report


@contextlib.contextmanager
def raw_file_sending() -> Iterator[None]:
    """Make pynetdicom send a file's dataset bytes as they are in the file
    instead of decoding and re-encoding them (a process-wide setting of
    pynetdicom, restored afterwards)."""
    from pynetdicom import _config

    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _send_one(assoc: object, outgoing: OutgoingFile,
              report: SendReport) -> None:
    try:
        status = assoc.send_c_store(  # type: ignore[attr-defined]
            outgoing.path)
    except (AttributeError, ValueError, OSError) as error:
        # pynetdicom reads the file before sending anything: a missing
        # file meta element is an AttributeError, an unreadable or odd
        # file a ValueError or OSError. Only this file is lost.
        report.not_sent(outgoing.path, f"pynetdicom cannot send it: "
                                       f"{error}")
        return
    code = int(status.Status) if "Status" in status else -1
    report.add(code)
    if code != 0x0000:
        report.failed.append((outgoing.path, str(
            status.get("ErrorComment", f"status 0x{code & 0xFFFF:04X}"))))


def send_files(files: Sequence[OutgoingFile], host: str, port: int,
               called_ae: str) -> SendReport:
    """Send with storescu what it can send, the rest with pynetdicom."""
    by_dcmtk = [f for f in files if f.transfer_syntax in DCMTK_SYNTAXES]
    if not storescu_available():
        by_dcmtk = []
    rest = [f for f in files if f not in set(by_dcmtk)]
    report = SendReport()
    if by_dcmtk:
        result = send_with_storescu(by_dcmtk, host, port, called_ae)
        storescu_report(result, by_dcmtk, report)
    if rest:
        report.merge(send_with_pynetdicom(rest, host, port, called_ae))
    return report


def storescu_report(result: subprocess.CompletedProcess[str],
                    files: Sequence[OutgoingFile],
                    report: SendReport | None = None) -> SendReport:
    """Tally storescu's verbose log: a 'Sending file:' line, then either
    'Received Store Response (...)' or 'Store Failed, file: ...'."""
    report = report if report is not None else SendReport()
    current: Path | None = None
    answered = 0
    for line in result.stderr.splitlines():
        if "Sending file:" in line:
            current = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response (" in line:
            answered += 1
            verdict = line.split("(", 1)[1].rstrip(")")
            _tally(report, current, verdict)
        elif "Store Failed, file:" in line:
            answered += 1
            _tally(report, current, "store failed")
        elif "No presentation context for:" in line:
            answered += 1  # the peer accepted no context for its SOP class
            report.not_sent(current or Path("?"), "storescu: no accepted "
                                                  "presentation context")
        elif "Bad DICOM file:" in line:
            answered += 1  # storescu could not read it, sent nothing
            report.not_sent(current or Path("?"),
                            "storescu: DCMTK cannot read the file")
    if answered < len(files):
        raise ConnectionError(
            f"storescu answered {answered} of {len(files)} files "
            f"(exit {result.returncode}): {result.stderr.strip()[-300:]}")
    return report


def _tally(report: SendReport, path: Path | None, verdict: str) -> None:
    if verdict == "Success" or verdict.startswith("Warning"):
        report.add(0x0000)
        return
    report.add(-1)
    report.failed.append((path or Path("?"), f"storescu: {verdict}"))
