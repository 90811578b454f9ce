"""The node's association threads: the event-driven reactors that replace
pynetdicom's polling loops, and the fast path that runs the data transfer
phase of storage and C-FIND associations (its C-FIND exchange is tested in
test_net_fastfind.py).

Most tests run twice, once through the fast path and once through
pynetdicom's own data transfer phase (with the fast path refused), and
expect the same from both. The peer is written out byte by byte
(PS3.8 9.3) so that it can send what pynetdicom and DCMTK never would:
fragments cut anywhere, requests back to back, broken PDUs.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import struct
import threading
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC

import pacsstore.net.node as node_module
from pacsstore import Archive
from pacsstore.net import Node, fastpath
from pacsstore.net.reactor import (EventDrivenAssociation, EventDrivenDUL,
                                   WakingQueue, _waking, event_driven)
from pacsstore.parsing import read_header
from pacsstore.synthetic import write_ct_series

pytestmark = pytest.mark.network

VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"
# Seconds a test waits for the node before it fails; only bounds a hang.
PATIENCE = 20


# A peer, byte by byte ------------------------------------------------------

def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def associate_rq(contexts: list[tuple[int, str, list[str]]], *,
                 max_pdu: int = 0, calling: str = "RAWPEER") -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract, syntaxes in contexts:
        items += _item(0x20, bytes((context_id, 0, 0, 0))
                       + _item(0x30, abstract.encode())
                       + b"".join(_item(0x40, s.encode()) for s in syntaxes))
    items += _item(0x50, _item(0x51, struct.pack(">I", max_pdu))
                   + _item(0x52, IMPLEMENTATION_UID.encode()))
    body = (struct.pack(">HH", 1, 0) + b"PACSSTORE".ljust(16)
            + calling.encode().ljust(16) + bytes(32) + items)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def pdata(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context ID, control header, value) PDVs."""
    body = b"".join(struct.pack(">IBB", len(value) + 2, context, control)
                    + value for context, control, value in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def command(**elements) -> bytes:
    """A command set, encoded by pynetdicom's encoder."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.CommandGroupLength = 0
    ds.CommandGroupLength = len(encode(ds, True, True)) - 12
    return encode(ds, True, True)


def store_rq(message_id: int, sop_instance: str,
             sop_class: str = CTImageStorage) -> bytes:
    return command(AffectedSOPClassUID=sop_class, CommandField=0x0001,
                   MessageID=message_id, Priority=0,
                   CommandDataSetType=0x0000,
                   AffectedSOPInstanceUID=sop_instance)


def echo_rq(message_id: int) -> bytes:
    return command(AffectedSOPClassUID=VERIFICATION, CommandField=0x0030,
                   MessageID=message_id, CommandDataSetType=0x0101)


COMMAND_LAST = 0x03
DATA = 0x00
DATA_LAST = 0x02


class RawPeer:
    """A requestor that sends bytes as given and reads PDUs whole."""

    def __init__(self, port: int, contexts: list[tuple[int, str, list[str]]],
                 *, max_pdu: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=PATIENCE)
        self.sock.sendall(associate_rq(contexts, max_pdu=max_pdu))
        kind, body = self.read_pdu()
        assert kind == 0x02, f"association not accepted (PDU {kind:#x})"
        ac = A_ASSOCIATE_AC()
        ac.decode(struct.pack(">BBI", kind, 0, len(body)) + body)
        self.accepted = {item.context_id for item in ac.presentation_context
                         if item.result == 0}

    def read_exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {count} bytes")
            data += chunk
        return data

    def read_pdu(self) -> tuple[int, bytes]:
        kind, _, length = struct.unpack(">BBI", self.read_exactly(6))
        return kind, self.read_exactly(length)

    def read_response(self) -> tuple[Dataset, list[bytes]]:
        """The next response's command set, and the PDUs it came in."""
        fragments, pdus = [], []
        while True:
            kind, body = self.read_pdu()
            assert kind == 0x04, f"expected P-DATA-TF, got PDU {kind:#x}"
            pdus.append(body)
            offset = 0
            while offset < len(body):
                length, _, control = struct.unpack_from(">IBB", body, offset)
                fragments.append(body[offset + 6:offset + 4 + length])
                offset += 4 + length
                if control == COMMAND_LAST:
                    raw = BytesIO(b"".join(fragments))
                    return decode(raw, True, True), pdus

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def release(self) -> None:
        self.send(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
        kind, _ = self.read_pdu()
        assert kind == 0x06
        self.sock.close()

    def wait_for_end(self) -> tuple[int, bytes] | None:
        """The A-ABORT the node sends as it ends the association, or
        None when it just closes the connection."""
        try:
            kind, body = self.read_pdu()
        except (EOFError, ConnectionResetError):
            return None
        assert kind == 0x07, f"expected A-ABORT, got PDU {kind:#x}"
        return kind, body

    def close(self) -> None:
        self.sock.close()


# Fixtures ------------------------------------------------------------------

@pytest.fixture(params=["fast", "pynetdicom"])
def path(request, monkeypatch) -> str:
    """Which data transfer phase serves the association."""
    if request.param == "pynetdicom":
        monkeypatch.setattr(fastpath, "eligible", lambda assoc: False)
    return request.param


@pytest.fixture
def archive(tmp_path):
    with Archive(tmp_path / "store") as opened:
        yield opened


@pytest.fixture
def node(archive, path):
    with Node(archive, port=0) as running:
        yield running


@pytest.fixture
def fast_node(archive):
    with Node(archive, port=0) as running:
        yield running


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("series")
    return write_ct_series(folder, 4, rows=64, columns=64, seed=11)


def dataset_of(path: Path) -> tuple[bytes, str]:
    """The dataset bytes of a Part 10 file and its SOP Instance UID."""
    data = path.read_bytes()
    header = read_header(data)
    return (data[header.result.dataset_offset:],
            str(header.attributes["SOPInstanceUID"]))


def stored_dataset(archive: Archive, uid: str) -> bytes:
    data = archive.get(uid)
    return data[read_header(data).result.dataset_offset:]


def storage_peer(node: Node, **options) -> RawPeer:
    peer = RawPeer(node.port, [(1, CTImageStorage, [ExplicitVRLittleEndian]),
                               (3, VERIFICATION, [ExplicitVRLittleEndian])],
                   **options)
    assert peer.accepted == {1, 3}
    return peer


def acceptor(node: Node):
    """The node's association (there is one) once it is established."""
    server = node._server
    for _ in range(PATIENCE * 100):
        found = [a for a in server.active_associations if a.is_established]
        if found:
            return found[0]
        threading.Event().wait(0.01)
    raise AssertionError("no established association")


def ended(assoc) -> bool:
    assoc.join(PATIENCE)
    assoc.dul.join(PATIENCE)
    return not assoc.is_alive() and not assoc.dul.is_alive()


# The reactors --------------------------------------------------------------

def test_reactor_converts_the_nodes_acceptors(node, path):
    peer = storage_peer(node)
    try:
        assoc = acceptor(node)
        assert isinstance(assoc, EventDrivenAssociation)
        assert isinstance(assoc.dul, EventDrivenDUL)
        assert assoc.dul.decided.wait(PATIENCE)
        assert assoc.dul.handed_over == (path == "fast")
    finally:
        peer.release()
    assert ended(assoc)


def test_reactor_leaves_requestors_and_running_associations_alone(node):
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(VERIFICATION)
    requestor = ae.associate("127.0.0.1", node.port, ae_title="PACSSTORE")
    try:
        assert requestor.is_established
        assert not event_driven(requestor)
        assert type(requestor).__name__ == "Association"
        assert not event_driven(acceptor(node))  # started already
    finally:
        requestor.release()


def test_reactor_waking_queue_keeps_queued_items_and_wakes_on_put():
    woken = []
    old: queue.Queue = queue.Queue()
    old.put("Evt5")
    new = _waking(old, lambda: woken.append(True))
    assert isinstance(new, WakingQueue) and not woken
    new.put("Evt6")
    assert woken == [True]
    assert [new.get_nowait(), new.get_nowait()] == ["Evt5", "Evt6"]


def test_reactor_answers_requests_sent_back_to_back(node):
    peer = storage_peer(node)
    try:
        peer.send(pdata((3, COMMAND_LAST, echo_rq(1)))
                  + pdata((3, COMMAND_LAST, echo_rq(2)))
                  + pdata((3, COMMAND_LAST, echo_rq(3))))
        answered = [peer.read_response()[0] for _ in range(3)]
        assert [r.MessageIDBeingRespondedTo for r in answered] == [1, 2, 3]
        assert all(r.Status == 0 and r.CommandField == 0x8030
                   for r in answered)
    finally:
        peer.release()


def test_reactor_serves_a_pynetdicom_peer_until_release(node, series,
                                                        archive):
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(VERIFICATION)
    scu = ae.associate("127.0.0.1", node.port, ae_title="PACSSTORE")
    assert scu.is_established
    assoc = acceptor(node)
    try:
        for path in series:
            assert scu.send_c_store(path).Status == 0x0000
        assert scu.send_c_echo().Status == 0x0000
    finally:
        scu.release()
    assert ended(assoc) and assoc.is_released
    for path in series:
        data, uid = dataset_of(path)
        assert stored_dataset(archive, uid) == data


def test_reactor_peer_abort_ends_the_association(node):
    aborted = threading.Event()
    peer = storage_peer(node)
    assoc = acceptor(node)
    assoc.bind(evt.EVT_ABORTED, lambda event: aborted.set())
    peer.send(struct.pack(">BBI", 0x07, 0, 4) + bytes((0, 0, 0, 0)))
    assert ended(assoc)
    assert assoc.is_aborted and aborted.is_set()
    peer.close()


def test_reactor_closed_connection_ends_the_association(node):
    peer = storage_peer(node)
    assoc = acceptor(node)
    peer.close()
    assert ended(assoc) and assoc.is_aborted


def test_reactor_network_timeout_still_fires(archive, path, monkeypatch):
    monkeypatch.setattr(node_module, "NETWORK_TIMEOUT", 0.5)
    with Node(archive, port=0) as running:
        peer = storage_peer(running)
        assoc = acceptor(running)
        ending = peer.wait_for_end()
        assert ending is None or ending[1][2] == 0x00  # service user
        assert ended(assoc) and assoc.is_aborted
        peer.close()


def test_reactor_artim_closes_after_release_when_the_peer_stays(
        archive, path, monkeypatch):
    make_ae = Node._make_ae

    def quick_artim(self):
        ae = make_ae(self)
        ae.acse_timeout = 0.5
        return ae

    monkeypatch.setattr(Node, "_make_ae", quick_artim)
    with Node(archive, port=0) as running:
        peer = storage_peer(running)
        assoc = acceptor(running)
        peer.send(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
        assert peer.read_pdu()[0] == 0x06
        assert peer.wait_for_end() is None  # the node closes
        assert ended(assoc) and assoc.is_released
        peer.close()


def test_reactor_node_stop_aborts_open_associations(archive, path):
    running = Node(archive, port=0)
    running.start()
    peer = storage_peer(running)
    assoc = acceptor(running)
    running.stop(grace=0)
    ending = peer.wait_for_end()
    assert ending is None or ending[1][2] == 0x00
    assert ended(assoc) and assoc.is_aborted
    peer.close()


# Storing through either path ----------------------------------------------

def test_fastpath_stores_fragments_cut_anywhere(node, series, archive):
    data, uid = dataset_of(series[0])
    request = store_rq(7, uid)
    peer = storage_peer(node)
    try:
        # The command in two PDUs; the data set in 1000-byte fragments,
        # three to a PDU, the first sharing a PDU with the command's end.
        pieces = [data[i:i + 1000] for i in range(0, len(data), 1000)]
        controls = [DATA] * (len(pieces) - 1) + [DATA_LAST]
        pdvs = list(zip([1] * len(pieces), controls, pieces))
        peer.send(pdata((1, 0x01, request[:10])))
        peer.send(pdata((1, COMMAND_LAST, request[10:]), pdvs[0]))
        for start in range(1, len(pdvs), 3):
            peer.send(pdata(*pdvs[start:start + 3]))
        response, _ = peer.read_response()
        assert response.Status == 0x0000
        assert response.MessageIDBeingRespondedTo == 7
        assert response.AffectedSOPInstanceUID == uid
    finally:
        peer.release()
    assert stored_dataset(archive, uid) == data


def exchange(node: Node, series: list[Path]) -> list[Dataset]:
    """Responses to a success, a conflict, a mismatched instance, a
    malformed data set, a request without instance UID and an echo."""
    data, uid = dataset_of(series[1])
    other, _ = dataset_of(series[2])
    changed = data[:-1] + bytes((data[-1] ^ 1,))
    peer = storage_peer(node)
    requests = [
        (store_rq(1, uid), data),
        (store_rq(2, uid), changed),                # conflict
        (store_rq(3, "1.2.3.4"), other),            # dataset mismatch
        (store_rq(4, "1.2.3.5"), b"\x08\x00\x18\x00UI\xff\x7f"),
        (command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0001,
                 MessageID=5, Priority=0, CommandDataSetType=0), other),
    ]
    responses = []
    try:
        for request, body in requests:
            peer.send(pdata((1, COMMAND_LAST, request), (1, DATA_LAST, body)))
            responses.append(peer.read_response()[0])
        peer.send(pdata((3, COMMAND_LAST, echo_rq(6))))
        responses.append(peer.read_response()[0])
    finally:
        peer.release()
    return responses


def test_fastpath_answers_as_pynetdicom_does(tmp_path, series, monkeypatch):
    answers = {}
    for name in ("fast", "pynetdicom"):
        if name == "pynetdicom":
            monkeypatch.setattr(fastpath, "eligible", lambda assoc: False)
        with Archive(tmp_path / name) as store, \
                Node(store, port=0) as running:
            answers[name] = [{elem.keyword: elem.value for elem in response}
                             for response in exchange(running, series)]
    assert answers["fast"] == answers["pynetdicom"]
    statuses = [answer["Status"] for answer in answers["fast"]]
    assert statuses[0] == 0x0000 and statuses[-1] == 0x0000
    assert statuses[1:5] == [0xC002, 0xA900, 0xC000, 0xC001]
    assert all(answer.get("ErrorComment") for answer in answers["fast"][1:5])


def test_fastpath_handler_failure_is_answered_not_dropped(tmp_path, series,
                                                          path):
    class Failing:
        def store_received(self, *args, **kwargs):
            raise RuntimeError("a bug")

    data, uid = dataset_of(series[0])
    with Node(Failing(), port=0) as running:
        peer = storage_peer(running)
        try:
            peer.send(pdata((1, COMMAND_LAST, store_rq(1, uid)),
                            (1, DATA_LAST, data)))
            assert peer.read_response()[0].Status == 0xC211
            peer.send(pdata((3, COMMAND_LAST, echo_rq(2))))
            assert peer.read_response()[0].Status == 0x0000
        finally:
            peer.release()


def test_fastpath_answers_only_once_the_store_returned(archive, series,
                                                      path):
    started, proceed = threading.Event(), threading.Event()

    class Slow:
        def store_received(self, *args, **kwargs):
            started.set()
            assert proceed.wait(PATIENCE)
            return archive.store_received(*args, **kwargs)

    data, uid = dataset_of(series[3])
    with Node(Slow(), port=0) as running:
        peer = storage_peer(running)
        try:
            peer.send(pdata((1, COMMAND_LAST, store_rq(1, uid)),
                            (1, DATA_LAST, data)))
            assert started.wait(PATIENCE)
            # Loopback delivers what was sent at once: an answer sent
            # before the store returned would be waiting here.
            readable, _, _ = select.select([peer.sock], [], [], 0)
            assert not readable
            proceed.set()
            assert peer.read_response()[0].Status == 0x0000
        finally:
            peer.release()
    assert stored_dataset(archive, uid) == data


# The fast path's own rules -------------------------------------------------

def test_fastpath_not_taken_with_retrieve_contexts(archive):
    # C-MOVE and C-GET run sub-operations, which stay with pynetdicom.
    with Node(archive, port=0) as running:
        peer = RawPeer(running.port, [
            (1, CTImageStorage, [ExplicitVRLittleEndian]),
            (3, STUDY_ROOT_FIND, [ExplicitVRLittleEndian]),
            (5, STUDY_ROOT_MOVE, [ExplicitVRLittleEndian])])
        try:
            assoc = acceptor(running)
            assert assoc.dul.decided.wait(PATIENCE)
            assert assoc.dul.handed_over is False
        finally:
            peer.release()


def test_fastpath_not_taken_while_pynetdicom_logs_debug(archive):
    log = logging.getLogger("pynetdicom")
    level = log.level
    log.setLevel(logging.DEBUG)
    try:
        with Node(archive, port=0) as running:
            peer = storage_peer(running)
            try:
                assoc = acceptor(running)
                assert assoc.dul.decided.wait(PATIENCE)
                assert assoc.dul.handed_over is False
            finally:
                peer.release()
    finally:
        log.setLevel(level)


def test_fastpath_not_taken_when_a_per_message_event_is_watched(archive):
    seen = []
    with Node(archive, port=0) as running:
        running._server.bind(evt.EVT_PDU_RECV, lambda event: seen.append(1))
        peer = storage_peer(running)
        try:
            assoc = acceptor(running)
            assert assoc.dul.decided.wait(PATIENCE)
            assert assoc.dul.handed_over is False
            peer.send(pdata((3, COMMAND_LAST, echo_rq(1))))
            assert peer.read_response()[0].Status == 0x0000
        finally:
            peer.release()
    assert seen


def test_fastpath_fragments_responses_to_the_peers_maximum(fast_node):
    peer = storage_peer(fast_node, max_pdu=40)
    try:
        peer.send(pdata((3, COMMAND_LAST, echo_rq(9))))
        response, pdus = peer.read_response()
        assert response.MessageIDBeingRespondedTo == 9
        assert len(pdus) > 1 and all(len(p) <= 40 for p in pdus)
    finally:
        peer.release()


def test_fastpath_aborts_requests_storage_does_not_define(node):
    peer = storage_peer(node)
    assoc = acceptor(node)
    find = command(AffectedSOPClassUID=CTImageStorage, CommandField=0x0020,
                   MessageID=4, Priority=0, CommandDataSetType=0x0000)
    peer.send(pdata((1, COMMAND_LAST, find), (1, DATA_LAST, b"")))
    ending = peer.wait_for_end()
    assert ending is not None and ending[1][2] == 0x00  # service user
    assert ended(assoc) and assoc.is_aborted
    peer.close()


BROKEN = {
    "unknown PDU type": (b"\x09\x00\x00\x00\x00\x04" + bytes(4), 0x01),
    "A-ASSOCIATE-RQ when established": (
        associate_rq([(1, CTImageStorage, [ExplicitVRLittleEndian])]), 0x02),
    "PDU past the announced maximum": (
        struct.pack(">BBI", 0x04, 0, node_module.MAX_PDU_SIZE + 1), 0x06),
    "PDV longer than its PDU": (
        struct.pack(">BBI", 0x04, 0, 8) + struct.pack(">IBB", 9, 1, 3)
        + b"\0\0", 0x06),
    "context never accepted": (pdata((5, COMMAND_LAST, echo_rq(1))), 0x06),
    "data set before its command": (pdata((1, DATA_LAST, b"\0\0")), 0x06),
    "command element past the end": (
        pdata((3, COMMAND_LAST, echo_rq(1)[:-3])), 0x06),
    "fragments on two contexts": (
        pdata((1, 0x01, echo_rq(1)[:8]), (3, COMMAND_LAST, echo_rq(1)[8:])),
        0x06),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_fastpath_aborts_on_broken_input(fast_node, case):
    node = fast_node
    data, reason = BROKEN[case]
    peer = storage_peer(node)
    assoc = acceptor(node)
    assert assoc.dul.decided.wait(PATIENCE) and assoc.dul.handed_over
    peer.send(data)
    ending = peer.wait_for_end()
    assert ending is not None, "closed without an A-ABORT"
    assert ending[1][2:] == bytes((0x02, reason))  # service provider
    assert ended(assoc) and assoc.is_aborted
    peer.close()
    after = storage_peer(node)  # the node goes on
    after.send(pdata((3, COMMAND_LAST, echo_rq(1))))
    assert after.read_response()[0].Status == 0x0000
    after.release()


def test_fastpath_decode_command_checks_every_length():
    good = echo_rq(3)
    parsed = fastpath.decode_command(good)
    assert (parsed.field, parsed.message_id, parsed.has_data_set) == \
        (0x0030, 3, False)
    assert parsed.affected_sop_class == VERIFICATION
    boundaries, offset = [], 0
    while offset < len(good):
        _, element, length = struct.unpack_from("<HHI", good, offset)
        offset += 8 + length
        boundaries.append((offset, element))
    has_field = {end: any(e == 0x0100 for stop, e in boundaries
                          if stop <= end) for end, _ in boundaries}
    for cut in range(len(good)):
        if has_field.get(cut):
            assert fastpath.decode_command(good[:cut]).field == 0x0030
        else:
            with pytest.raises(fastpath.ProtocolError):
                fastpath.decode_command(good[:cut])


def test_fastpath_encode_command_reads_back_with_pydicom():
    raw = fastpath.encode_command([
        (0x0002, "UI", CTImageStorage), (0x0100, "US", 0x8001),
        (0x0120, "US", 12), (0x0800, "US", 0x0101), (0x0900, "US", 0xC000),
        (0x0901, "AT", [0x00100010]), (0x0902, "LO", "odd"),
        (0x1000, "UI", "1.2.3")])
    ds = decode(BytesIO(raw), True, True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.AffectedSOPClassUID == CTImageStorage
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo) == (0x8001, 12)
    assert ds.Status == 0xC000 and ds.OffendingElement == 0x00100010
    assert ds.ErrorComment == "odd" and ds.AffectedSOPInstanceUID == "1.2.3"
