"""Finding patients, studies, series and instances in the index.

The matching rules live here and nowhere else, so that a full DICOM
C-FIND matcher (ranges, sequences, fuzzy person names) can replace this
module without touching the engine. What is implemented, after PS3.4
C.2.2.2:

- single value matching: the attribute equals the value, case-sensitive;
- wildcards: ``*`` matches any run of characters, ``?`` any single one;
- universal matching: an empty value or ``*`` matches anything, an
  absent attribute included;
- lists of UIDs: a UID key whose value holds ``\\``-separated UIDs matches
  any of them;
- a multi-valued attribute matches when one of its values does.

A query names its level and any keywords: of that level or of the levels
above (a series query may ask for PatientName). When the key of the level
itself or of its parent is given exactly, only those records are read;
otherwise the level is scanned.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import lmdb
from pydicom.datadict import tag_for_keyword

from pacsstore.errors import QueryError
from pacsstore.store import hierarchy
from pacsstore.store.hierarchy import LEVELS, PARENT, UID_OF
from pacsstore.store.index import Index

_UPPER = {"study": "patient", "series": "study", "instance": "series"}
# Instance attributes that belong to the levels above (they are answered
# from those levels' records, not from one instance's copy).
_NOT_INSTANCE = set(hierarchy.PATIENT_KEYS + hierarchy.STUDY_KEYS
                    + hierarchy.SERIES_KEYS) - set(UID_OF.values())


@lru_cache(maxsize=512)
def _pattern(value: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c)
             for c in value)
    return re.compile("".join(parts), re.DOTALL)


def matches(value: Any, pattern: str, keyword: str = "") -> bool:
    """Whether a stored attribute value matches a query value."""
    if pattern in ("", "*"):
        return True
    if value is None:
        return False
    if isinstance(value, list):
        return any(matches(v, pattern, keyword) for v in value)
    text = str(value)
    if keyword.endswith("UID") and "\\" in pattern:
        return text in pattern.split("\\")
    if "*" in pattern or "?" in pattern:
        return _pattern(pattern).fullmatch(text) is not None
    return text == pattern


def _check(level: str, keys: dict[str, Any]) -> dict[str, str]:
    if level not in LEVELS:
        raise QueryError(f"level must be one of {', '.join(LEVELS)}; "
                         f"found {level!r}")
    for keyword in keys:
        if tag_for_keyword(keyword) is None:
            raise QueryError(f"{keyword!r} is not a DICOM keyword")
    return {k: "" if v is None else str(v) for k, v in keys.items()}


def _exact(keys: dict[str, str], keyword: str) -> str | None:
    value = keys.get(keyword)
    if value is None or value in ("", "*") or any(
            c in value for c in "*?\\"):
        return None
    return value


class _Finder:
    """One query over one read transaction."""

    def __init__(self, index: Index, txn: lmdb.Transaction) -> None:
        self.index, self.txn = index, txn

    def candidates(self, level: str,
                   keys: dict[str, str]) -> Iterator[dict[str, Any]]:
        own = _exact(keys, UID_OF[level])
        if own is not None:
            names = [own]
        elif level in _UPPER and _exact(keys, UID_OF[_UPPER[level]]):
            names = self.index.children(
                self.txn, _UPPER[level], keys[UID_OF[_UPPER[level]]])
        else:
            yield from (r for _, r in self.index.records(self.txn, level))
            return
        for name in names:
            record = self.index.record(self.txn, level, name)
            if record is not None:
                yield record

    def answer(self, level: str, record: dict[str, Any]) -> dict[str, Any]:
        if level == "instance":
            return self._instance(record)
        answer = dict(record)
        if level == "patient":
            studies = self.index.children(self.txn, "patient",
                                          record["PatientID"])
            answer["NumberOfPatientRelatedStudies"] = len(studies)
        elif level == "study":
            answer.update(self._study_counts(record["StudyInstanceUID"]))
        else:
            answer["NumberOfSeriesRelatedInstances"] = len(
                self.index.children(self.txn, "series",
                                    record["SeriesInstanceUID"]))
            answer["PatientID"] = self._parent_uid(answer, "study")
        return answer

    def _instance(self, record: dict[str, Any]) -> dict[str, Any]:
        answer = {k: v for k, v in record["attributes"].items()
                  if k not in _NOT_INSTANCE}
        answer["SOPInstanceUID"] = record["sop_instance_uid"]
        answer["SOPClassUID"] = record["sop_class_uid"]
        answer["TransferSyntaxUID"] = record["transfer_syntax"]
        answer["SeriesInstanceUID"] = record["series"]
        answer["StudyInstanceUID"] = record["study"]
        answer["PatientID"] = record["patient"]
        return answer

    def _parent_uid(self, answer: dict[str, Any], level: str) -> Any:
        parent = self.index.record(self.txn, level,
                                   answer[UID_OF[level]]) or {}
        return parent.get(PARENT[level][1])

    def _study_counts(self, study: str) -> dict[str, Any]:
        series = self.index.children(self.txn, "study", study)
        instances, modalities = 0, []
        for uid in series:
            instances += len(self.index.children(self.txn, "series", uid))
            record = self.index.record(self.txn, "series", uid) or {}
            modality = record.get("Modality")
            if modality and modality not in modalities:
                modalities.append(modality)
        return {"NumberOfStudyRelatedSeries": len(series),
                "NumberOfStudyRelatedInstances": instances,
                "ModalitiesInStudy": sorted(modalities)}

    def context(self, level: str, answer: dict[str, Any],
                keyword: str) -> Any:
        """The value of ``keyword`` for matching: the answer's own, or
        the nearest level above that has it."""
        if keyword in answer:
            return answer[keyword]
        while level in _UPPER:
            upper = _UPPER[level]
            name = answer.get(UID_OF[upper])
            if name is None:
                return None
            record = self.index.record(self.txn, upper, name) or {}
            if keyword in record:
                return record[keyword]
            answer = record
            level = upper
        return None


def find(index: Index, level: str, **keys: Any) -> list[dict[str, Any]]:
    """Every record of ``level`` whose attributes match ``keys``."""
    wanted = _check(level, keys)
    found = []
    with index.read() as txn:
        finder = _Finder(index, txn)
        for record in finder.candidates(level, wanted):
            answer = finder.answer(level, record)
            if all(matches(finder.context(level, answer, k), v, k)
                   for k, v in wanted.items()):
                found.append(answer)
    return found
