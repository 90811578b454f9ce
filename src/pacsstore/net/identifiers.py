"""Request Identifiers (C-FIND, C-MOVE, C-GET) decoded into pydicom
Datasets, without pydicom's per-element machinery where it is not needed.

A C-FIND request is a few dozen short text elements, and pydicom spends
about ten microseconds on each: it reads them into raw elements, then
converts each on first access through its hooks, its Dataset lookup and
its tag objects. That was half the time the node took to answer a
selective query. Here the elements of a plain Identifier are cut with
``struct`` and each value is converted by pydicom's own converter for
its VR (``pydicom.values.convert_value``), in the Identifier's own
character set, so the values are the ones pydicom would give.

Anything less plain goes to pydicom whole, with its own behaviour
(warnings, lenient readings, errors): big endian or deflated syntaxes,
elements of group 0028 (some of which pydicom corrects as it reads),
sequences and undefined lengths, VRs other than text and binary
integers (``UN`` included, which pydicom may replace), implicit VR tags
the dictionary does not know or gives an ambiguous VR ("US or SS"),
elements out of ascending order, a length past the end, and any value
pydicom's converter refuses.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.values import convert_value
from pynetdicom.dsutils import decode

from pacsstore._parse import parse

_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")
_SPECIFIC_CHARACTER_SET = 0x00080005

# VRs whose values are converted here: text, and binary integers.
_TEXT_VRS = frozenset(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO",
                       "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR",
                       "UT"))
_BINARY_VRS = frozenset(("US", "UL", "SS", "SL"))
_DECODED_VRS = _TEXT_VRS | _BINARY_VRS
# Explicit VRs with a reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV",
                       "UC", "UN", "UR", "UT", "UV"))
_UNDEFINED = 0xFFFFFFFF
# pydicom corrects some values of this group (LUT descriptors) as it
# reads them; no query key lives there.
_IMAGE_PIXEL_GROUP = 0x0028


_UNSET = object()


class _NotPlain(Exception):
    """The Identifier needs pydicom's own reading."""


def request_identifier(event: Any) -> Dataset:
    """The Identifier of the request of a pynetdicom C-FIND, C-MOVE or
    C-GET event, as ``event.identifier`` would decode it."""
    stream = event.request.Identifier
    data = stream.getvalue() if stream is not None else b""
    return decode_identifier(data, event.context.transfer_syntax)


def decode_identifier(data: bytes, transfer_syntax: Any) -> Dataset:
    """The Identifier ``data``, encoded in ``transfer_syntax`` (a pydicom
    UID), as pynetdicom's ``decode`` would give it, with every element
    converted: whatever pydicom raises on bad bytes, it raises here."""
    implicit = bool(transfer_syntax.is_implicit_VR)
    if transfer_syntax.is_little_endian and not \
            transfer_syntax.is_deflated:
        try:
            return _plain(data, implicit)
        except _NotPlain:
            pass
    if not data:
        return Dataset()
    # pydicom reads an element whose length runs past the end as the
    # bytes there are; the walker says it is cut short.
    if parse(data, str(transfer_syntax)).truncated:
        raise ValueError("an element's length runs past the end of the "
                         "identifier")
    dataset = decode(BytesIO(data), implicit,
                     bool(transfer_syntax.is_little_endian),
                     bool(transfer_syntax.is_deflated))
    # pydicom converts an element when it is first read: read them all,
    # sequence items included, so that bad bytes fail here and not in
    # the matcher.
    dataset.walk(lambda dataset, element: None)
    return dataset


def _plain(data: bytes, implicit: bool) -> Dataset:
    if config.data_element_callback is not None:
        raise _NotPlain  # the caller wants to see every raw element
    # Most keys of a request are empty (return keys): their value is
    # pydicom's empty value for the VR, looked up once per request.
    empty: dict[str, Any] = {}
    encodings: Any = default_encoding
    mode = config.settings.reading_validation_mode
    dataset = Dataset()
    elements = dataset._dict
    view = memoryview(data)
    offset, end, last = 0, len(view), -1
    while offset < end:
        tag, vr, length, start = _element_header(view, offset, implicit)
        if length == _UNDEFINED or length > end - start or tag <= last \
                or tag >> 16 == _IMAGE_PIXEL_GROUP:
            raise _NotPlain
        key = BaseTag(tag)
        if length:
            value = _value(RawDataElement(
                key, vr, length, data[start:start + length], start,
                implicit, True), encodings)
        else:
            value = empty.get(vr, _UNSET)
            if value is _UNSET:
                value = empty[vr] = empty_value_for_VR(vr)
        elements[key] = DataElement(key, vr, value, start,
                                    already_converted=True,
                                    validation_mode=mode)
        if tag == _SPECIFIC_CHARACTER_SET:
            encodings = _encodings(value)
        offset, last = start + length, tag
    dataset.set_original_encoding(implicit, True, encodings)
    return dataset


def _element_header(view: memoryview, offset: int,
                    implicit: bool) -> tuple[int, str, int, int]:
    """(tag, VR, value length, value offset) of the element at
    ``offset``."""
    if len(view) - offset < 8:
        raise _NotPlain
    if implicit:
        group, element, length = _IMPLICIT.unpack_from(view, offset)
        tag = group << 16 | element
        return tag, _dictionary_vr(tag), length, offset + 8
    group, element, raw_vr, length = _EXPLICIT_SHORT.unpack_from(view,
                                                                 offset)
    vr = raw_vr.decode("latin-1")
    if vr in _LONG_VRS:
        if len(view) - offset < 12:
            raise _NotPlain
        (length,) = _LONG_LENGTH.unpack_from(view, offset + 8)
        start = offset + 12
    else:
        start = offset + 8
    if vr not in _DECODED_VRS:
        raise _NotPlain
    return group << 16 | element, vr, length, start


def _dictionary_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise _NotPlain from None
    if vr not in _DECODED_VRS:
        raise _NotPlain
    return vr


def _value(raw: RawDataElement, encodings: Any) -> Any:
    """The value pydicom's reader gives ``raw``."""
    try:
        return convert_value(raw.VR, raw, encodings)
    except Exception:  # noqa: BLE001 - pydicom decides what it tolerates
        raise _NotPlain from None


def _encodings(value: Any) -> Any:
    try:
        return convert_encodings(value)
    except Exception:  # noqa: BLE001 - unknown terms: pydicom's warnings
        raise _NotPlain from None
