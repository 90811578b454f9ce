"""The matching rules of a query key, after PS3.4 C.2.2.2.

A query value becomes a :class:`Condition` once, when the query is
checked, and is then tested against the stored values of many entities.
Which rule applies follows from the key's value representation:

- universal matching: ``None``, ``""`` and ``"*"`` match everything, an
  absent attribute included (they are dropped before any test);
- single value matching: text keys (AE, AS, CS, LO, SH, ST, LT, UT, ...)
  match exactly and case-sensitively. Trailing spaces are padding and
  never significant; leading spaces are significant in the text VRs of
  the character set (SH, LO, ST, LT, UT, UC), as pydicom reads them,
  and not in the others (AE, CS, DA, TM, DT, IS, UI, PS3.5 6.2);
- wildcard matching on the same keys: ``*`` is any run of characters,
  ``?`` any one character;
- person names (PN): a value matches each component group (alphabetic,
  ideographic, phonetic) as a whole; a query without ``=`` matches when
  any group of the stored name matches it, a query with ``=`` compares
  group by group (an empty query group matches any). Trailing empty
  components are not significant (``Doe^John^^`` is ``Doe^John``), and
  the comparison ignores case (Unicode case folding): PS3.4 C.2.2.2.1
  lets person names match insensitively to case, and users type names in
  any case. ``?`` stands for one character of the case-folded name; a
  query of separators only (``^``, ``=``) is universal;
- lists of UIDs: a UI key with several values (a list, or values joined
  by ``\\``) matches any of them; wildcards are not UID matching and are
  refused;
- integers (IS, US and the computed counts) match by value (``+7`` and
  ``007`` are 7, CP-2305 leaves this to the implementation);
- range matching of DA, TM and DT: ``D1-D2``, ``-D2``, ``D1-``; a single
  value ``D`` is ``D-D``, and a bound may stop early (``2004``,
  ``200401``, ``14``) to take in the whole year, month or hour. An
  ACR-NEMA date ``2004.01.19`` (or time ``14:30:00``), stored or in the
  query, is read as its digits. As an extension a DA, TM or DT key also takes a wildcard
  pattern (``2004*``), matched against the stored text;
- combined date and time (:class:`DateTimeRange`): a date and a time key
  of the same range form read as one datetime range, when asked for (the
  extended negotiation of PS3.4 C.5.1.1.2).

A multi-valued attribute matches when one of its values does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from pydicom.datadict import dictionary_VR, tag_for_keyword

from pacsstore.errors import QueryError

# Keys the index computes; their values are integers or lists of codes.
INTEGER_KEYS = frozenset((
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances"))
# Keys whose query value may list alternatives (PS3.4 C.2.2.2.2 for
# UIDs; C.6.1.1.3 for the modalities and SOP classes of a study).
_LIST_KEYS = frozenset(("ModalitiesInStudy", "SOPClassesInStudy"))
_RANGE_VRS = frozenset(("DA", "TM", "DT"))
_INTEGER_VRS = frozenset(("IS", "US", "UL", "SS", "SL"))
# Text VRs whose leading spaces are text (PS3.5 6.2).
_TEXT_VRS = frozenset(("SH", "LO", "ST", "LT", "UT", "UC"))

# Bounds of a date or time range, to any precision from the left.
_BOUND = {
    "DA": re.compile(r"\d{4}(\d{2}(\d{2})?)?"),
    "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}"
                     r"(\.\d{1,6})?)?)?)?)?)?"),
}
_FORM = {"DA": "YYYYMMDD", "TM": "HHMMSS.FFFFFF",
         "DT": "YYYYMMDDHHMMSS.FFFFFF"}
# A stored value read for a range: ACR-NEMA separators dropped, a DT's
# UTC offset left out (see docs/limitations.md).
_ACR_NEMA = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$|^(\d{2}):(\d{2})"
                       r"(?::(\d{2}(?:\.\d{1,6})?))?$")
_DIGITS = re.compile(r"[0-9.]*")

Value = Any


@lru_cache(maxsize=1024)
def vr_of(keyword: str) -> str:
    """The VR of a keyword ("" for one pydicom does not know)."""
    if keyword in INTEGER_KEYS:
        return "IS"
    tag = tag_for_keyword(keyword) if keyword else None
    return "" if tag is None else dictionary_VR(tag)


def text_form(keyword: str, value: Any) -> str:
    """A value as text keys compare it: without its padding."""
    text = str(value)
    return text.rstrip(" ") if vr_of(keyword) in _TEXT_VRS \
        else text.strip(" ")


def values_of(value: Value) -> list[Any]:
    """A stored value as the list of its values."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def name_groups(name: str) -> tuple[str, ...]:
    """A person name as its component groups, each case-folded, without
    padding or trailing empty components; no trailing empty groups."""
    groups = [group.strip(" ").rstrip("^").casefold()
              for group in name.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return tuple(groups)


def is_empty(keyword: str, value: Value) -> bool:
    """Whether a stored value is zero length (a PN of separators only,
    ``^^^^``, is as empty as no name)."""
    parts = [v for v in values_of(value) if str(v).strip(" ")]
    if vr_of(keyword) == "PN":
        return not any(name_groups(str(v)) for v in parts)
    return not parts


class Condition:
    """One key's query value, ready to test stored values."""

    keyword: str

    def test(self, value: Value) -> bool:
        """Whether a stored value (possibly multi-valued) matches."""
        return any(self.test_one(v) for v in values_of(value))

    def test_one(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Alternatives(Condition):
    """Equal to one of ``values`` (a UID, a list of UIDs, a list of
    modalities)."""

    keyword: str
    values: tuple[str, ...]

    def test_one(self, value: Any) -> bool:
        return text_form(self.keyword, value) in self.values


@dataclass(frozen=True)
class Text(Condition):
    """Single value or wildcard matching of a text value."""

    keyword: str
    value: str

    @property
    def wildcard(self) -> bool:
        return _has_wildcard(self.value)

    @property
    def prefix(self) -> str:
        """The literal text every match starts with."""
        return _literal_prefix(self.value)

    def test_one(self, value: Any) -> bool:
        return _text_matches(text_form(self.keyword, value), self.value)


@dataclass(frozen=True)
class AnyOf(Condition):
    """Any of several text conditions (a list of modalities, some with
    wildcards)."""

    keyword: str
    options: tuple[Text, ...]

    def test_one(self, value: Any) -> bool:
        return any(option.test_one(value) for option in self.options)


@dataclass(frozen=True)
class PersonName(Condition):
    """A person name, matched group by group, ignoring case."""

    keyword: str
    groups: tuple[str, ...]

    @property
    def prefix(self) -> str:
        """The literal start of the first group the query gives, as a
        stored group starts (without the empty components it may end
        in: ``OB^*`` finds ``OB``)."""
        first = next((g for g in self.groups if g), "")
        return _literal_prefix(first).rstrip("^")

    def test_one(self, value: Any) -> bool:
        stored = name_groups(str(value))
        if len(self.groups) == 1:
            return any(_group_matches(g, self.groups[0]) for g in stored)
        for i, wanted in enumerate(self.groups):
            group = stored[i] if i < len(stored) else ""
            if wanted and not _group_matches(group, wanted):
                return False
        return True


def _group_matches(group: str, wanted: str) -> bool:
    """A name group is the same written with or without its trailing
    empty components (``OB`` is ``OB^^^^``): a pattern may match any
    of the forms, up to the five components of PS3.5 6.2."""
    if _text_matches(group, wanted):
        return True
    if not _has_wildcard(wanted):
        return False
    return any(_text_matches(group + "^" * extra, wanted)
               for extra in range(1, 5 - group.count("^")))


@dataclass(frozen=True)
class Integer(Condition):
    keyword: str
    value: int

    def test_one(self, value: Any) -> bool:
        return _as_integer(value) == self.value


@dataclass(frozen=True)
class Range(Condition):
    """A date or time range; ``None`` is an open end. Bounds are digit
    strings of the key's form, compared from the left. ``dash`` is False
    for a single value (the range from itself to itself)."""

    keyword: str
    low: str | None
    high: str | None
    dash: bool = True

    def test_one(self, value: Any) -> bool:
        return in_range(range_text(value), self.low, self.high)


@dataclass(frozen=True)
class DateTimeRange(Condition):
    """A date key and a time key matched as one datetime range (PS3.4
    C.2.2.2.5.1); ``date`` and ``time`` are the two ranges it joins."""

    keyword: str
    date: Range
    time: Range

    @property
    def low(self) -> str | None:
        if self.date.low is None:
            return None
        return _pad_date(self.date.low, "01") + (self.time.low or "")

    @property
    def high(self) -> str | None:
        if self.date.high is None:
            return None
        return _pad_date(self.date.high, "31") + (self.time.high or "")

    def test_pair(self, date: Value, time: Value) -> bool:
        days = [range_text(d) for d in values_of(date)]
        times = [range_text(t) for t in values_of(time)] or [""]
        # A time extends only a whole date; a date cut short (not
        # conformant) is compared as it is.
        return any(in_range(d + t if len(d) == 8 else d, self.low,
                            self.high) for d in days for t in times)

    def test_one(self, value: Any) -> bool:
        raise TypeError("a DateTimeRange tests a date and a time together")


def in_range(digits: str, low: str | None, high: str | None) -> bool:
    if not digits:
        return False
    if low is not None and digits < low:
        return False
    return high is None or digits[:len(high)] <= high


def _acr_nema(bound: str) -> str:
    """A query bound written the ACR-NEMA way, as its digits."""
    found = _ACR_NEMA.match(bound)
    return "".join(p for p in found.groups() if p) if found else bound


def range_text(value: Any) -> str:
    """A stored DA, TM or DT value as the digits ranges compare."""
    text = str(value).strip(" ")
    acr_nema = _ACR_NEMA.match(text)
    if acr_nema:
        return "".join(part for part in acr_nema.groups() if part)
    return _DIGITS.match(text).group()  # type: ignore[union-attr]


def _pad_date(date: str, day: str) -> str:
    """A date bound cut short, as the first (or last) day it covers."""
    if len(date) == 4:
        date += "01" if day == "01" else "12"
    if len(date) == 6:
        date += day
    return date


def condition(keyword: str, value: Any, *,
              ordered: bool = True) -> Condition | None:
    """A query value as a Condition; None for universal matching.
    ``ordered=False`` accepts a range that ends before it starts (a time
    range that is to join a date range, see :func:`combine`).

    Raises QueryError for a value the key cannot match on."""
    vr = vr_of(keyword)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return _alternatives(keyword, vr, value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise QueryError(f"{keyword}: expected a string (or None); found "
                         f"{type(value).__name__} {value!r}")
    if isinstance(value, int):
        if vr in _INTEGER_VRS:
            return Integer(keyword, value)
        value = str(value)
    found = _from_text(keyword, vr, value)
    if ordered and isinstance(found, Range):
        check_order(found)
    return found


def _from_text(keyword: str, vr: str, value: str) -> Condition | None:
    text = text_form(keyword, value)
    if text in ("", "*"):
        return None
    if vr == "UI" or (keyword in _LIST_KEYS and "\\" in text):
        return _alternatives(keyword, vr, text.split("\\"))
    if vr in _INTEGER_VRS:
        return Integer(keyword, _integer_key(keyword, text))
    if vr in _RANGE_VRS and not _has_wildcard(text):
        return date_range(keyword, vr, text)
    if vr == "PN":
        groups = _query_groups(text)
        return PersonName(keyword, groups) if any(groups) else None
    return Text(keyword, text)


def _alternatives(keyword: str, vr: str,
                  values: Iterable[Any]) -> Alternatives | AnyOf:
    if vr != "UI" and keyword not in _LIST_KEYS:
        raise QueryError(
            f"{keyword} is {vr or 'not a DICOM attribute'}: a list of "
            f"values is accepted only for UID keys, ModalitiesInStudy and "
            f"SOPClassesInStudy; found {values!r}")
    wanted = []
    for value in values:
        if not isinstance(value, str):
            raise QueryError(f"{keyword}: a list of UIDs holds strings; "
                             f"found {values!r}")
        value = text_form(keyword, value)
        if vr == "UI" and _has_wildcard(value) and value != "*":
            raise QueryError(
                f"{keyword} is a UID: it matches whole UIDs or a list of "
                f"them (PS3.4 C.2.2.2.2), not wildcards; found {value!r}")
        wanted.append(value)
    if vr != "UI" and any(_has_wildcard(v) for v in wanted):
        return AnyOf(keyword, tuple(Text(keyword, v) for v in wanted))
    return Alternatives(keyword, tuple(wanted))


def _integer_key(keyword: str, text: str) -> int:
    number = _as_integer(text)
    if number is None:
        raise QueryError(f"{keyword} is an integer key: expected a whole "
                         f"number; found {text!r}")
    return number


def _as_integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip(" "))
    except ValueError:
        return None


def date_range(keyword: str, vr: str, value: str) -> Range:
    """A DA, TM or DT query value as a range (PS3.4 C.2.2.2.5)."""
    low, dash, high = value.partition("-")
    low, high = _acr_nema(low.strip(" ")), _acr_nema(high.strip(" "))
    bounds = (low, high) if dash else (low, low)
    if not any(bounds) or not all(
            _BOUND[vr].fullmatch(b) for b in bounds if b):
        raise QueryError(
            f"{keyword} is {vr}: expected {_FORM[vr]} (or a leading part "
            f"of it), a range D1-D2, -D2 or D1-, or a wildcard pattern; "
            f"found {value!r}"
            + (" (UTC offsets are not supported)" if vr == "DT" else ""))
    return Range(keyword, bounds[0] or None, bounds[1] or None, bool(dash))


def check_order(wanted: Range) -> None:
    low, high = wanted.low, wanted.high
    if low and high and low[:len(high)] > high:
        raise QueryError(f"{wanted.keyword}: the range {low}-{high} ends "
                         f"before it starts")


def combine(date: Range, time: Range) -> DateTimeRange | None:
    """The datetime range of a date range and a time range of the same
    form (both ``D1-D2``, both ``-D2`` or both ``D1-``); None otherwise,
    and then each is matched on its own."""
    if not (date.dash and time.dash):
        return None
    if (date.low is None, date.high is None) != \
            (time.low is None, time.high is None):
        return None
    return DateTimeRange(date.keyword, date, time)


def _query_groups(text: str) -> tuple[str, ...]:
    # Kept as given: a query with "=" compares group by group, even
    # when it names the first group only ("Doe^John=").
    return tuple(g.strip(" ").rstrip("^").casefold()
                 for g in text.split("="))


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def _literal_prefix(pattern: str) -> str:
    cut = [i for i in (pattern.find("*"), pattern.find("?")) if i >= 0]
    return pattern[:min(cut)] if cut else pattern


def _text_matches(stored: str, wanted: str) -> bool:
    if _has_wildcard(wanted):
        return _wildcard_matches(stored, _pattern(wanted))
    return stored == wanted


class _Piece(NamedTuple):
    """A run of a wildcard pattern between two ``*``: its text, and the
    expression that finds it when it holds a ``?`` (None otherwise)."""

    text: str
    search: re.Pattern[str] | None


@lru_cache(maxsize=512)
def _pattern(value: str) -> tuple[_Piece, ...]:
    """``value`` cut at each ``*``. A regular expression of the whole
    pattern (``.*`` for each ``*``) backtracks exponentially on values
    that do not match it (``*?*?*?...#``: seconds for 19 characters,
    holding the GIL, so that one query stalled the whole node); pieces
    without ``*`` cannot."""
    pieces = []
    for text in value.split("*"):
        search = None
        if "?" in text:
            search = re.compile("".join(
                "." if c == "?" else re.escape(c) for c in text), re.DOTALL)
        pieces.append(_Piece(text, search))
    return tuple(pieces)


def _wildcard_matches(stored: str, pieces: tuple[_Piece, ...]) -> bool:
    """PS3.4 C.2.2.2.4: ``?`` any one character, ``*`` any run of them.

    The first piece must start the value and the last end it; each one
    between is taken where it first occurs after the one before, which
    leaves the most room for those after it, so a match is found if
    there is one. Time grows with the value's length times the
    pattern's, never faster."""
    first, last = pieces[0], pieces[-1]
    if len(pieces) == 1:
        return len(stored) == len(first.text) and _piece_at(stored, 0,
                                                              first)
    end = len(stored) - len(last.text)
    if end < len(first.text) or not _piece_at(stored, 0, first) or \
            not _piece_at(stored, end, last):
        return False
    position = len(first.text)
    for piece in pieces[1:-1]:
        found = _find_piece(stored, piece, position, end)
        if found < 0:
            return False
        position = found + len(piece.text)
    return True


def _piece_at(stored: str, position: int, piece: _Piece) -> bool:
    if piece.search is None:
        return stored.startswith(piece.text, position)
    return piece.search.match(stored, position,
                              position + len(piece.text)) is not None


def _find_piece(stored: str, piece: _Piece, start: int, end: int) -> int:
    if piece.search is None:
        return stored.find(piece.text, start, end)
    found = piece.search.search(stored, start, end)
    return -1 if found is None else found.start()

