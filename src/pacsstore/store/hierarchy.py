"""The patient / study / series / instance hierarchy of the index.

Each instance record names its patient, study and series; the index keeps
one record per patient, study and series with the attributes a query at
that level matches on and answers with, parent -> child links, and the
counts a C-FIND answer carries (related studies, series and instances,
the modalities and SOP classes in a study). The counts live in the
records and change in the transaction that links or unlinks an instance,
so answering them reads one record, not the children; the attribute
indexes (secondary.py) follow the records in the same transaction.

Attributes of a level are refreshed by each new instance (the latest
non-empty value wins: a corrected name or description sent later shows),
but the link to the parent is fixed by the first instance of the level:
a study is not moved to another patient, nor a series to another study,
by one stray instance.

Record fields named by a DICOM keyword (capitalised) are answered by
queries; ``tally`` (lower case) is bookkeeping: how many series of the
study have each modality, how many instances each SOP class, so that
ModalitiesInStudy and SOPClassesInStudy stay right when one goes away.

The records read here may be shared with the write transaction's buffer
(index.py), so a change is always made to a copy, nested ``tally``
included, and put back.
"""

from __future__ import annotations

import logging
from typing import Any

import lmdb

from pacsstore.store import secondary
from pacsstore.store.index import Index

log = logging.getLogger(__name__)

PATIENT_KEYS = ("PatientID", "PatientName", "IssuerOfPatientID",
                "PatientBirthDate", "PatientBirthTime", "PatientSex",
                "OtherPatientIDs", "OtherPatientNames", "EthnicGroup",
                "PatientComments")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyID", "StudyDescription",
              "ReferringPhysicianName", "NameOfPhysiciansReadingStudy",
              "AdmittingDiagnosesDescription", "PatientAge", "Occupation",
              "AdditionalPatientHistory")
# The General Series and General Equipment modules: series attributes.
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber",
               "SeriesDescription", "SeriesDate", "SeriesTime",
               "BodyPartExamined", "Laterality", "ProtocolName",
               "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime",
               "PerformedProcedureStepDescription",
               "PerformingPhysicianName", "OperatorsName", "Manufacturer",
               "ManufacturerModelName", "InstitutionName",
               "InstitutionalDepartmentName", "StationName")
# What an instance answers for itself: the other attributes the walker
# records (pacsstore._parse), and the transfer syntax it was stored in.
INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "TransferSyntaxUID",
                 "AvailableTransferSyntaxUID", "SpecificCharacterSet",
                 "ImageType", "InstanceNumber", "AcquisitionNumber",
                 "ContentDate", "ContentTime", "AcquisitionDate",
                 "AcquisitionTime", "AcquisitionDateTime",
                 "PhotometricInterpretation", "SamplesPerPixel", "Rows",
                 "Columns", "BitsAllocated", "BitsStored",
                 "PixelRepresentation", "NumberOfFrames")
LEVEL_KEYS = {"patient": PATIENT_KEYS, "study": STUDY_KEYS,
              "series": SERIES_KEYS}
# The counts each level's record carries (PS3.4 C.6.1.1 and C.6.2.1).
COUNT_KEYS = {
    "patient": ("NumberOfPatientRelatedStudies",
                "NumberOfPatientRelatedSeries",
                "NumberOfPatientRelatedInstances"),
    "study": ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "ModalitiesInStudy", "SOPClassesInStudy"),
    "series": ("NumberOfSeriesRelatedInstances",),
    "instance": (),
}
# What each level's record stores about its parent (fixed at creation).
PARENT = {"study": ("patient", "PatientID"),
          "series": ("study", "StudyInstanceUID"),
          "instance": ("series", "SeriesInstanceUID")}
LEVELS = ("patient", "study", "series", "instance")
UID_OF = {"patient": "PatientID", "study": "StudyInstanceUID",
          "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
TALLY = "tally"
_LINKED = ("patient", "study", "series")


def _names(record: dict[str, Any]) -> dict[str, str]:
    return {"patient": record["patient"], "study": record["study"],
            "series": record["series"],
            "instance": record["sop_instance_uid"]}


def _merge(old: dict[str, Any] | None, attributes: dict[str, Any],
           level: str) -> dict[str, Any]:
    merged = dict(old or {})
    for keyword in LEVEL_KEYS[level]:
        value = attributes.get(keyword)
        if value is not None and value != "" and value != []:
            merged[keyword] = value
    return merged


def _owners(index: Index, txn: lmdb.Transaction, names: dict[str, str]
            ) -> tuple[dict[str, str], dict[str, dict[str, Any] | None]]:
    """Where the instance is filed, and the records there now: its own
    series; the study of that series (fixed by its first instance); the
    patient of that study. An instance that names another study or
    patient is stored and found under its own UIDs, but moves nothing
    and creates no patient or study of its own (which would be left
    without series, or put one patient's name on another's record)."""
    owners = dict(names)
    old: dict[str, dict[str, Any] | None] = {}
    for level in ("series", "study", "patient"):
        old[level] = index.record(txn, level, owners[level])
        parent = PARENT.get(level)
        if parent and old[level] is not None:
            owners[parent[0]] = old[level].get(parent[1], names[parent[0]])
    return owners, old


def _warn_if_stray(names: dict[str, str], owners: dict[str, str]) -> None:
    for level, below in (("study", "series"), ("patient", "study")):
        if owners[level] != names[level]:
            log.warning("instance %s names %s %r but its %s %s belongs to "
                        "%s %r; the %s stays with %r", names["instance"],
                        level, names[level], below, owners[below], level,
                        owners[level], below, owners[level])
            return


def _refreshed(names: dict[str, str], owners: dict[str, str]
               ) -> tuple[str, ...]:
    """The levels whose attributes the instance refreshes: its series,
    and each level above as long as the instance agrees it is filed
    there."""
    levels = ["series"]
    for level in ("study", "patient"):
        if owners[level] != names[level]:
            break
        levels.append(level)
    return tuple(levels)


def _add(record: dict[str, Any], keyword: str, delta: int) -> int:
    record[keyword] = record.get(keyword, 0) + delta
    return record[keyword]


def _tally(study: dict[str, Any], kind: str, values: list[Any],
           delta: int) -> None:
    # Copies, not in place: ``study`` is a shallow copy of a record that
    # may be shared with the transaction's buffer.
    tally = dict(study.get(TALLY, {}))
    counts = dict(tally.get(kind, {}))
    for value in values:
        value = str(value)
        counts[value] = counts.get(value, 0) + delta
        if counts[value] <= 0:
            del counts[value]
    tally[kind] = counts
    study[TALLY] = tally


def _derive_lists(study: dict[str, Any]) -> None:
    tally = study.get(TALLY, {})
    study["ModalitiesInStudy"] = sorted(
        m for m in tally.get("modalities", {}) if m)
    study["SOPClassesInStudy"] = sorted(
        c for c in tally.get("sop_classes", {}) if c)


def _modalities(series: dict[str, Any] | None) -> list[Any]:
    value = (series or {}).get("Modality")
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _write(index: Index, txn: lmdb.Transaction, level: str, name: str,
           old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    if new is None:
        index.delete_record(txn, level, name)
    else:
        index.put_record(txn, level, name, new)
    secondary.update(index, txn, level, name, old, new)


def link_instance(index: Index, txn: lmdb.Transaction,
                  record: dict[str, Any]) -> None:
    """Create or refresh the patient, study and series of ``record`` and
    count the instance in each."""
    names = _names(record)
    owners, old = _owners(index, txn, names)
    _warn_if_stray(names, owners)
    refreshed = _refreshed(names, owners)
    new: dict[str, dict[str, Any]] = {}
    for level in _LINKED:
        merged = (_merge(old[level], record["attributes"], level)
                  if level in refreshed else dict(old[level] or {}))
        merged[UID_OF[level]] = owners[level]
        if level in PARENT:
            parent, keyword = PARENT[level]
            merged[keyword] = (old[level] or {}).get(keyword,
                                                     owners[parent])
        new[level] = merged
    # A series without a record has no instances yet: no lookup needed.
    if old["series"] is None or not index.is_child(
            txn, "series", owners["series"], names["instance"]):
        _count_new_instance(new, old, record)
    before, after = _modalities(old["series"]), _modalities(new["series"])
    if before != after:
        _tally(new["study"], "modalities", before, -1)
        _tally(new["study"], "modalities", after, 1)
    _derive_lists(new["study"])
    for level in _LINKED:
        _write(index, txn, level, owners[level], old[level], new[level])
        if level in PARENT and old[level] is None:
            index.link(txn, PARENT[level][0], new[level][PARENT[level][1]],
                       owners[level])
    index.link(txn, "series", owners["series"], names["instance"])


def _count_new_instance(new: dict[str, dict[str, Any]],
                        old: dict[str, dict[str, Any] | None],
                        record: dict[str, Any]) -> None:
    _add(new["series"], "NumberOfSeriesRelatedInstances", 1)
    _add(new["study"], "NumberOfStudyRelatedInstances", 1)
    _add(new["patient"], "NumberOfPatientRelatedInstances", 1)
    if old["series"] is None:
        _add(new["study"], "NumberOfStudyRelatedSeries", 1)
        _add(new["patient"], "NumberOfPatientRelatedSeries", 1)
    if old["study"] is None:
        _add(new["patient"], "NumberOfPatientRelatedStudies", 1)
    _tally(new["study"], "sop_classes", [record.get("sop_class_uid", "")], 1)


def unlink_instance(index: Index, txn: lmdb.Transaction,
                    record: dict[str, Any]) -> None:
    """Remove an instance from the hierarchy and its counts; drop the
    levels left empty."""
    names = _names(record)
    if not index.is_child(txn, "series", names["series"],
                          names["instance"]):
        return
    index.unlink(txn, "series", names["series"], names["instance"])
    owners, old = _owners(index, txn, names)
    series = dict(old["series"] or {})
    study = dict(old["study"] or {})
    patient = dict(old["patient"] or {})
    new: dict[str, dict[str, Any] | None] = {
        "series": series, "study": study, "patient": patient}
    _add(patient, "NumberOfPatientRelatedInstances", -1)
    _add(study, "NumberOfStudyRelatedInstances", -1)
    _tally(study, "sop_classes", [record.get("sop_class_uid", "")], -1)
    if _add(series, "NumberOfSeriesRelatedInstances", -1) <= 0:
        new["series"] = None
        index.unlink(txn, "study", owners["study"], owners["series"])
        _tally(study, "modalities", _modalities(series), -1)
        _add(patient, "NumberOfPatientRelatedSeries", -1)
        if _add(study, "NumberOfStudyRelatedSeries", -1) <= 0:
            new["study"] = None
            index.unlink(txn, "patient", owners["patient"], owners["study"])
            if _add(patient, "NumberOfPatientRelatedStudies", -1) <= 0:
                new["patient"] = None
    _derive_lists(study)
    for level in _LINKED:
        if old[level] is not None:  # absent only in a damaged index
            _write(index, txn, level, owners[level], old[level],
                   new[level])


def rebuild_from_instances(index: Index, txn: lmdb.Transaction) -> None:
    """Rebuild the patient, study and series records, their links and
    the attribute indexes from the instance records, replaying the
    instances in the order they were committed (their manifests'
    positions), so that the same first instances fix the parents and
    the same latest values win."""
    for database in ("patients", "studies", "series", "children",
                     "attributes"):
        index.clear(txn, database)
    order = sorted((tuple(instance.get("manifest") or (0, 0)), uid)
                   for uid, instance in index.records(txn, "instance"))
    for _, uid in order:
        instance = index.record(txn, "instance", uid)
        if instance is not None:
            link_instance(index, txn, instance)
