"""Associations the node requests: a response that pynetdicom's polling
reactor takes off the DIMSE queue is put back for the send waiting on
it, instead of being dropped (which stalled a C-MOVE for the DIMSE
timeout and failed what was left of it)."""

from __future__ import annotations

import queue
import threading

from pynetdicom.dimse_primitives import C_ECHO, C_STORE

from pacsstore.net.requested import _RETURNS, keep_responses


class _FakeAssociation:
    """The two parts of a pynetdicom Association that keep_responses
    touches: its DIMSE queue and its request dispatch."""

    def __init__(self) -> None:
        self.dimse = type("Dimse", (), {})()
        self.dimse.msg_queue = queue.Queue()
        self.served: list[object] = []

    def _serve_request(self, msg, context_id):
        self.served.append(msg)


def _store_response() -> C_STORE:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 1
    response.Status = 0x0000
    return response


def _echo_request() -> C_ECHO:
    request = C_ECHO()
    request.MessageID = 7
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return request


def test_a_response_the_reactor_takes_reaches_the_waiting_send():
    assoc = _FakeAssociation()
    keep_responses(assoc)
    response = _store_response()
    got: list[object] = []
    waiting = threading.Thread(
        target=lambda: got.append(assoc.dimse.msg_queue.get(timeout=5)))
    waiting.start()
    # The reactor's non-blocking read won the race for the response.
    assoc._serve_request(response, 1)
    waiting.join(5)
    assert got == [(1, response)]
    assert assoc.served == []


def test_requests_are_served_as_before():
    assoc = _FakeAssociation()
    keep_responses(assoc)
    request = _echo_request()
    assoc._serve_request(request, 3)
    assert assoc.served == [request]
    assert assoc.dimse.msg_queue.empty()


def test_a_response_nobody_waits_for_is_dropped_after_some_polls():
    assoc = _FakeAssociation()
    keep_responses(assoc)
    response = _store_response()
    assoc._serve_request(response, 1)
    for _ in range(_RETURNS):
        context_id, msg = assoc.dimse.msg_queue.get_nowait()
        assoc._serve_request(msg, context_id)
    assert assoc.served == [response]
    assert assoc.dimse.msg_queue.empty()
