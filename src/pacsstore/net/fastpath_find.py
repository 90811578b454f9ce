"""C-FIND on the lean data transfer loop (:mod:`pacsstore.net.fastpath`).

The exchange of PS3.4 C.4.1 as pynetdicom's Query/Retrieve service class
runs it, without its per-message machinery: the handler bound to
EVT_C_FIND gets the same :class:`~pynetdicom.events.Event` (the request
as a C-FIND primitive, the identifier, and ``is_cancelled``), each
(status, identifier) it yields is checked against the statuses of the
C-FIND service class, and goes out as a response as soon as it is
made: a pending response with its identifier per match (a peer sees the
first matches while later ones are still being made), then one final
response. Statuses are read as pynetdicom reads them; a
handler that raises is answered 0xC311, an identifier that cannot be
encoded 0xC312, as pynetdicom answers them.

A C-CANCEL-RQ (PS3.7 9.3.2.3) is looked for between matches, when the
handler asks through ``event.is_cancelled``, among what has already
arrived: the loop never waits for one.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Iterable, Iterator
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom._globals import (STATUS_CANCEL, STATUS_FAILURE,
                                 STATUS_PENDING, STATUS_SUCCESS,
                                 STATUS_WARNING)
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.status import QR_FIND_SERVICE_CLASS_STATUS
from pynetdicom.utils import set_uid

from pacsstore.net.fastpath import (C_FIND_RSP, DATA_SET_PRESENT,
                                    NO_DATA_SET, REASON_NOT_SPECIFIED,
                                    Command, ProtocolError, _status_fields,
                                    encode_command, require_message_id)

if TYPE_CHECKING:
    from pacsstore.net.fastpath import DataTransferLoop

_service_log = logging.getLogger("pynetdicom.service_class")

HANDLER_FAILED = 0xC311      # pynetdicom's, for a handler that raised
NOT_ENCODABLE = 0xC312       # pynetdicom's, for an identifier it cannot encode

# Tags of the response's command set (PS3.7 E.1).
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_RESPONDED_TO = 0x0120
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_OFFENDING_ELEMENT = 0x0901
_ERROR_COMMENT = 0x0902


def answer_find(loop: DataTransferLoop, command: Command, context: Any,
                identifier: bytes) -> None:
    """Serve one C-FIND-RQ whose identifier arrived as ``identifier``."""
    request = _request(command, identifier)
    answers = loop._intervention(
        evt.EVT_C_FIND, request, context,
        "Exception in handler bound to 'evt.EVT_C_FIND'", HANDLER_FAILED,
        _is_cancelled=loop.cancel_requested)
    if not loop.assoc.is_established:
        return
    if isinstance(answers, (int, Dataset)):
        # The handler raised (answered with pynetdicom's status for it).
        _Responder(loop, command, context).send(answers, None)
        return
    _Responder(loop, command, context).run(
        iter([(0x0000, None)]) if answers is None else answers)


def _request(command: Command, identifier: bytes) -> C_FIND:
    message_id = require_message_id(command, "C-FIND-RQ")
    request = C_FIND()
    try:
        request.MessageID = message_id
        # The setter checks the UID with a regular expression on every
        # request (about 20 µs); the SOP class is one of a few, each
        # checked once.
        request._affected_sop_class_uid = _sop_class(
            command.affected_sop_class)
        if command.priority is not None:
            request.Priority = command.priority
    except (ValueError, TypeError) as error:
        raise ProtocolError(f"invalid C-FIND-RQ: {error}",
                            REASON_NOT_SPECIFIED) from error
    request.Identifier = BytesIO(identifier)
    return request


@functools.lru_cache(maxsize=64)
def _sop_class(value: str | None) -> UID | None:
    """``value`` as the Affected SOP Class UID setter makes it (raising
    ValueError as it does for an invalid UID)."""
    return set_uid(value, "Affected SOP Class UID") or None


class _Responder:
    """The responses to one C-FIND-RQ, sent as the handler yields them."""

    def __init__(self, loop: DataTransferLoop, command: Command,
                 context: Any) -> None:
        self.loop = loop
        self.command = command
        self.context = context
        syntax = context.transfer_syntax[0]
        self._encoding = (syntax.is_implicit_VR, syntax.is_little_endian,
                          syntax.is_deflated)
        self.sent = 0

    def run(self, answers: Iterable[Any]) -> None:
        for status, identifier in _guarded(iter(answers)):
            if not self._open():
                return
            if not self.send(status, identifier):
                return
        if self._open():
            self.send(0x0000, None)

    def _open(self) -> bool:
        return self.loop.assoc.is_established and not self.loop.ending_held

    def send(self, status: Any, identifier: Dataset | None) -> bool:
        """Send one response; False once it was the final one."""
        code, comment, offending = _status_fields(status)
        category, meaning = QR_FIND_SERVICE_CLASS_STATUS.get(
            code, (None, ""))
        data = None
        if category == STATUS_PENDING:
            data = self._encoded(identifier)
            if data is None:
                code, category, meaning = (NOT_ENCODABLE, STATUS_FAILURE,
                                           "Unable to Process")
                comment = offending = None
        self._log(code, category, meaning)
        self.loop._respond(self.context,
                           self._command(code, comment, offending,
                                         data is not None), data)
        self.sent += 1
        return category in (STATUS_PENDING, STATUS_WARNING)

    def _encoded(self, identifier: Dataset | None) -> bytes | None:
        if not isinstance(identifier, Dataset):
            _service_log.error("Failed encoding the response 'Identifier' "
                               "dataset")
            return None
        try:
            data = encode(identifier, *self._encoding)
        except Exception:  # noqa: BLE001 - pydicom's encoders raise anything
            data = None
        if not data:
            _service_log.error("Failed encoding the response 'Identifier' "
                               "dataset")
            return None
        return data

    def _command(self, code: int, comment: str | None,
                 offending: list[int] | None, has_data: bool) -> bytes:
        elements: list[tuple[int, str, Any]] = []
        if self.command.affected_sop_class:
            elements.append((_AFFECTED_SOP_CLASS, "UI",
                             self.command.affected_sop_class))
        elements += [
            (_COMMAND_FIELD, "US", C_FIND_RSP),
            (_RESPONDED_TO, "US", self.command.message_id),
            (_DATA_SET_TYPE, "US",
             DATA_SET_PRESENT if has_data else NO_DATA_SET),
            (_STATUS, "US", code)]
        if offending:
            elements.append((_OFFENDING_ELEMENT, "AT", offending))
        if comment:
            elements.append((_ERROR_COMMENT, "LO", comment))
        return encode_command(elements)

    def _log(self, code: int, category: str | None, meaning: str) -> None:
        if not _service_log.isEnabledFor(logging.INFO):
            return
        number = self.sent + 1
        if category == STATUS_CANCEL:
            _service_log.info("Received C-CANCEL-FIND RQ from peer")
            label = "Cancel"
        elif category in (STATUS_FAILURE, STATUS_WARNING):
            label = f"{category} - {meaning}"
        elif category in (STATUS_PENDING, STATUS_SUCCESS):
            label = category
        else:
            label = "Unknown"
        _service_log.info(f"Find SCP Response {number}: 0x{code:04X} "
                          f"({label})")


def _guarded(answers: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    """The handler's (status, identifier) pairs; a handler that raises
    while iterating ends them with pynetdicom's status for that."""
    while True:
        try:
            answer = next(answers)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - pynetdicom's policy
            kind, error, trace = sys.exc_info()
            _service_log.error("Exception in handler bound to "
                               "'evt.EVT_C_FIND'")
            _service_log.error(
                "\nTraceback (most recent call last):\n"
                + "".join(traceback.format_tb(trace))
                + f"{kind.__name__ if kind else 'Exception'}: {error}")
            yield HANDLER_FAILED, None
            return
        try:
            status, identifier = answer
        except (TypeError, ValueError):
            _service_log.error("The handler bound to 'evt.EVT_C_FIND' "
                               "yielded something other than a (status, "
                               "identifier) pair")
            yield HANDLER_FAILED, None
            return
        yield status, identifier
