"""The event handlers of the node: C-ECHO, C-STORE, and socket setup.

The C-STORE handler hands the dataset bytes to the archive exactly as
they came off the wire, never decoding them into a pydicom Dataset: that
keeps the stored bytes identical to the sent ones and spares the cost of
a full decode. It answers only after ``Archive.store_received`` returns,
which happens once the instance is durable, so a success status always
means the instance survives a crash. Failures become DIMSE statuses here,
and are logged here, once.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.events import Event

from pacsstore.errors import NotStorableError, PacsstoreError
from pacsstore.net.status import failure_status, success_status

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
    per second.
    """
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _bind_first(event.assoc, evt.EVT_DIMSE_RECV, handle_dimse_recv)


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


class StoreHandler:
    """The EVT_C_STORE handler, bound to one archive."""

    def __init__(self, archive: ReceivingArchive,
                 counters: ReceiveCounters) -> None:
        self.archive = archive
        self.counters = counters

    def __call__(self, event: Event) -> Dataset:
        request = event.request
        data = event.encoded_dataset(include_meta=False)
        syntax = str(event.context.transfer_syntax)
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        if sop_instance == MISSING_UID:
            return self._fail(NotStorableError(
                "the C-STORE request has no Affected SOP Instance UID"),
                "(no UID)", event)
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
