"""find() against a brute-force scan: for random queries over a random
small archive, the index's answer is what matching every stored file,
read back with pydicom, gives.

The oracle below is written from PS3.4 C.2.2.2 and docs/query.md alone,
as plainly as it can be, and shares no code with pacsstore's matcher:
it groups the files by patient, study and series, matches each key of
the query against each entity's attributes, and counts children itself.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass

from unittest import mock

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

import pacsstore.store.query
import pacsstore.store.secondary
from pacsstore import Archive

# A tenth of the profile's examples: each one builds an archive.
EXAMPLES = max(15, settings().max_examples // 10)
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None

NAMES = ["Doe^John", "DOE^JANE", "Doering^Anna", "Müller^Jürgen",
         "müller^hans", "Yamada^Tarou=山田^太郎=やまだ^たろう",
         "Hong^Gildong=洪^吉洞=홍^길동", "Buc^Jérôme", "Straße^Ölaf", ""]
DATES = ["20000101", "20000615", "20011231", "20020229", "20030704", ""]
TIMES = ["000000", "083000", "120000.5", "235959", ""]
MODALITIES = ["CT", "MR", "US", "SR"]
SOP_CLASSES = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
               "1.2.840.10008.5.1.4.1.1.7"]
ROOT = "1.2.826.0.1.3680043.10.1134"
LEVELS = ("patient", "study", "series", "instance")
UNIQUE = {"patient": "PatientID", "study": "StudyInstanceUID",
          "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
# Keys a query draws, by the level that holds them.
KEYS = {
    "patient": ["PatientID", "PatientName", "PatientBirthDate",
                "PatientSex"],
    "study": ["StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyDescription"],
    "series": ["SeriesInstanceUID", "Modality", "SeriesNumber"],
    "instance": ["SOPInstanceUID", "SOPClassUID", "InstanceNumber"],
}
REQUIRED = {"PatientName", "PatientID", "StudyDate", "StudyTime",
            "AccessionNumber", "Modality", "SeriesNumber", "InstanceNumber"}
VR = {"PatientName": "PN", "PatientBirthDate": "DA", "StudyDate": "DA",
      "StudyTime": "TM", "SeriesNumber": "IS", "InstanceNumber": "IS"}


# The random archive ---------------------------------------------------------

@st.composite
def archives(draw) -> list[Dataset]:
    """Files of 1-3 patients, each with studies, series and instances;
    attributes of a level agree across its instances."""
    files = []
    counter = iter(range(1, 10_000))
    for p in range(draw(st.integers(1, 3))):
        patient = {"PatientID": f"P{p}" if p else draw(
                       st.sampled_from(["P0", "p0", "ID 7"])),
                   "PatientName": draw(st.sampled_from(NAMES)),
                   "PatientBirthDate": draw(st.sampled_from(DATES)),
                   "PatientSex": draw(st.sampled_from(["F", "M", ""]))}
        for _ in range(draw(st.integers(1, 2))):
            n = next(counter)
            study = {"StudyInstanceUID": f"{ROOT}.1.{n}",
                     "StudyDate": draw(st.sampled_from(DATES)),
                     "StudyTime": draw(st.sampled_from(TIMES)),
                     "AccessionNumber": draw(st.sampled_from(
                         ["A1", "A2", "a1", "A10", ""])),
                     "StudyDescription": draw(st.sampled_from(
                         ["Chest", "chest", "Knee left", ""]))}
            for number in range(1, draw(st.integers(1, 2)) + 1):
                series = {"SeriesInstanceUID": f"{ROOT}.2.{next(counter)}",
                          "Modality": draw(st.sampled_from(MODALITIES)),
                          "SeriesNumber": str(number)}
                for index in range(1, draw(st.integers(1, 3)) + 1):
                    instance = {
                        "SOPInstanceUID": f"{ROOT}.3.{next(counter)}",
                        "SOPClassUID": draw(st.sampled_from(SOP_CLASSES)),
                        "InstanceNumber": str(index)}
                    files.append(_dataset({**patient, **study, **series,
                                           **instance}))
    return files


def _dataset(values: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _encoded(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# Random queries -------------------------------------------------------------

def _values(files: list[Dataset], keyword: str) -> list[str]:
    return sorted({str(ds.get(keyword, "")) for ds in files})


@st.composite
def query_values(draw, files: list[Dataset], keyword: str) -> object:
    existing = draw(st.sampled_from(_values(files, keyword)))
    vr = VR.get(keyword, "UI" if keyword.endswith("UID") else "LO")
    if vr == "UI":
        return draw(st.sampled_from([
            existing, [existing, f"{ROOT}.9.9"], f"{ROOT}.9.9", ""]))
    if vr == "IS":
        return draw(st.sampled_from([existing, "2", "*", ""]))
    if vr in ("DA", "TM"):
        low = draw(st.sampled_from(_values(files, keyword)))
        high = draw(st.sampled_from(_values(files, keyword)))
        if low and high and low > high:
            low, high = high, low
        ranges = [f"{low}-{high}", f"{low}-", f"-{high}"]
        return draw(st.sampled_from(
            [existing] + [r for r in ranges if r != "-"]))
    cut = draw(st.integers(0, len(existing)))
    forms = [existing, existing[:cut] + "*", "*" + existing[cut:],
             existing[:cut] + "?" + existing[cut + 1:]
             if cut < len(existing) else existing, ""]
    if vr == "PN":
        forms += [existing.upper(), existing.lower(),
                  existing.split("=")[0], "=" + "=".join(
                      existing.split("=")[1:2])]
    return draw(st.sampled_from(forms))


# The oracle -----------------------------------------------------------------

def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?"
                              else re.escape(c) for c in pattern),
                      re.DOTALL)


def _groups(name: str) -> list[str]:
    groups = [g.strip().rstrip("^").casefold() for g in name.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return groups


def _text_match(stored: str, wanted: str) -> bool:
    return _wildcard(wanted).fullmatch(stored) is not None


def _name_match(group: str, wanted: str) -> bool:
    """A group written with any number of its empty trailing components
    (up to five components in all) is the same group."""
    forms = [group + "^" * n for n in range(5 - group.count("^"))] or \
        [group]
    return any(_text_match(form, wanted) for form in forms)


def _oracle_matches(keyword: str, stored: str, wanted: object,
                    unknown: bool) -> bool:
    if wanted in ("", "*", None):
        return True
    if VR.get(keyword) == "PN" and not str(wanted).strip("^= "):
        return True   # a name of separators only is universal
    empty = not _groups(stored) if VR.get(keyword) == "PN" else not stored
    if empty:
        return unknown and keyword in REQUIRED
    if isinstance(wanted, list):
        return stored in wanted
    wanted = str(wanted)
    vr = VR.get(keyword, "UI" if keyword.endswith("UID") else "LO")
    if vr == "UI":
        return stored in wanted.split("\\")
    if vr == "IS":
        return int(stored) == int(wanted)
    if vr in ("DA", "TM"):
        low, dash, high = wanted.partition("-")
        if not dash:
            high = low
        return (not low or stored >= low) and \
            (not high or stored[:len(high)] <= high)
    if vr == "PN":
        # Groups compared case-folded; without "=" the query may match
        # any group of the name.
        query = [g.strip().rstrip("^").casefold()
                 for g in wanted.split("=")]
        name = _groups(stored)
        if "=" not in wanted:
            return any(_name_match(g, query[0]) for g in name)
        return all(not q or _name_match(name[i] if i < len(name) else "", q)
                   for i, q in enumerate(query))
    return _text_match(stored, wanted)


@dataclass
class Entity:
    level: str
    key: str
    files: list[Dataset]


def _entities(files: list[Dataset], level: str) -> list[Entity]:
    groups: dict[str, list[Dataset]] = {}
    for ds in files:
        groups.setdefault(str(ds[UNIQUE[level]].value), []).append(ds)
    return [Entity(level, key, group) for key, group in groups.items()]


def _brute_force(files: list[Dataset], level: str, query: dict,
                 unknown: bool) -> dict[str, Entity]:
    found = {}
    for entity in _entities(files, level):
        first = entity.files[0]
        if all(_matches_entity(keyword, entity, first, wanted, unknown)
               for keyword, wanted in query.items()):
            found[entity.key] = entity
    return found


def _matches_entity(keyword: str, entity: Entity, first: Dataset,
                    wanted: object, unknown: bool) -> bool:
    if entity.level == "study" and keyword == "Modality":
        return any(_oracle_matches(keyword, str(ds.Modality), wanted, False)
                   for ds in entity.files)
    return _oracle_matches(keyword, str(first.get(keyword, "")), wanted,
                           unknown)


def _expected_counts(entity: Entity) -> dict[str, object]:
    series = {str(ds.SeriesInstanceUID) for ds in entity.files}
    if entity.level == "patient":
        return {"NumberOfPatientRelatedStudies": len(
                    {str(ds.StudyInstanceUID) for ds in entity.files}),
                "NumberOfPatientRelatedSeries": len(series),
                "NumberOfPatientRelatedInstances": len(entity.files)}
    if entity.level == "study":
        return {"NumberOfStudyRelatedSeries": len(series),
                "NumberOfStudyRelatedInstances": len(entity.files),
                "ModalitiesInStudy": sorted(
                    {str(ds.Modality) for ds in entity.files}),
                "SOPClassesInStudy": sorted(
                    {str(ds.SOPClassUID) for ds in entity.files})}
    if entity.level == "series":
        return {"NumberOfSeriesRelatedInstances": len(entity.files)}
    return {}


# The property ---------------------------------------------------------------

@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(files=archives(), data=st.data())
def test_query_index_answers_equal_a_brute_force_scan(files, data):
    with tempfile.TemporaryDirectory(dir=SCRATCH) as scratch:
        with Archive(os.path.join(scratch, "store")) as archive:
            archive.store_many([_encoded(ds) for ds in files])
            stored = [pydicom.dcmread(io.BytesIO(archive.get(
                str(ds.SOPInstanceUID)))) for ds in files]
            for _ in range(6):
                _check_one_query(archive, stored, data)


def _check_one_query(archive: Archive, files: list[Dataset], data) -> None:
    level = data.draw(st.sampled_from(LEVELS), label="level")
    available = [k for lvl in LEVELS[:LEVELS.index(level) + 1]
                 for k in KEYS[lvl]]
    if level == "study":
        available.append("Modality")
    keywords = data.draw(st.lists(st.sampled_from(available), max_size=3,
                                  unique=True), label="keys")
    query = {k: data.draw(query_values(files, k), label=k)
             for k in keywords}
    unknown = data.draw(st.booleans(), label="match_unknown")
    expected = _brute_force(files, level, query, unknown)
    answers = archive.find(level, match_unknown=unknown, **query)
    # Sources of candidates cut short at once: the conditions are then
    # tested on the records alone, and the answer must not change.
    with mock.patch.multiple(pacsstore.store.query, _MIN_EXTRA_STEPS=0,
                             _EXTRA_FACTOR=0):
        assert archive.find(level, match_unknown=unknown, **query) == \
            answers
    # And without the attribute indexes at all.
    with mock.patch.object(pacsstore.store.secondary, "lookup",
                           return_value=None):
        assert archive.find(level, match_unknown=unknown, **query) == \
            answers
    found = {str(a[UNIQUE[level]]) if UNIQUE[level] in a else "": a
             for a in answers}
    assert set(found) == set(expected), (level, query, unknown)
    assert len(found) == len(answers)
    for key, entity in expected.items():
        answer = found[key]
        for keyword, value in _expected_counts(entity).items():
            assert answer.get(keyword, [] if isinstance(value, list)
                              else None) == value, (keyword, key)
        name = str(entity.files[0].get("PatientName", ""))
        assert answer.get("PatientName", "") == name

