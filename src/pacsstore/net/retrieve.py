"""The C-STORE sub-operations of a C-MOVE or C-GET: stored instances sent
as the archive holds them, or transcoded where the peer needs it.

pynetdicom runs the sub-operations. It opens the association to a move
destination (with the presentation contexts given here), sends a C-STORE
for each dataset the handler yields, counts completed, failed and
warning sub-operations, lists the failed SOP Instance UIDs, and puts all
of it in the pending and final responses (PS3.4 C.4.2.1.4, C.4.3.1.3).
What it cannot do alone is send an instance as the archive holds it:
given a pydicom Dataset, it encodes the dataset anew, which is not
byte-exact (pydicom drops group lengths and re-pads values) and cannot
change the transfer syntax for a peer that did not accept the stored one.

So the handler yields a :class:`StoredInstance`, a Dataset that holds
only the two UIDs pynetdicom's bookkeeping reads, and the association
that sends it has a :class:`StoredInstanceSender` as its
``send_c_store``. The sender reads the instance from the archive, picks
a transfer syntax among those the peer accepted for its SOP class (the
stored one first; otherwise
:func:`pacsstore.pixels.transcode.choose_syntax` picks, never lossy for
a lossless original), writes a Part 10 file of a fresh meta group and the
dataset bytes to a temporary file, and passes its path to pynetdicom's
own ``send_c_store``, which sends a file's dataset bytes unchanged
(``STORE_SEND_CHUNKED_DATASET``). An instance that cannot be read or
sent in any accepted syntax is a failed sub-operation: the sender returns
a failure status without sending, and pynetdicom counts it and lists it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from pacsstore.errors import PacsstoreError
from pacsstore.filemeta import build_file_meta
from pacsstore.net import fastsend
from pacsstore.net.requested import OUTGOING_HANDLERS
from pacsstore.net.status import PROCESSING_FAILURE, refusal
from pacsstore.pixels.transcode import (UNCOMPRESSED_TARGETS,
                                        choose_syntax, transcoded_view)

logger = logging.getLogger(__name__)

# An A-ASSOCIATE-RQ carries at most 128 presentation contexts (PS3.8
# 9.3.2: odd context IDs 1-255).
MAX_CONTEXTS = 128

# Status of a sub-operation that never reached the peer because no
# accepted context fits (PS3.7 C.5: Refused: SOP Class not supported).
NO_ACCEPTED_CONTEXT = 0x0122

SendCStore = Callable[..., Dataset]

# The largest instance a retrieve reads while the one before it is sent.
READ_AHEAD_BELOW = 64 << 20


class ReadingArchive(Protocol):
    """The part of :class:`pacsstore.Archive` a retrieve reads."""

    def get(self, sop_instance_uid: str) -> bytes: ...

    def record(self, sop_instance_uid: str) -> dict[str, Any]: ...


class StoredInstance(Dataset):
    """A stored instance to send, as pynetdicom sees it: a Dataset with
    the SOP Class and SOP Instance UIDs, and the transfer syntax it is
    stored in as a plain attribute (it is no element of the dataset)."""

    def __init__(self, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax: str, size: int = 0) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.stored_syntax = transfer_syntax
        self.stored_size = size
        self._reading: Future[bytes] | None = None

    @classmethod
    def of(cls, archive: ReadingArchive, uid: str) -> StoredInstance:
        record = archive.record(uid)
        return cls(record["sop_class_uid"], uid, record["transfer_syntax"],
                   record["size"])

    def read_from(self, archive: ReadingArchive) -> bytes:
        """The stored Part 10 file: read ahead (:func:`read_ahead`), or
        now."""
        reading, self._reading = self._reading, None
        if reading is not None:
            return reading.result()
        return archive.get(str(self.SOPInstanceUID))


def read_ahead(archive: ReadingArchive, instances: Sequence[StoredInstance]
               ) -> Iterator[StoredInstance]:
    """``instances`` in order; as each is handed out, the next is read
    from ``archive`` on a thread of its own, so that reading it (its
    frames decompressed and checked, mostly outside the GIL) overlaps
    sending the one before and waiting for the peer's answer. An
    instance of :data:`READ_AHEAD_BELOW` bytes or more is read when its
    turn comes, so that at most one large file is in memory at once."""
    with ThreadPoolExecutor(1, thread_name_prefix="pacsstore-read-ahead"
                            ) as pool:
        for position, instance in enumerate(instances):
            if position + 1 < len(instances):
                following = instances[position + 1]
                if following.stored_size < READ_AHEAD_BELOW:
                    following._reading = pool.submit(
                        archive.get, str(following.SOPInstanceUID))
            yield instance


def destination_contexts(
        instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """What a sub-operation association proposes: for each SOP class, a
    context for each syntax its instances are stored in (so that they go
    out unchanged wherever the peer accepts that), then one offering the
    uncompressed syntaxes for the peer that accepts none of those; and
    Verification, which every storage SCP has, so that the association
    comes up even when the peer takes none of the instances: each of
    them is then a failed sub-operation, where pynetdicom would otherwise
    fail the whole move as if the destination were unknown (0xA801).

    Past :data:`MAX_CONTEXTS`, the uncompressed fall-backs go first,
    then stored syntaxes of the SOP classes seen last; instances left
    without a context fail.
    """
    stored: dict[str, list[str]] = {}
    for instance in instances:
        syntaxes = stored.setdefault(str(instance.SOPClassUID), [])
        if instance.stored_syntax not in syntaxes:
            syntaxes.append(instance.stored_syntax)
    exact = [build_context(sop_class, [syntax])
             for sop_class, syntaxes in stored.items()
             for syntax in syntaxes]
    fallback = [build_context(sop_class, list(UNCOMPRESSED_TARGETS))
                for sop_class, syntaxes in stored.items()
                if not set(UNCOMPRESSED_TARGETS) <= set(syntaxes)]
    verification = [build_context(Verification)]
    wanted = verification + exact + fallback
    if len(wanted) > MAX_CONTEXTS:
        logger.warning("%d presentation contexts needed for one retrieve, "
                       "%d proposed", len(wanted), MAX_CONTEXTS)
    return wanted[:MAX_CONTEXTS]


def accepted_syntaxes(assoc: Association, sop_class: str) -> list[str]:
    """The transfer syntaxes ``assoc`` may send ``sop_class`` in."""
    return [str(context.transfer_syntax[0])
            for context in assoc.accepted_contexts
            if context.abstract_syntax == sop_class and context.as_scu]


class StoredInstanceSender:
    """``send_c_store`` for an association that sends stored instances;
    any other dataset goes to pynetdicom's own method unchanged."""

    def __init__(self, assoc: Association, archive: ReadingArchive,
                 originator: str | None = None) -> None:
        self.assoc = assoc
        self.archive = archive
        self.originator = originator
        self._send: SendCStore = assoc.send_c_store
        # Whether instances go out the lean way (net/fastsend.py).
        self._lean: bool | None = None

    def __call__(self, dataset: Any, msg_id: int = 1, priority: int = 2,
                 originator_aet: str | None = None,
                 originator_id: int | None = None) -> Dataset:
        if not isinstance(dataset, StoredInstance):
            return self._send(dataset, msg_id, priority, originator_aet,
                              originator_id)
        return self._send_stored(dataset, msg_id, priority,
                                 self.originator or originator_aet,
                                 originator_id)

    def _send_stored(self, instance: StoredInstance, *request: Any,
                     ) -> Dataset:
        """Send ``instance`` with the C-STORE ``request`` parameters
        (message ID, priority, move originator title and message ID)."""
        uid = str(instance.SOPInstanceUID)
        if not self.assoc.is_established:
            # The peer aborted or went away: pynetdicom would raise for
            # each instance left, and log an error for each.
            return self._failed(uid, PROCESSING_FAILURE,
                                "the association to the peer has ended")
        sop_class = str(instance.SOPClassUID)
        accepted = accepted_syntaxes(self.assoc, sop_class)
        if not accepted:
            return self._failed(uid, NO_ACCEPTED_CONTEXT,
                                f"the peer accepted no presentation "
                                f"context for its SOP class {sop_class}")
        syntax = choose_syntax(instance.stored_syntax, accepted)
        if syntax is None:
            return self._failed(uid, NO_ACCEPTED_CONTEXT,
                                f"the peer accepts no syntax it can be "
                                f"sent in (stored as "
                                f"{instance.stored_syntax})")
        if self._lean is None:
            # Decided once: the socket of an association the peer has
            # just aborted is gone, and the instances left must still
            # fail at once rather than wait on pynetdicom's send.
            self._lean = fastsend.eligible(self.assoc)
        if self._lean:
            return self._send_encoded(instance, syntax, *request)
        with tempfile.NamedTemporaryFile(prefix="pacsstore-send-",
                                         suffix=".dcm") as scratch:
            try:
                self._write_part10(scratch, instance, syntax)
            except (PacsstoreError, OSError) as error:
                return self._failed(uid, PROCESSING_FAILURE, str(error))
            # pynetdicom sends the dataset bytes of a file as they are
            # only with this process-wide setting; it changes nothing
            # but sends from files, so it is set and never reset.
            _config.STORE_SEND_CHUNKED_DATASET = True
            status = self._send(scratch.name, *request)
        self._log_refusal(uid, status)
        return status

    def _send_encoded(self, instance: StoredInstance, syntax: str,
                      message_id: int, priority: int,
                      originator_ae: str | None,
                      originator_id: int | None) -> Dataset:
        uid = str(instance.SOPInstanceUID)
        try:
            dataset = transcoded_view(instance.read_from(self.archive),
                                      syntax)
        except (PacsstoreError, OSError) as error:
            return self._failed(uid, PROCESSING_FAILURE, str(error))
        try:
            status = fastsend.send_c_store(
                self.assoc, sop_class_uid=str(instance.SOPClassUID),
                sop_instance_uid=uid, transfer_syntax=syntax,
                dataset=dataset, message_id=message_id, priority=priority,
                originator_ae=originator_ae, originator_id=originator_id)
        except fastsend.Unanswered as failure:
            logger.warning("sending %s to %s failed: %s", uid, self.peer,
                           failure)
            return refusal(PROCESSING_FAILURE, str(failure))
        self._log_refusal(uid, status)
        return status

    def _write_part10(self, file: IO[bytes], instance: StoredInstance,
                      syntax: str) -> None:
        """A fresh meta group naming ``syntax``, then the dataset bytes:
        as stored when ``syntax`` is the stored one, else transcoded."""
        uid = str(instance.SOPInstanceUID)
        file.write(build_file_meta(sop_class_uid=str(instance.SOPClassUID),
                                   sop_instance_uid=uid,
                                   transfer_syntax=syntax))
        file.write(transcoded_view(instance.read_from(self.archive), syntax))
        file.flush()

    @property
    def peer(self) -> str:
        """The AE title of the peer the instances go to."""
        if self.assoc.is_requestor:
            return str(self.assoc.acceptor.ae_title)
        return str(self.assoc.requestor.ae_title)

    def _failed(self, uid: str, code: int, reason: str) -> Dataset:
        logger.warning("not sending %s to %s: %s", uid, self.peer, reason)
        return refusal(code, reason)

    def _log_refusal(self, uid: str, status: Dataset) -> None:
        code = status.get("Status")
        if code is None or (code & 0xF000) in (0x0000, 0xB000):
            return  # success, warning, or no answer (pynetdicom logs it)
        logger.warning("%s refused %s with 0x%04X: %s", self.peer, uid,
                       code, status.get("ErrorComment", ""))


def send_stored_instances(assoc: Association, archive: ReadingArchive,
                          originator: str | None = None) -> None:
    """Make ``assoc`` send :class:`StoredInstance` datasets from
    ``archive``; calling it again changes nothing."""
    if not isinstance(assoc.send_c_store, StoredInstanceSender):
        sender = StoredInstanceSender(assoc, archive, originator)
        assoc.send_c_store = sender  # type: ignore[method-assign]


def sub_association_handlers(archive: ReadingArchive,
                             originator: str) -> list[tuple[Any, ...]]:
    """Event handlers for a move destination association: it sends
    stored instances from the moment the destination accepts it, before
    pynetdicom hands it the first dataset, and names ``originator`` (the
    AE that asked for the move) as Move Originator (PS3.7 9.1.1.1). Its
    socket sends without delay, as the node's accepted ones do."""
    return [*OUTGOING_HANDLERS,
            (evt.EVT_ACCEPTED, _on_accepted, [archive, originator])]


def _on_accepted(event: Event, archive: ReadingArchive,
                 originator: str) -> None:
    send_stored_instances(event.assoc, archive, originator)
