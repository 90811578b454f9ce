"""The mapping from pacsstore errors to C-STORE statuses."""

from __future__ import annotations

import errno

import pytest

from pacsstore.errors import (ConflictError, CorruptStoreError,
                              DatasetMismatchError, MalformedDicomError,
                              NotStorableError, OutOfSpaceError)
from pacsstore.net.contexts import (storable_transfer_syntaxes,
                                    storage_sop_classes)
from pacsstore.net.status import failure_status, status_code

from corpus import corpus_files


@pytest.mark.parametrize("error, code", [
    (MalformedDicomError("bad length", tag=0x00100010, offset=12), 0xC000),
    (NotStorableError("no SOP Instance UID"), 0xC001),
    (DatasetMismatchError("UID differs"), 0xA900),
    (ConflictError("1.2.3"), 0xC002),
    (OutOfSpaceError("disk full"), 0xA700),
    (OSError(errno.ENOSPC, "No space left on device"), 0xA700),
    (CorruptStoreError("digest mismatch"), 0x0110),
])
def test_net_status_code_for_each_error(error, code):
    assert status_code(error) == code
    status = failure_status(error)
    assert status.Status == code
    assert 0 < len(status.ErrorComment) <= 64
    assert status.ErrorComment.isascii()


def test_net_status_names_offending_element_of_malformed_input():
    status = failure_status(MalformedDicomError("x", tag=0x00100010))
    assert status.OffendingElement == 0x00100010


def test_net_status_long_message_is_cut_to_an_error_comment():
    status = failure_status(NotStorableError("1." * 60 + "1"))
    assert len(status.ErrorComment) == 64
    assert status.ErrorComment.endswith("...")


def test_net_status_conflict_is_a_c_store_error_status_of_its_own():
    # 0x0111 is not a C-STORE status (PS3.4 B.2.3); DCMTK shows it as
    # "Unknown Status". The conflict gets a Cxxx code no other error has.
    others = {status_code(error) for error in (
        MalformedDicomError("x"), NotStorableError("x"),
        DatasetMismatchError("x"), OutOfSpaceError("x"),
        CorruptStoreError("x"))}
    code = status_code(ConflictError("1." * 30 + "1"))
    assert 0xC000 <= code <= 0xCFFF and code not in others
    comment = failure_status(ConflictError("1." * 30 + "1")).ErrorComment
    assert comment == ("SOP Instance UID already stored with different "
                       "content")


def test_net_contexts_offer_storage_classes_pynetdicom_lacks():
    classes = set(storage_sop_classes())
    assert "1.2.840.10008.5.1.4.39.1" in classes   # Color Palette
    assert "1.2.840.10008.5.1.4.1.1.6" in classes  # Ultrasound (retired)
    assert "1.2.840.10008.5.1.4.38.1" in classes   # Hanging Protocol
    assert "1.2.840.10008.5.1.4.1.1.2" in classes  # CT Image
    # Storage commitment and the DICOMDIR are no C-STORE classes.
    assert not classes & {"1.2.840.10008.1.20.1", "1.2.840.10008.1.20.2",
                          "1.2.840.10008.1.3.10"}
    from pynetdicom import AllStoragePresentationContexts
    assert {str(c.abstract_syntax)
            for c in AllStoragePresentationContexts} <= classes


def test_net_contexts_accept_every_corpus_transfer_syntax():
    accepted = set(storable_transfer_syntaxes())
    assert {"1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.8.1",
            "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.107"} <= accepted
    assert {f.transfer_syntax for f in corpus_files()} <= accepted
