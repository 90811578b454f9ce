"""The DICOM node: a pynetdicom application entity in front of an archive.

The node accepts associations for C-ECHO and for C-STORE of every storage
SOP class in every transfer syntax it can keep (see
:mod:`pacsstore.net.contexts`), several associations at once, each served
by its own thread; the archive's group commit lets concurrent stores share
one fsync. It binds to 127.0.0.1 unless told otherwise: exposing an
archive to a network is a decision, not a default.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from pacsstore.net.contexts import (register_storage_classes,
                                    storable_transfer_syntaxes,
                                    storage_sop_classes,
                                    verification_sop_class)
from pacsstore.net.handlers import (ReceiveCounters, ReceivingArchive,
                                    StoreHandler, handle_accepted,
                                    handle_conn_open, handle_echo,
                                    handle_released)

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

# Seconds open associations get to finish when the node stops.
STOP_GRACE = 5.0


class Node:
    """A storage SCP serving ``archive``; start it, then stop it.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    ``port=0`` binds a free port; :attr:`port` tells which.
    """

    def __init__(self, archive: ReceivingArchive, *,
                 ae_title: str = DEFAULT_AE_TITLE, port: int = DEFAULT_PORT,
                 host: str = DEFAULT_HOST) -> None:
        check_ae_title(ae_title)
        self.archive = archive
        self.ae_title = ae_title
        self.host = host
        self.requested_port = port
        self.counters = ReceiveCounters()
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
        logger.info("node %s stopped", self.ae_title)

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = MAX_PDU_SIZE
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.network_timeout = NETWORK_TIMEOUT
        ae.dimse_timeout = DIMSE_TIMEOUT
        ae.require_called_aet = False
        syntaxes = storable_transfer_syntaxes()
        register_storage_classes()
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(verification_sop_class(), syntaxes[:2])
        return ae

    def _handlers(self) -> list:
        return [
            (evt.EVT_CONN_OPEN, handle_conn_open),
            (evt.EVT_ACCEPTED, handle_accepted),
            (evt.EVT_RELEASED, handle_released),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, StoreHandler(self.archive, self.counters)),
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
