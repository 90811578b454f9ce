"""What every association the node requests is set up with: a C-MOVE's
sub-association to its destination, a storage commitment report, a
send from ``pacsstore.net.peers``.

Nagle's algorithm off, as on the sockets the node accepts. Each DIMSE
exchange is a small message that the other end waits on before it
sends its next one; with Nagle on, such a message can wait for the
delayed ACK of the previous one (40 ms on Linux), and a C-MOVE's
sub-operations went several times slower than the same study by C-GET.

Responses kept for the request that waits on them. pynetdicom's
requestor runs a reactor thread that polls the DIMSE queue every
millisecond, and a ``send_*`` method pauses it before sending by
clearing an event and waiting for a flag that the reactor sets before
it waits on that event. The flag is still set for a moment after the
reactor has passed the event, so the send can go out while the reactor
is about to take a message off the queue: when the answer comes back
within that moment (a fast peer on loopback, a thread descheduled on a
busy machine) the reactor takes the response, logs "Received unexpected
C-STORE service message" and drops it, and the send waits for it until
the DIMSE timeout (a C-MOVE stalled for a minute and failed what was
left of it). The node's requested associations now run the event-driven
reactor (pacsstore.net.reactor), whose pause has no such moment; for one
left to pynetdicom's reactor, that reactor puts a response back on the
queue, where the send's blocking read takes it.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from pacsstore.net.reactor import event_driven_requestor

# How many times the reactor may put one response back: a response that
# no send waits for (a peer answering twice) is dropped after this many
# polls, about a tenth of a second, as pynetdicom would have at once.
_RETURNS = 100


def no_delay(sock: socket.socket) -> None:
    """Send each message as soon as it is written."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def keep_responses(assoc: Association) -> None:
    """Make the reactor of ``assoc`` put the responses it takes back on
    the DIMSE queue (see the module documentation); requests go to
    pynetdicom as before."""
    serve = assoc._serve_request

    def serve_or_return(msg: Any, context_id: int) -> None:
        returns = getattr(msg, "_pacsstore_returns", 0)
        if msg.is_valid_request or returns >= _RETURNS:
            serve(msg, context_id)  # a response here: logged and dropped
            return
        msg._pacsstore_returns = returns + 1
        assoc.dimse.msg_queue.put((context_id, msg))

    assoc._serve_request = serve_or_return  # type: ignore[method-assign]


def handle_requested_conn_open(event: Event) -> None:
    """EVT_CONN_OPEN of an association the node requests: its socket is
    connected, the A-ASSOCIATE-RQ not yet sent. Its reactors are made to
    wait for work instead of polling (pacsstore.net.reactor), which also
    ends the race above; responses are kept all the same, for an
    association left to pynetdicom's reactors."""
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        no_delay(sock)
        # pynetdicom leaves a connected socket without a timeout: a peer
        # that stops reading would hold a write to it for good, and with
        # it the thread sending a retrieve's instances.
        sock.settimeout(event.assoc.network_timeout)
    event_driven_requestor(event.assoc)
    keep_responses(event.assoc)


# The handlers to pass to AE.associate for every association the node
# requests.
OUTGOING_HANDLERS: list[tuple[Any, ...]] = [
    (evt.EVT_CONN_OPEN, handle_requested_conn_open)]
