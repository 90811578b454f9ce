"""The event handlers of the node: C-ECHO, C-STORE, access control at
association time, and socket setup (query/retrieve is in
:mod:`pacsstore.net.qr`).

The C-STORE handler hands the dataset bytes to the archive exactly as
they came off the wire, never decoding them into a pydicom Dataset: that
keeps the stored bytes identical to the sent ones and spares the cost of
a full decode. It answers only after ``Archive.store_received`` returns,
which happens once the instance is durable, so a success status always
means the instance survives a crash. Failures become DIMSE statuses here,
and are logged here, once.

A peer is offered, at association, only the presentation contexts of the
services it is permitted (:class:`PermittedContexts`): a refused context
costs the peer nothing and tells it before it sends anything. The one
way past that is a peer permitted to retrieve but not to store: it gets
the storage contexts for the SCP role of a C-GET, which pynetdicom also
grants for the default role when the peer proposes no role selection,
so the C-STORE handler checks the permission too.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.events import Event

from pacsstore.errors import NotStorableError, PacsstoreError
from pacsstore.net.access import ALL_SERVICES, PeerTable, Service
from pacsstore.net.contexts import service_of
from pacsstore.net.reactor import event_driven
from pacsstore.net.requested import no_delay
from pacsstore.net.status import (NOT_AUTHORIZED, SOP_CLASS_NOT_SUPPORTED,
                                  failure_status, refusal, success_status)

logger = logging.getLogger(__name__)


class ReceivingArchive(Protocol):
    """The part of :class:`pacsstore.Archive` the node uses."""

    def store_received(self, dataset: bytes | memoryview,
                       transfer_syntax: str, *, sop_class_uid: str,
                       sop_instance_uid: str,
                       source_ae: str | None = None) -> Any: ...


@dataclass
class ReceiveCounters:
    """What the node has received since it started, by store status."""

    statuses: Counter[str] = field(default_factory=Counter)
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock,
                                  repr=False)

    def record(self, status: str, size: int) -> None:
        with self._lock:
            self.statuses[status] += 1
            self.bytes_received += size

    def snapshot(self) -> tuple[dict[str, int], int]:
        with self._lock:
            return dict(self.statuses), self.bytes_received


def handle_conn_open(event: Event) -> None:
    """Turn off Nagle's algorithm on each accepted socket, and put the
    C-STORE command check in front of pynetdicom's own DIMSE handlers.

    A C-STORE response is a small PDU that the peer waits for before it
    sends the next instance; with Nagle on, it can sit for a delayed-ACK
    period (40 ms on Linux) and cap throughput at a few dozen instances
    per second. For the same reason the association's reactors are made
    to wait for work rather than poll (:mod:`pacsstore.net.reactor`).
    """
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        no_delay(sock)
        # An accepted socket has no timeout of its own (Python gives it
        # none): a peer that stops inside a PDU before its association
        # is established would hold the DUL thread in recv() for good.
        sock.settimeout(event.assoc.network_timeout)
    _bind_first(event.assoc, evt.EVT_DIMSE_RECV, handle_dimse_recv)
    _bound_pdu_reads(event.assoc.dul.socket)
    event_driven(event.assoc)


# The longest PDU the node reads: twice the P-DATA-TF maximum it
# proposes (node.MAX_PDU_SIZE, 1 MiB), far above the largest
# A-ASSOCIATE-RQ. pynetdicom reads a PDU whole, as long as its header
# says, before decoding it; unbounded, one peer claiming 4 GiB makes
# the node buffer whatever it sends, before any association exists.
MAX_PDU_READ = 2 << 20


def _bound_pdu_reads(transport: Any) -> None:
    """Make the DUL refuse to read a PDU body of ``MAX_PDU_READ`` bytes
    or more: the connection is closed at once, and the read returns
    nothing, which pynetdicom takes for the peer having closed it."""
    unbounded = transport.recv

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes <= MAX_PDU_READ:
            return unbounded(nr_bytes)
        logger.warning("closing the connection of a peer that sent a PDU "
                       "of %d bytes (the node reads at most %d)",
                       nr_bytes, MAX_PDU_READ)
        # pynetdicom's own close, minus the Evt17 that the short read
        # raises anyway; not connected, the socket is read no more.
        transport._shutdown_socket()
        transport._is_connected = False
        return bytearray()

    transport.recv = recv


def _bind_first(assoc: Any, event: Any, handler: Any) -> None:
    """Bind ``handler`` to ``event`` ahead of the handlers bound already:
    pynetdicom calls them in order and stops at the first that raises."""
    bound = [entry for entry in assoc.get_handlers(event)
             if entry[0] is not handler]
    for function, _ in bound:
        assoc.unbind(event, function)
    assoc.bind(event, handler)
    for function, args in bound:
        assoc.bind(event, function, args)


# Stands in for an absent or empty Affected SOP Instance UID; "0.0" is
# well formed (pynetdicom checks) and no registered root issues it.
MISSING_UID = "0.0"


def handle_dimse_recv(event: Event) -> None:
    """Mark a C-STORE-RQ whose Affected SOP Instance UID (0000,1000) is
    absent or empty with :data:`MISSING_UID`.

    pynetdicom takes such a request for no request at all: its logging
    handler fails on it with a traceback and the request is dropped
    unanswered, so the peer waits out its DIMSE timeout. Marked, the
    request reaches :class:`StoreHandler`, which refuses it with a status
    (whose Affected SOP Instance UID echoes the mark).
    """
    message = event.message
    if (isinstance(message, C_STORE_RQ)
            and not message.command_set.get("AffectedSOPInstanceUID")):
        message.command_set.AffectedSOPInstanceUID = MISSING_UID


def handle_echo(event: Event) -> int:
    return 0x0000


def handle_accepted(event: Event) -> None:
    requestor = event.assoc.requestor
    logger.info("association accepted from %s (%s:%s)",
                requestor.ae_title, requestor.address, requestor.port)


def handle_released(event: Event) -> None:
    logger.info("association with %s released", event.assoc.requestor.ae_title)


class PermittedContexts:
    """The EVT_REQUESTED handler: before pynetdicom negotiates, narrow
    the association's supported contexts to the calling AE's services."""

    def __init__(self, peers: PeerTable) -> None:
        self.peers = peers

    def __call__(self, event: Event) -> None:
        title = event.assoc.requestor.primitive.calling_ae_title
        permitted = self.peers.permissions(title)
        if permitted == ALL_SERVICES:
            return
        acceptor = event.assoc.acceptor
        acceptor.supported_contexts = [
            context for context in acceptor.supported_contexts
            if _permit(context, permitted)]
        logger.info("offering %s only %s", title, ", ".join(sorted(
            service.value for service in permitted)) or "verification")


def _permit(context: Any, permitted: frozenset[Service]) -> bool:
    """Whether to keep ``context`` (a per-association copy), narrowing a
    storage context to the C-GET role where only retrieve is permitted."""
    service = service_of(str(context.abstract_syntax))
    if service is None or service in permitted:
        return True
    if service is Service.STORE and Service.RETRIEVE in permitted:
        # Accept the peer as storage SCP (receiving a C-GET), refuse it
        # as storage SCU (PS3.7 D.3.3.4).
        context.scu_role, context.scp_role = False, True
        return True
    return False


class StoreHandler:
    """The EVT_C_STORE handler, bound to one archive."""

    def __init__(self, archive: ReceivingArchive,
                 counters: ReceiveCounters,
                 peers: PeerTable | None = None) -> None:
        self.archive = archive
        self.counters = counters
        self.peers = peers if peers is not None else PeerTable.open()

    def __call__(self, event: Event) -> Dataset:
        request = event.request
        peer = event.assoc.requestor.ae_title
        if not self.peers.permits(peer, Service.STORE):
            logger.warning("C-STORE from %s refused: not permitted to "
                           "store", peer)
            self.counters.record("refused", 0)
            return refusal(NOT_AUTHORIZED,
                           f"{peer} is not permitted to store here")
        data = event.encoded_dataset(include_meta=False)
        syntax = str(event.context.transfer_syntax)
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        if sop_instance == MISSING_UID:
            return self._fail(NotStorableError(
                "the C-STORE request has no Affected SOP Instance UID"),
                "(no UID)", event)
        context_class = str(event.context.abstract_syntax)
        if sop_class != context_class:
            # A message belongs to the abstract syntax of its context
            # (PS3.8 7.1.1.13): what was negotiated for one SOP class
            # (or for Verification, which has no C-STORE) carries no
            # other.
            reason = (f"the C-STORE names SOP class {sop_class} on a "
                      f"presentation context of {context_class}")
            logger.warning("C-STORE of %s from %s refused: %s",
                           sop_instance, peer, reason)
            self.counters.record("refused", 0)
            return refusal(SOP_CLASS_NOT_SUPPORTED, reason)
        try:
            result = self.archive.store_received(
                data, syntax, sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                source_ae=event.assoc.requestor.ae_title)
            if result.status == "rejected":
                raise NotStorableError(result.error or "rejected")
        except (PacsstoreError, OSError) as error:
            return self._fail(error, sop_instance, event)
        self.counters.record(str(result.status), len(data))
        return success_status()

    def _fail(self, error: BaseException, sop_instance: str,
              event: Event) -> Dataset:
        status = failure_status(error)
        logger.warning("C-STORE of %s from %s failed with 0x%04X: %s",
                       sop_instance, event.assoc.requestor.ae_title,
                       status.Status, error)
        self.counters.record("failed", 0)
        return status
