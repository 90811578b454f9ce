"""C-FIND on the node's lean data transfer loop (net/fastpath_find.py).

The answers must be those of pynetdicom's own Query/Retrieve service
class, response for response; the cases here are the ones only a peer
written byte by byte can make: a C-CANCEL already waiting behind its
request, another request sent before the first was answered, a small
maximum PDU, a C-STORE on a C-FIND context. The DCMTK and pynetdicom
clients of test_net_find.py go through the same loop, since they
negotiate C-FIND alone.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dsutils import decode, encode

from pacsstore import Archive
from pacsstore.net import Node, fastpath
from qr_support import (FIND, PATIENTS, fill, identifier, qr_association,
                        study_uid)
from test_net_reactor import (COMMAND_LAST, DATA_LAST, PATIENCE, RawPeer,
                              acceptor, command, echo_rq, ended, pdata,
                              store_rq)

pytestmark = pytest.mark.network

STUDY_ROOT_FIND = FIND["study"]
VERIFICATION = "1.2.840.10008.1.1"
CONTEXTS = [(1, STUDY_ROOT_FIND, [ExplicitVRLittleEndian]),
            (3, VERIFICATION, [ExplicitVRLittleEndian])]

# Requests of every kind of answer: matches at each level, none, refused.
QUERIES = [
    ("study", identifier("STUDY", PatientName="Sm*", StudyDate="",
                         StudyInstanceUID="", ModalitiesInStudy="",
                         NumberOfStudyRelatedInstances="")),
    ("study", identifier("SERIES",
                         StudyInstanceUID=study_uid(PATIENTS[0].studies[0]),
                         Modality="", SeriesInstanceUID="",
                         SeriesNumber="")),
    ("patient", identifier("PATIENT", PatientID="PAT-00?", PatientName="",
                           NumberOfPatientRelatedStudies="")),
    ("study", identifier("STUDY", PatientName="Nobody^At^All")),
    ("study", identifier("PATIENT", PatientID="")),   # not in Study Root
]


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    path = tmp_path_factory.mktemp("fastfind") / "store"
    with Archive(path) as archive:
        fill(archive)
    return path


@pytest.fixture
def node(filled):
    with Archive(filled) as archive, Node(archive, port=0) as running:
        yield running


def handed_over(assoc) -> bool:
    """Whether the fast path serves ``assoc``, once that is decided."""
    assert assoc.dul.decided.wait(PATIENCE)
    return assoc.dul.handed_over


def find_rq(message_id: int, query) -> tuple[bytes, bytes]:
    """A C-FIND-RQ command set and its identifier, explicit VR LE."""
    return (command(AffectedSOPClassUID=STUDY_ROOT_FIND, CommandField=0x0020,
                    MessageID=message_id, Priority=0,
                    CommandDataSetType=0x0000),
            encode(query, False, True))


def cancel_rq(message_id: int) -> bytes:
    return command(CommandField=0x0FFF, MessageIDBeingRespondedTo=message_id,
                   CommandDataSetType=0x0101)


def read_message(peer: RawPeer):
    """The next message: its command set, its data set (decoded, or None)
    and the lengths of the P-DATA-TF variable fields it came in, which a
    maximum length bounds (PS3.8 D.1)."""
    parts = {True: [], False: []}
    lengths = []
    done_command = False
    while True:
        kind, body = peer.read_pdu()
        assert kind == 0x04, f"expected P-DATA-TF, got PDU {kind:#x}"
        lengths.append(len(body))
        offset = 0
        while offset < len(body):
            length = int.from_bytes(body[offset:offset + 4], "big")
            control = body[offset + 5]
            parts[bool(control & 1)].append(body[offset + 6:offset + 4
                                                 + length])
            offset += 4 + length
            if control == COMMAND_LAST:
                done_command = True
                cmd = decode(BytesIO(b"".join(parts[True])), True, True)
                if cmd.CommandDataSetType == 0x0101:
                    return cmd, None, lengths
            elif control == DATA_LAST and done_command:
                data = decode(BytesIO(b"".join(parts[False])), False, True)
                return cmd, data, lengths


def responses_until_final(peer: RawPeer):
    answers = []
    while True:
        cmd, data, _ = read_message(peer)
        answers.append((cmd.Status, data))
        if cmd.Status not in (0xFF00, 0xFF01):
            return answers


def answers_through(node: Node, path: str) -> list:
    """The responses to each of QUERIES over one pynetdicom association,
    checking whether the node's fast path served it."""
    sop_classes = sorted({FIND[model] for model, _ in QUERIES})
    assoc = qr_association(node, sop_classes)
    try:
        assert handed_over(acceptor(node)) is (path == "fast")
        answers = []
        for model, query in QUERIES:
            answers.append([(
                {e.keyword: e.value for e in status},
                None if ident is None else
                {e.keyword: str(e.value) for e in ident})
                for status, ident in assoc.send_c_find(query, FIND[model])])
    finally:
        assoc.release()
    return answers


def test_fastfind_answers_as_pynetdicom_does(filled, monkeypatch):
    answers = {}
    for path in ("fast", "pynetdicom"):
        if path == "pynetdicom":
            monkeypatch.setattr(fastpath, "eligible", lambda assoc: False)
        with Archive(filled) as archive, Node(archive, port=0) as running:
            answers[path] = answers_through(running, path)
    assert answers["fast"] == answers["pynetdicom"]
    statuses = [[status["Status"] for status, _ in responses]
                for responses in answers["fast"]]
    assert all(s[-1] == 0x0000 for s in statuses[:4])
    assert all(len(s) >= 2 for s in statuses[:3])  # matches at each level
    assert statuses[3] == [0x0000]                 # no match
    assert statuses[4] == [0xA900]                 # PATIENT in Study Root
    names = {ident["PatientName"] for _, ident in answers["fast"][0]
             if ident}
    assert names == {"Smith^Anna"}


def test_fastfind_cancel_waiting_behind_its_request(node):
    peer = RawPeer(node.port, CONTEXTS)
    try:
        assert handed_over(acceptor(node))
        rq, query = find_rq(7, identifier("STUDY", PatientID="PAT-00*",
                                          StudyInstanceUID=""))
        # Request and cancel in one write: the cancel is there before
        # the first match is answered.
        peer.send(pdata((1, COMMAND_LAST, rq), (1, DATA_LAST, query))
                  + pdata((1, COMMAND_LAST, cancel_rq(7))))
        answers = responses_until_final(peer)
        assert answers[-1][0] == 0xFE00
        assert len(answers) == 1  # no match went out after the cancel
        peer.send(pdata((3, COMMAND_LAST, echo_rq(8))))
        assert read_message(peer)[0].Status == 0x0000
    finally:
        peer.release()


def test_fastfind_cancel_of_another_message_cancels_nothing(node):
    peer = RawPeer(node.port, CONTEXTS)
    try:
        rq, query = find_rq(7, identifier("STUDY", PatientID="PAT-00*",
                                          StudyInstanceUID=""))
        peer.send(pdata((1, COMMAND_LAST, rq), (1, DATA_LAST, query))
                  + pdata((1, COMMAND_LAST, cancel_rq(99))))
        answers = responses_until_final(peer)
        assert answers[-1][0] == 0x0000
        assert len(answers) == 5  # four studies, then success
    finally:
        peer.release()


def test_fastfind_request_sent_early_is_answered_after(node):
    # Without asynchronous operations the peer should wait; a peer that
    # does not still gets every answer, in order.
    peer = RawPeer(node.port, CONTEXTS)
    try:
        rq, query = find_rq(1, identifier("STUDY", PatientID="PAT-001",
                                          StudyInstanceUID=""))
        peer.send(pdata((1, COMMAND_LAST, rq), (1, DATA_LAST, query))
                  + pdata((3, COMMAND_LAST, echo_rq(2))))
        answers = responses_until_final(peer)
        assert [s for s, _ in answers] == [0xFF00] * (len(answers) - 1) \
            + [0x0000]
        assert len(answers) >= 2
        echo, _, _ = read_message(peer)
        assert echo.CommandField == 0x8030 and echo.Status == 0x0000
        assert echo.MessageIDBeingRespondedTo == 2
    finally:
        peer.release()


def test_fastfind_fragments_identifiers_to_the_peers_maximum(node):
    peer = RawPeer(node.port, CONTEXTS, max_pdu=64)
    try:
        rq, query = find_rq(3, identifier(
            "STUDY", PatientID="PAT-001", PatientName="",
            StudyDescription="", StudyInstanceUID=""))
        peer.send(pdata((1, COMMAND_LAST, rq), (1, DATA_LAST, query)))
        cmd, data, lengths = read_message(peer)
        assert cmd.Status == 0xFF00
        assert data.PatientID == "PAT-001" and data.StudyInstanceUID
        assert len(lengths) > 2 and max(lengths) <= 64
        assert responses_until_final(peer)[-1][0] == 0x0000
    finally:
        peer.release()


def test_fastfind_store_on_a_find_context_is_aborted(node):
    peer = RawPeer(node.port, CONTEXTS)
    assoc = acceptor(node)
    assert handed_over(assoc)
    peer.send(pdata((1, COMMAND_LAST, store_rq(1, "1.2.3.4")),
                    (1, DATA_LAST, b"")))
    ending = peer.wait_for_end()
    assert ending is not None and ending[1][2] == 0x00  # service user
    assert ended(assoc) and assoc.is_aborted
    peer.close()


@pytest.mark.parametrize("identifier_bytes", [
    b"\x10\x00\x10\x00PN\xff\x7fDOE",            # a length past the end
    bytes(range(256)) * 3,                         # noise
])
def test_fastfind_undecodable_identifier_is_refused(node, identifier_bytes):
    peer = RawPeer(node.port, CONTEXTS)
    try:
        assert handed_over(acceptor(node))
        rq, _ = find_rq(5, identifier("STUDY"))
        peer.send(pdata((1, COMMAND_LAST, rq),
                        (1, DATA_LAST, identifier_bytes)))
        answers = responses_until_final(peer)
        assert len(answers) == 1
        assert 0xA900 <= answers[0][0] <= 0xCFFF  # a failure, no match
        peer.send(pdata((3, COMMAND_LAST, echo_rq(6))))
        assert read_message(peer)[0].Status == 0x0000  # it goes on
    finally:
        peer.release()


def _match() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "PAT-001"
    return ds


def _returns_a_list(event):
    return [(0xFF00, _match()), (0xFF00, _match())]


def _raises_at_once(event):
    raise RuntimeError("a handler bug")


def _raises_midway(event):
    yield 0xFF00, _match()
    raise RuntimeError("a handler bug")


def _unknown_status(event):
    yield 0xFF00, _match()
    yield 0x1234, None


def _warning_then_more(event):
    yield 0xB001, None
    yield 0xFF00, _match()


def _unencodable(event):
    yield 0xFF00, "not a dataset"


@pytest.mark.parametrize("handler", [
    _returns_a_list, _raises_at_once, _raises_midway, _unknown_status,
    _warning_then_more, _unencodable], ids=lambda h: h.__name__)
def test_fastfind_handler_outcomes_answer_as_pynetdicom(filled, monkeypatch,
                                                        handler):
    statuses = {}
    for path in ("fast", "pynetdicom"):
        if path == "pynetdicom":
            monkeypatch.setattr(fastpath, "eligible", lambda assoc: False)
        with Archive(filled) as archive, Node(archive, port=0) as running:
            running._server.bind(evt.EVT_C_FIND, handler)
            assoc = qr_association(running, [STUDY_ROOT_FIND])
            try:
                assert handed_over(acceptor(running)) is (path == "fast")
                statuses[path] = [
                    (status.Status, None if ident is None
                     else ident.PatientID)
                    for status, ident in assoc.send_c_find(
                        identifier("STUDY", PatientID=""),
                        STUDY_ROOT_FIND)]
            finally:
                assoc.release()
    assert statuses["fast"] == statuses["pynetdicom"]
    assert statuses["fast"]  # a final response always came
