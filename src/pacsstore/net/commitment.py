"""Storage Commitment Push Model SCP (PS3.4 Annex J).

A modality that sent images asks the archive, with an N-ACTION, to take
responsibility for a list of them. The archive answers the N-ACTION at
once and checks the list afterwards, in a thread of its own: an instance
is committed when the index has it under the SOP Class the requester
names and its stored bytes still reassemble to the whole-file digest
recorded when it was stored (every block is checked against its own
digest on the way). The verdict goes back as an N-EVENT-REPORT: Event
Type 1 when every instance is committed, 2 when some are not, each with
a Failure Reason (0x0112 no such object instance, 0x0119 class-instance
conflict, 0x0110 processing failure).

The report goes on the association that carried the request while the
requester keeps it open, otherwise on a new association to the host and
port the peer table gives for the requester's AE title. On that new
association pacsstore is the association requestor but the SCP of
Storage Commitment, so it proposes the SCP role (SCP/SCU Role Selection,
PS3.7 D.3.3.4).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_RELEASE

from pacsstore.errors import (ArchiveClosedError, NotFoundError,
                              PacsstoreError)
from pacsstore.net.identity import pacsstore_ae
from pacsstore.net.requested import OUTGOING_HANDLERS

logger = logging.getLogger(__name__)

COMMITMENT_SOP_CLASS = "1.2.840.10008.1.20.1"
# The well-known instance every request and report names (PS3.4 J.3.5).
COMMITMENT_SOP_INSTANCE = "1.2.840.10008.1.20.1.1"

REQUEST_STORAGE_COMMITMENT = 1  # the one Action Type ID (PS3.4 J.3.2)
ALL_COMMITTED = 1               # Event Type IDs (PS3.4 J.3.3)
SOME_FAILED = 2

# N-ACTION statuses (PS3.7 C).
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
INVALID_OBJECT_INSTANCE = 0x0117
CLASS_INSTANCE_CONFLICT = 0x0119
NO_SUCH_ACTION = 0x0123

# An SCU that wants the report on a new association releases as soon as
# the N-ACTION response arrives; one that wants it on this association
# keeps it open. Waiting this long after the response before looking
# tells the two apart, and keeps the report from crossing a release
# already on its way (pynetdicom and DCMTK requesters ignore requests
# once they have asked to release).
SETTLE_SECONDS = 0.5
# Seconds to wait for the N-EVENT-REPORT response; the association's own
# DIMSE timeout (the node's is 120 s) would hold a report that crossed a
# release that long before it goes out on a new association instead.
REPORT_TIMEOUT = 10.0
# Timeouts of the association the report opens to the requester.
CONNECT_TIMEOUT = 30.0
# Error Comment (0000,0902) is LO: at most 64 characters.
ERROR_COMMENT_MAX = 64
# Bytes read at a time to digest a stored instance.
DIGEST_CHUNK = 1 << 20


class Peer(Protocol):
    """Where a peer AE listens: an entry of the node's peer table
    (``None`` where the table does not know)."""

    @property
    def host(self) -> str | None: ...

    @property
    def port(self) -> int | None: ...


class CommittingArchive(Protocol):
    """The part of :class:`pacsstore.Archive` a commitment needs."""

    def record(self, sop_instance_uid: str) -> dict[str, Any]: ...

    def open(self, sop_instance_uid: str) -> BinaryIO: ...


class CommitmentRequestError(PacsstoreError, ValueError):
    """The N-ACTION's Action Information cannot be acted on."""


@dataclass(frozen=True)
class Reference:
    """One instance of a commitment request."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class Transaction:
    """A commitment request and, once checked, its verdict."""

    transaction_uid: str
    references: list[Reference]
    committed: list[Reference] = field(default_factory=list)
    failed: list[tuple[Reference, int]] = field(default_factory=list)


# The request ---------------------------------------------------------------

def read_request(information: Dataset | None) -> Transaction:
    """The Transaction UID and Referenced SOP Sequence of an N-ACTION
    (PS3.4 J.3.2.1); :class:`CommitmentRequestError` when either is missing."""
    if information is None:
        raise CommitmentRequestError("no Action Information")
    uid = str(information.get("TransactionUID") or "").strip()
    if not uid:
        raise CommitmentRequestError("no Transaction UID (0008,1195)")
    items = information.get("ReferencedSOPSequence") or []
    if not items:
        raise CommitmentRequestError("no Referenced SOP Sequence (0008,1199)")
    references = []
    for number, item in enumerate(items, 1):
        sop_class = str(item.get("ReferencedSOPClassUID") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID")
                           or "").strip()
        if not sop_class or not sop_instance:
            raise CommitmentRequestError(
                f"Referenced SOP item {number} lacks a SOP Class or "
                f"Instance UID")
        references.append(Reference(sop_class, sop_instance))
    return Transaction(uid, references)


# The verdict ---------------------------------------------------------------

def check(archive: CommittingArchive, transaction: Transaction) -> None:
    """Sort the referenced instances into committed and failed."""
    for reference in transaction.references:
        reason = failure_reason(archive, reference)
        if reason is None:
            transaction.committed.append(reference)
        else:
            transaction.failed.append((reference, reason))


def failure_reason(archive: CommittingArchive,
                   reference: Reference) -> int | None:
    """Why the archive cannot commit to ``reference``, or ``None``."""
    uid = reference.sop_instance_uid
    try:
        record = archive.record(uid)
        if record.get("sop_class_uid") != reference.sop_class_uid:
            return CLASS_INSTANCE_CONFLICT
        if _stored_digest(archive, uid) != record["sha256"]:
            logger.warning("instance %s no longer matches its digest", uid)
            return PROCESSING_FAILURE
    except NotFoundError:
        return NO_SUCH_OBJECT_INSTANCE
    except ArchiveClosedError:
        raise
    except (PacsstoreError, OSError) as error:  # CorruptStoreError mostly
        logger.warning("instance %s cannot be read back: %s", uid, error)
        return PROCESSING_FAILURE
    return None


def _stored_digest(archive: CommittingArchive, uid: str) -> str:
    """SHA-256 of the instance as it reads back, one chunk at a time: a
    large multi-frame object is checked in the memory of one chunk."""
    digest = hashlib.sha256()
    with archive.open(uid) as stream:
        while chunk := stream.read(DIGEST_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def event_report(transaction: Transaction,
                 retrieve_ae_title: str) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information of the N-EVENT-REPORT
    (PS3.4 J.3.3.1)."""
    report = Dataset()
    report.TransactionUID = transaction.transaction_uid
    report.RetrieveAETitle = retrieve_ae_title
    if transaction.committed:
        report.ReferencedSOPSequence = [
            _item(reference) for reference in transaction.committed]
    if not transaction.failed:
        return ALL_COMMITTED, report
    failed = []
    for reference, reason in transaction.failed:
        item = _item(reference)
        item.FailureReason = reason
        failed.append(item)
    report.FailedSOPSequence = failed
    return SOME_FAILED, report


def _item(reference: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = reference.sop_class_uid
    item.ReferencedSOPInstanceUID = reference.sop_instance_uid
    return item


# The report ----------------------------------------------------------------

def _delivered(status: Dataset) -> bool:
    """Whether the requester answered the report (any status: a failure
    status is the requester's to act on, not a reason to send again)."""
    return getattr(status, "Status", None) is not None


def report_on_association(assoc: Association, event_type: int,
                          report: Dataset) -> bool:
    """Send the report on ``assoc`` if the requester keeps it open;
    whether the requester answered it."""
    with _hold(assoc):
        if not _pause_reactor(assoc):
            return False
        try:
            if not assoc.is_established or _release_pending(assoc):
                return False
            return _send_report(assoc, event_type, report)
        except (RuntimeError, OSError, ValueError) as error:
            logger.info("storage commitment report not sent on the "
                        "request's association: %s", error)
            return False
        finally:
            _resume_reactor(assoc)


# One report at a time holds an association's reactor: a second one
# resuming it would end the first one's hold.
_HOLDS: weakref.WeakKeyDictionary[Association, threading.Lock] = \
    weakref.WeakKeyDictionary()
_HOLDS_LOCK = threading.Lock()


def _hold(assoc: Association) -> threading.Lock:
    with _HOLDS_LOCK:
        return _HOLDS.setdefault(assoc, threading.Lock())


def _send_report(assoc: Association, event_type: int,
                 report: Dataset) -> bool:
    saved, assoc.dimse_timeout = assoc.dimse_timeout, REPORT_TIMEOUT
    try:
        status, _ = assoc.send_n_event_report(
            report, event_type, COMMITMENT_SOP_CLASS,
            COMMITMENT_SOP_INSTANCE)
    finally:
        assoc.dimse_timeout = saved
    return _delivered(status)


def _pause_reactor(assoc: Association) -> bool:
    """Hold the association's reactor between two messages, as
    pynetdicom's own ``send_*`` methods do, but give up when the
    association ends instead of waiting for a pause that never comes: a
    reactor that processes a release exits without pausing, and
    ``send_n_event_report`` would wait for it forever."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + REPORT_TIMEOUT
    while not assoc._is_paused:
        if not assoc.is_alive() or time.monotonic() > deadline:
            _resume_reactor(assoc)
            return False
        time.sleep(0.001)
    return True


def _resume_reactor(assoc: Association) -> None:
    assoc._reactor_checkpoint.set()


def _release_pending(assoc: Association) -> bool:
    """Whether the requester's A-RELEASE request waits to be answered;
    peeked, not taken, so that the reactor still answers it."""
    primitive = assoc.dul.peek_next_pdu()
    return isinstance(primitive, A_RELEASE) and primitive.result is None


def report_on_new_association(peer: Peer, calling_ae_title: str,
                              called_ae_title: str, event_type: int,
                              report: Dataset) -> bool:
    """Open an association to the requester, proposing the SCP role of
    Storage Commitment, and send the report; whether it was answered."""
    ae = pacsstore_ae(calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = CONNECT_TIMEOUT
    ae.network_timeout = CONNECT_TIMEOUT
    ae.add_requested_context(COMMITMENT_SOP_CLASS,
                             [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    role = build_role(COMMITMENT_SOP_CLASS, scp_role=True)
    assoc = ae.associate(peer.host, peer.port, ae_title=called_ae_title,
                         ext_neg=[role], evt_handlers=OUTGOING_HANDLERS)
    if not assoc.is_established:
        logger.warning("storage commitment report: %s at %s:%s refused "
                       "the association", called_ae_title, peer.host,
                       peer.port)
        return False
    try:
        if not any(cx.abstract_syntax == COMMITMENT_SOP_CLASS and cx.as_scp
                   for cx in assoc.accepted_contexts):
            # A requester that ignores role selection (pynetdicom's
            # default) still takes the report: send it all the same.
            logger.info("storage commitment report: %s did not confirm "
                        "the SCP role", called_ae_title)
        return _send_report(assoc, event_type, report)
    finally:
        if assoc.is_established:
            assoc.release()


# The handler ---------------------------------------------------------------

class CommitmentHandler:
    """The EVT_N_ACTION handler: answers at once, reports from a thread.

    ``wait()`` returns once every report started so far is sent or given
    up; a stopping node and the tests use it.
    """

    def __init__(self, archive: CommittingArchive,
                 peers: Mapping[str, Peer]) -> None:
        self.archive = archive
        self.peers = peers
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> tuple[Dataset | int, None]:
        """Answer the N-ACTION (PS3.4 J.3.2) and start its check."""
        request = event.request
        if request.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            return _refusal(NO_SUCH_ACTION,
                            f"Action Type {request.ActionTypeID} unknown")
        if str(request.RequestedSOPInstanceUID) != COMMITMENT_SOP_INSTANCE:
            return _refusal(INVALID_OBJECT_INSTANCE,
                            f"SOP Instance must be {COMMITMENT_SOP_INSTANCE}")
        try:
            transaction = read_request(event.action_information)
        except ValueError as error:  # CommitmentRequestError, or pydicom's
            logger.warning("storage commitment request from %s refused: "
                           "%s", event.assoc.requestor.ae_title, error)
            return _refusal(INVALID_ARGUMENT_VALUE, str(error))
        self._start(event.assoc, transaction)
        return SUCCESS, None

    def _start(self, assoc: Association, transaction: Transaction) -> None:
        worker = threading.Thread(
            target=self._commit, args=(assoc, transaction, time.monotonic()),
            name=f"pacsstore-commitment-{transaction.transaction_uid}",
            daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(worker)
        worker.start()

    def wait(self, timeout: float | None = None) -> None:
        with self._lock:
            threads = list(self._threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            left = None if deadline is None else \
                max(0.0, deadline - time.monotonic())
            thread.join(left)

    def _commit(self, assoc: Association, transaction: Transaction,
                answered_at: float) -> None:
        requester = assoc.requestor.ae_title
        own_title = assoc.ae.ae_title
        try:
            check(self.archive, transaction)
        except ArchiveClosedError:
            # The node is stopping: no verdict rather than a wrong one;
            # the requester asks again.
            logger.warning("storage commitment %s from %s not checked: "
                           "the archive closed",
                           transaction.transaction_uid, requester)
            return
        event_type, report = event_report(transaction, own_title)
        time.sleep(max(0.0, answered_at + SETTLE_SECONDS - time.monotonic()))
        if report_on_association(assoc, event_type, report):
            where = "the same association"
        elif self._report_on_new(requester, own_title, event_type, report):
            where = "a new association"
        else:
            logger.warning("storage commitment %s for %s: the report was "
                           "not delivered", transaction.transaction_uid,
                           requester)
            return
        logger.info("storage commitment %s for %s: %d committed, %d "
                    "failed, reported on %s", transaction.transaction_uid,
                    requester, len(transaction.committed),
                    len(transaction.failed), where)

    def _report_on_new(self, requester: str, own_title: str,
                       event_type: int, report: Dataset) -> bool:
        peer = self.peers.get(requester.strip(" "))
        if peer is None or peer.host is None or peer.port is None:
            logger.warning("storage commitment report for %s: the request's "
                           "association did not take it and the peer "
                           "table has no address for %s", requester,
                           requester)
            return False
        try:
            return report_on_new_association(peer, own_title, requester,
                                             event_type, report)
        except (OSError, RuntimeError, ValueError) as error:
            logger.warning("storage commitment report for %s not sent: %s",
                           requester, error)
            return False


def _refusal(status: int, comment: str) -> tuple[Dataset, None]:
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment[:ERROR_COMMENT_MAX]
    return answer, None


def commitment_handlers(archive: CommittingArchive,
                        peers: Mapping[str, Peer]) -> list[tuple]:
    """The (event, handler) pairs a node binds to serve Storage
    Commitment Push Model as SCP over ``archive``; ``peers`` maps AE
    titles to where they listen, for reports on a new association."""
    return [(evt.EVT_N_ACTION, CommitmentHandler(archive, peers))]

