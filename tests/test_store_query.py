"""The matching rules of find() and the file meta of received data."""

from __future__ import annotations

import io

import pydicom
import pytest

from pacsstore import NotStorableError
from pacsstore.filemeta import build_file_meta
from pacsstore.store.query import matches


@pytest.mark.parametrize("value, pattern, expected", [
    ("12345", "12345", True),
    ("12345", "1234", False),
    ("12345", "12*", True),
    ("12345", "*45", True),
    ("12345", "1?345", True),
    ("12345", "1?45", False),
    ("Doe^John", "doe^john", False),   # single value matching is exact
    (None, "x", False),
    (None, "*", True),                 # universal matching
    (None, "", True),
    (["ORIGINAL", "PRIMARY"], "PRIM*", True),
    ("a.b", "a?b", True),
    ("a+b", "a+b", True),              # regex characters are literal
])
def test_query_matches(value, pattern, expected):
    assert matches(value, pattern) is expected


def test_query_uid_list_matching():
    assert matches("1.2.3", "1.2.4\\1.2.3", "StudyInstanceUID")
    assert not matches("1.2.5", "1.2.4\\1.2.3", "StudyInstanceUID")


def test_filemeta_is_read_back_by_pydicom():
    meta = build_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                           sop_instance_uid="1.2.3.4.5",
                           transfer_syntax="1.2.840.10008.1.2",
                           source_ae="CT_SCANNER")
    assert meta[:128] == b"\0" * 128 and meta[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(meta), force=True)
    fm = ds.file_meta
    assert fm.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert fm.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert fm.SourceApplicationEntityTitle == "CT_SCANNER"
    assert fm.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert fm.FileMetaInformationVersion == b"\x00\x01"


def test_filemeta_refuses_bad_uid_and_ae():
    with pytest.raises(NotStorableError, match="UID"):
        build_file_meta(sop_class_uid="1.2", sop_instance_uid="1.02.x",
                        transfer_syntax="1.2.840.10008.1.2")
    with pytest.raises(NotStorableError, match="AE"):
        build_file_meta(sop_class_uid="1.2", sop_instance_uid="1.2",
                        transfer_syntax="1.2.840.10008.1.2",
                        source_ae="A" * 17)
