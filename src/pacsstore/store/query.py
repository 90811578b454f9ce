"""Finding patients, studies, series and instances in the index.

A query names its level and keys of that level or of the levels above
(a series query may ask for PatientName); any other key is a QueryError,
so that a misspelt or misplaced key never quietly matches nothing. Each
value becomes a condition (matching.py has the rules, after PS3.4
C.2.2.2), filed under the level whose record holds the attribute. At
study level ``Modality`` means ModalitiesInStudy: the study matches when
one of its series does.

Answers come from the index alone. Each carries the attributes of its
level and of every level above it (a study answer has its patient's
name), and the counts the records keep (NumberOfStudyRelatedInstances,
ModalitiesInStudy, ...); an attribute without a value is left out.

How a query finds its candidates, top down: at each level from the
patient to the level asked for, the sources of candidates are the
children of the entities matched one level up, the records named by a
UID or PatientID the query gives, and the attribute indexes that serve
its conditions (secondary.py). Sources are walked side by side until
the first one ends; the others may go on for a bounded number of steps,
and the candidates are what every finished source holds. A source cut
short costs nothing but its steps: its condition is still tested on
each candidate's record. A level with no source is scanned only when it
is the level asked for. So ``PatientName=DOE*`` with a StudyDate range
reads the few studies both indexes name, whatever the archive's size.

Two C-FIND rules are options, because a program asking the API expects
exact answers: ``match_unknown`` makes an empty required key match any
value (PS3.4 C.2.2.1.2; True for every required key, or the keys to
apply it to), and ``combined_datetime`` joins a date and a time range of
the same form into one datetime range (C.2.2.2.5.1).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
from pydicom.datadict import tag_for_keyword

from pacsstore.errors import QueryError
from pacsstore.store import matching, secondary
from pacsstore.store.hierarchy import (COUNT_KEYS, INSTANCE_KEYS,
                                       LEVEL_KEYS, LEVELS, UID_OF)
from pacsstore.store.index import Index
from pacsstore.store.matching import Condition, DateTimeRange

_UPPER = {"study": "patient", "series": "study", "instance": "series"}
# How a record names its parent.
_PARENT_FIELD = {"study": "PatientID", "series": "StudyInstanceUID",
                 "instance": "series"}
# PS3.4 C.6.2.1.2: a study-level query on Modality asks which studies
# hold a series of that modality.
_ALIASES = {"study": {"Modality": "ModalitiesInStudy"}}
# Required keys of the information models (PS3.4 C.6.1.1, C.6.2.1):
# with match_unknown, an entity where one is empty matches any value.
REQUIRED_KEYS = frozenset((
    "PatientName", "PatientID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "Modality", "SeriesNumber",
    "InstanceNumber"))
# Date and time keys that combined_datetime reads as one datetime.
DATE_TIME_PAIRS = (
    ("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
    ("ContentDate", "ContentTime"), ("AcquisitionDate", "AcquisitionTime"),
    ("PatientBirthDate", "PatientBirthTime"),
    ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"))
# Once one source of candidates has ended, the others may take this many
# more steps (at least), or this many times the candidates found: a step
# is a key read, far cheaper than testing a candidate's record.
_MIN_EXTRA_STEPS = 2048
_EXTRA_FACTOR = 8


def _home_levels() -> dict[str, str]:
    home = {}
    for level in LEVELS:
        for keyword in (*LEVEL_KEYS.get(level, INSTANCE_KEYS),
                        *COUNT_KEYS[level]):
            home.setdefault(keyword, level)
    return home


# The level whose record holds each attribute.
HOME = _home_levels()


@functools.cache
def known_keys(level: str) -> tuple[str, ...]:
    """The keys a query at ``level`` may name (computed once a level:
    every query asks)."""
    keys = [k for k, home in HOME.items()
            if LEVELS.index(home) <= LEVELS.index(level)]
    return (*keys, *_ALIASES.get(level, {}))


@functools.cache
def known_key_set(level: str) -> frozenset[str]:
    """:func:`known_keys` as a set, for membership tests."""
    return frozenset(known_keys(level))


@dataclass(frozen=True)
class Query:
    """A checked query: its level and the conditions that are not
    universal."""

    level: str
    conditions: tuple[Condition, ...]
    # Required keys whose empty value matches any query value.
    unknown_matches: frozenset[str] = frozenset()


def compile_query(level: str, keys: dict[str, Any], *,
                  match_unknown: bool | Iterable[str] = False,
                  combined_datetime: bool = False) -> Query:
    """Check a query's level and keys and turn its values into
    conditions; QueryError names the key that does not fit."""
    if level not in LEVELS:
        raise QueryError(f"level must be one of {', '.join(LEVELS)}; "
                         f"found {level!r}")
    known = known_key_set(level)
    # A time range joined to a date may end before it starts (from 19:00
    # one day to 08:00 a later day); on its own it may not.
    times = {time for _, time in DATE_TIME_PAIRS} if combined_datetime \
        else set()
    conditions: dict[str, Condition] = {}
    for keyword, value in keys.items():
        if tag_for_keyword(keyword) is None:
            raise QueryError(
                f"{keyword!r} is not a DICOM keyword; a {level} query "
                f"knows {', '.join(known_keys(level))}")
        if keyword not in known:
            raise QueryError(
                f"{keyword} is not an attribute of the {level} level or "
                f"of the levels above it; a {level} query knows "
                f"{', '.join(known_keys(level))}")
        target = _ALIASES.get(level, {}).get(keyword, keyword)
        wanted = matching.condition(target, value,
                                    ordered=target not in times)
        if wanted is not None:
            conditions[target] = wanted
    if combined_datetime:
        _combine_dates_and_times(conditions)
    return Query(level, tuple(conditions.values()),
                 _unknown_keys(match_unknown))


def _unknown_keys(match_unknown: bool | Iterable[str]) -> frozenset[str]:
    if match_unknown is True:
        return REQUIRED_KEYS
    if match_unknown is False or match_unknown is None:
        return frozenset()
    if isinstance(match_unknown, str):
        raise QueryError(f"match_unknown is True, False or a collection "
                         f"of required keys; found {match_unknown!r}")
    keys = frozenset(match_unknown)
    if not keys <= REQUIRED_KEYS:
        raise QueryError(
            f"match_unknown names {', '.join(sorted(keys - REQUIRED_KEYS))}"
            f", which {'is' if len(keys - REQUIRED_KEYS) == 1 else 'are'} "
            f"not required keys; they are {', '.join(sorted(REQUIRED_KEYS))}")
    return keys


def _combine_dates_and_times(conditions: dict[str, Condition]) -> None:
    for date_key, time_key in DATE_TIME_PAIRS:
        date, time = conditions.get(date_key), conditions.get(time_key)
        if isinstance(date, matching.Range) and \
                isinstance(time, matching.Range):
            joined = matching.combine(date, time)
            if joined is not None:
                conditions[date_key] = joined
                del conditions[time_key]
        if isinstance(time, matching.Range) and time_key in conditions:
            matching.check_order(time)


def find(index: Index, level: str, *,
         match_unknown: bool | Iterable[str] = False,
         combined_datetime: bool = False, **keys: Any
         ) -> list[dict[str, Any]]:
    """Every patient, study, series or instance whose attributes match
    ``keys``, as answers (attributes by keyword)."""
    query = compile_query(level, keys, match_unknown=match_unknown,
                          combined_datetime=combined_datetime)
    return run(index, query)


def run(index: Index, query: Query) -> list[dict[str, Any]]:
    """The answers to a compiled query, read in one transaction."""
    with index.read() as txn:
        search = _Search(index, txn, query)
        return [answer for _, answer in search.matches()]


def matches(value: Any, pattern: Any, keyword: str = "") -> bool:
    """Whether a stored attribute value matches a query value."""
    wanted = matching.condition(keyword, pattern)
    return wanted is None or wanted.test(value)


class _Search:
    """One query over one read transaction."""

    def __init__(self, index: Index, txn: lmdb.Transaction,
                 query: Query) -> None:
        self.index, self.txn, self.query = index, txn, query
        self.by_level: dict[str, list[Condition]] = {
            level: [] for level in LEVELS}
        for wanted in query.conditions:
            self.by_level[HOME[wanted.keyword]].append(wanted)
        self._records: dict[tuple[str, str], dict[str, Any] | None] = {}

    # Records and answers -------------------------------------------------

    def _record(self, level: str, name: str) -> dict[str, Any] | None:
        # The levels above repeat from one answer to the next: each
        # record is read once per query.
        if (level, name) not in self._records:
            self._records[level, name] = self.index.record(
                self.txn, level, name)
        return self._records[level, name]

    def answer(self, level: str, record: dict[str, Any]) -> dict[str, Any]:
        """The record's attributes and those of the levels above it
        (the nearer level wins a shared key: the parent's UID)."""
        answer = _fields(level, record)
        while level in _UPPER:
            parent = record.get(_PARENT_FIELD[level])
            level = _UPPER[level]
            upper = self._record(level, parent) if parent is not None \
                else None
            if upper is None:
                break
            answer = {**_fields(level, upper), **answer}
            record = upper
        return answer

    def _passes(self, wanted: Condition, fields: dict[str, Any]) -> bool:
        if isinstance(wanted, DateTimeRange):
            date = fields.get(wanted.date.keyword)
            if self._unknown(wanted.date.keyword) and \
                    matching.is_empty(wanted.date.keyword, date):
                return True
            return wanted.test_pair(date, fields.get(wanted.time.keyword))
        value = fields.get(wanted.keyword)
        if self._unknown(wanted.keyword) and \
                matching.is_empty(wanted.keyword, value):
            return True
        return wanted.test(value)

    def _unknown(self, keyword: str) -> bool:
        return keyword in self.query.unknown_matches

    def matches(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, answer) of every entity of the level that matches. A
        study or series without its UID (the instances filed there have
        none: a Color Palette, a malformed image) is no answer: its
        unique key would be empty, and no query below it could name it.
        Its instances answer at the instance level."""
        level = self.query.level
        for name, record in self._candidate_records():
            if not name and level in _KEYED_BY_UID:
                continue
            answer = self.answer(level, record)
            if all(self._passes(c, answer) for c in self.query.conditions):
                yield name, answer

    def _candidate_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        level = self.query.level
        names = self._candidates()
        if names is None:
            yield from self.index.records(self.txn, level)
            return
        for name in sorted(names):
            record = self.index.record(self.txn, level, name)
            if record is not None:
                yield name, record

    # Candidates ----------------------------------------------------------

    def _candidates(self) -> set[str] | None:
        """The keys of the level asked for that may match, or None when
        nothing narrows them (the level is then scanned)."""
        target = self.query.level
        restricted: set[str] | None = None
        for level in LEVELS[:LEVELS.index(target) + 1]:
            sources = self._sources(level, restricted)
            if not sources:
                restricted = None
                continue
            restricted = _intersect(sources)
            if level != target:
                restricted = {name for name in restricted
                              if self._level_matches(level, name)}
        return restricted

    def _level_matches(self, level: str, name: str) -> bool:
        record = self._record(level, name)
        if record is None:
            return False
        fields = _fields(level, record)
        return all(self._passes(c, fields) for c in self.by_level[level])

    def _sources(self, level: str, above: set[str] | None
                 ) -> list[Iterator[str]]:
        sources = []
        if above is not None:
            sources.append(self._children(_UPPER[level], above))
        for wanted in self.by_level[level]:
            source = self._source(level, wanted)
            if source is not None:
                sources.append(source)
        return sources

    def _children(self, level: str, parents: set[str]) -> Iterator[str]:
        for parent in parents:
            yield from self.index.children(self.txn, level, parent)

    def _source(self, level: str, wanted: Condition
                ) -> Iterator[str] | None:
        unknown = self._unknown(wanted.keyword)
        if wanted.keyword != UID_OF[level]:
            return secondary.lookup(self.index, self.txn, level, wanted,
                                    unknown=unknown)
        names: Iterator[str]
        if isinstance(wanted, matching.Alternatives):
            names = iter(wanted.values)
        elif isinstance(wanted, matching.Text) and not wanted.wildcard:
            names = iter((wanted.value,))
        elif isinstance(wanted, matching.Text) and wanted.prefix:
            names = self.index.names(self.txn, level, wanted.prefix)
        else:
            return None
        return _chain(names, iter(("",))) if unknown else names


# The levels whose key is a UID the instance carries, which a C-FIND
# answer must fill (PS3.4 C.4.1.1.3.1): an empty one is no entity.
_KEYED_BY_UID = frozenset(("study", "series"))


def _fields(level: str, record: dict[str, Any]) -> dict[str, Any]:
    """The attributes a record answers with, empty values left out."""
    if level == "instance":
        return _instance_fields(record)
    return {k: v for k, v in record.items()
            if k[:1].isupper() and not _empty(v)}


def _instance_fields(record: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in record["attributes"].items()
              if k in _INSTANCE_OWN and not _empty(v)}
    fields["SOPInstanceUID"] = record["sop_instance_uid"]
    if record.get("sop_class_uid"):
        fields["SOPClassUID"] = record["sop_class_uid"]
    fields["TransferSyntaxUID"] = record["transfer_syntax"]
    fields["AvailableTransferSyntaxUID"] = record["transfer_syntax"]
    fields["SeriesInstanceUID"] = record["series"]
    return fields


# Instance attributes answered from the instance's own record; the rest
# of what it carries belongs to the levels above and is answered from
# their records.
_INSTANCE_OWN = frozenset(INSTANCE_KEYS)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == ()


_END = object()


def _intersect(sources: list[Iterator[str]]) -> set[str]:
    """The keys every finished source holds (see the module essay)."""
    found: list[set[str]] = [set() for _ in sources]
    done = [False] * len(sources)
    while not any(done):
        for i, source in enumerate(sources):
            name = next(source, _END)
            if name is _END:
                done[i] = True
            else:
                found[i].add(name)  # type: ignore[arg-type]
    smallest = min(len(found[i]) for i in range(len(sources)) if done[i])
    if not smallest:
        return set()  # a source holds no key: nothing is in all of them
    budget = max(_MIN_EXTRA_STEPS, _EXTRA_FACTOR * smallest)
    for i, source in enumerate(sources):
        for _ in range(0 if done[i] else budget):
            name = next(source, _END)
            if name is _END:
                done[i] = True
                break
            found[i].add(name)  # type: ignore[arg-type]
    finished = [found[i] for i in range(len(sources)) if done[i]]
    return set.intersection(*finished)


def _chain(*parts: Iterator[str]) -> Iterator[str]:
    for part in parts:
        yield from part
