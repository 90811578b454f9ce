"""The node in-process: C-ECHO, failure statuses that keep the association
up, several associations at once, and TCP_NODELAY on accepted sockets."""

from __future__ import annotations

import copy
import logging
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from corpus import CORPUS_ROOT, corpus_available
from pacsstore import Archive
from pacsstore.net import Node
from pacsstore.net.contexts import CheaplyCopiedContexts
from pacsstore.net.dcmtk import dcmtk_tool
from pacsstore.net.peers import describe, raw_file_sending
from pacsstore.net.peers import send_with_pynetdicom
from pacsstore.synthetic import write_ct_series

pytestmark = pytest.mark.network


@pytest.fixture
def node(tmp_path):
    with Archive(tmp_path / "store") as archive, \
            Node(archive, port=0) as running:
        yield running


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("series")
    return write_ct_series(folder, 8, rows=64, columns=64, seed=7)


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a short length."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr,
                       len(value)) + value


def part10(dataset: bytes, sop_instance: str) -> bytes:
    """A Part 10 file around ``dataset`` with a meta group we build."""
    uid = sop_instance.encode() + b"\0" * (len(sop_instance) % 2)
    version = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\0\1"
    body = (version
            + element(0x00020002, b"UI", CTImageStorage.encode() + b"\0")
            + element(0x00020003, b"UI", uid)
            + element(0x00020010, b"UI", ExplicitVRLittleEndian.encode()
                      + b"\0"))
    length = element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\0" * 128 + b"DICM" + length + body + dataset


def association(node: Node, contexts=((CTImageStorage,
                                       ExplicitVRLittleEndian),)):
    ae = AE(ae_title="TESTSCU")
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PACSSTORE")
    assert assoc.is_established
    return assoc


def send_file(assoc, path: Path):
    with raw_file_sending():
        return assoc.send_c_store(path)


@pytest.mark.skipif(dcmtk_tool("echoscu") is None, reason="no DCMTK")
def test_net_node_answers_echoscu(node):
    result = subprocess.run([dcmtk_tool("echoscu"), "-aec", "PACSSTORE",
                             "127.0.0.1", str(node.port)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_net_node_sets_tcp_nodelay_on_accepted_socket(node):
    assoc = association(node)
    try:
        server = node._server
        accepted = [a.dul.socket.socket for a in server.active_associations]
        assert accepted
        for sock in accepted:
            assert sock.getsockopt(socket.IPPROTO_TCP,
                                   socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_net_node_failures_keep_the_association_up(node, series, tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.1"
    malformed = tmp_path / "malformed.dcm"
    # SOP Class and Instance UIDs, then a sequence of undefined length
    # whose item is never closed.
    malformed.write_bytes(part10(
        element(0x00080016, b"UI", CTImageStorage.encode() + b"\0")
        + element(0x00080018, b"UI", uid.encode() + b"\0"[:len(uid) % 2])
        + struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF), uid))
    mismatch = tmp_path / "mismatch.dcm"
    data = series[0].read_bytes()
    mismatch.write_bytes(part10(data[data.index(b"\x08\x00"):], uid))

    assoc = association(node)
    try:
        bad = send_file(assoc, malformed)
        assert 0xC000 <= bad.Status <= 0xCFFF and bad.ErrorComment
        wrong = send_file(assoc, mismatch)
        assert wrong.Status == 0xA900 and wrong.ErrorComment
        good = send_file(assoc, series[1])
        assert good.Status == 0x0000
    finally:
        assoc.release()
    assert series[1].read_bytes()[-1000:] == \
        node.archive.get(_uid_of(series[1]))[-1000:]
    assert uid not in node.archive


def test_net_node_conflicting_resend_gets_duplicate_status(node, tmp_path):
    first = write_ct_series(tmp_path / "a", 1, rows=32, columns=32, seed=1)
    twin = write_ct_series(tmp_path / "b", 1, rows=32, columns=32, seed=1)
    # Same UIDs (same seed and size), different pixels.
    data = bytearray(twin[0].read_bytes())
    data[-2:] = bytes([data[-2] ^ 0xFF, data[-1]])
    twin[0].write_bytes(bytes(data))
    assoc = association(node)
    try:
        assert send_file(assoc, first[0]).Status == 0x0000
        again = send_file(assoc, first[0])
        assert again.Status == 0x0000  # an identical re-send is fine
        conflict = send_file(assoc, twin[0])
        assert conflict.Status == 0xC002
        assert "already stored with different content" in \
            conflict.ErrorComment
    finally:
        assoc.release()
    stored = node.archive.get(_uid_of(first[0]))
    assert stored.endswith(first[0].read_bytes()[-2048:])


def test_net_node_serves_several_associations_at_once(node, series):
    errors: list[str] = []

    def send(paths: list[Path]) -> None:
        assoc = association(node)
        try:
            for path in paths:
                status = send_file(assoc, path)
                if status.Status != 0:
                    errors.append(f"{path.name}: 0x{status.Status:04X}")
        finally:
            assoc.release()

    threads = [threading.Thread(target=send, args=(series[i::4],))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for path in series:
        assert _uid_of(path) in node.archive


def _uid_of(path: Path) -> str:
    from pydicom import dcmread
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_net_node_answers_a_c_store_without_instance_uid(node, series,
                                                         caplog):
    from pydicom import dcmread
    dataset = dcmread(series[2])
    dataset.SOPInstanceUID = ""  # pynetdicom then leaves out (0000,1000)
    assoc = association(node)
    try:
        with caplog.at_level(logging.INFO):
            status = assoc.send_c_store(dataset)
        assert status.Status == 0xC001
        assert "no Affected SOP Instance UID" in status.ErrorComment
        assert send_file(assoc, series[3]).Status == 0x0000
    finally:
        assoc.release()
    server_side = [r for r in caplog.records
                   if r.threadName.startswith("AcceptorThread")
                   and r.levelno >= logging.WARNING]
    assert [r.name for r in server_side] == ["pacsstore.net.handlers"]


SOP_CLASSES_PYNETDICOM_LACKS = (
    "pydicom/palettes/hotiron.dcm",   # Color Palette Storage
    "pydicom-data/color-pl.dcm",      # Ultrasound Image Storage (retired)
)


@pytest.mark.skipif(not corpus_available(), reason="corpus is absent")
def test_net_node_stores_classes_pynetdicom_does_not_list(node):
    files = [describe(CORPUS_ROOT / name)
             for name in SOP_CLASSES_PYNETDICOM_LACKS]
    report = send_with_pynetdicom(files, "127.0.0.1", node.port,
                                  "PACSSTORE")
    assert report.statuses == {0: len(files)}, report.failed
    for outgoing in files:
        assert outgoing.sop_instance_uid in node.archive


@pytest.mark.skipif(not corpus_available(), reason="corpus is absent")
def test_net_pynetdicom_send_goes_on_past_a_file_it_cannot_send(node,
                                                                series):
    bad = describe(CORPUS_ROOT / "pynetdicom/CTImageStorage_bad_meta.dcm")
    good = [describe(path) for path in series[4:6]]
    report = send_with_pynetdicom([good[0], bad, good[1]], "127.0.0.1",
                                  node.port, "PACSSTORE")
    assert report.statuses == {0: 2, -1: 1}
    assert report.unsent == [bad.path]
    assert [path for path, _ in report.failed] == [bad.path]
    for outgoing in good:
        assert outgoing.sop_instance_uid in node.archive


# Per-association copies of the supported contexts -----------------------------

def _context_fields(context) -> dict:
    return dict(vars(context))


def test_each_association_gets_contexts_of_its_own(node):
    server_contexts = node._server.contexts
    assert isinstance(server_contexts, CheaplyCopiedContexts)
    copied = copy.deepcopy(server_contexts)
    reference = copy.deepcopy(list(server_contexts))
    assert type(copied) is list and len(copied) == len(server_contexts)
    for ours, theirs, original in zip(copied, reference, server_contexts):
        # What a full deep copy gives, field for field...
        assert _context_fields(ours) == _context_fields(theirs)
        # ...in objects that are not the server's.
        assert ours is not original
        assert ours.transfer_syntax is not original.transfer_syntax
    before = list(server_contexts[0].transfer_syntax)
    copied[0]._transfer_syntax.clear()
    copied[0].context_id = 7
    assert server_contexts[0].transfer_syntax == before
    assert server_contexts[0].context_id is None


def test_a_context_holds_no_other_mutable_field(node):
    # The cheap copy shares every field but the syntax list: that is only
    # right while each of the others is an immutable value.
    immutable = (type(None), bool, int, str)
    for context in node._server.contexts:
        for name, value in vars(context).items():
            if name != "_transfer_syntax":
                assert isinstance(value, immutable), (name, value)
        assert all(isinstance(uid, str) for uid in context._transfer_syntax)


def test_many_associations_in_a_row_each_negotiate_afresh(node, series):
    # The first association's negotiation must not leak into the next:
    # each one proposes a different syntax for the same class.
    from pydicom.uid import ImplicitVRLittleEndian
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                   ExplicitVRLittleEndian):
        assoc = association(node, contexts=((CTImageStorage, syntax),))
        try:
            accepted = assoc.accepted_contexts
            assert [str(c.transfer_syntax[0]) for c in accepted] == \
                [str(syntax)]
        finally:
            assoc.release()
