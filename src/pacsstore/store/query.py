"""Finding patients, studies, series and instances in the index.

The matching rules live here and nowhere else, so that a full DICOM
C-FIND matcher (sequences, fuzzy person names) can replace this module
without touching the engine. What is implemented, after PS3.4 C.2.2.2:

- single value matching: the attribute equals the value, case-sensitive;
- wildcards: ``*`` matches any run of characters, ``?`` any single one;
- universal matching: an empty value, ``*`` or ``None`` matches anything,
  an absent attribute included;
- lists of UIDs: a UID key whose value is a list or tuple, or a string of
  ``\\``-separated UIDs, matches any of them;
- range matching of dates and times (DA, TM, DT keys): ``D1-D2``,
  ``-D2``, ``D1-``; a single value ``D`` is the range ``D-D``, and a bound
  may stop early (``2004``, ``200401``, ``14``) to take in the whole year,
  month or hour;
- a multi-valued attribute matches when one of its values does.

A query names its level and keys of that level or of the levels above (a
series query may ask for PatientName); any other key is a QueryError, so
that a misspelt or misplaced key never quietly matches nothing. At study
level ``Modality`` means ModalitiesInStudy: the study matches when one of
its series does. Every answer carries the attributes of its level and of
the levels above, as a study-root C-FIND answer does.

When the key of the level itself or of its parent is given exactly, only
those records are read; otherwise the level is scanned.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

import lmdb
from pydicom.datadict import dictionary_VR, tag_for_keyword

from pacsstore.errors import QueryError
from pacsstore.store import hierarchy
from pacsstore.store.hierarchy import LEVELS, UID_OF
from pacsstore.store.index import Index

_UPPER = {"study": "patient", "series": "study", "instance": "series"}
_OWN = {**hierarchy.LEVEL_KEYS, "instance": hierarchy.INSTANCE_KEYS}
# Keys an answer computes from the level's children.
_COUNTS = {"patient": ("NumberOfPatientRelatedStudies",),
           "study": ("NumberOfStudyRelatedSeries",
                     "NumberOfStudyRelatedInstances", "ModalitiesInStudy"),
           "series": ("NumberOfSeriesRelatedInstances",),
           "instance": ()}
# PS3.4 C.6.2.1.2: a study-level query on Modality asks which studies
# hold a series of that modality.
_ALIASES = {"study": {"Modality": "ModalitiesInStudy"}}
# Instance attributes that belong to the levels above (they are answered
# from those levels' records, not from one instance's copy).
_NOT_INSTANCE = set(hierarchy.PATIENT_KEYS + hierarchy.STUDY_KEYS
                    + hierarchy.SERIES_KEYS) - set(UID_OF.values())

# Bounds of a date or time range, to any precision from the left.
_BOUND = {
    "DA": re.compile(r"\d{4}(\d{2}(\d{2})?)?"),
    "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}"
                     r"(\.\d{1,6})?)?)?)?)?)?"),
}
_FORM = {"DA": "YYYYMMDD", "TM": "HHMMSS.FFFFFF",
         "DT": "YYYYMMDDHHMMSS.FFFFFF"}


@dataclass(frozen=True)
class Range:
    """A date or time range; ``None`` is an open end. Bounds are digit
    strings of the key's form, compared from the left."""

    low: str | None
    high: str | None


Condition = Union[str, tuple, Range]


def known_keys(level: str) -> tuple[str, ...]:
    """The keys a query at ``level`` may name."""
    keys: list[str] = []
    for each in LEVELS[:LEVELS.index(level) + 1]:
        keys += _OWN[each]
    return (*keys, *_COUNTS[level], *_ALIASES.get(level, {}))


@lru_cache(maxsize=512)
def _pattern(value: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c)
             for c in value)
    return re.compile("".join(parts), re.DOTALL)


def _vr(keyword: str) -> str:
    tag = tag_for_keyword(keyword) if keyword else None
    return "" if tag is None else dictionary_VR(tag)


def _range(keyword: str, vr: str, value: str) -> Range:
    """A DA, TM or DT query value as a range (PS3.4 C.2.2.2.5)."""
    low, dash, high = value.partition("-")
    bounds = (low, high) if dash else (low, low)
    if not any(bounds) or not all(
            _BOUND[vr].fullmatch(b) for b in bounds if b):
        raise QueryError(
            f"{keyword} is {vr}: expected {_FORM[vr]} (or a leading part "
            f"of it), a range D1-D2, -D2 or D1-, or a wildcard pattern; "
            f"found {value!r}"
            + (" (UTC offsets are not supported)" if vr == "DT" else ""))
    low_bound, high_bound = bounds[0] or None, bounds[1] or None
    if low_bound and high_bound and low_bound[:len(high_bound)] > high_bound:
        raise QueryError(f"{keyword}: the range {value!r} ends before it "
                         f"starts")
    return Range(low_bound, high_bound)


def condition(keyword: str, value: Any) -> Condition:
    """A query value in the form :func:`matches` tests: a string pattern
    (``""`` is universal), a tuple of UIDs, or a :class:`Range`."""
    vr = _vr(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        if vr != "UI":
            raise QueryError(
                f"{keyword} is {vr or 'a computed key'}: a list of values "
                f"is accepted only for UID keys; found {value!r}")
        if not all(isinstance(v, str) for v in value):
            raise QueryError(f"{keyword}: a list of UIDs holds strings; "
                             f"found {value!r}")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise QueryError(f"{keyword}: expected a string (or None); found "
                         f"{type(value).__name__} {value!r}")
    text = str(value)
    if vr in _BOUND and text and not any(c in text for c in "*?"):
        return _range(keyword, vr, text)
    return text


def _in_range(text: str, wanted: Range) -> bool:
    # A stored DT may end in a UTC offset, which the bounds do not have.
    digits = re.match(r"[0-9.]*", text).group()  # type: ignore[union-attr]
    if not digits:
        return False
    if wanted.low is not None and digits < wanted.low:
        return False
    return wanted.high is None or digits[:len(wanted.high)] <= wanted.high


def _test(value: Any, wanted: Condition, keyword: str) -> bool:
    if wanted in ("", "*"):
        return True
    if value is None:
        return False
    if isinstance(value, list):
        return any(_test(v, wanted, keyword) for v in value)
    text = str(value)
    if isinstance(wanted, tuple):
        return text in wanted
    if isinstance(wanted, Range):
        return _in_range(text, wanted)
    if keyword.endswith("UID") and "\\" in wanted:
        return text in wanted.split("\\")
    if "*" in wanted or "?" in wanted:
        return _pattern(wanted).fullmatch(text) is not None
    return text == wanted


def matches(value: Any, pattern: Any, keyword: str = "") -> bool:
    """Whether a stored attribute value matches a query value."""
    return _test(value, condition(keyword, pattern), keyword)


def _check(level: str, keys: dict[str, Any]) -> list[tuple[str, Condition]]:
    if level not in LEVELS:
        raise QueryError(f"level must be one of {', '.join(LEVELS)}; "
                         f"found {level!r}")
    known = known_keys(level)
    wanted = []
    for keyword, value in keys.items():
        if tag_for_keyword(keyword) is None:
            raise QueryError(f"{keyword!r} is not a DICOM keyword")
        if keyword not in known:
            raise QueryError(
                f"{keyword} is not an attribute of the {level} level or "
                f"of the levels above it; a {level} query knows "
                f"{', '.join(known)}")
        target = _ALIASES.get(level, {}).get(keyword, keyword)
        wanted.append((target, condition(keyword, value)))
    return wanted


def _exact(wanted: list[tuple[str, Condition]],
           keyword: str) -> list[str] | None:
    """The names a key asks for exactly, or None when it does not."""
    for key, value in wanted:
        if key != keyword:
            continue
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, str) and value and not any(
                c in value for c in "*?"):
            return value.split("\\")
    return None


class _Finder:
    """One query over one read transaction."""

    def __init__(self, index: Index, txn: lmdb.Transaction) -> None:
        self.index, self.txn = index, txn
        self._records: dict[tuple[str, str], dict[str, Any] | None] = {}

    def _record(self, level: str, name: str) -> dict[str, Any] | None:
        # The levels above repeat from one answer to the next: read
        # each record once per query.
        if (level, name) not in self._records:
            self._records[level, name] = self.index.record(
                self.txn, level, name)
        return self._records[level, name]

    def candidates(self, level: str, wanted: list[tuple[str, Condition]]
                   ) -> Iterator[dict[str, Any]]:
        own = _exact(wanted, UID_OF[level])
        parent = _UPPER.get(level)
        above = _exact(wanted, UID_OF[parent]) if parent else None
        if own is not None:
            names = own
        elif above is not None:
            names = [child for name in above
                     for child in self.index.children(self.txn, parent,
                                                      name)]
        else:
            yield from (r for _, r in self.index.records(self.txn, level))
            return
        for name in names:
            record = self.index.record(self.txn, level, name)
            if record is not None:
                yield record

    def answer(self, level: str, record: dict[str, Any]) -> dict[str, Any]:
        """The record's attributes, its counts, and the attributes of
        the levels above it (the nearer level wins a shared key)."""
        own = self._own(level, record)
        return {**self._above(level, own), **own}

    def _own(self, level: str, record: dict[str, Any]) -> dict[str, Any]:
        if level == "instance":
            return self._instance(record)
        answer = dict(record)
        name = record[UID_OF[level]]
        if level == "patient":
            answer["NumberOfPatientRelatedStudies"] = len(
                self.index.children(self.txn, "patient", name))
        elif level == "study":
            answer.update(self._study_counts(name))
        else:
            answer["NumberOfSeriesRelatedInstances"] = len(
                self.index.children(self.txn, "series", name))
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

    def _above(self, level: str, answer: dict[str, Any]) -> dict[str, Any]:
        """The records of the levels above, reached through the parent
        keys: an instance's series, that series' study, its patient."""
        merged: dict[str, Any] = {}
        while level in _UPPER:
            level = _UPPER[level]
            record = self._record(level, answer.get(UID_OF[level], ""))
            if record is None:
                break
            merged = {**record, **merged}
            answer = record
        return merged

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


def find(index: Index, level: str, **keys: Any) -> list[dict[str, Any]]:
    """Every record of ``level`` whose attributes match ``keys``."""
    wanted = _check(level, keys)
    found = []
    with index.read() as txn:
        finder = _Finder(index, txn)
        for record in finder.candidates(level, wanted):
            answer = finder.answer(level, record)
            if all(_test(answer.get(k), v, k) for k, v in wanted):
                found.append(answer)
    return found
