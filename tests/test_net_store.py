"""The node end to end: DCMTK's storescu sends corpus files in many
transfer syntaxes to `pacsstore serve`, and every one comes back with the
dataset bytes exactly as sent.

What "as sent" means is measured, not assumed: the same files go to
DCMTK's storescp in bit-preserving mode (+B), whose files hold the dataset
bytes as they came off the wire. HTJ2K, which this DCMTK does not know,
goes through pynetdicom, which sends a file's dataset bytes unchanged, so
the reference there is the file itself.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus import CORPUS_ROOT, CorpusFile, corpus_available, corpus_files
from pacsstore.cli import main as cli
from pacsstore.net.peers import (OutgoingFile, describe, send_with_pynetdicom,
                                 send_with_storescu, storescu_report)
from pacsstore.net.contexts import storage_sop_classes
from pacsstore.net.dcmtk import dcmtk_tool

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(not corpus_available(), reason="corpus is absent"),
    pytest.mark.skipif(dcmtk_tool("storescu") is None
                       or dcmtk_tool("storescp") is None,
                       reason="DCMTK is not installed"),
]

BY_DCMTK = (
    "1.2.840.10008.1.2.1",     # explicit VR little endian
    "1.2.840.10008.1.2",       # implicit VR little endian
    "1.2.840.10008.1.2.2",     # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",     # RLE lossless
)
BY_PYNETDICOM = (
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)
# Files with these flags are odd on purpose; they have tests of their own.
ODD_FLAGS = {"truncated", "value_errors", "UN_public", "pixel_data_short",
             "pixel_data_long", "odd_length_elems", "no_preamble",
             "no_file_meta", "ts_inferred", "meta_missing_ts", "dicomdir"}
STORAGE_CLASSES = frozenset(storage_sop_classes())
PER_SYNTAX = 2
MAX_SIZE = 1_500_000

# One CT in many transfer syntaxes, mostly under one SOP Instance UID.
CONFLICT_FAMILY = "cornerstone3D/examplesOld/test-images/CTImage.dcm_"


def _clean(entry: CorpusFile, syntax: str) -> bool:
    return (entry.transfer_syntax == syntax and entry.pydicom_status == "ok"
            and not entry.flags & ODD_FLAGS
            and "/CTImage.dcm_" not in entry.relpath
            and entry.sop_class in STORAGE_CLASSES
            and entry.path.stat().st_size <= MAX_SIZE)


def pick(syntaxes: tuple[str, ...], taken: set[str]) -> list[OutgoingFile]:
    """Up to PER_SYNTAX clean corpus files per syntax, one per UID."""
    chosen = []
    for syntax in syntaxes:
        count = 0
        for entry in sorted(corpus_files(), key=lambda e: e.relpath):
            if count == PER_SYNTAX or not _clean(entry, syntax):
                continue
            outgoing = describe(entry.path)
            if outgoing is None or outgoing.sop_instance_uid in taken:
                continue
            taken.add(outgoing.sop_instance_uid)
            chosen.append(outgoing)
            count += 1
    return chosen


def conflict_pair() -> tuple[OutgoingFile, OutgoingFile]:
    """Two corpus files with one SOP Instance UID and different bytes."""
    first = describe(CORPUS_ROOT / (CONFLICT_FAMILY + "LittleEndianExplicit"
                                    "TransferSyntax_1.2.840.10008.1.2.1.dcm"))
    second = describe(CORPUS_ROOT / (CONFLICT_FAMILY + "JPEGProcess14SV1"
                                     "TransferSyntax_1.2.840.10008.1.2.4.70"
                                     ".dcm"))
    assert first and second
    assert first.sop_instance_uid == second.sop_instance_uid
    assert first.path.read_bytes() != second.path.read_bytes()
    return first, second


def after_meta(part10: bytes) -> tuple[dict[int, bytes], bytes]:
    """File meta elements and the dataset bytes of a Part 10 file, read
    here by hand (group 0002 is always explicit VR little endian) so that
    the check does not lean on the parser under test."""
    assert part10[128:132] == b"DICM"
    position, meta = 132, {}
    while position + 8 <= len(part10):
        group, element = struct.unpack_from("<HH", part10, position)
        if group != 0x0002:
            break
        vr = part10[position + 4:position + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            length = struct.unpack_from("<I", part10, position + 8)[0]
            start = position + 12
        else:
            length = struct.unpack_from("<H", part10, position + 6)[0]
            start = position + 8
        meta[(group << 16) | element] = part10[start:start + length]
        position = start + length
    return meta, part10[position:]


def uid_value(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def storescp_config(files: list[OutgoingFile]) -> str:
    """An acceptor profile ``Files``: per SOP class one context listing
    every syntax the files of that class use (DCMTK wants each abstract
    syntax once in an SCP profile)."""
    by_class: dict[str, set[str]] = {}
    for outgoing in files:
        by_class.setdefault(outgoing.sop_class_uid, set()).add(
            outgoing.transfer_syntax)
    lines = ["[[TransferSyntaxes]]"]
    contexts = []
    for number, (sop_class, syntaxes) in enumerate(sorted(by_class.items()),
                                                    1):
        lines.append(f"[TS{number}]")
        lines += [f"TransferSyntax{i} = {uid}"
                  for i, uid in enumerate(sorted(syntaxes), 1)]
        contexts.append(f"PresentationContext{number} = "
                        f"{sop_class}\\TS{number}")
    lines += ["[[PresentationContexts]]", "[FilesContexts]", *contexts,
              "[[Profiles]]", "[Files]", "PresentationContexts = "
              "FilesContexts", ""]
    return "\n".join(lines)


def run_storescp(folder: Path, files: list[OutgoingFile]) -> dict[str, bytes]:
    """Send ``files`` to storescp +B; its files by SOP Instance UID."""
    folder.mkdir()
    port = free_port()
    # storescp's own +xa leaves out some syntaxes (JPEG process 14), so it
    # gets the same (SOP class, syntax) pairs as the sender proposes.
    config = folder.parent / "storescp.cfg"
    config.write_text(storescp_config(files), encoding="ascii")
    server = subprocess.Popen(
        [dcmtk_tool("storescp"), "+B", "-xf", str(config), "Files", "-aet", "REFERENCE",
         "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        result = send_with_storescu(files, "127.0.0.1", port, "REFERENCE")
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    stored = {}
    for path in folder.iterdir():
        meta, _ = after_meta(path.read_bytes())
        stored[uid_value(meta[0x00020003])] = path.read_bytes()
    return stored


def _wait_listening(port: int, attempts: int = 200) -> None:
    for _ in range(attempts):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        subprocess.run(["sleep", "0.05"], check=True)
    raise AssertionError(f"nothing listens on port {port}")


class Serve:
    """`pacsstore serve` as a subprocess on a free port."""

    def __init__(self, store: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1] / "src"),
             os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pacsstore.cli", "--store", str(store),
             "serve", "--port", "0", "--ae-title", "PACSSTORE"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        line = self.process.stdout.readline()
        assert "listening on" in line, self.process.stderr.read()
        self.port = int(line.split("listening on ")[1].split()[0]
                        .rsplit(":", 1)[1])

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, out + err


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    """Send the same files to storescp and to `pacsstore serve`."""
    root = tmp_path_factory.mktemp("net-store")
    taken: set[str] = set()
    dcmtk_files = pick(BY_DCMTK, taken)
    htj2k_files = pick(BY_PYNETDICOM, taken)
    first, second = conflict_pair()
    # The twin goes in the middle: files after it must still be stored.
    middle = len(dcmtk_files) // 2
    sent = dcmtk_files[:middle] + [first, second] + dcmtk_files[middle:]
    reference = run_storescp(root / "reference", dcmtk_files + [first])

    store = root / "store"
    serve = Serve(store)
    try:
        scu = storescu_report(send_with_storescu(
            sent, "127.0.0.1", serve.port, "PACSSTORE"), sent)
        htj2k = send_with_pynetdicom(htj2k_files, "127.0.0.1", serve.port,
                                     "PACSSTORE")
    finally:
        code, output = serve.stop()
    return dict(store=store, dcmtk=dcmtk_files + [first], htj2k=htj2k_files,
                twin=second, reference=reference, scu=scu, htj2k_report=htj2k,
                serve_exit=code, serve_output=output)


def cli_get(store: Path, uid: str, target: Path) -> bytes:
    result = CliRunner().invoke(cli, ["--store", str(store), "get", uid,
                                      "-o", str(target)])
    assert result.exit_code == 0, result.output
    return target.read_bytes()


def compared(exchange) -> list[OutgoingFile]:
    """The files the reference kept (storescp fails on a few odd ones)."""
    return [f for f in exchange["dcmtk"]
            if f.sop_instance_uid in exchange["reference"]]


def test_net_store_covers_the_transfer_syntaxes(exchange):
    checked = {f.transfer_syntax for f in compared(exchange)}
    assert set(BY_DCMTK) - checked == set()
    htj2k = {f.transfer_syntax for f in exchange["htj2k"]}
    assert htj2k & set(BY_PYNETDICOM)


def test_net_store_every_dcmtk_file_comes_back_as_sent(exchange, tmp_path):
    for outgoing in compared(exchange):
        uid = outgoing.sop_instance_uid
        ref_meta, ref_dataset = after_meta(exchange["reference"][uid])
        got = cli_get(exchange["store"], uid, tmp_path / "got.dcm")
        meta, dataset = after_meta(got)
        assert dataset == ref_dataset, outgoing.path.name
        assert uid_value(meta[0x00020010]) == uid_value(ref_meta[0x00020010])
        assert uid_value(meta[0x00020002]) == outgoing.sop_class_uid
        assert uid_value(meta[0x00020003]) == uid


def test_net_store_htj2k_comes_back_as_in_the_file(exchange, tmp_path):
    assert exchange["htj2k_report"].statuses == {
        0: len(exchange["htj2k"])}
    for outgoing in exchange["htj2k"]:
        got = cli_get(exchange["store"], outgoing.sop_instance_uid,
                      tmp_path / "got.dcm")
        meta, dataset = after_meta(got)
        _, file_dataset = after_meta(outgoing.path.read_bytes())
        assert dataset == file_dataset
        assert uid_value(meta[0x00020010]) == outgoing.transfer_syntax


def test_net_store_conflicting_resend_fails_without_dropping(exchange):
    report = exchange["scu"]
    assert [path for path, _ in report.failed] == [exchange["twin"].path]
    # DCMTK knows the status (0xC002 is in the Cxxx range of PS3.4 B.2.3).
    assert "Unknown Status" not in report.failed[0][1], report.failed
    assert report.statuses[0] == len(exchange["dcmtk"])


def test_net_store_serve_stops_cleanly_on_sigterm(exchange):
    assert exchange["serve_exit"] == 0, exchange["serve_output"]
    assert "stopped" in exchange["serve_output"]


def test_net_store_twin_keeps_the_first_content(exchange, tmp_path):
    twin = exchange["twin"]
    got = cli_get(exchange["store"], twin.sop_instance_uid,
                  tmp_path / "got.dcm")
    meta, _ = after_meta(got)
    assert uid_value(meta[0x00020010]) != twin.transfer_syntax
