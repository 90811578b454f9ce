"""C-STORE requests of a retrieve, sent as P-DATA-TF PDUs encoded here.

A C-GET or C-MOVE sends each instance it retrieves as a C-STORE request.
pynetdicom's ``send_c_store`` takes a file or a Dataset, splits the
message into P-DATA primitives of the peer's maximum PDU length (16 KiB
from DCMTK's tools: 32 for a CT slice of 512 KiB), and queues each one
for the DUL thread, which takes it through the state machine, encodes
its PDU and writes it, a thread handoff and several layers of Python a
PDU. Sending the 400 slices of the benchmark's CT study to getscu took
about 2 s that way, against 0.3 s for Orthanc.

Here the whole request, command set and data set, is encoded at once
into the PDUs pynetdicom would have sent (one presentation data value
each, PS3.8 9.3.5), and queued as a single :class:`EncodedPData`
primitive, which the DUL thread writes with one ``sendall``
(:class:`pacsstore.net.reactor.EventDrivenDUL`). The queue keeps it in
order with every other message of the association. The response comes
back through pynetdicom as before, and is checked by pynetdicom's own
code. What the peer receives is byte for byte what pynetdicom sends.

Only associations whose DUL writes these primitives, over plain TCP,
with nothing bound to the per-message events that would see the
difference (see :func:`eligible`), take this path; any other send is
pynetdicom's.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom._handlers import (standard_dimse_sent_handler,
                                  standard_pdu_sent_handler)
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.pdu_primitives import P_DATA

from pacsstore.net.fastpath import (COMMAND, DATA_SET_PRESENT, LAST_FRAGMENT,
                                    NO_DATA_SET, P_DATA_TF, encode_command)

# pynetdicom's logging handlers log under this name.
_handlers_log = logging.getLogger("pynetdicom._handlers")

_PDU_AND_PDV_HEADER = struct.Struct(">BBIIBB")
# The most buffers one sendmsg takes on Linux (IOV_MAX).
_IOV_MAX = 1024
C_STORE_RQ = 0x0001
PENDING = 0xFF00
_PENDING_RESPONSES = {C_GET: 0x8010, C_MOVE: 0x8021}

# The events pynetdicom would trigger for a request sent its way, which
# are not triggered for one sent from here.
_SENT_EVENTS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT,
                evt.EVT_FSM_TRANSITION)


class EncodedPData(P_DATA):
    """A P-DATA request whose P-DATA-TF PDUs are already encoded, in
    ``buffers`` (:func:`p_data_encoded`)."""

    def __init__(self, buffers: list[bytes | memoryview]) -> None:
        super().__init__()
        self.buffers = buffers


def eligible(assoc: Any) -> bool:
    """Whether a C-STORE request on ``assoc`` may be sent from here
    without changing what anyone sees."""
    if not getattr(assoc.dul, "sends_encoded", False):
        return False
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return False
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is None or isinstance(sock, ssl.SSLSocket):
        return False
    stood_in = _stood_in_handlers()
    for event in _SENT_EVENTS:
        for handler, _ in assoc.get_handlers(event):
            if getattr(handler, "__func__", handler) not in stood_in:
                return False
    return True


def _stood_in_handlers() -> set[Any]:
    """Handlers of those events with nothing to do for a C-STORE
    request sent from here."""
    # Imported here: pacsstore.net.qr imports the retrieve module, which
    # imports this one.
    from pacsstore.net.qr import EarlyRefusals
    return {
        # pynetdicom's logging: at debug level this path is not taken,
        # and its info line is logged here.
        standard_dimse_sent_handler, standard_pdu_sent_handler,
        # Acts only on C-MOVE and C-GET responses.
        EarlyRefusals.handle_sent,
    }


def p_data_encoded(context_id: int, command: bytes,
                   dataset: bytes | memoryview | None,
                   max_length: int) -> list[bytes | memoryview]:
    """The P-DATA-TF PDUs of a message, command set then data set (if
    any), each fragment in a PDU of its own no longer than
    ``max_length`` (0: no limit), as pynetdicom fragments them: as the
    buffers to write in order, each PDU's headers and then a view of its
    fragment, so that the data set is not copied."""
    buffers: list[bytes | memoryview] = []
    for value, kind in ((command, COMMAND), (dataset, 0)):
        if value is None:
            continue
        view = memoryview(value).cast("B")
        for start, end, control in _fragments(len(view), max_length, kind):
            length = end - start
            buffers.append(_PDU_AND_PDV_HEADER.pack(
                P_DATA_TF, 0, length + 6, length + 2, context_id, control))
            buffers.append(view[start:end])
    return buffers


def _fragments(length: int, max_length: int, kind: int
               ) -> Iterator[tuple[int, int, int]]:
    """(start, end, message control header) of each fragment of a value
    of ``length`` bytes; an empty value is one empty fragment."""
    room = max(1, max_length - 6) if max_length else max(1, length)
    for start in range(0, max(length, 1), room):
        end = min(start + room, length)
        yield start, end, kind | (LAST_FRAGMENT if end >= length else 0)


def write_all(sock: socket.socket,
              buffers: list[bytes | memoryview]) -> None:
    """``sendall`` of ``buffers`` one after the other, gathered by
    ``sendmsg`` and resumed where a partial write stopped."""
    pending = collections.deque(memoryview(b) for b in buffers if len(b))
    while pending:
        sent = sock.sendmsg(list(itertools.islice(pending, _IOV_MAX)))
        while sent:
            first = pending[0]
            if sent < len(first):
                pending[0] = first[sent:]
                break
            sent -= len(first)
            pending.popleft()


def c_store_command(*, sop_class_uid: str, sop_instance_uid: str,
                    message_id: int, priority: int,
                    originator_ae: str | None,
                    originator_id: int | None) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), as pynetdicom encodes
    it: Implicit VR Little Endian, elements in order, the Move
    Originator pair only when given."""
    elements: list[tuple[int, str, Any]] = [
        (0x0002, "UI", sop_class_uid),
        (0x0100, "US", C_STORE_RQ),
        (0x0110, "US", message_id),
        (0x0700, "US", priority),
        (0x0800, "US", DATA_SET_PRESENT),
        (0x1000, "UI", sop_instance_uid)]
    if originator_ae:
        elements.append((0x1030, "AE", originator_ae))
    if originator_id is not None:
        elements.append((0x1031, "US", originator_id))
    return encode_command(elements)


def pending_response_command(primitive: Any) -> bytes | None:
    """The command set of a pending C-GET or C-MOVE response of the kind
    pynetdicom's service class sends after each sub-operation (PS3.7
    9.3.3.2, 9.3.4.2: the four counts, no identifier, no comment), as
    pynetdicom encodes it; None for any other message."""
    field = _PENDING_RESPONSES.get(type(primitive))
    if field is None or primitive.Status != PENDING \
            or primitive.Identifier is not None \
            or primitive.ErrorComment or primitive.OffendingElement \
            or primitive.AffectedSOPClassUID is None \
            or primitive.MessageIDBeingRespondedTo is None:
        return None
    counts = (primitive.NumberOfRemainingSuboperations,
              primitive.NumberOfCompletedSuboperations,
              primitive.NumberOfFailedSuboperations,
              primitive.NumberOfWarningSuboperations)
    if None in counts:
        return None
    return encode_command([
        (0x0002, "UI", str(primitive.AffectedSOPClassUID)),
        (0x0100, "US", field),
        (0x0120, "US", primitive.MessageIDBeingRespondedTo),
        (0x0800, "US", NO_DATA_SET),
        (0x0900, "US", PENDING),
        *((element, "US", count)
          for element, count in zip((0x1020, 0x1021, 0x1022, 0x1023),
                                    counts))])


class EncodedResponses:
    """``send_msg`` of an association's DIMSE provider: the pending
    responses of a retrieve are encoded here and queued whole (one for
    each instance sent, and pynetdicom's took as long as sending a CT
    slice); every other message goes to pynetdicom's ``send_msg``."""

    def __init__(self, dimse: Any) -> None:
        self.dimse = dimse
        self._send = dimse.send_msg

    @classmethod
    def install(cls, dimse: Any) -> None:
        if not isinstance(dimse.send_msg, cls):
            dimse.send_msg = cls(dimse)

    def __call__(self, primitive: Any, context_id: int) -> None:
        command = pending_response_command(primitive)
        assoc = self.dimse.assoc
        if command is None or not eligible(assoc):
            self._send(primitive, context_id)
            return
        assoc.dul.send_pdu(EncodedPData(p_data_encoded(
            context_id, command, None, self.dimse.maximum_pdu_size)))


def send_c_store(assoc: Any, *, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax: str, dataset: bytes | memoryview,
                 message_id: int = 1, priority: int = 2,
                 originator_ae: str | None = None,
                 originator_id: int | None = None) -> Dataset:
    """What ``assoc.send_c_store`` does for a dataset already encoded in
    ``transfer_syntax``: the request, then the peer's response read and
    checked by pynetdicom, returned as its status Dataset (empty when
    none came)."""
    if not assoc.is_established:
        raise RuntimeError("The association with a peer SCP must be "
                           "established before sending a C-STORE request")
    context = assoc._get_valid_context(sop_class_uid, transfer_syntax, "scu",
                                       allow_conversion=False)
    command = c_store_command(
        sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
        message_id=message_id, priority=priority,
        originator_ae=originator_ae, originator_id=originator_id)
    encoded = p_data_encoded(context.context_id, command, dataset,
                             assoc.dimse.maximum_pdu_size)
    _handlers_log.info("Sending Store Request: MsgID %d%s", message_id,
                      _modality(sop_class_uid))
    # pynetdicom's protocol for a send from outside the reactor: pause
    # it, so that it takes nothing off the DIMSE queue, until the
    # response is in.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dul.send_pdu(EncodedPData(encoded))
        _context_id, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(response)


def _modality(sop_class_uid: str) -> str:
    # pynetdicom's log line names these two.
    return {"1.2.840.10008.5.1.4.1.1.2": ", (CT)",
            "1.2.840.10008.5.1.4.1.1.4": ", (MR)"}.get(sop_class_uid, "")
