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
each, PS3.8 9.3.5), as the PDU headers and views of the data set, and
written by the sending thread itself with ``sendmsg`` when nothing is
queued before it, or else queued as a single :class:`EncodedPData`
primitive for the DUL thread, which writes it in its turn
(:class:`pacsstore.net.reactor.EventDrivenDUL`; one lock keeps the two
writers' PDUs apart). The pending C-GET and C-MOVE responses go the
same way (:class:`EncodedResponses`). What the peer receives is byte
for byte what pynetdicom sends.

The response still comes back through pynetdicom's DUL thread; a plain
C-STORE response is decoded here with ``struct`` rather than by pydicom
(:class:`DecodedResponses`), and checked by pynetdicom's own code.

Only associations whose DUL writes these messages, over plain TCP,
with nothing bound to the per-message events that would see the
difference (see :func:`eligible`), take this path; any other send is
pynetdicom's.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import re
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom._handlers import (standard_dimse_recv_handler,
                                  standard_dimse_sent_handler,
                                  standard_pdu_sent_handler)
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import uid_to_service_class

from pacsstore.net.fastpath import (COMMAND, DATA_SET_PRESENT,
                                    ELEMENT_HEADER, LAST_FRAGMENT,
                                    NO_DATA_SET, P_DATA_TF, UL_VALUE,
                                    US_VALUE, encode_command, only_handlers,
                                    plain_tcp_quietly)

# pynetdicom's logging handlers log under this name.
_handlers_log = logging.getLogger("pynetdicom._handlers")

_PDU_AND_PDV_HEADER = struct.Struct(">BBIIBB")
# The most buffers one sendmsg takes on Linux (IOV_MAX).
_IOV_MAX = 1024
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
PENDING = 0xFF00
_PENDING_RESPONSES = {C_GET: 0x8010, C_MOVE: 0x8021}
# How often a send waiting for its response looks whether the
# association is still in data transfer.
_RESPONSE_POLL = 0.1

# The events pynetdicom would trigger for a request sent its way, which
# are not triggered for one sent from here.
_SENT_EVENTS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT,
                evt.EVT_FSM_TRANSITION)


class Unanswered(Exception):
    """A C-STORE request that got no answer of its own; the message
    says why."""


class EncodedPData(P_DATA):
    """A P-DATA request whose P-DATA-TF PDUs are already encoded, in
    ``buffers`` (:func:`p_data_encoded`)."""

    def __init__(self, buffers: list[bytes | memoryview]) -> None:
        super().__init__()
        self.buffers = buffers


def eligible(assoc: Any) -> bool:
    """Whether a C-STORE request on ``assoc`` may be sent from here
    without changing what anyone sees."""
    return getattr(assoc.dul, "sends_encoded", False) \
        and plain_tcp_quietly(assoc) \
        and only_handlers(assoc, _SENT_EVENTS, _stood_in_handlers())


def _stood_in_handlers() -> set[Any]:
    """Handlers of those events with nothing to do for a C-STORE
    request or a pending retrieve response sent from here."""
    # Imported here: pacsstore.net.qr imports the retrieve module, which
    # imports this one.
    from pacsstore.net.qr import EarlyRefusals
    return {
        # pynetdicom's logging: at debug level this path is not taken,
        # and its one info line (for a C-STORE request) is logged here.
        standard_dimse_sent_handler, standard_pdu_sent_handler,
        # Rewrites the final response of a retrieve it refused before
        # any sub-operation, so one that has no pending responses.
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


class _StandIn:
    """A stand-in for one method of an association's DIMSE provider,
    which it calls for whatever it does not handle itself."""

    METHOD = ""

    def __init__(self, dimse: Any) -> None:
        self.dimse = dimse
        self.pynetdicoms = getattr(dimse, self.METHOD)

    @classmethod
    def install(cls, dimse: Any) -> None:
        if not isinstance(getattr(dimse, cls.METHOD), cls):
            setattr(dimse, cls.METHOD, cls(dimse))


class EncodedResponses(_StandIn):
    """``send_msg`` of an association's DIMSE provider: the pending
    responses of a retrieve are encoded here and sent whole (one for
    each instance sent, and pynetdicom's took as long as sending a CT
    slice); every other message goes to pynetdicom's ``send_msg``."""

    METHOD = "send_msg"

    def __call__(self, primitive: Any, context_id: int) -> None:
        command = pending_response_command(primitive)
        assoc = self.dimse.assoc
        if command is None or not eligible(assoc):
            self.pynetdicoms(primitive, context_id)
            return
        send_encoded(assoc, p_data_encoded(
            context_id, command, None, self.dimse.maximum_pdu_size))


class DecodedResponses(_StandIn):
    """``receive_primitive`` of an association's DIMSE provider: a plain
    C-STORE response (:func:`plain_store_response`) that arrives whole in
    one P-DATA-TF is decoded here with ``struct`` and queued as the
    primitive pynetdicom would have made of it (pynetdicom's decoding,
    through pydicom, took about 120 µs of the DUL thread for each
    instance a retrieve sends); everything else goes to pynetdicom's
    ``receive_primitive``."""

    METHOD = "receive_primitive"

    def __call__(self, primitive: P_DATA) -> None:
        response = self._decoded(primitive)
        if response is None:
            self.pynetdicoms(primitive)
            return
        _log_store_response(response)
        self.dimse.msg_queue.put((response._context_id, response))

    def _decoded(self, primitive: P_DATA) -> C_STORE | None:
        if self.dimse.message is not None:
            return None  # a message is being reassembled
        items = primitive.presentation_data_value_list
        if len(items) != 1:
            return None
        context_id, value = items[0]
        if not value or value[0] != COMMAND | LAST_FRAGMENT:
            return None
        if not _receive_eligible(self.dimse.assoc):
            return None
        return plain_store_response(context_id, memoryview(value)[1:])


# The elements of a plain C-STORE response: group length, Affected SOP
# Class UID, Command Field, Message ID Being Responded To, Command Data
# Set Type, Status, Affected SOP Instance UID (PS3.7 9.3.1.2).
_PLAIN_RESPONSE_ELEMENTS = frozenset(
    (0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x1000))
_REQUIRED_RESPONSE_ELEMENTS = frozenset((0x0000, 0x0100, 0x0120, 0x0800,
                                         0x0900))


def plain_store_response(context_id: int, command: memoryview
                         ) -> C_STORE | None:
    """The C-STORE response primitive of a command set that holds only
    the elements of a plain response, each once and in order, with a
    true group length, no data set and conformant UIDs: what pynetdicom
    makes of it. None for any other command set, which pynetdicom then
    decodes (and judges) itself."""
    values = _elements(command)
    if values is None or not _REQUIRED_RESPONSE_ELEMENTS <= values.keys():
        return None
    numbers = {}
    for element, length in ((0x0000, 4), (0x0100, 2), (0x0120, 2),
                            (0x0800, 2), (0x0900, 2)):
        if len(values[element]) != length:
            return None
        numbers[element] = (UL_VALUE if length == 4 else US_VALUE).unpack(
            values[element])[0]
    if numbers[0x0000] != len(command) - 12 \
            or numbers[0x0100] != C_STORE_RSP \
            or numbers[0x0800] != NO_DATA_SET:
        return None
    response = C_STORE()
    try:
        response.MessageIDBeingRespondedTo = numbers[0x0120]
        response.Status = numbers[0x0900]
        for element, keyword in ((0x0002, "AffectedSOPClassUID"),
                                 (0x1000, "AffectedSOPInstanceUID")):
            if element in values:
                uid = _uid(values[element])
                if uid is None:
                    return None
                setattr(response, keyword, uid)
    except (ValueError, TypeError):
        return None
    response._context_id = context_id
    return response


def _elements(command: memoryview) -> dict[int, memoryview] | None:
    """Group 0000's elements of ``command`` by element number, or None
    when it holds anything else, or an element twice or out of order,
    or runs short."""
    values: dict[int, memoryview] = {}
    at, last = 0, -1
    while at < len(command):
        if at + ELEMENT_HEADER.size > len(command):
            return None
        group, element, length = ELEMENT_HEADER.unpack_from(command, at)
        at += ELEMENT_HEADER.size
        if group != 0 or element <= last \
                or element not in _PLAIN_RESPONSE_ELEMENTS \
                or at + length > len(command):
            return None
        values[element] = command[at:at + length]
        at, last = at + length, element
    return values


def _uid(raw: memoryview) -> str | None:
    """A UID value as pynetdicom would take it: ASCII, trailing NULs and
    spaces dropped; None unless it is a valid UID (PS3.5 9.1: digits and
    dots, no leading zero in a component, at most 64 characters)."""
    try:
        text = bytes(raw).decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return None
    if len(text) > 64 or not _VALID_UID.fullmatch(text):
        return None
    return text


_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _receive_eligible(assoc: Any) -> bool:
    """Whether a response may be decoded here: EVT_DIMSE_RECV, which is
    not triggered for it, has nothing but pynetdicom's logging (stood in
    for by :func:`_log_store_response`) and the node's marking of
    C-STORE requests bound, and pynetdicom is not logging at debug
    level."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return False
    # Imported here: pacsstore.net.handlers imports the reactor, which
    # imports this module.
    from pacsstore.net.handlers import handle_dimse_recv
    return only_handlers(assoc, (evt.EVT_DIMSE_RECV,),
                         {standard_dimse_recv_handler, handle_dimse_recv})


def _log_store_response(response: C_STORE) -> None:
    """pynetdicom's INFO line for a C-STORE response received."""
    if not _handlers_log.isEnabledFor(logging.INFO):
        return
    status = int(response.Status)
    text = f"0x{status:04X} - Unknown"
    if response.AffectedSOPClassUID:
        statuses = uid_to_service_class(response.AffectedSOPClassUID).statuses
        if status in statuses:
            text = f"0x{status:04X} - {statuses[status][0]}"
    _handlers_log.info(f"Received Store Response (Status: {text})")


def send_encoded(assoc: Any, buffers: list[bytes | memoryview]) -> None:
    """Write an encoded message on ``assoc`` from this thread when the
    DUL lets it (nothing queued before it), else queue it for the DUL."""
    if not assoc.dul.write_now(buffers):
        assoc.dul.send_pdu(EncodedPData(buffers))


def send_c_store(assoc: Any, *, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax: str, dataset: bytes | memoryview,
                 message_id: int = 1, priority: int = 2,
                 originator_ae: str | None = None,
                 originator_id: int | None = None) -> Dataset:
    """What ``assoc.send_c_store`` does for a dataset already encoded in
    ``transfer_syntax``: the request, then the peer's response read and
    checked by pynetdicom, returned as its status Dataset. :class:`Unanswered`
    when the association has ended, or no response came, or one for
    another request (where pynetdicom raises for the first, returns an
    empty Dataset for the second and takes the third for the answer)."""
    if not assoc.is_established:
        raise Unanswered("the association to the peer has ended")
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
        send_encoded(assoc, encoded)
        _context_id, response = _awaited_response(assoc)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None:
        assoc._handle_no_response()
        raise Unanswered("no response came from the peer")
    if not isinstance(response, C_STORE) \
            or response.MessageIDBeingRespondedTo != message_id:
        # pynetdicom would take any message for the answer. One that
        # answers another request says nothing of this one: the
        # sub-operation fails rather than counting as stored.
        answered = getattr(response, "MessageIDBeingRespondedTo", None)
        raise Unanswered(f"the peer answered the C-STORE request of "
                         f"message {message_id} with a "
                         f"{type(response).__name__} response to message "
                         f"{answered}")
    return assoc._check_received_status(response)


def _awaited_response(assoc: Any) -> tuple[int | None, Any]:
    """What pynetdicom's blocking ``get_msg`` gives, the next message or
    (None, None) after the DIMSE timeout, except that the wait ends as
    soon as the association has left data transfer, when no response
    can come: pynetdicom's abort for a PDU it cannot decode (AA-8)
    leaves the send waiting out the whole DIMSE timeout."""
    timeout = assoc.dimse_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = _RESPONSE_POLL if deadline is None else \
            max(0.0, min(_RESPONSE_POLL, deadline - time.monotonic()))
        try:
            return assoc.dimse.msg_queue.get(timeout=wait)
        except queue.Empty:
            pass
        if assoc.dul.state_machine.current_state != "Sta6" \
                or (deadline is not None and time.monotonic() >= deadline):
            return None, None


def _modality(sop_class_uid: str) -> str:
    # pynetdicom's log line names these two.
    return {"1.2.840.10008.5.1.4.1.1.2": ", (CT)",
            "1.2.840.10008.5.1.4.1.1.4": ", (MR)"}.get(sop_class_uid, "")
