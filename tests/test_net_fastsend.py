"""The retrieve's lean send (pacsstore.net.fastsend): C-STORE requests
and pending C-GET / C-MOVE responses encoded here are byte for byte what
pynetdicom encodes, and plain C-STORE responses decoded here are what
pynetdicom makes of them; the DUL writes them in order and goes on to
the next at once, and a sender writes itself only with nothing queued;
the reactors the node requests wait exactly while a send holds them; a
C-GET or C-MOVE through the node takes this path, reading each instance
while the one before it is sent; and a destination that stops reading
fails the move rather than hanging it."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, MRImageStorage,
                         SecondaryCaptureImageStorage)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import (C_GET_RSP, C_MOVE_RSP, C_STORE_RQ,
                                       C_STORE_RSP, DIMSEMessage)
from pynetdicom.dimse_primitives import C_ECHO, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu import P_DATA_TF

import pacsstore.net.node as node_module
from corpus import CORPUS_ROOT
from pacsstore import Archive
from pacsstore._parse import parse
from pacsstore.net import fastsend, reactor, requested, retrieve
from pacsstore.net.fastsend import (EncodedPData, c_store_command,
                                    p_data_encoded, pending_response_command,
                                    plain_store_response, write_all)
from pacsstore.synthetic import write_multiframe
from qr_support import (GET, MOVE, NODE_AE, PATIENTS,
                        PYNETDICOM_DESTINATION, dataset_bytes, fill,
                        free_port, identifier, peer_table,
                        pynetdicom_destination, qr_association, run_node,
                        study_instance_uids, study_uid)

CT_FILE = CORPUS_ROOT / "pydicom" / "test_files" / "CT_small.dcm"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"


def _pynetdicom_pdus(primitive, context_id: int, max_pdu: int) -> bytes:
    """What pynetdicom's DIMSE provider writes for ``primitive``."""
    message = _message_for(primitive)
    message.primitive_to_message(primitive)
    return b"".join(P_DATA_TF(pdata).encode() for pdata in
                    message.encode_msg(context_id, max_pdu))


def _message_for(primitive) -> DIMSEMessage:
    if isinstance(primitive, C_STORE):
        return C_STORE_RQ()
    return C_GET_RSP() if isinstance(primitive, C_GET) else C_MOVE_RSP()


def _joined(buffers) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def _store_request(dataset: bytes, *, originator: bool) -> C_STORE:
    request = C_STORE()
    request.MessageID = 7
    request.Priority = 2
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = SOP_INSTANCE
    if originator:
        request.MoveOriginatorApplicationEntityTitle = "MOVESCU"
        request.MoveOriginatorMessageID = 3
    request.DataSet = BytesIO(dataset)
    return request


@pytest.mark.parametrize("max_pdu", [0, 100, 16384, 131072])
@pytest.mark.parametrize("originator", [False, True])
def test_a_c_store_request_is_encoded_as_pynetdicom_encodes_it(
        max_pdu, originator):
    data = CT_FILE.read_bytes()
    dataset = data[parse(data).dataset_offset:]
    command = c_store_command(
        sop_class_uid=CTImageStorage, sop_instance_uid=SOP_INSTANCE,
        message_id=7, priority=2,
        originator_ae="MOVESCU" if originator else None,
        originator_id=3 if originator else None)
    ours = _joined(p_data_encoded(5, command, dataset, max_pdu))
    theirs = _pynetdicom_pdus(_store_request(dataset, originator=originator),
                              5, max_pdu)
    assert ours == theirs


def _pending(kind, **counts) -> C_GET | C_MOVE:
    response = kind()
    response.MessageIDBeingRespondedTo = 11
    response.AffectedSOPClassUID = GET_MODEL
    response.Status = 0xFF00
    response.Identifier = None
    response.NumberOfRemainingSuboperations = counts.get("remaining", 398)
    response.NumberOfCompletedSuboperations = counts.get("completed", 1)
    response.NumberOfFailedSuboperations = counts.get("failed", 1)
    response.NumberOfWarningSuboperations = counts.get("warning", 0)
    return response


@pytest.mark.parametrize("kind", [C_GET, C_MOVE])
@pytest.mark.parametrize("max_pdu", [0, 16384])
def test_a_pending_retrieve_response_is_encoded_as_pynetdicom_encodes_it(
        kind, max_pdu):
    response = _pending(kind)
    command = pending_response_command(response)
    assert command is not None
    ours = _joined(p_data_encoded(1, command, None, max_pdu))
    assert ours == _pynetdicom_pdus(response, 1, max_pdu)


def _final_success():
    response = _pending(C_GET)
    response.Status = 0x0000
    return response


def _with_comment():
    response = _pending(C_MOVE)
    response.ErrorComment = "one failed"
    return response


def _without_counts():
    response = _pending(C_GET)
    response.NumberOfRemainingSuboperations = None
    return response


@pytest.mark.parametrize("response", [
    _final_success(), _with_comment(), _without_counts(), C_ECHO(),
], ids=["final", "comment", "no-counts", "echo"])
def test_other_messages_are_left_to_pynetdicom(response):
    assert pending_response_command(response) is None


def test_write_all_resumes_partial_writes_in_order():
    sender, receiver = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4000
    view = memoryview(payload)
    buffers = [b"head", view[:100_000], b"", view[100_000:], b"tail"]
    got = bytearray()

    def read() -> None:
        while chunk := receiver.recv(65536):
            got.extend(chunk)
    reading = threading.Thread(target=read)
    reading.start()
    write_all(sender, buffers)
    sender.close()
    reading.join(10)
    receiver.close()
    assert bytes(got) == b"head" + payload + b"tail"


# Responses decoded here ----------------------------------------------------

def _store_response(status: int, *, sop_class: bool = True,
                    comment: str | None = None) -> C_STORE:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 9
    if sop_class:
        response.AffectedSOPClassUID = CTImageStorage
    response.AffectedSOPInstanceUID = SOP_INSTANCE
    response.Status = status
    if comment:
        response.ErrorComment = comment
    return response


def _pynetdicom_decoded(response: C_STORE, context_id: int = 3):
    """The command set pynetdicom sends for ``response``, and the
    primitive pynetdicom makes of it on receipt."""
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    (pdata,) = message.encode_msg(context_id, 16384)
    (pdv_context, value), = pdata.presentation_data_value_list
    decoded = DIMSEMessage()
    assert decoded.decode_msg(pdata)
    return pdata, value, decoded.message_to_primitive()


_STATUS_KEYWORDS = ("MessageIDBeingRespondedTo", "AffectedSOPClassUID",
                    "AffectedSOPInstanceUID", "Status", "ErrorComment",
                    "OffendingElement", "_context_id")


@pytest.mark.parametrize("response", [
    _store_response(0x0000), _store_response(0xB000),
    _store_response(0xA700), _store_response(0x0000, sop_class=False),
], ids=["success", "warning", "refused", "no-class"])
def test_a_plain_store_response_is_decoded_as_pynetdicom_decodes_it(
        response):
    _pdata, value, theirs = _pynetdicom_decoded(response)
    ours = plain_store_response(3, memoryview(value)[1:])
    assert ours is not None
    for keyword in _STATUS_KEYWORDS:
        assert getattr(ours, keyword) == getattr(theirs, keyword), keyword
    assocs = Association(AE(), "requestor")
    assert assocs._check_received_status(ours) == \
        assocs._check_received_status(theirs)


def _command(*elements: tuple[int, bytes]) -> memoryview:
    body = b"".join(struct.pack("<HHI", 0, element, len(raw)) + raw
                    for element, raw in elements)
    return memoryview(struct.pack("<HHI", 0, 0, 4)
                      + struct.pack("<I", len(body)) + body)


_PLAIN = [(0x0002, CTImageStorage.encode() + b"\0"),
          (0x0100, struct.pack("<H", 0x8001)), (0x0120, struct.pack("<H", 9)),
          (0x0800, struct.pack("<H", 0x0101)), (0x0900, struct.pack("<H", 0)),
          (0x1000, SOP_INSTANCE.encode() + b"\0")]


def _with_group_length(command: memoryview, more: int) -> memoryview:
    raw = bytearray(command)
    struct.pack_into("<I", raw, 8, len(raw) - 12 + more)
    return memoryview(bytes(raw))


def _replaced(element: int, raw: bytes):
    return [(e, raw if e == element else r) for e, r in _PLAIN]


@pytest.mark.parametrize("command", [
    _command(*_PLAIN[:4], (0x0900, struct.pack("<H", 0xA700)),
             (0x0902, b"full"), _PLAIN[5]),
    _command(*_replaced(0x0800, struct.pack("<H", 0x0001))),
    _command(*_replaced(0x0100, struct.pack("<H", 0x8021))),
    _command(*_replaced(0x1000, b"1.02.3\0")),
    _command(*_replaced(0x1000, b"1." + b"2" * 70)),
    _command(*_replaced(0x0900, b"\0")),
    _command(_PLAIN[1], _PLAIN[0], *_PLAIN[2:]),
    _with_group_length(_command(*_PLAIN), 2),
    memoryview(bytes(_command(*_PLAIN))[:-3]),
], ids=["comment", "data-set", "not-store", "bad-uid", "long-uid",
        "short-status", "out-of-order", "wrong-group-length",
        "cut-short"])
def test_any_other_command_set_is_left_to_pynetdicom(command):
    assert plain_store_response(3, command) is None


@pytest.mark.parametrize("elements", [_PLAIN, _PLAIN[:5]],
                         ids=["whole", "no-instance-uid"])
def test_the_plain_command_set_itself_is_decoded(elements):
    decoded = plain_store_response(3, _command(*elements))
    assert decoded is not None
    assert (decoded.Status, decoded.MessageIDBeingRespondedTo) == (0, 9)
    assert decoded.AffectedSOPInstanceUID == \
        (SOP_INSTANCE if len(elements) == 6 else None)


# The DUL ---------------------------------------------------------------

class _Transport:
    """What the DUL writes an encoded message to: ``.socket``."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self._is_connected = True


@pytest.fixture
def dul_on_socketpair():
    assoc = Association(AE(), "requestor")
    dul = assoc.dul
    reactor.EventDrivenDUL.adopt(dul)
    ours, theirs = socket.socketpair()
    dul.socket = _Transport(ours)
    dul.state_machine.current_state = "Sta6"
    yield dul, theirs
    ours.close()
    theirs.close()
    dul._wake_read.close()
    dul._wake_write.close()


def _woken(dul) -> bool:
    dul._wake_read.setblocking(False)
    try:
        return bool(dul._wake_read.recv(4096))
    except BlockingIOError:
        return False


def test_the_dul_writes_an_encoded_message_and_wakes_for_the_next(
        dul_on_socketpair):
    """Writing queues no event for the state machine: with a second
    message queued, the loop must not go to sleep (it slept its whole
    wait limit, a tenth of a second a message, before this)."""
    dul, peer = dul_on_socketpair
    dul.to_provider_queue.put(EncodedPData([b"first"]))
    dul.to_provider_queue.put(EncodedPData([b"second"]))
    _woken(dul)  # the wake-ups of the two puts
    assert dul._process_recv_primitive()
    assert peer.recv(64) == b"first"
    assert _woken(dul)
    assert dul._process_recv_primitive()
    assert peer.recv(64) == b"second"
    assert not _woken(dul)
    assert not dul._process_recv_primitive()


def test_the_dul_drops_an_encoded_message_outside_data_transfer(
        dul_on_socketpair, caplog):
    dul, peer = dul_on_socketpair
    dul.state_machine.current_state = "Sta7"
    dul.to_provider_queue.put(EncodedPData([b"late"]))
    with caplog.at_level(logging.WARNING, logger="pynetdicom.dul"):
        assert dul._process_recv_primitive()
    assert "no longer in data transfer" in caplog.text
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(64)


def test_a_message_is_written_from_the_sender_only_with_nothing_queued(
        dul_on_socketpair):
    dul, peer = dul_on_socketpair
    assert dul.write_now([b"now"])
    assert peer.recv(64) == b"now"
    dul.to_provider_queue.put(EncodedPData([b"queued"]))
    assert not dul.write_now([b"overtaking"])  # it would overtake
    assert dul._process_recv_primitive()
    assert peer.recv(64) == b"queued"
    dul.state_machine.current_state = "Sta7"
    assert not dul.write_now([b"late"])


# The pause of a requested association's reactor ------------------------

class _ClearedOnPassing(threading.Event):
    """A checkpoint that a send clears just as the reactor passes it."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.passes = 0

    def wait(self, timeout=None):
        passed = super().wait(timeout)
        self.passes += 1
        if self.passes == 1:
            self.clear()
        return passed


def test_the_reactor_waits_again_for_a_checkpoint_cleared_as_it_passed():
    assoc = Association(AE(), "requestor")
    reactor.EventDrivenAssociation.adopt(assoc)
    assoc._reactor_checkpoint = _ClearedOnPassing()
    passing = threading.Thread(target=assoc._pass_checkpoint)
    passing.start()
    passing.join(0.5)
    assert passing.is_alive()  # held back: a send owns the queue now
    assert assoc._is_paused
    assoc._reactor_checkpoint.set()  # the send is done
    passing.join(5)
    assert not passing.is_alive()
    assert not assoc._is_paused


# Eligibility --------------------------------------------------------------

class _Assoc:
    def __init__(self, handlers=()) -> None:
        self.dul = type("Dul", (), {})()
        self.dul.sends_encoded = True
        self.dul.socket = _Transport(socket.socket())
        self._handlers = dict(handlers)

    def get_handlers(self, event):
        return [(h, None) for h in self._handlers.get(event, [])]


def test_eligible_with_pynetdicom_defaults_only():
    assoc = _Assoc()
    try:
        assert fastsend.eligible(assoc)
        assoc.dul.sends_encoded = False
        assert not fastsend.eligible(assoc)
    finally:
        assoc.dul.socket.socket.close()


def test_not_eligible_with_a_handler_of_sent_messages():
    assoc = _Assoc({evt.EVT_PDU_SENT: [lambda event: None]})
    try:
        assert not fastsend.eligible(assoc)
    finally:
        assoc.dul.socket.socket.close()


def test_not_eligible_with_pynetdicom_logging_at_debug():
    assoc = _Assoc()
    log = logging.getLogger("pynetdicom")
    level = log.level
    log.setLevel(logging.DEBUG)
    try:
        assert not fastsend.eligible(assoc)
    finally:
        log.setLevel(level)
        assoc.dul.socket.socket.close()


# Read-ahead ------------------------------------------------------------

class _Archive:
    def __init__(self, fail: str | None = None) -> None:
        self.read: list[str] = []
        self.fail = fail

    def get(self, uid: str) -> bytes:
        self.read.append(uid)
        if uid == self.fail:
            raise OSError(f"cannot read {uid}")
        return uid.encode()


def _instances(*sizes: int) -> list[retrieve.StoredInstance]:
    return [retrieve.StoredInstance(CTImageStorage, f"1.2.{n}",
                                    ExplicitVRLittleEndian, size)
            for n, size in enumerate(sizes)]


def test_read_ahead_reads_the_next_instance_while_one_is_handed_out():
    archive = _Archive()
    instances = _instances(10, 10, 10)
    handed = []
    for position, instance in enumerate(retrieve.read_ahead(archive,
                                                             instances)):
        handed.append(instance)
        if position + 1 < len(instances):
            assert instances[position + 1]._reading is not None
        assert instance.read_from(archive) == \
            str(instance.SOPInstanceUID).encode()
    assert handed == instances
    assert sorted(archive.read) == ["1.2.0", "1.2.1", "1.2.2"]


def test_read_ahead_leaves_a_large_instance_to_its_turn():
    archive = _Archive()
    instances = _instances(10, retrieve.READ_AHEAD_BELOW)
    reading = retrieve.read_ahead(archive, instances)
    next(reading)
    assert instances[1]._reading is None
    list(reading)


def test_a_failed_read_ahead_fails_that_instance_only():
    archive = _Archive(fail="1.2.1")
    instances = _instances(10, 10, 10)
    outcomes = []
    for instance in retrieve.read_ahead(archive, instances):
        try:
            outcomes.append(instance.read_from(archive))
        except OSError as error:
            outcomes.append(str(error))
    assert outcomes == [b"1.2.0", "cannot read 1.2.1", b"1.2.2"]


def test_read_ahead_stopped_early_leaves_nothing_running():
    archive = _Archive()
    reading = retrieve.read_ahead(archive, _instances(10, 10, 10))
    next(reading)
    reading.close()  # a C-CANCEL: the pool is shut down, its read done
    assert not [t for t in threading.enumerate()
                if t.name.startswith("pacsstore-read-ahead")]


# Through the node ---------------------------------------------------------

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
EVERY_CLASS = [(sop_class, UNCOMPRESSED) for sop_class in
               (CTImageStorage, MRImageStorage,
                SecondaryCaptureImageStorage)]
S1 = PATIENTS[0].studies[0]


@pytest.fixture
def lean_sends(monkeypatch):
    """Counts the C-STORE requests sent the lean way, and whether each
    association the node requested was made event-driven."""
    counted = {"sends": 0, "requested": [], "decoded": 0}
    send = fastsend.send_c_store
    adopt = requested.event_driven_requestor
    decode = fastsend.plain_store_response

    def counting_decode(*args):
        decoded = decode(*args)
        counted["decoded"] += decoded is not None
        return decoded
    monkeypatch.setattr(fastsend, "plain_store_response", counting_decode)

    def counting_send(*args, **kwargs):
        counted["sends"] += 1
        return send(*args, **kwargs)

    def recording_adopt(assoc):
        adopted = adopt(assoc)
        counted["requested"].append(adopted)
        counted.setdefault("associations", []).append(assoc)
        return adopted
    monkeypatch.setattr(fastsend, "send_c_store", counting_send)
    monkeypatch.setattr(requested, "event_driven_requestor",
                        recording_adopt)
    return counted


@pytest.fixture
def archive(tmp_path):
    with Archive(tmp_path / "store") as opened:
        fill(opened)
        yield opened


@pytest.mark.network
def test_a_c_move_sends_the_lean_way_byte_exact(archive, lean_sends):
    port = free_port()
    uids = study_instance_uids(S1)
    with run_node(archive, peer_table({PYNETDICOM_DESTINATION: port})) \
            as node, pynetdicom_destination(port, EVERY_CLASS) as received:
        assoc = qr_association(node, [MOVE["study"]])
        try:
            responses = list(assoc.send_c_move(
                identifier("STUDY", StudyInstanceUID=study_uid(S1)),
                PYNETDICOM_DESTINATION, MOVE["study"]))
        finally:
            assoc.release()
    assert responses[-1][0].Status == 0x0000
    assert lean_sends["sends"] == len(uids)
    assert lean_sends["decoded"] == len(uids)
    assert lean_sends["requested"] == [True]
    # Released before the final response: its wake-up sockets are closed
    # (pynetdicom's loop, which ran its DUL, cannot close them itself).
    (destination_assoc,) = lean_sends["associations"]
    assert destination_assoc.dul._wake_read.fileno() == -1
    assert destination_assoc.dul._wake_write.fileno() == -1
    assert set(received.datasets) == uids
    for uid in uids:
        assert received.datasets[uid] == dataset_bytes(archive.get(uid))


@pytest.mark.network
def test_a_c_get_sends_the_lean_way_byte_exact(archive, lean_sends, caplog):
    uids = study_instance_uids(S1)
    got: dict[str, bytes] = {}

    def on_store(event):
        got[str(event.request.AffectedSOPInstanceUID)] = \
            event.encoded_dataset(include_meta=False)
        return 0x0000
    caplog.set_level(logging.INFO, logger="pynetdicom._handlers")
    with run_node(archive, peer_table({})) as node:
        ae = AE(ae_title="QRSCU")
        ae.add_requested_context(GET["study"])
        # A context for each syntax, so that each instance can go in
        # the syntax it is stored in, unchanged.
        for sop_class, syntaxes in EVERY_CLASS:
            for syntax in syntaxes:
                ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate(
            "127.0.0.1", node.port, ae_title=NODE_AE,
            ext_neg=[build_role(c, scp_role=True) for c, _ in EVERY_CLASS],
            evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            responses = list(assoc.send_c_get(
                identifier("STUDY", StudyInstanceUID=study_uid(S1)),
                GET["study"]))
        finally:
            assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(uids)
    pending = [status for status, _ in responses[:-1]]
    assert [p.NumberOfRemainingSuboperations for p in pending] == \
        list(range(len(uids) - 1, -1, -1))
    assert lean_sends["sends"] == len(uids)
    assert lean_sends["decoded"] == len(uids)
    # pynetdicom's log line for each request sent, as pynetdicom logs it.
    sent = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("Sending Store Request")]
    assert len(sent) == len(uids)
    assert set(got) == uids
    for uid in uids:
        assert got[uid] == dataset_bytes(archive.get(uid))


@pytest.mark.network
def test_a_destination_that_stops_reading_fails_the_move_not_hangs_it(
        tmp_path, monkeypatch):
    """The sender writes to the destination itself now, so a destination
    that stops reading halfway through an instance must not hold it for
    good: the socket's timeout ends the write, and the move fails that
    instance and answers."""
    monkeypatch.setattr(node_module, "NETWORK_TIMEOUT", 2)
    monkeypatch.setattr(node_module, "DIMSE_TIMEOUT", 4)
    # Larger than the socket buffers of both ends together.
    path = write_multiframe(tmp_path / "large.dcm", 64)
    sop_class = str(dcmread(path, stop_before_pixels=True).SOPClassUID)
    study = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    gate = threading.Event()

    def stop_reading(event):
        if event.assoc.is_established:
            gate.wait(30)  # the DUL thread reads no more until then
    destination = AE(ae_title=PYNETDICOM_DESTINATION)
    destination.add_supported_context(sop_class, UNCOMPRESSED)
    port = free_port()
    server = destination.start_server(
        ("127.0.0.1", port), block=False,
        evt_handlers=[(evt.EVT_DATA_RECV, stop_reading),
                      (evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        with Archive(tmp_path / "store") as archive:
            archive.store(path)
            with run_node(archive,
                          peer_table({PYNETDICOM_DESTINATION: port})) as node:
                assoc = qr_association(node, [MOVE["study"]])
                try:
                    responses = list(assoc.send_c_move(
                        identifier("STUDY", StudyInstanceUID=study),
                        PYNETDICOM_DESTINATION, MOVE["study"]))
                finally:
                    assoc.release()
    finally:
        gate.set()
        server.shutdown()
    final = responses[-1][0]
    assert final.Status == 0xA702  # every sub-operation failed
    assert final.NumberOfFailedSuboperations == 1


def _study_destination(port: int, on_store, *, adjust=None):
    """A pynetdicom storage SCP for the test classes whose C-STORE
    handler is ``on_store``; ``adjust`` may change each response it
    sends."""
    ae = AE(ae_title=PYNETDICOM_DESTINATION)
    for sop_class, syntaxes in EVERY_CLASS:
        ae.add_supported_context(sop_class, syntaxes)
    handlers = [(evt.EVT_C_STORE, on_store)]
    if adjust is not None:
        def wrap(event):
            send = event.assoc.dimse.send_msg

            def adjusted(primitive, context_id):
                adjust(primitive)
                send(primitive, context_id)
            event.assoc.dimse.send_msg = adjusted
        handlers.append((evt.EVT_ACCEPTED, wrap))
    return ae.start_server(("127.0.0.1", port), block=False,
                           evt_handlers=handlers)


def _move_study(archive, port: int, *, client_timeout: float = 30):
    with run_node(archive, peer_table({PYNETDICOM_DESTINATION: port})) \
            as node:
        assoc = qr_association(node, [MOVE["study"]])
        assoc.dimse_timeout = client_timeout
        try:
            return list(assoc.send_c_move(
                identifier("STUDY", StudyInstanceUID=study_uid(S1)),
                PYNETDICOM_DESTINATION, MOVE["study"]))
        finally:
            assoc.release()


def _failed_uids(identifier_) -> set[str]:
    value = identifier_.FailedSOPInstanceUIDList
    return {value} if isinstance(value, str) else set(value)


@pytest.mark.network
def test_a_response_to_another_message_fails_the_sub_operation(archive):
    """pynetdicom takes any C-STORE response for the answer; a
    destination that answers with another Message ID has not said that
    this instance is stored."""
    def off_by_seven(primitive):
        if isinstance(primitive, C_STORE):
            primitive.MessageIDBeingRespondedTo = \
                (primitive.MessageIDBeingRespondedTo + 7) & 0xFFFF
    port = free_port()
    server = _study_destination(port, lambda event: 0x0000,
                                adjust=off_by_seven)
    try:
        responses = _move_study(archive, port)
    finally:
        server.shutdown()
    final, failed = responses[-1]
    assert final.Status == 0xA702  # every sub-operation failed
    assert _failed_uids(failed) == study_instance_uids(S1)


@pytest.mark.network
def test_a_destination_sending_garbage_fails_the_rest_at_once(
        archive, monkeypatch, caplog):
    """A PDU the node cannot decode aborts the destination association;
    the send waiting for its response must not wait out the DIMSE
    timeout (pynetdicom's abort does not wake it). Here that timeout is
    longer than the client waits for the move's answer."""
    monkeypatch.setattr(node_module, "DIMSE_TIMEOUT", 120)
    stores = []

    def garbage_on_the_second(event):
        stores.append(event)
        if len(stores) == 2:
            event.assoc.dul.socket.socket.sendall(
                b"\x04\x00\x00\x00\x00\x10garbagegarbage!!")
        return 0x0000
    port = free_port()
    server = _study_destination(port, garbage_on_the_second)
    caplog.set_level(logging.INFO)
    try:
        responses = _move_study(archive, port, client_timeout=20)
    finally:
        server.shutdown()
    # Each failure is said once, plainly; pynetdicom's loop is not left
    # to log an error for an empty status or a send on a dead association.
    assert "has no attribute 'Status'" not in caplog.text
    assert "must be established" not in caplog.text
    final, _failed = responses[-1]
    assert final.Status == 0xB000  # some completed, the rest failed
    assert final.NumberOfCompletedSuboperations >= 1
    assert final.NumberOfFailedSuboperations >= 1
    assert final.NumberOfCompletedSuboperations + \
        final.NumberOfFailedSuboperations == len(study_instance_uids(S1))
