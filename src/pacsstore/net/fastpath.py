"""The data transfer phase of a storage or query association, in one
thread.

pynetdicom spends about a millisecond of CPU on every DIMSE message
whatever it carries: the command set becomes a pydicom Dataset on the
way in and another on the way out, each request gets a primitive, an
event and a service class object, every element is validated, and the
message crosses two threads. For a peer that sends thousands of small
instances, one at a time, that is most of the time it waits.

So once pynetdicom has negotiated an association on which the node is
only a storage or C-FIND SCP (every accepted context is a storage SOP
class, a C-FIND information model or Verification, with the node in the
SCP role, over plain TCP), the association thread takes the socket and
runs the data transfer phase itself: it reads each PDU whole (PS3.8 9.3.1), puts P-DATA-TF fragments
back together into command set and data set (PS3.8 annex E), decodes the
command set (implicit VR little endian, group 0000, PS3.7 6.3) with
``struct``, hands the request to the handler bound to EVT_C_STORE, EVT_C_FIND or
EVT_C_ECHO as the same pynetdicom :class:`~pynetdicom.events.Event`
pynetdicom would, and writes the response straight onto the socket
(C-FIND's exchange of pending responses and C-CANCEL is in
:mod:`pacsstore.net.fastpath_find`). It
answers A-RELEASE-RQ and A-ABORT as PS3.8 9.2 does in state Sta6, and
aborts with the reason of PS3.8 Table 9-26 on anything it cannot accept:
a PDU it does not expect, a PDU longer than the maximum the node
announced, fragments that do not make a message, a command set that
cannot be decoded, a context that was not accepted; a request that the
context's SOP class does not define is aborted as pynetdicom aborts it.

It fires EVT_C_STORE, EVT_C_FIND, EVT_C_ECHO, EVT_RELEASED, EVT_ABORTED and
EVT_CONN_CLOSE, and logs pynetdicom's info lines, but not the events
pynetdicom fires for every PDU and message (EVT_PDU_RECV, EVT_DIMSE_RECV
and the like). An association is therefore handed to it only when every
handler bound to those is one it stands in for (:func:`eligible`), and
never while pynetdicom logs at debug level: whoever debugs the node
sees pynetdicom's whole path. Everything else (negotiation, C-MOVE,
C-GET, storage commitment, TLS) stays with pynetdicom.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
from collections import deque
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable, Iterable, Iterator

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom._handlers import (standard_dimse_recv_handler,
                                  standard_dimse_sent_handler,
                                  standard_pdu_recv_handler,
                                  standard_pdu_sent_handler)
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, uid_to_service_class

from pacsstore.net.contexts import FIND_MODELS

# pynetdicom's loggers: the lines it would log are logged under its names.
_assoc_log = logging.getLogger("pynetdicom.association")
_handlers_log = logging.getLogger("pynetdicom._handlers")
_service_log = logging.getLogger("pynetdicom.service_class")
_dimse_log = logging.getLogger("pynetdicom.dimse")

# PDU types (PS3.8 9.3.1).
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
ELEMENT_HEADER = struct.Struct("<HHI")
US_VALUE = struct.Struct("<H")
UL_VALUE = struct.Struct("<I")

# Message control header bits of a PDV (PS3.8 E.2).
COMMAND = 0x01
LAST_FRAGMENT = 0x02

# Command fields (PS3.7 E.1) and Command Data Set Type's "no data set".
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0001  # any other value says so; pynetdicom sends 1

# Statuses the loop itself answers with (PS3.7 C).
HANDLER_FAILED = 0xC211        # pynetdicom's for a handler that raised
STATUS_WITHOUT_STATUS = 0xC001  # pynetdicom's for a status with no Status
STATUS_OF_WRONG_TYPE = 0xC002   # pynetdicom's for a status of other type

# A-ABORT sources and reasons (PS3.8 9.3.8, Table 9-26).
SERVICE_USER, SERVICE_PROVIDER = 0x00, 0x02
REASON_NOT_SPECIFIED = 0x00
UNRECOGNIZED_PDU = 0x01
UNEXPECTED_PDU = 0x02
INVALID_PARAMETER = 0x06

# Longest A-RELEASE or A-ABORT PDU read (PS3.8 gives them 4 bytes).
_SHORT_PDU_LIMIT = 64

# Tags of the command set elements read and written (PS3.7 E.1).
_GROUP_LENGTH = 0x0000
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_RESPONDED_TO = 0x0120
_PRIORITY = 0x0700
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_OFFENDING_ELEMENT = 0x0901
_ERROR_COMMENT = 0x0902
_AFFECTED_SOP_INSTANCE = 0x1000
_MOVE_ORIGINATOR_AE = 0x1030
_MOVE_ORIGINATOR_ID = 0x1031


class ProtocolError(Exception):
    """The peer broke PS3.7 or PS3.8 in a way that ends the association;
    ``reason`` is the A-ABORT reason to send."""

    def __init__(self, message: str, reason: int = INVALID_PARAMETER
                 ) -> None:
        super().__init__(message)
        self.reason = reason


class _Closed(Exception):
    """The transport connection closed under the loop."""


# Handling ----------------------------------------------------------------

def eligible(assoc: Any) -> bool:
    """Whether the data transfer phase of ``assoc``, just negotiated, can
    be run by :class:`DataTransferLoop` without changing what anyone
    sees."""
    if not plain_tcp_quietly(assoc):
        return False
    contexts = list(assoc._accepted_cx.values())
    if not contexts or not all(map(_served_here, contexts)):
        return False
    return only_handlers(assoc, _PER_MESSAGE_EVENTS, _stood_in_handlers())


def plain_tcp_quietly(assoc: Any) -> bool:
    """What any work done outside pynetdicom on ``assoc`` needs: a plain
    TCP socket (TLS stays pynetdicom's), and pynetdicom not logging at
    debug level (its debug lines are not written here)."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return False
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    return sock is not None and not isinstance(sock, ssl.SSLSocket)


def only_handlers(assoc: Any, events: Iterable[Any],
                  stood_in: set[Callable[..., Any]]) -> bool:
    """Whether every handler bound to ``events`` on ``assoc`` is one of
    ``stood_in``: those whose work is done, or not needed, where the
    events are not triggered."""
    return all(getattr(handler, "__func__", handler) in stood_in
               for event in events
               for handler, _ in assoc.get_handlers(event))


def _served_here(context: Any) -> bool:
    return bool(context.as_scp) and (_storage(context) or _find(context))


def _storage(context: Any) -> bool:
    uid = str(context.abstract_syntax)
    return uid == Verification or \
        uid_to_service_class(uid) is StorageServiceClass


def _find(context: Any) -> bool:
    return str(context.abstract_syntax) in FIND_MODELS


_PER_MESSAGE_EVENTS = (
    evt.EVT_DATA_RECV, evt.EVT_DATA_SENT, evt.EVT_PDU_RECV,
    evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT,
    evt.EVT_FSM_TRANSITION)


def _stood_in_handlers() -> set[Callable[..., Any]]:
    """Handlers of per-message events whose work the loop does itself or
    that have nothing to do on the associations the loop serves."""
    # Imported here: pacsstore.net.handlers imports the reactor, which
    # imports this module.
    from pacsstore.net.handlers import handle_dimse_recv
    from pacsstore.net.qr import EarlyRefusals
    return {
        # pynetdicom's logging; at debug level the loop is not used, and
        # its info lines are logged by the loop.
        standard_pdu_recv_handler, standard_pdu_sent_handler,
        standard_dimse_recv_handler, standard_dimse_sent_handler,
        # Marks a C-STORE-RQ without Affected SOP Instance UID; the loop
        # marks it the same way.
        handle_dimse_recv,
        # Acts only on C-MOVE and C-GET responses.
        EarlyRefusals.handle_sent,
    }


# Command sets --------------------------------------------------------------

@dataclass
class Command:
    """The fields of a command set (PS3.7 E.1) the loop acts on."""

    field: int
    message_id: int | None = None
    has_data_set: bool = False
    affected_sop_class: str | None = None
    affected_sop_instance: str | None = None
    responded_to: int | None = None
    priority: int | None = None
    move_originator_ae: str | None = None
    move_originator_id: int | None = None


def decode_command(raw: bytes | bytearray | memoryview) -> Command:
    """Decode a command set: implicit VR little endian elements of group
    0000, every length checked against what is left."""
    view = memoryview(raw)
    values: dict[int, memoryview] = {}
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < ELEMENT_HEADER.size:
            raise ProtocolError(
                f"the command set ends inside an element header at byte "
                f"{offset} of {end}")
        group, element, length = ELEMENT_HEADER.unpack_from(view, offset)
        start = offset + ELEMENT_HEADER.size
        if length > end - start:
            raise ProtocolError(
                f"command element ({group:04X},{element:04X}) at byte "
                f"{offset} claims {length} bytes, {end - start} remain")
        if group == 0x0000:
            values[element] = view[start:start + length]
        offset = start + length

    field = _unsigned(values, _COMMAND_FIELD)
    if field is None:
        raise ProtocolError("the command set has no Command Field "
                            "(0000,0100)")
    data_set_type = _unsigned(values, _DATA_SET_TYPE)
    return Command(
        field=field,
        message_id=_unsigned(values, _MESSAGE_ID),
        has_data_set=data_set_type is not None
        and data_set_type != NO_DATA_SET,
        affected_sop_class=_text(values, _AFFECTED_SOP_CLASS),
        affected_sop_instance=_text(values, _AFFECTED_SOP_INSTANCE),
        responded_to=_unsigned(values, _RESPONDED_TO),
        priority=_unsigned(values, _PRIORITY),
        move_originator_ae=_text(values, _MOVE_ORIGINATOR_AE),
        move_originator_id=_unsigned(values, _MOVE_ORIGINATOR_ID))


def require_message_id(command: Command, name: str) -> int:
    """The request's Message ID; a request without one is a protocol
    error (PS3.7 E.1: it is mandatory in every request)."""
    if command.message_id is None:
        raise ProtocolError(f"a {name} has no Message ID (0000,0110)",
                            REASON_NOT_SPECIFIED)
    return command.message_id


def _unsigned(values: dict[int, memoryview], element: int) -> int | None:
    value = values.get(element)
    if value is None:
        return None
    if len(value) != US_VALUE.size:
        raise ProtocolError(
            f"command element (0000,{element:04X}) is US but {len(value)} "
            f"bytes long")
    return int(US_VALUE.unpack(value)[0])


def _text(values: dict[int, memoryview], element: int) -> str | None:
    value = values.get(element)
    if value is None:
        return None
    try:
        return bytes(value).decode("ascii").rstrip("\0 ").lstrip(" ")
    except UnicodeDecodeError:
        raise ProtocolError(
            f"command element (0000,{element:04X}) is not ASCII") from None


def encode_command(elements: list[tuple[int, str, Any]]) -> bytes:
    """A command set of (element, VR, value) in ascending element order,
    behind its Command Group Length (0000,0000)."""
    body = b"".join(_encode_element(element, vr, value)
                    for element, vr, value in elements)
    return _encode_element(_GROUP_LENGTH, "UL", len(body)) + body


def _encode_element(element: int, vr: str, value: Any) -> bytes:
    if vr == "US":
        raw = US_VALUE.pack(value)
    elif vr == "UL":
        raw = UL_VALUE.pack(value)
    elif vr == "AT":
        raw = b"".join(struct.pack("<HH", tag >> 16, tag & 0xFFFF)
                       for tag in value)
    else:
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
    return ELEMENT_HEADER.pack(0x0000, element, len(raw)) + raw


def _status_fields(status: Any) -> tuple[int, str | None, list[int] | None]:
    """Status, Error Comment and Offending Element of what a handler
    returned, read as pynetdicom's ``validate_status`` reads it."""
    if isinstance(status, Dataset):
        if "Status" not in status:
            _service_log.error("User callback returned a `Dataset` without "
                               "a Status element")
            return STATUS_WITHOUT_STATUS, None, None
        comment = offending = None
        for elem in status:
            if elem.keyword == "ErrorComment":
                comment = str(elem.value) if elem.value else None
            elif elem.keyword == "OffendingElement":
                value = elem.value
                offending = [int(tag) for tag in (
                    value if isinstance(value, list) else [value])]
            elif elem.keyword != "Status":
                _service_log.warning(
                    f"Status dataset returned by callback contained an "
                    f"unsupported Element '{elem.keyword}'")
        return int(status.Status), comment, offending
    if isinstance(status, int):
        return status, None, None
    _service_log.error("Invalid status returned by callback")
    return STATUS_OF_WRONG_TYPE, None, None


# PDUs ----------------------------------------------------------------------

def p_data_pdus(context_id: int, value: bytes, max_length: int, *,
                command: bool = True) -> Iterator[bytes]:
    """The P-DATA-TF PDUs carrying ``value``, a command set (or, with
    ``command=False``, a data set) in one PDV per PDU, each PDU no longer
    than the peer's maximum (0: no limit)."""
    room = len(value) if not max_length else max(1, max_length - 6)
    kind = COMMAND if command else 0
    for start in range(0, max(len(value), 1), room or 1):
        fragment = value[start:start + room]
        last = start + room >= len(value)
        control = kind | (LAST_FRAGMENT if last else 0)
        pdv = _PDV_HEADER.pack(len(fragment) + 2, context_id, control)
        yield _PDU_HEADER.pack(P_DATA_TF, 0, len(pdv) + len(fragment)) \
            + pdv + fragment


def abort_pdu(source: int, reason: int) -> bytes:
    return _PDU_HEADER.pack(A_ABORT, 0, 4) + bytes((0, 0, source, reason))


RELEASE_RP_PDU = _PDU_HEADER.pack(A_RELEASE_RP, 0, 4) + bytes(4)
RELEASE_RQ_PDU = _PDU_HEADER.pack(A_RELEASE_RQ, 0, 4) + bytes(4)


def pdv_items(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(context ID, message control header, value) of each PDV of a
    P-DATA-TF body (PS3.8 9.3.5.1)."""
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            raise ProtocolError(
                f"a PDV item header is cut off at byte {offset} of the "
                f"{end}-byte P-DATA-TF")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or length > end - offset - 4:
            raise ProtocolError(
                f"the PDV item at byte {offset} of the {end}-byte "
                f"P-DATA-TF claims {length} bytes")
        yield context_id, control, body[offset + 6:offset + 4 + length]
        offset += 4 + length


def _is_cancel_of(kind: int, body: memoryview, message_id: int) -> bool:
    """Whether a PDU is a whole C-CANCEL-RQ for ``message_id``: one PDV,
    the last fragment of a command set (PS3.7 9.3.2.3 sends it so)."""
    if kind != P_DATA_TF:
        return False
    items = list(pdv_items(body))
    if len(items) != 1:
        return False
    _, control, value = items[0]
    if control != COMMAND | LAST_FRAGMENT:
        return False
    command = decode_command(value)
    return command.field == C_CANCEL_RQ and \
        command.responded_to == message_id


class _Message:
    """A DIMSE message being put together from its fragments."""

    __slots__ = ("context_id", "command_fragments", "command",
                 "data_fragments")

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        self.command_fragments: list[memoryview] = []
        self.command: Command | None = None
        self.data_fragments: list[memoryview] = []


class DataTransferLoop:
    """Runs an association's data transfer phase; one per association,
    run by its own thread. ``abort`` may be called from any thread."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.sock: socket.socket = assoc.dul.socket.socket
        self.contexts = {int(cx.context_id): cx
                         for cx in assoc._accepted_cx.values()}
        self.receive_limit = int(assoc.acceptor.maximum_length or 0)
        self.send_limit = int(assoc.requestor.maximum_length or 0)
        self._send_lock = threading.Lock()
        self._aborted_here = False
        self._header = bytearray(_PDU_HEADER.size)
        # PDUs read ahead while looking for a C-CANCEL, served next; and
        # an ending met while looking, raised when the loop reads on.
        self._held: deque[tuple[int, memoryview]] = deque()
        self._held_ending: BaseException | None = None
        # The node's mark for a C-STORE-RQ without Affected SOP Instance
        # UID, as its EVT_DIMSE_RECV handler sets it (see eligible()).
        from pacsstore.net.handlers import MISSING_UID
        self._missing_uid = MISSING_UID

    # The loop ---------------------------------------------------------

    def run(self) -> None:
        """Serve until the association ends, then close the connection."""
        self.sock.settimeout(self.assoc.network_timeout)
        try:
            self._serve()
        except (ProtocolError, _Closed, OSError) as error:
            # After an abort of our own, the socket it shut down fails
            # the read in progress: that ending is told already.
            if not self._aborted_here:
                self._end_on(error)
        finally:
            self._close()

    def _end_on(self, error: BaseException) -> None:
        if isinstance(error, ProtocolError):
            _assoc_log.error("Aborting the association: %s", error)
            self._send_quietly(abort_pdu(SERVICE_PROVIDER, error.reason))
            self._peer_gone(" (A-P-ABORT)")
        elif isinstance(error, TimeoutError):
            _assoc_log.error("Network timeout reached")
            self._end_on_timeout()
        else:
            self._peer_gone(" (A-P-ABORT)")

    def _serve(self) -> None:
        message: _Message | None = None
        while True:
            kind, body = self._next_pdu()
            if kind == P_DATA_TF:
                for context_id, control, value in pdv_items(body):
                    message = self._add(message, context_id, control, value)
            elif kind == A_RELEASE_RQ:
                self._release()
                return
            elif kind == A_ABORT:
                self._peer_gone("")
                return
            elif kind in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ,
                          A_RELEASE_RP):
                raise ProtocolError(
                    f"PDU type 0x{kind:02X} is not expected on an "
                    f"established association", UNEXPECTED_PDU)
            else:
                raise ProtocolError(f"PDU type 0x{kind:02X} is not a DICOM "
                                    f"PDU", UNRECOGNIZED_PDU)

    def _next_pdu(self) -> tuple[int, memoryview]:
        if self._held:
            return self._held.popleft()
        if self._held_ending is not None:
            ending, self._held_ending = self._held_ending, None
            raise ending
        return self._read_pdu()

    def _read_pdu(self) -> tuple[int, memoryview]:
        header = self._header
        self._read_into(memoryview(header), at_boundary=True)
        kind, _, length = _PDU_HEADER.unpack(header)
        if kind == P_DATA_TF:
            if self.receive_limit and length > self.receive_limit:
                raise ProtocolError(
                    f"a P-DATA-TF of {length} bytes is longer than the "
                    f"{self.receive_limit} announced as maximum")
        elif kind in (A_RELEASE_RQ, A_ABORT):
            if length > _SHORT_PDU_LIMIT:
                raise ProtocolError(
                    f"PDU type 0x{kind:02X} claims {length} bytes")
        else:
            return kind, memoryview(b"")  # never read: the loop aborts
        body = bytearray(length)
        self._read_into(memoryview(body), at_boundary=False)
        return kind, memoryview(body)

    def _read_into(self, view: memoryview, *, at_boundary: bool) -> None:
        got = 0
        while got < len(view):
            count = self.sock.recv_into(view[got:])
            if not count:
                if at_boundary and not got:
                    raise _Closed("the peer closed the connection")
                raise ProtocolError(
                    f"the connection closed inside a PDU ({got} of "
                    f"{len(view)} bytes read)")
            got += count

    # Messages -----------------------------------------------------------

    def _add(self, message: _Message | None, context_id: int, control: int,
             value: memoryview) -> _Message | None:
        """Add one fragment; returns the message still being received,
        None once it was complete and has been answered."""
        if context_id not in self.contexts:
            raise ProtocolError(
                f"a PDV names presentation context {context_id}, which "
                f"was not accepted")
        if message is None:
            message = _Message(context_id)
        elif message.context_id != context_id:
            raise ProtocolError(
                f"fragments of one message arrived on presentation "
                f"contexts {message.context_id} and {context_id}")
        if control & COMMAND:
            if message.command is not None:
                raise ProtocolError("a command fragment arrived after the "
                                    "last fragment of its command set")
            message.command_fragments.append(value)
            if not control & LAST_FRAGMENT:
                return message
            message.command = decode_command(
                b"".join(message.command_fragments))
            message.command_fragments.clear()
            if message.command.has_data_set:
                return message
        else:
            if message.command is None or not message.command.has_data_set:
                raise ProtocolError("a data set fragment arrived where a "
                                    "command set was expected")
            message.data_fragments.append(value)
            if not control & LAST_FRAGMENT:
                return message
        self._dispatch(message)
        return None

    def _dispatch(self, message: _Message) -> None:
        command = message.command
        assert command is not None
        context = self.contexts[message.context_id]
        if command.field == C_STORE_RQ and _storage(context):
            data = b"".join(message.data_fragments)
            message.data_fragments.clear()
            self._store(command, context, data)
        elif command.field == C_FIND_RQ and _find(context):
            from pacsstore.net.fastpath_find import answer_find
            data = b"".join(message.data_fragments)
            message.data_fragments.clear()
            answer_find(self, command, context, data)
        elif command.field == C_ECHO_RQ:
            self._echo(command, context)
        elif command.field == C_CANCEL_RQ:
            # Every request is answered in full before the next message
            # is read: a C-CANCEL read here came too late to cancel
            # anything, and PS3.7 9.3.2.3 gives it no response.
            pass
        elif command.field & RESPONSE_BIT:
            _dimse_log.warning(f"Received unexpected response 0x"
                               f"{command.field:04X}, ignoring")
        else:
            self._refuse(command)

    def _store(self, command: Command, context: Any, data: bytes) -> None:
        require_message_id(command, "C-STORE-RQ")
        request = C_STORE()
        try:
            request.MessageID = command.message_id
            request.AffectedSOPClassUID = command.affected_sop_class
            request.AffectedSOPInstanceUID = (command.affected_sop_instance
                                              or self._missing_uid)
            if command.priority is not None:
                request.Priority = command.priority
            if command.move_originator_ae:
                request.MoveOriginatorApplicationEntityTitle = \
                    command.move_originator_ae
            if command.move_originator_id is not None:
                request.MoveOriginatorMessageID = command.move_originator_id
        except (ValueError, TypeError) as error:
            raise ProtocolError(f"invalid C-STORE-RQ: {error}",
                                REASON_NOT_SPECIFIED) from error
        request.DataSet = BytesIO(data)
        if _handlers_log.isEnabledFor(logging.INFO):
            _handlers_log.info("Received Store Request")

        answer = self._intervention(
            evt.EVT_C_STORE, request, context,
            "Exception in handler bound to 'evt.EVT_C_STORE'",
            HANDLER_FAILED)
        if not self.assoc.is_established:
            return
        code, comment, offending = _status_fields(answer)
        elements: list[tuple[int, str, Any]] = []
        if command.affected_sop_class:
            elements.append((_AFFECTED_SOP_CLASS, "UI",
                             str(request.AffectedSOPClassUID)))
        elements += [(_COMMAND_FIELD, "US", C_STORE_RSP),
                     (_RESPONDED_TO, "US", command.message_id),
                     (_DATA_SET_TYPE, "US", NO_DATA_SET),
                     (_STATUS, "US", code)]
        if offending:
            elements.append((_OFFENDING_ELEMENT, "AT", offending))
        if comment:
            elements.append((_ERROR_COMMENT, "LO", comment))
        elements.append((_AFFECTED_SOP_INSTANCE, "UI",
                         str(request.AffectedSOPInstanceUID)))
        self._respond(context, encode_command(elements))

    def _echo(self, command: Command, context: Any) -> None:
        require_message_id(command, "C-ECHO-RQ")
        request = C_ECHO()
        request.MessageID = command.message_id
        request.AffectedSOPClassUID = command.affected_sop_class or \
            Verification
        if _handlers_log.isEnabledFor(logging.INFO):
            _handlers_log.info(
                f"Received Echo Request (MsgID {command.message_id})")
        # pynetdicom answers Success when the handler fails or returns
        # something that is not a status.
        answer = self._intervention(
            evt.EVT_C_ECHO, request, context,
            "Exception in the handler bound to 'evt.EVT_C_ECHO', "
            "responding with a default 'Status' value of 0x0000 (Success)",
            0x0000)
        if not self.assoc.is_established:
            return
        if not isinstance(answer, int) and not (
                isinstance(answer, Dataset) and "Status" in answer):
            _service_log.error(
                "Invalid status returned by the handler bound to "
                "'evt.EVT_C_ECHO', responding with 0x0000 (Success)")
            answer = 0x0000
        code, comment, _ = _status_fields(answer)
        elements: list[tuple[int, str, Any]] = [
            (_AFFECTED_SOP_CLASS, "UI", str(request.AffectedSOPClassUID)),
            (_COMMAND_FIELD, "US", C_ECHO_RSP),
            (_RESPONDED_TO, "US", command.message_id),
            (_DATA_SET_TYPE, "US", NO_DATA_SET),
            (_STATUS, "US", code)]
        if comment:
            elements.append((_ERROR_COMMENT, "LO", comment))
        self._respond(context, encode_command(elements))

    def _refuse(self, command: Command) -> None:
        """A request the context's SOP class does not define (a C-FIND on
        a CT Image Storage context, say): aborted, as pynetdicom aborts
        it."""
        _dimse_log.warning(f"Received request 0x{command.field:04X}, which "
                           f"its presentation context does not serve; "
                           f"aborting")
        self.assoc.abort()

    def _intervention(self, event: Any, request: Any, context: Any,
                      error_message: str, error_status: int,
                      **attributes: Any) -> Any:
        """Call the handler bound to ``event`` as pynetdicom's service
        classes do: with the non-blocking abort in place, and a handler
        that raises answered with ``error_status``."""
        assoc = self.assoc
        assoc.abort = assoc._abort_nonblocking
        try:
            return evt.trigger(assoc, event, {
                "request": request, "context": context.as_tuple,
                **attributes})
        except Exception as exc:  # noqa: BLE001 - pynetdicom's policy
            _service_log.error(error_message)
            _service_log.exception(exc)
            return error_status
        finally:
            assoc.abort = assoc._abort_blocking

    def _respond(self, context: Any, command: bytes,
                 data: bytes | None = None) -> None:
        """Send a message: its command set, then its data set if any, in
        one write."""
        context_id = int(context.context_id)
        pdus = list(p_data_pdus(context_id, command, self.send_limit))
        if data is not None:
            pdus += p_data_pdus(context_id, data, self.send_limit,
                                command=False)
        self._send(b"".join(pdus))

    def cancel_requested(self, message_id: int) -> bool:
        """Whether the peer has sent a C-CANCEL-RQ for ``message_id``,
        looking only at what already arrived (the loop does not wait).

        Anything else that arrived is held and served after the current
        request, in order. A closed connection or a broken PDU found
        while looking counts as a cancel: nobody is left to answer, and
        the loop ends on it as soon as the request is done."""
        if self._held or self._held_ending is not None:
            return self._held_ending is not None
        try:
            while select.select([self.sock], [], [], 0)[0]:
                kind, body = self._read_pdu()
                if _is_cancel_of(kind, body, message_id):
                    return True
                self._held.append((kind, body))
                return False
        except (ProtocolError, _Closed, OSError) as ending:
            self._held_ending = ending
            return True
        return False

    @property
    def ending_held(self) -> bool:
        """Whether the connection was found closed or broken while the
        loop looked for a C-CANCEL: nothing more should be sent."""
        return self._held_ending is not None

    # Ends ---------------------------------------------------------------

    def _release(self) -> None:
        """A-RELEASE-RQ in Sta6 (AR-2, then AR-4): answer it, then wait
        out the peer's close for as long as the ARTIM timer would."""
        self._send(RELEASE_RP_PDU)
        _assoc_log.info("Association Released")
        self.assoc.is_released = True
        self.assoc.is_established = False
        evt.trigger(self.assoc, evt.EVT_RELEASED, {})
        self._drain(self.assoc.acse_timeout)

    def _end_on_timeout(self) -> None:
        """The network timeout, ended as pynetdicom's reactor ends it."""
        if self.assoc.network_timeout_response != "A-RELEASE":
            self.assoc.abort()
            return
        _assoc_log.info("Releasing Association")
        self._send_quietly(RELEASE_RQ_PDU)
        self.assoc.is_released = True
        self.assoc.is_established = False
        evt.trigger(self.assoc, evt.EVT_RELEASED, {})
        self._drain(self.assoc.acse_timeout)

    def _peer_gone(self, how: str) -> None:
        """The association ended by an A-ABORT from the peer, a closed
        connection or a protocol error: A-ABORT or A-P-ABORT indication."""
        _assoc_log.info("Association Aborted%s", how)
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        evt.trigger(self.assoc, evt.EVT_ABORTED, {})

    def abort(self) -> None:
        """A-ABORT from the local user (the node stopping, or a handler):
        send it, and stop the loop by shutting the connection down."""
        self._aborted_here = True
        _assoc_log.info("Aborting Association")
        self._send_quietly(abort_pdu(SERVICE_USER, REASON_NOT_SPECIFIED))
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        evt.trigger(self.assoc, evt.EVT_ABORTED, {})
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _drain(self, timeout: float | None) -> None:
        """Read and drop whatever comes until the peer closes or
        ``timeout`` passes (Sta13)."""
        self.sock.settimeout(timeout)
        scratch = bytearray(65536)
        try:
            while self.sock.recv_into(scratch):
                pass
        except OSError:
            pass

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _send_quietly(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError:
            pass

    def _close(self) -> None:
        transport = self.assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.close()
            remote = self.assoc.requestor.address_info
            evt.trigger(self.assoc, evt.EVT_CONN_CLOSE,
                        {"address": remote.as_tuple if remote else None})
