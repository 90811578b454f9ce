"""The node under hostile and broken peers.

A raw-socket peer speaks the DICOM upper layer (PS3.8 9.3) byte by byte,
so that it can send what no toolkit sends: garbage instead of an
A-ASSOCIATE-RQ, a PDU that claims 4 GiB, a PDU cut short and then
silence, a dataset cut short, encoded in another transfer syntax than
its presentation context, nested past the walker's limit or claiming a
huge element length, and an association dropped mid-dataset. For each,
the node answers with a failure status, an A-ABORT or by closing; nothing
from it is stored; and a well-behaved association, during it or right
after, still stores.
"""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (CTImageStorage, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEGBaseline8Bit, MRImageStorage)
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode

import pacsstore.net.node as node_module
from pacsstore import Archive
from pacsstore.net import Node
from pacsstore.net.dcmtk import dcmtk_tool
from pacsstore.net.handlers import MAX_PDU_READ
from pacsstore.net.peers import raw_file_sending
from pacsstore.synthetic import write_ct_series

pytestmark = pytest.mark.network

# Seconds the node waits on a silent peer in these tests (120 in
# production): long enough for a loaded machine, short enough for CI.
NETWORK_TIMEOUT = 2
# Seconds a test waits for the node to answer or to hang up.
PATIENCE = 15

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.8.498.4242"
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
COMMAND, LAST = 0x01, 0x02


# --- a raw upper-layer peer ------------------------------------------------

def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def associate_rq(contexts: list[tuple[str, str]], *,
                 max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ proposing one context per (abstract syntax,
    transfer syntax) pair, with context IDs 1, 3, 5, ..."""
    body = (struct.pack(">HH", 1, 0) + b"PACSSTORE".ljust(16)
            + b"HOSTILE".ljust(16) + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT))
    for index, (abstract, syntax) in enumerate(contexts):
        body += _item(0x20, bytes([2 * index + 1, 0, 0, 0])
                      + _item(0x30, abstract.encode())
                      + _item(0x40, syntax.encode()))
    body += _item(0x50, _item(0x51, struct.pack(">I", max_pdu))
                  + _item(0x52, IMPLEMENTATION_UID))
    return pdu(A_ASSOCIATE_RQ, body)


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def c_store_rq(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """A C-STORE-RQ command set, implicit VR little endian (PS3.7 9.3.1)."""
    command = Dataset()
    command.CommandGroupLength = 0
    command.AffectedSOPClassUID = sop_class
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance
    command.CommandGroupLength = len(encode(command, True, True)) - 12
    return encode(command, True, True)


@dataclass
class Answer:
    """What the node did: the PDU types it sent, the C-STORE status (when
    it sent one) and whether it closed the connection."""

    kinds: list[int]
    status: int | None
    closed: bool

    @property
    def refused(self) -> bool:
        """A failure status, an A-ABORT, or a closed connection."""
        return ((self.status is not None and self.status != 0)
                or A_ABORT in self.kinds or self.closed)


class RawPeer:
    # Every peer made, for the node fixture to close before the node
    # stops, whatever the test did.
    opened: list[RawPeer] = []

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=PATIENCE)
        RawPeer.opened.append(self)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes] | None:
        """The next PDU, or None once the node has closed."""
        head = self._read(6)
        if head is None:
            return None
        kind, _, length = struct.unpack(">BBI", head)
        body = self._read(length)
        return None if body is None else (kind, body)

    def _read(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            try:
                chunk = self.sock.recv(size - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def associate(self, contexts: list[tuple[str, str]]) -> dict[int, bool]:
        """Establish an association: context ID -> accepted."""
        self.send(associate_rq(contexts))
        answer = self.read_pdu()
        assert answer is not None and answer[0] == A_ASSOCIATE_AC, answer
        accepted, body, at = {}, answer[1], 68
        while at + 4 <= len(body):
            kind, _, length = struct.unpack_from(">BBH", body, at)
            if kind == 0x21:
                accepted[body[at + 4]] = body[at + 6] == 0
            at += 4 + length
        return accepted

    def answer(self) -> Answer:
        """Read until a C-STORE response, an A-ABORT or the end."""
        kinds: list[int] = []
        command = b""
        while True:
            received = self.read_pdu()
            if received is None:
                return Answer(kinds, None, closed=True)
            kind, body = received
            kinds.append(kind)
            if kind == A_ABORT:
                return Answer(kinds, None, closed=False)
            if kind != P_DATA_TF:
                continue
            at = 0
            while at + 6 <= len(body):
                length, _, control = struct.unpack_from(">IBB", body, at)
                command += body[at + 6:at + 4 + length]
                at += 4 + length
                if control & COMMAND and control & LAST:
                    status = decode(io.BytesIO(command), True, True).Status
                    return Answer(kinds, int(status), closed=False)

    def store(self, context_id: int, sop_class: str, sop_instance: str,
              dataset: bytes, message_id: int = 1) -> Answer:
        self.send(pdu(P_DATA_TF, pdv(context_id, COMMAND | LAST,
                                     c_store_rq(sop_class, sop_instance,
                                                message_id))))
        self.send(pdu(P_DATA_TF, pdv(context_id, LAST, dataset)))
        return self.answer()

    def release(self) -> None:
        self.send(pdu(A_RELEASE_RQ, bytes(4)))
        answer = self.read_pdu()
        assert answer is not None and answer[0] == A_RELEASE_RP, answer

    def close(self) -> None:
        self.sock.close()


# --- fixtures --------------------------------------------------------------

@pytest.fixture
def node(tmp_path, monkeypatch) -> Iterator[Node]:
    monkeypatch.setattr(node_module, "NETWORK_TIMEOUT", NETWORK_TIMEOUT)
    with Archive(tmp_path / "store") as archive:
        running = Node(archive, port=0)
        running.start()
        try:
            yield running
        finally:
            while RawPeer.opened:
                RawPeer.opened.pop().close()
            # Connections that failed before their association linger
            # in pynetdicom until its ACSE timeout; abort them at once.
            running.stop(grace=0.5)


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("ct"), 6, rows=32,
                           columns=32, seed=11)


def _dataset_of(path: Path) -> tuple[bytes, str]:
    """The dataset bytes of a Part 10 file and its SOP Instance UID."""
    data = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    offset = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    return data[offset:], str(ds.SOPInstanceUID)


def _wait_idle(node: Node) -> None:
    """Until the node has finished with every association."""
    deadline = time.monotonic() + PATIENCE
    while node._server.active_associations:
        assert time.monotonic() < deadline, "an association never ended"
        time.sleep(0.05)


def _good_store(node: Node, path: Path) -> None:
    """A well-behaved peer stores ``path`` and finds it stored."""
    ae = AE(ae_title="GOODSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PACSSTORE")
    assert assoc.is_established
    try:
        with raw_file_sending():
            assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
    dataset, uid = _dataset_of(path)
    assert node.archive.get(uid).endswith(dataset)


@pytest.fixture
def unchanged(node):
    """Checks that the store is as it was when the test began: once the
    node has finished with every association, or (``idle=False``) at
    once, where no association was established and so nothing can be
    stored. A connection that fails before its association is kept by
    pynetdicom until its ACSE timeout (30 s) before it is let go."""
    before = node.archive.stats()

    def check(idle: bool = True) -> None:
        if idle:
            _wait_idle(node)
        assert node.archive.stats() == before

    return check


def _established(node: Node,
                 syntax: str = ExplicitVRLittleEndian) -> RawPeer:
    peer = RawPeer(node.port)
    assert peer.associate([(CTImageStorage, syntax)]) == {1: True}
    return peer


# --- before an association -------------------------------------------------

@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n",
    b"\x00" * 64,
    b"\xff" * 7,
    pdu(A_ASSOCIATE_RQ, b"\x00\x01\x00\x00" + b"\xee" * 100),
], ids=["http", "zeros", "unknown-type", "bad-rq-body"])
def test_garbage_instead_of_an_associate_request_is_aborted(
        node, slices, unchanged, garbage):
    peer = RawPeer(node.port)
    peer.send(garbage)
    answer = peer.answer()
    peer.close()
    assert answer.refused and A_ASSOCIATE_AC not in answer.kinds, answer
    unchanged(idle=False)
    _good_store(node, slices[0])


def _associate_rq_of(context_id: int, syntaxes: list[bytes]) -> bytes:
    """An A-ASSOCIATE-RQ of one Verification context with this ID and
    these transfer syntaxes, which PS3.8 9.3.2.2 wants odd and one at
    least."""
    body = (struct.pack(">HH", 1, 0) + b"PACSSTORE".ljust(16)
            + b"HOSTILE".ljust(16) + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT)
            + _item(0x20, bytes([context_id, 0, 0, 0])
                    + _item(0x30, b"1.2.840.10008.1.1")
                    + b"".join(_item(0x40, s) for s in syntaxes))
            + _item(0x50, _item(0x51, struct.pack(">I", 16384))
                    + _item(0x52, IMPLEMENTATION_UID)))
    return pdu(A_ASSOCIATE_RQ, body)


@pytest.mark.parametrize("context_id, syntaxes", [
    (1, []), (2, [b"1.2.840.10008.1.2"]),
], ids=["no-transfer-syntax", "even-context-id"])
def test_a_malformed_associate_request_is_refused_at_once(
        node, slices, unchanged, context_id, syntaxes):
    """pynetdicom raised in its negotiation (no transfer syntax) or in
    its state machine (an even ID) and left the connection open with no
    answer, holding one of the node's association slots."""
    peer = RawPeer(node.port)
    started = time.monotonic()
    peer.send(_associate_rq_of(context_id, syntaxes))
    answer = peer.answer()
    peer.close()
    assert answer.refused and A_ASSOCIATE_AC not in answer.kinds, answer
    assert time.monotonic() - started < NETWORK_TIMEOUT, answer
    unchanged(idle=False)
    _wait_idle(node)
    _good_store(node, slices[0])


@pytest.mark.parametrize("kind", [A_ASSOCIATE_RQ, P_DATA_TF])
def test_pdu_claiming_4_gib_is_dropped_without_reading_it(
        node, slices, unchanged, kind):
    peer = RawPeer(node.port) if kind == A_ASSOCIATE_RQ \
        else _established(node)
    peer.send(struct.pack(">BBI", kind, 0, 0xFFFFFFFF))
    # The node reads no more of such a PDU than it would of any PDU it
    # accepts: it hangs up before a fraction of the claimed length.
    sent, chunk = 0, b"\0" * (256 << 10)
    hung_up = False
    try:
        while sent < 16 * MAX_PDU_READ:
            peer.send(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        hung_up = True
    if not hung_up:
        hung_up = peer.answer().refused
    peer.close()
    assert hung_up and sent < 16 * MAX_PDU_READ, sent
    unchanged(idle=kind != A_ASSOCIATE_RQ)
    _good_store(node, slices[1])


@pytest.mark.parametrize("cut", [3, 6, 40])
def test_request_cut_short_then_silence_times_out(node, slices, unchanged,
                                                  cut):
    peer = RawPeer(node.port)
    peer.send(associate_rq([(CTImageStorage, ExplicitVRLittleEndian)])[:cut])
    start = time.monotonic()
    answer = peer.answer()
    waited = time.monotonic() - start
    peer.close()
    assert answer.refused and A_ASSOCIATE_AC not in answer.kinds, answer
    assert waited < NETWORK_TIMEOUT + 10, waited
    unchanged(idle=False)
    _good_store(node, slices[2])


def test_stop_does_not_wait_for_a_peer_stalled_inside_its_request(
        node, monkeypatch):
    """The read of the rest of a PDU held the node's stop until the
    network timeout (120 s in serve), whatever its grace."""
    monkeypatch.setattr(node_module, "NETWORK_TIMEOUT", 120)
    stalled = Node(node.archive, port=0)
    stalled.start()
    peer = RawPeer(stalled.port)
    peer.send(associate_rq([(CTImageStorage, ExplicitVRLittleEndian)])[:30])
    time.sleep(0.5)  # the node reads the header, then waits for the rest
    started = time.monotonic()
    stalled.stop(grace=0.5)
    assert time.monotonic() - started < 5
    peer.close()


# --- inside an association -------------------------------------------------

def test_p_data_cut_short_then_silence_times_out(node, slices, unchanged):
    dataset, uid = _dataset_of(slices[3])
    peer = _established(node)
    peer.send(pdu(P_DATA_TF, pdv(1, COMMAND | LAST,
                                 c_store_rq(CTImageStorage, uid, 1))))
    whole = pdu(P_DATA_TF, pdv(1, LAST, dataset))
    peer.send(whole[:len(whole) // 2])
    start = time.monotonic()
    answer = peer.answer()
    peer.close()
    assert answer.refused and answer.status is None, answer
    assert time.monotonic() - start < NETWORK_TIMEOUT + 10
    unchanged()
    assert uid not in node.archive
    _good_store(node, slices[3])


def test_abrupt_close_mid_dataset_stores_nothing(node, slices, unchanged):
    dataset, uid = _dataset_of(slices[4])
    peer = _established(node)
    peer.send(pdu(P_DATA_TF, pdv(1, COMMAND | LAST,
                                 c_store_rq(CTImageStorage, uid, 1))))
    # The first half of the dataset as a fragment that is not the last.
    peer.send(pdu(P_DATA_TF, pdv(1, 0x00, dataset[:len(dataset) // 2])))
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))  # close with a reset
    peer.close()
    unchanged()
    assert uid not in node.archive
    _good_store(node, slices[4])


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN"):
        return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr,
                           len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr,
                       len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" * (len(raw) % 2)


def _nested(depth: int) -> bytes:
    opener = (struct.pack("<HH2s2xI", 0x0009, 0x1010, b"SQ", 0xFFFFFFFF)
              + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    closer = (struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
              + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return opener * depth + closer * depth


HOSTILE_UID = "1.2.826.0.1.3680043.8.498.77"
HEAD = (_element(0x00080016, b"UI", _uid(CTImageStorage))
        + _element(0x00080018, b"UI", _uid(HOSTILE_UID)))


@pytest.mark.parametrize("dataset", [
    HEAD + _element(0x00100010, b"PN", b"Doe^Jane")[:9],
    HEAD + _nested(100),
    HEAD + struct.pack("<HH2s2xI", 0x0009, 0x1011, b"OB", 0xFFFFFFF0)
    + b"\0" * 64,
    HEAD + struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 0xFFFF) + b"Doe",
], ids=["truncated", "nested-100", "huge-ob-length", "huge-pn-length"])
def test_broken_dataset_gets_a_failure_status_and_the_association_stays(
        node, slices, unchanged, dataset):
    peer = _established(node)
    answer = peer.store(1, CTImageStorage, HOSTILE_UID, dataset)
    assert 0xC000 <= answer.status <= 0xCFFF, answer
    # The status comes after the store was settled; the association,
    # still open, is not waited for.
    unchanged(idle=False)
    assert HOSTILE_UID not in node.archive
    # The same association goes on to store a good instance.
    good, uid = _dataset_of(slices[5])
    assert peer.store(1, CTImageStorage, uid, good, 2).status == 0x0000
    peer.release()
    peer.close()
    assert node.archive.get(uid).endswith(good)


def test_file_meta_elements_in_a_dataset_are_refused(node, slices,
                                                     unchanged):
    """A (0002,0010) at the head of the data set read as the file meta's
    transfer syntax: the instance was acknowledged, filed as JPEG
    Baseline against the negotiated syntax, and the element dropped from
    what a retrieve sent back. Group 0002 is no part of a data set
    (PS3.10 7.1)."""
    dataset, uid = _dataset_of(slices[1])
    syntax = b"1.2.840.10008.1.2.4.50"
    injected = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(syntax)) \
        + syntax + dataset
    peer = _established(node, ExplicitVRLittleEndian)
    answer = peer.store(1, CTImageStorage, uid, injected)
    assert 0xC000 <= answer.status <= 0xCFFF, answer
    unchanged(idle=False)
    assert uid not in node.archive
    assert peer.store(1, CTImageStorage, uid, dataset, 2).status == 0
    peer.release()
    peer.close()


def test_an_instance_of_another_sop_class_than_its_context_is_refused(
        node, slices, unchanged):
    """An MR instance (its command and its data set say so) on a CT
    context was stored: a message belongs to its context's abstract
    syntax (PS3.8 7.1.1.13)."""
    ds = pydicom.dcmread(slices[2])
    ds.SOPClassUID = MRImageStorage
    dataset = encode(ds, False, True)
    peer = _established(node, ExplicitVRLittleEndian)
    answer = peer.store(1, MRImageStorage, str(ds.SOPInstanceUID), dataset)
    peer.close()
    assert answer.status is not None and answer.status != 0, answer
    unchanged()
    assert str(ds.SOPInstanceUID) not in node.archive


def _reencoded(path: Path, syntax: str) -> tuple[bytes, str]:
    """The dataset of ``path`` encoded in ``syntax``."""
    ds = pydicom.dcmread(path)
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    return encode(ds, implicit, little), str(ds.SOPInstanceUID)


def test_big_endian_dataset_in_a_little_endian_context_is_refused(
        node, slices, unchanged):
    dataset, uid = _reencoded(slices[0], ExplicitVRBigEndian)
    peer = _established(node, ExplicitVRLittleEndian)
    answer = peer.store(1, CTImageStorage, uid, dataset)
    peer.close()
    assert answer.status is not None and answer.status != 0, answer
    unchanged()
    assert uid not in node.archive


@pytest.mark.parametrize("sent, claimed", [
    (ImplicitVRLittleEndian, ExplicitVRLittleEndian),
    (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    (ExplicitVRLittleEndian, JPEGBaseline8Bit),
])
def test_dataset_in_another_vr_encoding_is_kept_exactly_or_refused(
        node, slices, sent, claimed):
    """A dataset whose VR encoding is not its context's is read the way
    pydicom reads files (the first element's VR bytes decide): when that
    reads it, it is kept byte for byte and reads back as sent; when it
    does not, it is refused and nothing is kept."""
    dataset, uid = _reencoded(slices[1], sent)
    before = node.archive.stats()
    peer = _established(node, claimed)
    answer = peer.store(1, CTImageStorage, uid, dataset)
    peer.release()
    peer.close()
    if answer.status != 0x0000:
        assert 0xA900 <= answer.status <= 0xCFFF, answer
        _wait_idle(node)
        assert node.archive.stats() == before
        return
    stored = node.archive.get(uid)
    assert stored.endswith(dataset)
    back = pydicom.dcmread(io.BytesIO(stored))
    assert back.SOPInstanceUID == uid
    assert back.PixelData == pydicom.dcmread(slices[1]).PixelData


# --- a good peer alongside a hostile one -----------------------------------

def test_good_peer_stores_while_a_hostile_one_holds_a_pdu_open(
        tmp_path, monkeypatch, slices):
    # A network timeout the good stores finish well inside, so that the
    # stalled peer is still holding its PDU open while they run.
    monkeypatch.setattr(node_module, "NETWORK_TIMEOUT", 30)
    with Archive(tmp_path / "store") as archive:
        node = Node(archive, port=0)
        node.start()
        try:
            stalled = _established(node)
            stalled.send(struct.pack(">BBI", P_DATA_TF, 0, 1 << 20)
                         + b"\0" * 100)
            started = time.monotonic()
            for path in slices[:3]:
                _good_store(node, path)
            assert time.monotonic() - started < 30
            assert node._server.active_associations  # still stalled
            stalled.close()
        finally:
            node.stop(grace=0.5)


@pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="no DCMTK")
def test_storescu_stores_while_hostile_peers_connect(node, slices):
    stop = threading.Event()

    def hostile() -> None:
        while not stop.is_set():
            peer = RawPeer(node.port)
            try:
                peer.send(struct.pack(">BBI", A_ASSOCIATE_RQ, 0, 0xFFFFFFFF)
                          + b"\xff" * 1024)
                peer.answer()
            except OSError:
                pass
            finally:
                peer.close()

    threads = [threading.Thread(target=hostile) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        result = subprocess.run(
            [dcmtk_tool("storescu"), "-aec", "PACSSTORE", "127.0.0.1",
             str(node.port), *map(str, slices)],
            capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(PATIENCE)
    assert result.returncode == 0, result.stderr
    for path in slices:
        dataset, uid = _dataset_of(path)
        assert node.archive.get(uid).endswith(dataset)
