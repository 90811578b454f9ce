"""A store whose index is of format version 1 (before the level records
kept their counts and the attribute indexes existed) still opens: a
writer upgrades it in place, a reader refuses it with a message that
says what to do.

A version 1 index is made here from a current one by taking away what
version 2 added, exactly as docs/format.md described version 1: level
records that hold only the version 1 attributes and the parent's key,
no ``attributes`` database, and format_version 1 in ``meta``.
"""

from __future__ import annotations

import json
import struct

import lmdb
import pydicom
import pytest

from pacsstore import Archive
from pacsstore.errors import StoreFormatError
from pacsstore.store.index import INDEX_FORMAT_VERSION
from test_store_support import (CT_SMALL, MR_SMALL, corpus_path,
                                index_format_version)

JAPANESE = "pydicom/charset_files/chrH31.dcm"
FRENCH = "pydicom/charset_files/chrFren.dcm"
VERSION_1_KEYS = {
    "patients": ("PatientID", "PatientName", "IssuerOfPatientID",
                 "PatientBirthDate", "PatientSex"),
    "studies": ("StudyInstanceUID", "StudyDate", "StudyTime",
                "AccessionNumber", "StudyID", "StudyDescription",
                "ReferringPhysicianName", "PatientAge", "PatientID"),
    "series": ("SeriesInstanceUID", "Modality", "SeriesNumber",
               "SeriesDescription", "SeriesDate", "SeriesTime",
               "BodyPartExamined", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime", "StudyInstanceUID"),
}
QUERIES = [
    ("patient", {}), ("study", {}), ("series", {}), ("instance", {}),
    ("study", {"PatientName": "yamada*"}),
    ("study", {"StudyDate": "2004-"}),
    ("series", {"Modality": "MR"}),
    ("study", {"Modality": "CT"}),
]


def _as_version_1(store) -> None:
    env = lmdb.open(str(store / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        for name, keys in VERSION_1_KEYS.items():
            db = env.open_db(name.encode(), txn=txn)
            for key, raw in list(txn.cursor(db)):
                record = json.loads(raw)
                kept = {k: v for k, v in record.items() if k in keys}
                txn.put(key, json.dumps(kept).encode(), db=db)
        txn.drop(env.open_db(b"attributes", txn=txn), delete=True)
        txn.put(b"format_version", struct.pack("<I", 1),
                db=env.open_db(b"meta", txn=txn))
    env.close()


@pytest.fixture
def stores(tmp_path):
    """A current store and its version 1 copy, of the same files."""
    current, old = tmp_path / "current", tmp_path / "old"
    for store in (current, old):
        with Archive(store) as archive:
            for relpath in (CT_SMALL, MR_SMALL, JAPANESE, FRENCH):
                archive.store(corpus_path(relpath))
    _as_version_1(old)
    return current, old


def test_migration_writer_upgrades_a_version_1_index(stores):
    current, old = stores
    assert index_format_version(old) == 1
    with Archive(old) as upgraded, Archive(current, readonly=True) as fresh:
        for level, keys in QUERIES:
            assert upgraded.find(level, **keys) == fresh.find(level, **keys)
        [study] = upgraded.find("study", PatientName="yamada*")
        assert study["NumberOfStudyRelatedInstances"] == 1
    assert index_format_version(old) == INDEX_FORMAT_VERSION
    with Archive(old, readonly=True) as reader:   # now readable
        assert len(reader.find("instance")) == 4


def test_migration_reader_refuses_a_version_1_index(stores):
    _, old = stores
    with pytest.raises(StoreFormatError) as caught:
        Archive(old, readonly=True)
    message = str(caught.value)
    assert "format version 1" in message
    assert "open the store once for writing" in message
    assert index_format_version(old) == 1   # nothing was changed
    with Archive(old) as writer:   # the refused open left nothing open
        assert len(writer.find("study")) == 4


def test_migration_keeps_the_first_instance_as_the_study_owner(tmp_path):
    # Replayed in commit order, the study stays with the patient of its
    # first instance, as it did before the upgrade.
    ct = pydicom.dcmread(corpus_path(CT_SMALL))
    store = tmp_path / "store"
    with Archive(store) as archive:
        for number, patient in ((1, "FIRST"), (2, "OTHER")):
            ct.SOPInstanceUID = f"{ct.SOPInstanceUID}.{number}"
            ct.PatientID = patient
            archive.store(ct)
    _as_version_1(store)
    with Archive(store) as archive:
        assert [p["PatientID"] for p in archive.find("patient")] == \
            ["FIRST"]
        [study] = archive.find("study")
        assert study["NumberOfStudyRelatedInstances"] == 2
        assert study["NumberOfPatientRelatedInstances"] == 2
