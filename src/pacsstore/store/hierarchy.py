"""The patient / study / series / instance hierarchy of the index.

Each instance record names its patient, study and series; the index keeps
one record per patient, study and series with the attributes a query at
that level matches on, and parent -> child links from which the counts
(related series, related instances, modalities in study) are computed
when asked, so they can never drift from the instances.

Attributes of a level are refreshed by each new instance (the latest
non-empty value wins: a corrected name or description sent later shows),
but the link to the parent is fixed by the first instance of the level:
a study is not moved to another patient by one stray instance.
"""

from __future__ import annotations

import logging
from typing import Any

import lmdb

from pacsstore.store.index import Index

log = logging.getLogger(__name__)

PATIENT_KEYS = ("PatientID", "PatientName", "IssuerOfPatientID",
                "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyID", "StudyDescription",
              "ReferringPhysicianName", "PatientAge")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber",
               "SeriesDescription", "SeriesDate", "SeriesTime",
               "BodyPartExamined", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime")
# What an instance answers for itself: the other attributes the walker
# records (pacsstore._parse), and the transfer syntax it was stored in.
INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "TransferSyntaxUID",
                 "SpecificCharacterSet", "ImageType", "InstanceNumber",
                 "ContentDate", "ContentTime", "AcquisitionDateTime",
                 "Manufacturer", "InstitutionName",
                 "PhotometricInterpretation", "SamplesPerPixel", "Rows",
                 "Columns", "BitsAllocated", "BitsStored",
                 "PixelRepresentation", "NumberOfFrames")
LEVEL_KEYS = {"patient": PATIENT_KEYS, "study": STUDY_KEYS,
              "series": SERIES_KEYS}
# What each level's record stores about its parent (fixed at creation).
PARENT = {"study": ("patient", "PatientID"),
          "series": ("study", "StudyInstanceUID"),
          "instance": ("series", "SeriesInstanceUID")}
LEVELS = ("patient", "study", "series", "instance")
UID_OF = {"patient": "PatientID", "study": "StudyInstanceUID",
          "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}


def _names(record: dict[str, Any]) -> dict[str, str]:
    return {"patient": record["patient"], "study": record["study"],
            "series": record["series"],
            "instance": record["sop_instance_uid"]}


def _merge(old: dict[str, Any] | None, attributes: dict[str, Any],
           level: str) -> dict[str, Any]:
    merged = dict(old or {})
    for keyword in LEVEL_KEYS[level]:
        value = attributes.get(keyword)
        if value not in (None, "", []):
            merged[keyword] = value
    return merged


def _study_patient(index: Index, txn: lmdb.Transaction,
                   names: dict[str, str]) -> str:
    """The patient the study belongs to: its first instance's. An
    instance that names another patient is stored and found under its
    own UIDs, but it neither moves the study nor creates or edits a
    patient of its own (which would leave that patient with no studies,
    or put one patient's name on another's record)."""
    study = index.record(txn, "study", names["study"])
    if study is None:
        return names["patient"]
    owner = study.get("PatientID", names["patient"])
    if owner != names["patient"]:
        log.warning("instance %s names patient %r but its study %s belongs "
                    "to patient %r; the study stays with %r",
                    names["instance"], names["patient"], names["study"],
                    owner, owner)
    return owner


def link_instance(index: Index, txn: lmdb.Transaction,
                  record: dict[str, Any]) -> None:
    """Create or refresh the patient, study and series of ``record``."""
    names = _names(record)
    attributes = record["attributes"]
    owner = _study_patient(index, txn, names)
    levels = ("patient", "study", "series")
    if owner != names["patient"]:
        levels, names["patient"] = ("study", "series"), owner
    for level in levels:
        old = index.record(txn, level, names[level])
        merged = _merge(old, attributes, level)
        merged[UID_OF[level]] = names[level]
        if level in PARENT:
            parent, keyword = PARENT[level]
            merged[keyword] = (old or {}).get(keyword, names[parent])
        index.put_record(txn, level, names[level], merged)
        if level in PARENT and old is None:
            parent = PARENT[level][0]
            index.link(txn, parent, merged[PARENT[level][1]], names[level])
    index.link(txn, "series", names["series"], names["instance"])


def unlink_instance(index: Index, txn: lmdb.Transaction,
                    record: dict[str, Any]) -> None:
    """Remove an instance from the hierarchy; drop levels left empty."""
    names = _names(record)
    index.unlink(txn, "series", names["series"], names["instance"])
    for level, parent in (("series", "study"), ("study", "patient")):
        if index.children(txn, level, names[level]):
            return
        own = index.record(txn, level, names[level]) or {}
        parent_name = own.get(PARENT[level][1], names[parent])
        index.delete_record(txn, level, names[level])
        index.unlink(txn, parent, parent_name, names[level])
        names[parent] = parent_name
    if not index.children(txn, "patient", names["patient"]):
        index.delete_record(txn, "patient", names["patient"])
