"""Storage Commitment Push Model SCP: the N-ACTION is answered at once,
the verdict comes as an N-EVENT-REPORT, on the request's association
while the requester keeps it open and on a new association (pacsstore
in the SCP role) once it has released; missing, damaged and misfiled
instances fail with the Failure Reason PS3.4 J.3.3 gives them."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import AE, evt

from pacsstore import Archive
from pacsstore.errors import NotFoundError
from pacsstore.net.commitment import (COMMITMENT_SOP_CLASS,
                                      COMMITMENT_SOP_INSTANCE,
                                      CommitmentHandler,
                                      CommitmentRequestError, Reference,
                                      Transaction, commitment_handlers,
                                      event_report, failure_reason,
                                      read_request)
from pacsstore.synthetic import write_ct_series

pytestmark = pytest.mark.network

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
REQUESTER = "MODALITY"
NODE = "PACSSTORE"
REPORT_WAIT = 20.0


@dataclass(frozen=True)
class Listening:
    host: str
    port: int


@dataclass(frozen=True)
class Stored:
    path: Path
    sop_class: str
    sop_instance: str


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("series"), 3, rows=32,
                           columns=32, seed=11)


def store_series(store: Path, series: list[Path]) -> list[Stored]:
    with Archive(store) as archive:
        results = [archive.store(path) for path in series]
    return [Stored(path, r.sop_class_uid, r.sop_instance_uid)
            for path, r in zip(series, results)]


def damage_frame(store: Path, sop_instance: str) -> None:
    """Flip a bit in the middle of the instance's frame block."""
    with Archive(store, readonly=True) as archive:
        name = archive.record(sop_instance)["blocks"][0]
        with archive._index.read() as txn:
            entry = archive._index.block(txn, bytes.fromhex(name))
    segment = store / "segments" / f"{entry.segment:08d}.seg"
    raw = bytearray(segment.read_bytes())
    raw[entry.offset + 64 + entry.stored_length // 2] ^= 0x40
    segment.write_bytes(bytes(raw))


class Reports:
    """N-EVENT-REPORTs a requester received."""

    def __init__(self) -> None:
        self.received: list[tuple[int, Dataset, object]] = []
        self.arrived = threading.Event()

    def __call__(self, event) -> tuple[int, None]:
        self.received.append((event.event_type, event.event_information,
                              event.assoc))
        self.arrived.set()
        return 0x0000, None

    def wait(self) -> tuple[int, Dataset, object]:
        assert self.arrived.wait(REPORT_WAIT), "no N-EVENT-REPORT arrived"
        return self.received[0]


@pytest.fixture
def peers() -> dict[str, Listening]:
    return {}


Starter = Callable[[Path], tuple[int, CommitmentHandler]]


@pytest.fixture
def scp(peers) -> Iterator[Starter]:
    """Start a commitment SCP on a store once the test filled it."""
    running = []

    def start(store: Path) -> tuple[int, CommitmentHandler]:
        archive = Archive(store)
        handlers = commitment_handlers(archive, peers)
        ae = AE(ae_title=NODE)
        ae.add_supported_context(COMMITMENT_SOP_CLASS, SYNTAXES)
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=handlers)
        running.append((archive, server, handlers[0][1]))
        return server.server_address[1], handlers[0][1]

    yield start
    for archive, server, handler in running:
        handler.wait(REPORT_WAIT)
        server.shutdown()
        archive.close()


def action_information(references: list[tuple[str, str]],
                       transaction_uid: str) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    return info


def requester(reports: Reports) -> tuple[AE, list]:
    ae = AE(ae_title=REQUESTER)
    ae.add_requested_context(COMMITMENT_SOP_CLASS, SYNTAXES)
    return ae, [(evt.EVT_N_EVENT_REPORT, reports)]


def request(port: int, info: Dataset | None, reports: Reports, *,
            keep_open: bool, action_type: int = 1) -> Dataset:
    """Send an N-ACTION; with ``keep_open`` wait for the report before
    releasing. Returns the N-ACTION response status."""
    ae, handlers = requester(reports)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE,
                         evt_handlers=handlers)
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(info, action_type,
                                        COMMITMENT_SOP_CLASS,
                                        COMMITMENT_SOP_INSTANCE)
        if keep_open and status.Status == 0x0000:
            reports.wait()
    finally:
        assoc.release()
    return status


@pytest.fixture
def listener(peers) -> Iterator[Reports]:
    """The requester's own SCP for reports on a new association."""
    reports = Reports()
    ae = AE(ae_title=REQUESTER)
    ae.add_supported_context(COMMITMENT_SOP_CLASS, SYNTAXES,
                             scu_role=False, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                                            reports)])
    peers[REQUESTER] = Listening("127.0.0.1", server.server_address[1])
    yield reports
    server.shutdown()


def uids(sequence) -> list[tuple[str, str]]:
    return [(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
            for item in sequence]


# Over the network ---------------------------------------------------------

def test_net_commitment_all_present_reported_on_the_same_association(
        tmp_path, series, scp, caplog):
    stored = store_series(tmp_path / "store", series)
    port, handler = scp(tmp_path / "store")
    transaction = generate_uid()
    wanted = [(s.sop_class, s.sop_instance) for s in stored]
    reports = Reports()

    with caplog.at_level(logging.INFO, "pacsstore.net.commitment"):
        status = request(port, action_information(wanted, transaction),
                         reports, keep_open=True)
        handler.wait(REPORT_WAIT)

    assert status.Status == 0x0000
    assert "3 committed, 0 failed, reported on the same association" in \
        caplog.text
    event_type, info, assoc = reports.wait()
    assert assoc is not None and assoc.acceptor.ae_title == NODE
    assert event_type == 1
    assert info.TransactionUID == transaction
    assert uids(info.ReferencedSOPSequence) == wanted
    assert "FailedSOPSequence" not in info
    assert info.RetrieveAETitle == NODE


def test_net_commitment_after_release_reported_on_a_new_association(
        tmp_path, series, scp, listener, caplog):
    stored = store_series(tmp_path / "store", series)
    port, handler = scp(tmp_path / "store")
    wanted = [(s.sop_class, s.sop_instance) for s in stored]

    with caplog.at_level(logging.INFO, "pacsstore.net.commitment"):
        status = request(port, action_information(wanted, generate_uid()),
                         Reports(), keep_open=False)
        handler.wait(REPORT_WAIT)

    assert status.Status == 0x0000
    assert "reported on a new association" in caplog.text
    event_type, info, assoc = listener.wait()
    assert event_type == 1
    assert uids(info.ReferencedSOPSequence) == wanted
    assert assoc.requestor.ae_title == NODE
    context = next(cx for cx in assoc.accepted_contexts
                   if cx.abstract_syntax == COMMITMENT_SOP_CLASS)
    assert context.as_scu  # the listener is the SCU: pacsstore the SCP


@pytest.mark.parametrize("keep_open", [True, False],
                         ids=["same-association", "new-association"])
def test_net_commitment_missing_damaged_and_misfiled_fail(
        tmp_path, series, scp, listener, keep_open):
    stored = store_series(tmp_path / "store", series)
    damage_frame(tmp_path / "store", stored[1].sop_instance)
    port, _ = scp(tmp_path / "store")
    missing = (stored[0].sop_class, generate_uid())
    misfiled = (MRImageStorage, stored[2].sop_instance)
    wanted = [(stored[0].sop_class, stored[0].sop_instance), missing,
              (stored[1].sop_class, stored[1].sop_instance), misfiled]
    reports = Reports()

    status = request(port, action_information(wanted, generate_uid()),
                     reports, keep_open=keep_open)

    assert status.Status == 0x0000
    event_type, info, _ = (reports if keep_open else listener).wait()
    assert event_type == 2
    assert uids(info.ReferencedSOPSequence) == wanted[:1]
    reasons = {item.ReferencedSOPInstanceUID: item.FailureReason
               for item in info.FailedSOPSequence}
    assert reasons == {missing[1]: 0x0112, stored[1].sop_instance: 0x0110,
                       stored[2].sop_instance: 0x0119}


def test_net_commitment_refuses_an_unknown_action_type(tmp_path, series,
                                                       scp):
    stored = store_series(tmp_path / "store", series[:1])
    port, handler = scp(tmp_path / "store")
    reports = Reports()
    info = action_information([(stored[0].sop_class,
                                stored[0].sop_instance)], generate_uid())

    status = request(port, info, reports, keep_open=False, action_type=2)

    assert status.Status == 0x0123
    handler.wait(REPORT_WAIT)
    assert reports.received == []


def test_net_commitment_refuses_a_request_without_transaction_uid(
        tmp_path, series, scp):
    store_series(tmp_path / "store", series[:1])
    port, _ = scp(tmp_path / "store")
    info = action_information([], generate_uid())
    del info.TransactionUID

    status = request(port, info, Reports(), keep_open=False)

    assert status.Status == 0x0115
    assert "Transaction UID" in status.ErrorComment


def test_net_commitment_requester_gone_and_unknown_is_logged(
        tmp_path, series, scp, caplog):
    stored = store_series(tmp_path / "store", series[:1])
    port, handler = scp(tmp_path / "store")
    info = action_information([(stored[0].sop_class,
                                stored[0].sop_instance)], generate_uid())

    with caplog.at_level(logging.WARNING, "pacsstore.net.commitment"):
        status = request(port, info, Reports(), keep_open=False)
        handler.wait(REPORT_WAIT)

    assert status.Status == 0x0000
    assert "peer table has no address for MODALITY" in caplog.text
    assert "the report was not delivered" in caplog.text


# Without the network ------------------------------------------------------

def test_net_commitment_read_request_refuses_items_without_uids():
    info = action_information([("1.2.3", "")], "1.2.3.4")
    with pytest.raises(CommitmentRequestError, match="item 1"):
        read_request(info)
    with pytest.raises(CommitmentRequestError, match="Referenced SOP"):
        read_request(action_information([], "1.2.3.4"))
    with pytest.raises(CommitmentRequestError, match="Action Information"):
        read_request(None)


def test_net_commitment_event_report_lists_both_sequences():
    good, bad = Reference("1.2.3", "1.2.3.1"), Reference("1.2.3", "1.2.3.2")
    transaction = Transaction("9.8.7", [good, bad], committed=[good],
                              failed=[(bad, 0x0112)])
    event_type, report = event_report(transaction, NODE)
    assert event_type == 2
    assert uids(report.ReferencedSOPSequence) == [("1.2.3", "1.2.3.1")]
    assert report.FailedSOPSequence[0].FailureReason == 0x0112
    assert report.TransactionUID == "9.8.7"


def test_net_commitment_failure_reason_reads_the_whole_instance(tmp_path,
                                                                series):
    stored = store_series(tmp_path / "store", series[:2])
    damage_frame(tmp_path / "store", stored[0].sop_instance)
    with Archive(tmp_path / "store", readonly=True) as archive:
        first, second = (Reference(s.sop_class, s.sop_instance)
                         for s in stored)
        assert failure_reason(archive, first) == 0x0110
        assert failure_reason(archive, second) is None


class FakeArchive:
    """An archive whose bytes read back differ from what it recorded."""

    def __init__(self, recorded: bytes, reads_back: bytes) -> None:
        self.entry = {"sop_class_uid": "1.2.3",
                      "sha256": hashlib.sha256(recorded).hexdigest()}
        self.reads_back = reads_back

    def record(self, uid: str) -> dict:
        if uid != "1.2.3.1":
            raise NotFoundError(f"no instance {uid}")
        return self.entry

    def open(self, uid: str) -> io.BytesIO:
        return io.BytesIO(self.reads_back)


def test_net_commitment_failure_reason_compares_the_whole_file_digest():
    instance = Reference("1.2.3", "1.2.3.1")
    assert failure_reason(FakeArchive(b"abc", b"abc"), instance) is None
    assert failure_reason(FakeArchive(b"abc", b"abd"), instance) == 0x0110
    assert failure_reason(FakeArchive(b"abc", b"abc"),
                          Reference("1.2.3", "1.2.3.2")) == 0x0112
    assert failure_reason(FakeArchive(b"abc", b"abc"),
                          Reference("1.2.4", "1.2.3.1")) == 0x0119
