"""The header of one DICOM instance, as the store and the index see it.

:func:`read_header` runs the native walker (:mod:`pacsstore._parse`) over
a Part 10 file or a bare dataset and decodes the few attributes it found
into Python values. Nothing else of the dataset is touched: the walker
recorded where those values lie, and only they are decoded, so the cost of
a header does not grow with the number of elements in the file.

The walker decodes nearly all of them itself, straight from the buffer
(``parse_decoded``): the default repertoire, ISO_IR 100 and UTF-8 text,
and ASCII text in any other character set. :func:`decode_value` is the
definition it follows exactly, and decodes what the walker leaves pending
(code extensions, other bytes in other character sets).

Decoding follows pydicom, the reference the tests hold it to: text in the
dataset's Specific Character Set through :mod:`pydicom.charset`, trailing
spaces and NULs stripped, a Person Name in its DICOM form (components
joined by ``^``, groups by ``=``), an IS as an int (``None`` when it is not
an integer), a US as an int, and a value with several components as a
tuple (always for Image Type and Specific Character Set).
"""

from __future__ import annotations

import codecs
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from mmap import mmap
from typing import Union

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.values import convert_PN
from pydicom.valuerep import PersonName, TEXT_VR_DELIMS

from pacsstore._parse import (ALWAYS_TUPLE, CHARSET_ASCII, CHARSET_LATIN1,
                              CHARSET_PYTHON, CHARSET_UTF8,
                              VALUE_REPRESENTATIONS, ParseResult,
                              PixelLayout, integer_string, parse_decoded)

logger = logging.getLogger(__name__)

Buffer = Union[bytes, bytearray, memoryview, mmap]
Value = Union[str, int, tuple, None]

# The value representation of each attribute the walker records (all but
# its US ones); it decides how the raw bytes decode.
_VR = VALUE_REPRESENTATIONS
# VRs whose text is in the dataset's character set (PS3.5 6.1.2.3); the
# others are in the default repertoire.
_CHARSET_VRS = frozenset(("SH", "LO", "PN", "ST", "LT", "UC", "UT"))
# Text VRs of one value, in which a backslash is text (PS3.5 6.2).
_SINGLE_TEXT_VRS = frozenset(("ST", "LT", "UT"))
_TEXT_DELIMITERS = TEXT_VR_DELIMS
_ALWAYS_TUPLE = ALWAYS_TUPLE
# pydicom's default_encoding: the default repertoire read leniently.
_DEFAULT_ENCODING = "iso8859"


# Not frozen: a frozen dataclass pays object.__setattr__ per field on
# every construction, a tenth of a whole header parse; nothing assigns to
# a Header after read_header made it.
@dataclass(slots=True)
class Header:
    """What the store needs of one instance: the walk and the decoded
    attributes (absent ones are simply missing from ``attributes``)."""

    result: ParseResult
    attributes: dict[str, Value] = field(default_factory=dict)

    @property
    def transfer_syntax(self) -> str:
        return self.result.transfer_syntax

    @property
    def pixel(self) -> PixelLayout | None:
        return self.result.pixel

    @property
    def sop_instance_uid(self) -> str | None:
        return _text_or_none(self.attributes.get("SOPInstanceUID"))

    @property
    def sop_class_uid(self) -> str | None:
        return _text_or_none(self.attributes.get("SOPClassUID"))

    def get(self, keyword: str, default: Value = None) -> Value:
        return self.attributes.get(keyword, default)


def read_header(buffer: Buffer,
                transfer_syntax: str | None = None) -> Header:
    """Walk a Part 10 file (or a bare dataset of the given transfer syntax)
    and decode its query attributes.

    Raises :class:`pacsstore.errors.MalformedDicomError` where the bytes
    cannot be walked safely.
    """
    # The walker decodes nearly every value itself, exactly as
    # decode_value would; what it leaves pending is decoded here.
    result, attributes, pending = parse_decoded(buffer, transfer_syntax,
                                                _charset_mode)
    if pending:
        raw = result.attributes
        encodings = _encodings(raw.get("SpecificCharacterSet"))
        for keyword in pending:
            attributes[keyword] = decode_value(keyword, raw[keyword],
                                               encodings)
    return Header(result, attributes)


def decode_value(keyword: str, raw: bytes | int,
                 encodings: list[str]) -> Value:
    """One recorded value as pydicom would present it."""
    if isinstance(raw, int):
        return raw
    vr = _VR.get(keyword, "LO")
    if vr == "IS":
        return integer_string(raw)
    if vr == "PN":
        values = _person_names(raw, encodings)
    elif vr in _SINGLE_TEXT_VRS:
        # pydicom's convert_single_string: one value, padding stripped.
        values = (_decode_text(raw, encodings).rstrip("\x00 "),)
    elif vr in _CHARSET_VRS:
        # pydicom's convert_text: padding stripped from each value.
        text = _decode_text(raw, encodings)
        values = tuple(part.rstrip("\x00 ") for part in text.split("\\"))
    else:
        # pydicom's multi_string: padding stripped from the whole value.
        text = raw.decode(_DEFAULT_ENCODING).rstrip(" \x00")
        values = tuple(text.split("\\"))
    if keyword in _ALWAYS_TUPLE:
        return values if values != ("",) else ()
    return values[0] if len(values) == 1 else values


def _person_names(raw: bytes, encodings: list[str]) -> tuple[str, ...]:
    """Person names in their DICOM form, as str(PersonName) gives them."""
    try:
        value = convert_PN(raw, encodings)
        if isinstance(value, PersonName):
            return (str(value),)
        return tuple(str(name) for name in value)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - see _lenient
        return tuple(name.rstrip("\x00 ")
                     for name in _lenient(raw, encodings).split("\\"))


def _decode_text(raw: bytes, encodings: list[str]) -> str:
    # Without code extensions (no ESC) and with one character set, the
    # text is plain bytes of that set: decode it directly, and leave the
    # rest (and any failure, which pydicom replaces) to pydicom.
    if len(encodings) == 1 and b"\x1b" not in raw:
        try:
            return raw.decode(encodings[0])
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return decode_bytes(raw, encodings, _TEXT_DELIMITERS)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - see _lenient
        return _lenient(raw, encodings)


def _lenient(raw: bytes, encodings: list[str]) -> str:
    """Text pydicom fails to decode, decoded anyway: pydicom's decoders
    are not written for hostile bytes (an ISO 2022 name whose empty
    component follows an escape sequence raised IndexError), and a value
    recorded for queries is no reason to refuse an instance. Read in the
    first character set, each undecodable byte replaced."""
    try:
        return raw.decode(encodings[0] if encodings else _DEFAULT_ENCODING,
                          "replace")
    except LookupError:
        return raw.decode(_DEFAULT_ENCODING, "replace")


def _encodings(raw: bytes | int | None) -> list[str]:
    if not isinstance(raw, bytes):
        return [_DEFAULT_ENCODING]
    return list(_charset_encodings(raw))


@lru_cache(maxsize=64)
def _charset_encodings(raw: bytes) -> tuple[str, ...]:
    """Python codecs of a Specific Character Set value; an archive sees
    few distinct values, so they are worked out once each."""
    terms = [term.strip(" \x00") for term in
             raw.decode(_DEFAULT_ENCODING).split("\\")]
    try:
        return tuple(convert_encodings(terms))
    except ValueError:
        # A term that codecs cannot even look up (one with a NUL inside):
        # read as pydicom reads an unknown character set, in the default.
        return (_DEFAULT_ENCODING,)


# Bytes that decode the same in every character set the native fast path
# reads as ASCII (ESC is excluded: it starts a code extension).
_ASCII_SAMPLE = bytes(c for c in range(0x80) if c != 0x1B)


@lru_cache(maxsize=64)
def _charset_mode(raw: bytes | None) -> int:
    """How the native walker may decode text in this Specific Character
    Set (one of the CHARSET_ modes of pacsstore._parse). Without code
    extensions text decodes in the first character set alone (pydicom's
    decode_bytes), so that one decides."""
    encodings = _encodings(raw)
    try:
        name = codecs.lookup(encodings[0]).name
        if name == "iso8859-1":
            return CHARSET_LATIN1
        if name == "utf-8":
            return CHARSET_UTF8
        if (_ASCII_SAMPLE.decode(encodings[0])
                == _ASCII_SAMPLE.decode("ascii")):
            return CHARSET_ASCII
    except (IndexError, LookupError, UnicodeError):
        pass
    return CHARSET_PYTHON


def _text_or_none(value: Value) -> str | None:
    return value if isinstance(value, str) and value else None
