"""Attribute indexes: from the values a query names to the entities.

A query that names a patient's name or a study date would otherwise
read every patient or study record of the archive. Each attribute index
is a run of sorted keys in the ``attributes`` database, one per value of
an entity:

    code (1 byte) + normalized value + NUL + key of the entity

with an empty LMDB value, so that a prefix or a range of values is one
cursor walk over keys alone. The entries are written in the transaction
that writes the record they derive from (hierarchy.py), and only when
the indexed values of the record change, so a store keeps its cost.

The values are normalized as matching.py compares them: person names by
component group and case-folded, dates as their eight digits; an empty
value has an entry too (an empty normalized value), for the C-FIND rule
that an unknown required key matches any query (PS3.4 C.2.2.1.2).

A lookup returns a superset of the entities whose value matches (for
``D*E`` the entries under ``d``, for a name every group that starts with
the query's literal text): the query tests each candidate's record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lmdb

from pacsstore.store import matching
from pacsstore.store.index import Index, key, unkey

# (level, keyword) -> entry code. ModalitiesInStudy lists the modalities
# of a study's series; Modality indexes the series themselves.
CODES = {
    ("patient", "PatientName"): b"N",
    ("study", "StudyDate"): b"D",
    ("study", "AccessionNumber"): b"A",
    ("study", "ModalitiesInStudy"): b"M",
    ("series", "Modality"): b"S",
}
_KEYWORDS: dict[str, tuple[str, ...]] = {}
# level -> ((keyword, code, VR), ...): what entries() computes for each
# record, looked up once here rather than for every record stored.
_INDEXED: dict[str, tuple[tuple[str, bytes, str], ...]] = {}
for (_level, _keyword), _code in CODES.items():
    _KEYWORDS[_level] = (*_KEYWORDS.get(_level, ()), _keyword)
    _INDEXED[_level] = (*_INDEXED.get(_level, ()),
                        (_keyword, _code, matching.vr_of(_keyword)))
# LMDB keys are at most 511 bytes: a longer value is indexed by its
# start, which still finds it (lookups are supersets).
_MAX_VALUE_BYTES = 256
_SEPARATOR = b"\x00"


def indexed(level: str, keyword: str) -> bool:
    return (level, keyword) in CODES


def _normalized(keyword: str, vr: str, value: Any) -> list[str]:
    """The forms one stored value of ``keyword`` (of VR ``vr``) is
    indexed under."""
    if vr == "PN":
        groups = [g for g in matching.name_groups(str(value)) if g]
        return groups or [""]
    if vr == "DA":
        # As ranges compare it; a value with no digits at all matches no
        # range and needs no entry (an empty one is the unknown entry).
        digits = matching.range_text(value)
        return [digits] if digits or not str(value).strip(" ") else []
    return [matching.text_form(keyword, value)]


def _clip(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) <= _MAX_VALUE_BYTES:
        return raw
    return raw[:_MAX_VALUE_BYTES].decode("utf-8", "ignore").encode("utf-8")


def entries(level: str, name: str, record: dict[str, Any] | None
            ) -> set[bytes]:
    """Every index entry of one patient, study or series record."""
    found: set[bytes] = set()
    if record is None:
        return found
    entity = _SEPARATOR + key(name)
    for keyword, code, vr in _INDEXED.get(level, ()):
        values = matching.values_of(record.get(keyword)) or [""]
        for value in values:
            for form in _normalized(keyword, vr, value):
                found.add(code + _clip(form) + entity)
    return found


def update(index: Index, txn: lmdb.Transaction, level: str, name: str,
           old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    """Make the entries of a record that changed from ``old`` to ``new``
    (None: absent) follow it."""
    if old is not None and new is not None and all(
            old.get(keyword) == new.get(keyword)
            for keyword in _KEYWORDS.get(level, ())):
        return  # the usual case: a new instance of a known series
    before, after = entries(level, name, old), entries(level, name, new)
    for entry in before - after:
        index.delete_entry(txn, entry)
    for entry in after - before:
        index.put_entry(txn, entry)


def _entity(entry: bytes) -> str:
    return unkey(entry[entry.index(_SEPARATOR, 1) + 1:])


def _prefixed(index: Index, txn: lmdb.Transaction, code: bytes,
              text: str, *, whole: bool) -> Iterator[str]:
    prefix = code + _clip(text) + (_SEPARATOR if whole else b"")
    for entry in index.entries(txn, prefix):
        yield _entity(entry)


def _date_range(index: Index, txn: lmdb.Transaction, code: bytes,
                low: str | None, high: str | None) -> Iterator[str]:
    # Dates compare as strings from the left, so the dates in range are
    # one run of keys; the empty (unknown) ones sort first, before it.
    start = code + (low.encode("ascii") if low else b"\x01")
    for entry in index.entries(txn, code, start):
        date = entry[1:entry.index(_SEPARATOR, 1)].decode("ascii")
        if high is not None and date[:len(high)] > high:
            return
        yield _entity(entry)


def lookup(index: Index, txn: lmdb.Transaction, level: str,
           condition: matching.Condition, *, unknown: bool = False
           ) -> Iterator[str] | None:
    """The entities of ``level`` that may match ``condition``, from its
    attribute index; None when no index serves it. With ``unknown``,
    entities whose value is empty are included."""
    code = CODES.get((level, condition.keyword))
    if code is None:
        return None
    found = _matching(index, txn, code, condition)
    if found is None:
        return None
    if not unknown:
        return found
    return _chain(found, _prefixed(index, txn, code, "", whole=True))


def _matching(index: Index, txn: lmdb.Transaction, code: bytes,
              condition: matching.Condition) -> Iterator[str] | None:
    if isinstance(condition, (matching.Range, matching.DateTimeRange)):
        low = condition.low[:8] if condition.low else None
        high = condition.high[:8] if condition.high else None
        return _date_range(index, txn, code, low, high)
    if isinstance(condition, matching.AnyOf):
        parts = [_matching(index, txn, code, option)
                 for option in condition.options]
        if any(part is None for part in parts):
            return None
        return _chain(*parts)  # type: ignore[arg-type]
    if isinstance(condition, matching.Alternatives):
        return _chain(*(_prefixed(index, txn, code, v, whole=True)
                        for v in condition.values))
    if isinstance(condition, matching.PersonName):
        # Only a query without "=" is indexed under every group; one
        # with groups is indexed under the first it gives.
        prefix = condition.prefix
        return _prefixed(index, txn, code, prefix, whole=False) \
            if prefix else None
    if isinstance(condition, matching.Text):
        if not condition.wildcard:
            return _prefixed(index, txn, code, condition.value, whole=True)
        prefix = condition.prefix
        return _prefixed(index, txn, code, prefix, whole=False) \
            if prefix else None
    return None


def _chain(*parts: Iterator[str]) -> Iterator[str]:
    for part in parts:
        yield from part
