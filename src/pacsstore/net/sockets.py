"""What every socket of the node's associations is set to, whichever end
opened it: the ones it accepts (from storescu, findscu...) and the ones
it connects (a C-MOVE's destination, a storage commitment report, a
send).

Each DIMSE exchange is a small message that the other end waits on
before it sends its next one. With Nagle's algorithm on, such a message
can wait for the delayed ACK of the previous one (40 ms on Linux): a
C-MOVE's sub-operations to a destination went four times slower than
the same study by C-GET, which answers on an accepted socket.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event


def no_delay(sock: socket.socket) -> None:
    """Send each message as soon as it is written."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_requested_conn_open(event: Event) -> None:
    """EVT_CONN_OPEN of an association the node requests: its socket is
    connected, the A-ASSOCIATE-RQ not yet sent."""
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        no_delay(sock)


# The handlers to pass to AE.associate for every association the node
# requests.
OUTGOING_HANDLERS: list[tuple[Any, ...]] = [
    (evt.EVT_CONN_OPEN, handle_requested_conn_open)]
