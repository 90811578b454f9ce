"""The DICOM node: a pynetdicom application entity in front of an archive.

The node accepts associations for C-ECHO, for C-STORE of every storage
SOP class in every transfer syntax it can keep (see
:mod:`pacsstore.net.contexts`), for C-FIND, C-MOVE and C-GET of the
Patient Root and Study Root models (:mod:`pacsstore.net.qr`), and for
Storage Commitment Push Model (:mod:`pacsstore.net.commitment`); several
associations at once, each served by its own thread; the archive's group
commit lets concurrent stores share one fsync. It binds to 127.0.0.1
unless told otherwise: exposing an archive to a network is a decision,
not a default.

Who may do what, and where a C-MOVE may send, is the peer table's
(:mod:`pacsstore.net.access`). Without one, every AE may do everything
and no AE is a move destination. With ``refuse_unknown``, an AE title
not in the table is refused at association (A-ASSOCIATE-RJ, rejected
permanent, calling AE title not recognized: PS3.8 7.1.1.9).
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Protocol

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from pacsstore.net.access import PeerTable
from pacsstore.net.commitment import (COMMITMENT_SOP_CLASS,
                                      CommittingArchive, commitment_handlers)
from pacsstore.net.contexts import (CheaplyCopiedContexts,
                                    query_retrieve_sop_classes,
                                    query_retrieve_transfer_syntaxes,
                                    register_storage_classes,
                                    storable_transfer_syntaxes,
                                    storage_sop_classes,
                                    verification_sop_class)
from pacsstore.net.identity import pacsstore_ae
from pacsstore.net.handlers import (PermittedContexts, ReceiveCounters,
                                    ReceivingArchive, StoreHandler,
                                    handle_accepted, handle_conn_open,
                                    handle_echo, handle_released)
from pacsstore.net.qr import (EarlyRefusals, FindHandler, GetHandler,
                              MoveHandler, handle_sop_extended)
from pacsstore.net.retrieve import ReadingArchive

logger = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "PACSSTORE"
DEFAULT_PORT = 11112
DEFAULT_HOST = "127.0.0.1"

# Largest PDU the node accepts. pynetdicom's default (16 KiB) splits a
# 512 x 512 CT slice into 32 PDUs; 1 MiB carries most slices in one, and
# DCMTK peers cap what they send at their own maximum anyway.
MAX_PDU_SIZE = 1024 * 1024

# Associations served at once; pynetdicom's default is 10, a busy
# department's modalities and workstations can exceed that.
MAX_ASSOCIATIONS = 32

# Seconds without traffic before an association or a DIMSE exchange is
# given up; large multi-frame objects over slow links need generous ones.
NETWORK_TIMEOUT = 120
DIMSE_TIMEOUT = 120

# Seconds a C-MOVE waits for its destination to take the connection; a
# destination that is down should fail the move, not hold it for the
# minutes a TCP connect can take.
CONNECT_TIMEOUT = 10

# Seconds open associations get to finish when the node stops.
STOP_GRACE = 5.0


class NodeArchive(ReceivingArchive, ReadingArchive, CommittingArchive,
                  Protocol):
    """What the node needs of :class:`pacsstore.Archive`."""


class Node:
    """A storage and query/retrieve SCP serving ``archive``; start it,
    then stop it.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    ``port=0`` binds a free port; :attr:`port` tells which. ``peers``
    says who may store, query and retrieve, and where C-MOVE may send;
    without it, everyone may do everything and there is no destination.
    """

    def __init__(self, archive: NodeArchive, *,
                 ae_title: str = DEFAULT_AE_TITLE, port: int = DEFAULT_PORT,
                 host: str = DEFAULT_HOST,
                 peers: PeerTable | None = None) -> None:
        check_ae_title(ae_title)
        self.archive = archive
        self.ae_title = ae_title
        self.host = host
        self.requested_port = port
        self.peers = peers if peers is not None else PeerTable.open()
        self.counters = ReceiveCounters()
        self._commitment = commitment_handlers(archive,
                                               self.peers.addresses())
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the node is not running")
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            ae = self._make_ae()
            self._server = ae.start_server(
                (self.host, self.requested_port), block=False,
                evt_handlers=self._handlers())
            # Each association copies these; see CheaplyCopiedContexts.
            # One accepted in the moment before this line copies the
            # plain list, which is only slower.
            self._server.contexts = CheaplyCopiedContexts(
                self._server.contexts)
        logger.info("node %s listening on %s:%d", self.ae_title,
                    self.host, self.port)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting, let open associations finish for up to
        ``grace`` seconds, abort the rest, close the socket."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        associations = server.active_associations
        server.shutdown()
        deadline = time.monotonic() + grace
        for assoc in associations:
            assoc.join(max(0.0, deadline - time.monotonic()))
            if assoc.is_alive():
                # An abort cannot tear a store: store_received is atomic.
                assoc.abort()
        for _, handler in self._commitment:
            # Storage commitment reports still being checked or sent.
            handler.wait(max(0.0, deadline - time.monotonic()))
        logger.info("node %s stopped", self.ae_title)

    def _make_ae(self) -> AE:
        ae = pacsstore_ae(self.ae_title)
        ae.maximum_pdu_size = MAX_PDU_SIZE
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.network_timeout = NETWORK_TIMEOUT
        ae.dimse_timeout = DIMSE_TIMEOUT
        ae.connection_timeout = CONNECT_TIMEOUT
        ae.require_called_aet = False
        if self.peers.refuse_unknown:
            ae.require_calling_aet = self.peers.known_titles
        syntaxes = storable_transfer_syntaxes()
        register_storage_classes()
        for sop_class in storage_sop_classes():
            # Either role: a C-GET peer is the storage SCP.
            ae.add_supported_context(sop_class, syntaxes, scu_role=True,
                                     scp_role=True)
        for sop_class in query_retrieve_sop_classes():
            ae.add_supported_context(sop_class,
                                     query_retrieve_transfer_syntaxes())
        ae.add_supported_context(verification_sop_class(), syntaxes[:2])
        ae.add_supported_context(COMMITMENT_SOP_CLASS, syntaxes[:2])
        return ae

    def _handlers(self) -> list:
        refusals = EarlyRefusals()
        return [
            (evt.EVT_CONN_OPEN, handle_conn_open),
            (evt.EVT_REQUESTED, PermittedContexts(self.peers)),
            (evt.EVT_ACCEPTED, handle_accepted),
            (evt.EVT_RELEASED, handle_released),
            (evt.EVT_SOP_EXTENDED, handle_sop_extended),
            (evt.EVT_DIMSE_SENT, refusals.handle_sent),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, StoreHandler(self.archive, self.counters,
                                           self.peers)),
            (evt.EVT_C_FIND, FindHandler(self.archive)),
            (evt.EVT_C_MOVE, MoveHandler(self.archive, self.peers,
                                         refusals)),
            (evt.EVT_C_GET, GetHandler(self.archive, refusals)),
            *self._commitment,
        ]

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def check_ae_title(title: str) -> None:
    """PS3.5 6.2: an AE title is 1-16 characters of the default repertoire,
    without backslash or control characters, not all spaces."""
    if not 1 <= len(title) <= 16 or not title.strip():
        raise ValueError(f"AE title must be 1 to 16 characters, got "
                         f"{title!r}")
    if not title.isascii() or "\\" in title or not title.isprintable():
        raise ValueError(f"AE title {title!r} must be printable ASCII "
                         f"without backslash")
