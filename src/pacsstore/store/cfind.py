"""C-FIND, C-MOVE and C-GET identifiers answered from the index.

The node's handlers hand over the Identifier of a request as pynetdicom
decoded it (a pydicom Dataset whose text decodes in the request's own
Specific Character Set) and send back what these functions give:

- :func:`find_identifiers`: one response Identifier per match of a
  C-FIND request, under the Patient Root or Study Root information model
  (PS3.4 C.6.1, C.6.2), hierarchical (the unique key of every level
  above the Query/Retrieve Level with a single value, C.4.1.2.1) or,
  when relational queries were negotiated, relational (any key of the
  level or above);
- :func:`instances_for_retrieve`: the SOP Instance UIDs a C-MOVE or
  C-GET Identifier names, through the unique keys of its level and
  above (C.4.2.2.1, C.4.3.2.1).

Both go through ``Archive.find``, the matcher of the API; C-FIND adds
the rule that an empty required key matches any value (C.2.2.1.2; in
the Patient Root model PatientID is the unique key, not a required one,
so there it does not apply to it).
A request that does not fit (an unknown level or model, a missing unique
key above the level, a key of a lower level with a value, a value the
key cannot match on) raises QueryError naming the key; the handler
answers it with a failure status.

Keys. Each element of the request Identifier is a key: its value (if
any) is matched and it is returned, holding the index's value or empty
where the index has none (an attribute the index does not hold is
matched universally, as an optional key the SCP does not support,
C.2.2.1.3; a sequence likewise, returned empty). Group 0000-0007
elements and private tags are neither matched nor returned.

Character sets. The index holds Unicode; the request's values arrive
decoded. A response is written in the request's character set when it
can represent every value of the response, and otherwise in UTF-8
(ISO_IR 192), announced by its SpecificCharacterSet, so that a name is
never sent with replacement characters. A response in ASCII alone keeps
the request's SpecificCharacterSet (or none when the request had none).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.charset import convert_encodings, custom_encoders
from pydicom.datadict import dictionary_has_tag, dictionary_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName

from pacsstore.errors import QueryError
from pacsstore.store.hierarchy import LEVELS, UID_OF
from pacsstore.store.query import HOME, REQUIRED_KEYS, known_key_set

if TYPE_CHECKING:
    from pacsstore.store.archive import Archive

# The Query/Retrieve Levels of each information model, top down.
MODELS = {"patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
          "study": ("STUDY", "SERIES", "IMAGE")}
_LEVEL = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series",
          "IMAGE": "instance"}
UTF8 = "ISO_IR 192"
# Values a response answers without the index.
_INSTANCE_AVAILABILITY = "ONLINE"
# VRs whose text is written in the Specific Character Set (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset(("SH", "LO", "PN", "ST", "LT", "UC", "UT"))
# The default repertoire, as the first term of a Specific Character Set.
_DEFAULT_TERMS = frozenset(("", "ISO_IR 6", "ISO 2022 IR 6"))
_NOT_KEYS = frozenset(("QueryRetrieveLevel", "SpecificCharacterSet"))
_QUERY_RETRIEVE_LEVEL = 0x00080052
_SPECIFIC_CHARACTER_SET = 0x00080005


@dataclass
class _Request:
    """A request Identifier read: its level, what it matches on and
    what it asks back."""

    level: str                     # "PATIENT", ... as the request says
    keys: dict[str, Any] = field(default_factory=dict)
    returned: list[DataElement] = field(default_factory=list)
    charset: list[str] = field(default_factory=list)
    # Keys of the level or above that the index does not hold: matched
    # universally and returned empty.
    unsupported: list[str] = field(default_factory=list)


class Answers:
    """The response Identifiers of a C-FIND request, built as they are
    taken, and the keys of the request the index could neither match nor
    return (PS3.4 C.4.1.1.4: optional keys not supported, which its
    pending responses report with 0xFF01)."""

    def __init__(self, identifiers: Iterator[Dataset],
                 unsupported_keys: tuple[str, ...]) -> None:
        self._identifiers = identifiers
        self.unsupported_keys = unsupported_keys

    def __iter__(self) -> Iterator[Dataset]:
        return self._identifiers


def find_identifiers(archive: Archive, identifier: Dataset, *, model: str,
                     relational: bool = False,
                     combined_datetime: bool = False,
                     retrieve_ae_title: str | None = None
                     ) -> Answers:
    """The response Identifiers of a C-FIND request, one per match.

    ``model`` is "patient" or "study" (the root of the information
    model the SOP Class names); ``relational`` and ``combined_datetime``
    say what the association's extended negotiation accepted;
    ``retrieve_ae_title`` fills Retrieve AE Title (0008,0054) where the
    request asks for it. The matching runs when this is called (a
    QueryError comes from the call, not from the iteration); the
    responses are built as they are taken."""
    request = _read(identifier, model, relational)
    answers = archive.find(_LEVEL[request.level],
                           match_unknown=_unknown_matches(model),
                           combined_datetime=combined_datetime,
                           **request.keys)
    return Answers((_response(request, answer, retrieve_ae_title)
                    for answer in answers), tuple(request.unsupported))


def instances_for_retrieve(archive: Archive, identifier: Dataset, *,
                           model: str, relational: bool = False
                           ) -> list[str]:
    """The SOP Instance UIDs a C-MOVE or C-GET Identifier names: every
    instance under the entities its unique keys select."""
    levels = _levels(identifier, model)
    keys: dict[str, Any] = {}
    for name in levels:
        level = _LEVEL[name]
        keyword = UID_OF[level]
        value = _unique_value(identifier, keyword, name, levels[-1])
        if value is None:
            if name == levels[-1] or not relational:
                raise QueryError(
                    f"{_article(levels[-1])} {levels[-1]} retrieve needs "
                    f"{keyword} with a value (the unique key of the "
                    f"{name} level)")
            continue
        keys[keyword] = value
    answers = archive.find("instance", **keys)
    return [answer["SOPInstanceUID"] for answer in answers]


def _unknown_matches(model: str) -> frozenset[str]:
    """The required keys of the model, whose empty values match any
    value (PS3.4 C.2.2.1.2). PatientID is the unique key of the Patient
    Root model, not a required one: "the studies of patient X" never
    takes in those of a patient without an ID."""
    if model == "patient":
        return REQUIRED_KEYS - {"PatientID"}
    return REQUIRED_KEYS


# Reading the request --------------------------------------------------------


def _levels(identifier: Dataset, model: str) -> tuple[str, ...]:
    """The model's levels from its top down to the request's level."""
    if model not in MODELS:
        raise QueryError(f"model must be 'patient' or 'study' (the root "
                         f"of the information model); found {model!r}")
    level = str(_value_of(identifier, _QUERY_RETRIEVE_LEVEL) or "").strip()
    if level not in MODELS[model]:
        raise QueryError(
            f"QueryRetrieveLevel (0008,0052) must be one of "
            f"{', '.join(MODELS[model])} in the {model} root model; found "
            f"{level!r}")
    top = MODELS[model]
    return top[:top.index(level) + 1]


def _read(identifier: Dataset, model: str, relational: bool) -> _Request:
    levels = _levels(identifier, model)
    request = _Request(level=levels[-1],
                       charset=_charset_terms(identifier))
    target = _LEVEL[request.level]
    known = known_key_set(target)
    for element in _in_tag_order(identifier):
        keyword = _key_keyword(element.tag)
        if not keyword or keyword in _NOT_KEYS:
            continue
        request.returned.append(element)
        value = _query_value(element)
        if keyword in known:
            _refuse_unreadable(element, keyword)
            request.keys[keyword] = value
        elif keyword in _ANSWERED_HERE and value in (None, ""):
            continue   # returned with the node's values (_answer_value)
        elif not _below(keyword, target):
            request.unsupported.append(keyword)
        elif value not in (None, ""):
            raise QueryError(
                f"{keyword} {_tag(element)} is a key of the "
                f"{HOME[keyword]} level, below this {request.level} "
                f"query; a request matches on its own level and above")
    if not relational:
        _require_unique_keys_above(identifier, levels)
    return request


def _in_tag_order(identifier: Dataset) -> Iterator[DataElement]:
    """The identifier's elements, as iterating it gives them. Sorted by
    the tags as plain integers: pydicom's own iteration compares tag
    objects in Python, which took a third of reading a request."""
    for tag in sorted(identifier.keys(), key=int):
        yield identifier[tag]


@functools.lru_cache(maxsize=4096)
def _key_keyword(tag: BaseTag) -> str:
    """The keyword of an element that is a key; "" for the command and
    meta groups (0000-0007), group lengths, private and unknown tags.
    Cached: every request asks it of each of its elements."""
    if tag.group < 0x0008 or tag.is_private or tag.element == 0:
        return ""
    return dictionary_keyword(tag) if dictionary_has_tag(tag) else ""


def _below(keyword: str, level: str) -> bool:
    home = HOME.get(keyword)
    return home is not None and LEVELS.index(home) > LEVELS.index(level)


def _tag(element: DataElement) -> str:
    return f"({element.tag.group:04X},{element.tag.element:04X})"


def _refuse_unreadable(element: DataElement, keyword: str) -> None:
    """A key the index holds whose value came as bytes (UN, OB, ...)
    cannot be matched: refused, where matching it universally would
    answer every entity. A peer sends a key as UN when its value does
    not fit the 16-bit length of its explicit VR (65,535 bytes or more);
    an empty one is a return key like any other."""
    value = element.value
    if isinstance(value, (bytes, bytearray)) and value:
        raise QueryError(
            f"{keyword} {_tag(element)} came as {element.VR}, "
            f"{len(value)} bytes the matcher cannot read as its value "
            f"(too long for its own VR?)")


def _query_value(element: DataElement) -> Any:
    """An element's value as Archive.find takes it: a string, a list
    (several values), or None (universal: empty, a sequence, bytes)."""
    value = element.value
    if element.VR == "SQ" or value is None or \
            isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        values = [str(v) for v in value]
        return values if len(values) != 1 else values[0]
    return str(value)


def _require_unique_keys_above(identifier: Dataset,
                               levels: tuple[str, ...]) -> None:
    """A hierarchical query names one entity at each level above its
    own by its unique key (PS3.4 C.4.1.2.1)."""
    for name in levels[:-1]:
        keyword = UID_OF[_LEVEL[name]]
        value = _unique_value(identifier, keyword, name, levels[-1])
        if not isinstance(value, str):
            raise QueryError(
                f"a hierarchical {levels[-1]} query needs a single "
                f"{keyword} (the unique key of the {name} level); found "
                f"{'none' if value is None else value!r} (relational "
                f"queries, which do not, were not negotiated)")


def _article(word: str) -> str:
    return "an" if word[:1] in "AEIOU" else "a"


def _unique_value(identifier: Dataset, keyword: str, level: str,
                  asked: str) -> str | list[str] | None:
    """The value of a unique key: one UID (or ID), or at the level
    asked a list of them; None when absent or empty."""
    value = _query_value(identifier[keyword]) \
        if keyword in identifier else None
    if value in (None, ""):
        return None
    values = value if isinstance(value, list) else [value]
    if any("*" in v or "?" in v for v in values):
        raise QueryError(f"{keyword} is the unique key of the {level} "
                         f"level: wildcards do not apply; found {value!r}")
    if isinstance(value, list) and level != asked:
        raise QueryError(f"{keyword} names the {level} level above the "
                         f"{asked} level: it takes one value; found "
                         f"{value!r}")
    return value


def _value_of(identifier: Dataset, tag: int) -> Any:
    """The value of an element, or None. By tag: a lookup by keyword
    goes through pydicom's attribute machinery, four times slower."""
    element = identifier.get(tag)
    return None if element is None else element.value


def _charset_terms(identifier: Dataset) -> list[str]:
    value = _value_of(identifier, _SPECIFIC_CHARACTER_SET)
    if not value:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v).strip() for v in value]
    return [str(value).strip()]


# Writing the response -------------------------------------------------------


def _response(request: _Request, answer: dict[str, Any],
              retrieve_ae_title: str | None) -> Dataset:
    response = Dataset()
    response.QueryRetrieveLevel = request.level
    study_level = request.level == "STUDY"
    for element in request.returned:
        keyword = _key_keyword(element.tag)
        if keyword == "Modality" and study_level:
            keyword = "ModalitiesInStudy"
        value = _answer_value(keyword, answer, retrieve_ae_title)
        response.add(_element(element, value))
    charset = _response_charset(request.charset, response)
    if charset:
        response.SpecificCharacterSet = \
            charset if len(charset) > 1 else charset[0]
    return response


# Return keys the node fills itself rather than from the index: asked
# for with no value, they are supported (no 0xFF01 for them).
_ANSWERED_HERE = frozenset(("RetrieveAETitle", "InstanceAvailability"))


def _answer_value(keyword: str, answer: dict[str, Any],
                  retrieve_ae_title: str | None) -> Any:
    if keyword == "RetrieveAETitle":
        return retrieve_ae_title
    if keyword == "InstanceAvailability":
        return _INSTANCE_AVAILABILITY
    return answer.get(keyword)


def _element(asked: DataElement, value: Any) -> DataElement:
    """The response element for a requested key: its tag and VR, the
    index's value, or empty."""
    if asked.VR == "SQ":
        return DataElement(asked.tag, "SQ", Sequence())
    if value is None or value == "" or value == []:
        return DataElement(asked.tag, asked.VR, None)
    if isinstance(value, (list, tuple)):
        return DataElement(asked.tag, asked.VR,
                           [_scalar(asked.VR, v) for v in value])
    return DataElement(asked.tag, asked.VR, _scalar(asked.VR, value))


def _scalar(vr: str, value: Any) -> Any:
    if vr == "PN":
        return PersonName(str(value))
    if isinstance(value, int) and vr in ("US", "UL", "SS", "SL"):
        return value
    return str(value)


def _response_charset(asked: list[str], response: Dataset) -> list[str]:
    """The request's character set when it can write every text value
    of the response, else UTF-8."""
    texts = list(_charset_texts(response))
    if all(text.isascii() for text in texts):
        return asked
    if asked and all(_representable(text, asked) for text in texts):
        return asked
    return [UTF8]


def _charset_texts(response: Dataset) -> Iterator[str]:
    for element in response:
        if element.VR not in _CHARSET_VRS or element.value is None:
            continue
        values = element.value if isinstance(
            element.value, (MultiValue, list)) else [element.value]
        for value in values:
            yield str(value)


def _representable(text: str, terms: list[str]) -> bool:
    """Whether every character of ``text`` is in one of the character
    sets of ``terms`` (code extensions switch between them)."""
    codecs = _codecs(tuple(terms))
    return all(any(_encodes(codec, char) for codec in codecs)
               for char in text)


def _codecs(terms: tuple[str, ...]) -> list[str]:
    try:
        codecs = convert_encodings(list(terms))
    except LookupError:
        return []
    if terms and terms[0] in _DEFAULT_TERMS:
        # pydicom reads the default repertoire leniently as Latin-1;
        # written, it is ASCII (ISO-IR 6).
        codecs = ["ascii", *codecs[1:]]
    return codecs


def _encodes(codec: str, char: str) -> bool:
    encode = custom_encoders.get(codec)
    try:
        if encode is not None:
            encode(char)
        else:
            char.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return True
