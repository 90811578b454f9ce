"""The patient / study / series hierarchy keeps a study with the patient
of its first instance, even when a later instance names another."""

from __future__ import annotations

import io
import logging

import pydicom

from pacsstore import Archive
from test_store_support import CT_SMALL, corpus_bytes


def _copy(data: bytes, number: int, patient_id: str) -> bytes:
    """CT_small as another instance of its own study, for ``patient_id``."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = f"Name^{patient_id}"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_hierarchy_study_stays_with_its_first_patient(tmp_path, caplog):
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "store") as archive:
        archive.store(_copy(data, 1, "FIRST"))
        with caplog.at_level(logging.WARNING, "pacsstore.store.hierarchy"):
            stray = archive.store(_copy(data, 2, "OTHER"))
        study = stray.study_instance_uid

        assert "belongs to patient 'FIRST'" in caplog.text
        patients = archive.find("patient")
        assert [p["PatientID"] for p in patients] == ["FIRST"]
        assert patients[0]["PatientName"] == "Name^FIRST"
        (found,) = archive.find("study", PatientID="FIRST")
        assert found["StudyInstanceUID"] == study
        assert found["NumberOfStudyRelatedInstances"] == 2
        assert archive.find("study", PatientID="OTHER") == []
        # The stray instance is stored as sent and found by its UID.
        assert archive.get(stray.sop_instance_uid) == _copy(data, 2, "OTHER")
        (own,) = archive.find("instance",
                              SOPInstanceUID=stray.sop_instance_uid)
        assert own["StudyInstanceUID"] == study


def test_hierarchy_replacing_the_stray_instance_keeps_the_patient(tmp_path):
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "store", on_conflict="replace") as archive:
        archive.store(_copy(data, 1, "FIRST"))
        archive.store(_copy(data, 2, "OTHER"))
        archive.store(_copy(data, 2, "FIRST"))
        assert [p["PatientID"] for p in archive.find("patient")] == ["FIRST"]
        (found,) = archive.find("study")
        assert found["NumberOfStudyRelatedInstances"] == 2
