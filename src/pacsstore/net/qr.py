"""The query/retrieve SCP: C-FIND, C-MOVE and C-GET handlers for the
Patient Root and Study Root information models (PS3.4 C).

The handlers speak pynetdicom's handler protocol and leave the DIMSE
exchange to it: a C-FIND handler yields a (status, identifier) pair per
match, then the final status; a C-MOVE handler yields the destination,
then the number of sub-operations, then a (status, dataset) pair per
instance, and pynetdicom sends each instance, counts the outcomes and
answers with them. Matching is :mod:`pacsstore.store.cfind`'s; sending
an instance as stored, or transcoded, is :mod:`pacsstore.net.retrieve`'s.

A C-CANCEL is honoured between two matches or two sub-operations: the
handler yields Cancel (0xFE00), and for a retrieve pynetdicom adds the
counts so far and the failed UIDs. Where the peer asks for them in SOP
Class Extended Negotiation (PS3.4 C.5), the node agrees to relational
queries and combined date and time matching for its FIND SOP classes,
and to relational retrieval for its MOVE and GET SOP classes; fuzzy
semantic matching of person names and timezone adjustment it declines.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP
from pynetdicom.events import Event

from pacsstore.errors import PacsstoreError
from pacsstore.net.access import PeerTable
from pacsstore.net.contexts import FIND_MODELS, GET_MODELS, MOVE_MODELS
from pacsstore.net.identifiers import request_identifier
from pacsstore.net.retrieve import (ReadingArchive, StoredInstance,
                                    destination_contexts, read_ahead,
                                    send_stored_instances,
                                    sub_association_handlers)
from pacsstore.net.status import (CANCEL, IDENTIFIER_MISMATCH,
                                  IDENTIFIER_NOT_DECODABLE, PENDING,
                                  PENDING_UNSUPPORTED_KEYS, SUCCESS,
                                  TOO_MANY_MATCHES, query_failure, refusal)
from pacsstore.store.cfind import (Answers, find_identifiers,
                                   instances_for_retrieve)

logger = logging.getLogger(__name__)

# The query/retrieve levels of each information model (PS3.4 C.6.1.1,
# C.6.2.1); "IMAGE" is the instance level.
LEVELS = {"patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
          "study": ("STUDY", "SERIES", "IMAGE")}

# Number of Remaining Sub-operations and its siblings are US (PS3.7 9.3).
MAX_SUB_OPERATIONS = 0xFFFF

# The bytes of a SOP class's extended negotiation the node agrees to
# (PS3.4 C.5.1.1, C.5.2.1, C.5.3.1): for FIND, relational queries and
# combined date and time matching; for MOVE and GET, relational
# retrieval. Any other byte is answered 0: not supported.
RELATIONAL = 0
COMBINED_DATETIME = 1
AGREED = {**{sop_class: (RELATIONAL, COMBINED_DATETIME)
             for sop_class in FIND_MODELS},
          **{sop_class: (RELATIONAL,)
             for sop_class in (*MOVE_MODELS, *GET_MODELS)}}


class _Refusal(Exception):
    """A request that fails before any match or sub-operation: the
    whole reason, for the node's log, and the status the peer gets,
    whose Error Comment holds at most 64 characters of it."""

    def __init__(self, status: Dataset, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _refused(code: int, reason: str) -> _Refusal:
    return _Refusal(refusal(code, reason), reason)


# Extended negotiation ------------------------------------------------

def handle_sop_extended(event: Event) -> dict[str, bytes]:
    """EVT_SOP_EXTENDED: for each query/retrieve SOP class asked about,
    yes to the options of :data:`AGREED` that were asked for."""
    answers = {}
    for sop_class, asked in event.app_info.items():
        if str(sop_class) in AGREED and asked:
            answers[sop_class] = bytes(
                1 if byte == 1 and place in AGREED[str(sop_class)] else 0
                for place, byte in enumerate(asked))
    return answers


def agreed(assoc: Association, sop_class: str, option: int) -> bool:
    """Whether extended negotiation agreed ``option`` (a byte position)
    for ``sop_class``: the requestor asked with a 1, and
    :func:`handle_sop_extended` agrees to every option of
    :data:`AGREED` that is asked for."""
    asked = assoc.requestor.sop_class_extended.get(sop_class) or b""
    return (option in AGREED.get(sop_class, ()) and len(asked) > option
            and asked[option] == 1)


# Identifiers ------------------------------------------------------------

def checked_identifier(event: Event, model: str) -> Dataset:
    """The request's identifier, decoded, with a Query/Retrieve Level of
    ``model``; otherwise :class:`_Refusal`."""
    try:
        identifier = request_identifier(event)
    except Exception as error:  # noqa: BLE001 - hostile bytes
        # pydicom raises whatever its decoders raise on bad bytes
        # (ValueError, struct.error, KeyError, ...): the peer gets the
        # refusal, the node goes on.
        reason = str(error).strip().splitlines() or [type(error).__name__]
        raise _refused(IDENTIFIER_NOT_DECODABLE,
                       f"identifier cannot be decoded: {reason[0]}") \
            from None
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
    if level not in LEVELS[model]:
        found = f"is {level!r}" if level else "is missing"
        raise _refused(IDENTIFIER_MISMATCH,
                       f"QueryRetrieveLevel {found}; {model} root has "
                       f"{', '.join(LEVELS[model])}")
    return identifier


# C-FIND -----------------------------------------------------------------

class FindHandler:
    """The EVT_C_FIND handler, bound to one archive."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive

    def __call__(self, event: Event) -> Iterator[tuple[Any, Any]]:
        sop_class = str(event.request.AffectedSOPClassUID)
        model = FIND_MODELS[sop_class]
        peer = event.assoc.requestor.ae_title
        try:
            identifier = checked_identifier(event, model)
        except _Refusal as refused:
            logger.warning("C-FIND from %s refused: %s", peer, refused)
            yield refused.status, None
            return
        answered = 0
        try:
            answers = self._matches(event, identifier, sop_class)
            pending = PENDING_UNSUPPORTED_KEYS \
                if answers.unsupported_keys else PENDING
            for match in answers:
                if event.is_cancelled:
                    logger.info("C-FIND from %s cancelled after %d "
                                "matches", peer, answered)
                    yield CANCEL, None
                    return
                yield pending, match
                answered += 1
        except (PacsstoreError, OSError) as error:
            logger.warning("C-FIND from %s failed: %s", peer, error)
            yield query_failure(error), None
            return
        logger.info("C-FIND from %s at %s level: %d matches", peer,
                    identifier.QueryRetrieveLevel, answered)
        yield SUCCESS, None

    def _matches(self, event: Event, identifier: Dataset,
                 sop_class: str) -> Answers:
        """The matcher's answers (it raises QueryError here, when called,
        or while iterating for a store failure)."""
        return find_identifiers(
            self.archive, identifier, model=FIND_MODELS[sop_class],
            relational=agreed(event.assoc, sop_class, RELATIONAL),
            combined_datetime=agreed(event.assoc, sop_class,
                                     COMBINED_DATETIME),
            retrieve_ae_title=event.assoc.ae.ae_title)


# C-MOVE and C-GET -------------------------------------------------------

def retrieve_instances(archive: ReadingArchive, event: Event,
                       model: str) -> list[StoredInstance]:
    """The stored instances a C-MOVE or C-GET identifier asks for;
    otherwise :class:`_Refusal`."""
    identifier = checked_identifier(event, model)
    sop_class = str(event.request.AffectedSOPClassUID)
    try:
        uids = instances_for_retrieve(
            archive, identifier, model=model,
            relational=agreed(event.assoc, sop_class, RELATIONAL))
        instances = [StoredInstance.of(archive, uid) for uid in uids]
    except (PacsstoreError, OSError) as error:
        raise _Refusal(query_failure(error),
                       str(error) or type(error).__name__) from None
    if len(instances) > MAX_SUB_OPERATIONS:
        raise _refused(TOO_MANY_MATCHES,
                       f"{len(instances)} instances match; one retrieve "
                       f"sends at most {MAX_SUB_OPERATIONS}")
    return instances


def sub_operations(event: Event, archive: ReadingArchive,
                   instances: list[StoredInstance],
                   ) -> Iterator[tuple[int, Dataset | None]]:
    """A pending (status, instance) pair per instance, until a C-CANCEL;
    each instance is read while the one before it is sent."""
    for instance in read_ahead(archive, instances):
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, instance


class MoveHandler:
    """The EVT_C_MOVE handler: destinations from the peer table."""

    def __init__(self, archive: ReadingArchive, peers: PeerTable,
                 refusals: EarlyRefusals) -> None:
        self.archive = archive
        self.peers = peers
        self.refusals = refusals

    def __call__(self, event: Event) -> Iterator[Any]:
        peer = event.assoc.requestor.ae_title
        target = event.move_destination or ""
        address = self.peers.destination(target)
        if address is None:
            logger.warning("C-MOVE from %s refused: %r is not a known move "
                           "destination", peer, target)
            yield None, None  # pynetdicom answers 0xA801
            return
        model = MOVE_MODELS[str(event.request.AffectedSOPClassUID)]
        try:
            instances = retrieve_instances(self.archive, event, model)
        except _Refusal as refused:
            logger.warning("C-MOVE from %s refused: %s", peer, refused)
            yield from self.refusals.refuse(event, refused.status, address)
            return
        logger.info("C-MOVE from %s: %d instances to %s at %s:%d", peer,
                    len(instances), target, *address)
        yield (*address, {
            "contexts": destination_contexts(instances),
            "evt_handlers": sub_association_handlers(self.archive, peer)})
        yield len(instances)
        yield from sub_operations(event, self.archive, instances)


class GetHandler:
    """The EVT_C_GET handler: the C-STOREs go back on the requesting
    association, in the storage contexts the peer proposed with the SCP
    role for itself."""

    def __init__(self, archive: ReadingArchive,
                 refusals: EarlyRefusals) -> None:
        self.archive = archive
        self.refusals = refusals

    def __call__(self, event: Event) -> Iterator[Any]:
        peer = event.assoc.requestor.ae_title
        model = GET_MODELS[str(event.request.AffectedSOPClassUID)]
        try:
            instances = retrieve_instances(self.archive, event, model)
        except _Refusal as refused:
            logger.warning("C-GET from %s refused: %s", peer, refused)
            yield from self.refusals.refuse(event, refused.status)
            return
        logger.info("C-GET from %s: %d instances", peer, len(instances))
        send_stored_instances(event.assoc, self.archive)
        yield len(instances)
        yield from sub_operations(event, self.archive, instances)


class EarlyRefusals:
    """Refusals of C-MOVE and C-GET requests before any sub-operation.

    pynetdicom lets a C-MOVE or C-GET handler end with a failure status
    only once it has announced at least one sub-operation (and, for a
    C-MOVE, once pynetdicom has associated with the destination); the
    final response then counts the announced sub-operation as failed. A
    request refused for its identifier has no sub-operation and should
    open no association. So the handler announces none, which pynetdicom
    answers at once with an empty success, and this class rewrites that
    response as it is sent (EVT_DIMSE_SENT comes before the encoding)
    into the refusal: its status and Error Comment in place of 0x0000,
    with the zero counts, which are true.
    """

    def __init__(self) -> None:
        self._pending: weakref.WeakKeyDictionary[
            Association, dict[int, Dataset]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def refuse(self, event: Event, status: Dataset,
               destination: tuple[str, int] | None = None,
               ) -> Iterator[Any]:
        """The yields that end a request with ``status``: for a C-MOVE
        the (known) ``destination`` first, then no sub-operations."""
        with self._lock:
            pending = self._pending.setdefault(event.assoc, {})
            pending[int(event.request.MessageID)] = status
        if destination is not None:
            yield destination
        yield 0

    def handle_sent(self, event: Event) -> None:
        """EVT_DIMSE_SENT: put a recorded refusal in its response."""
        message = event.message
        if not isinstance(message, (C_MOVE_RSP, C_GET_RSP)):
            return
        command = message.command_set
        with self._lock:
            pending = self._pending.get(event.assoc, {})
            status = pending.pop(int(command.MessageIDBeingRespondedTo),
                                 None)
        if status is None or command.Status != SUCCESS:
            return
        command.Status = status.Status
        command.ErrorComment = status.ErrorComment
        message._set_command_group_length()
