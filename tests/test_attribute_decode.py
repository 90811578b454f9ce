"""The native decoding of the query attributes against the Python one.

``read_header`` has the walker decode the recorded attributes itself
(``pacsstore._parse.parse_decoded``) and finishes in Python only what the
walker leaves pending. ``pacsstore.parsing.decode_value`` is the reference:
every attribute must come out the same, value, type and order, as decoding
every raw value with it gives. The corpus covers real files; the crafted
datasets the cases real files rarely hold (padding, empty values, trailing
"=" in person names, code extensions, text that does not decode, IS that
is no plain integer) in every kind of character set.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import corpus_available, corpus_files
from pacsstore import parsing
from pacsstore._parse import (CHARSET_ASCII, CHARSET_LATIN1, CHARSET_PYTHON,
                              CHARSET_UTF8, EXPLICIT_VR_LITTLE_ENDIAN,
                              _WANTED, parse, parse_decoded)
from pacsstore.errors import MalformedDicomError
from pacsstore.parsing import read_header

# pydicom warns about odd character sets and undecodable text while the
# reference decodes them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TAGS = {keyword: tag for tag, keyword, _ in _WANTED}
VRS = dict(parsing._VR, Rows="US", Columns="US")

CHARSETS = [
    None, b"", b"ISO_IR 100", b"ISO_IR 100 ", b"ISO_IR 6", b"ISO_IR 192",
    b"ISO_IR 144", b"ISO_IR 13", b"GB18030", b"ISO 2022 IR 100",
    b"\\ISO 2022 IR 87", b"ISO 2022 IR 6\\ISO 2022 IR 87",
    b"ISO 2022 IR 13\\ISO 2022 IR 87", b"\\ISO 2022 IR 149",
    b"NOT A CHARSET", b"ISO_IR\x00100",
]
# One attribute of each way of decoding.
KEYWORDS = ["PatientName", "OtherPatientNames", "PatientID", "StudyID",
            "AdditionalPatientHistory", "Modality", "ImageType",
            "SOPInstanceUID", "StudyDate", "PatientAge", "InstanceNumber"]
VALUES = [
    b"", b" ", b"\x00", b"  \x00", b"A", b"A ", b" A ", b"A\x00", b"A\\B",
    b"A \\ B \x00", b"\\", b"\\\\", b"A\\", b"\\A", b"Doe^John", b"Doe^John=",
    b"Doe^John==", b"==", b"=", b"=Yamada=", b"Doe^J\\=X==\\", b"A= ",
    b"caf\xc3\xa9", b"caf\xe9 ", b"\xff\xfe\\A", b"\xc3", b"\xe9\\\xe9",
    b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
    b"\x1b$)C\xc8\xab\\x", b"\x1b", b"12", b" -3 ", b"+7", b"-", b"+",
    b"0012", b"1.0", b"1.5", b"1e3", b"1_0", b"inf", b"nan", b"\t5",
    b"123456789012345678", b"1234567890123456789", b"-99999999999999999999",
    b"1\\2", b"\x005\x00", b"\xd9\x81\xd8",
]


def _element(keyword: str, value: bytes) -> bytes:
    tag = TAGS[keyword]
    return (struct.pack("<HH", tag >> 16, tag & 0xFFFF)
            + VRS[keyword].encode() + struct.pack("<H", len(value)) + value)


def _dataset(charset: bytes | None, elements: dict[str, bytes]) -> bytes:
    """A bare explicit VR little endian dataset, elements in tag order."""
    if charset is not None:
        elements = {"SpecificCharacterSet": charset, **elements}
    ordered = sorted(elements.items(), key=lambda item: TAGS[item[0]])
    return b"".join(_element(k, v) for k, v in ordered)


def _reference(raw: dict) -> dict:
    """Every raw value through the Python decoder."""
    encodings = parsing._encodings(raw.get("SpecificCharacterSet"))
    return {keyword: parsing.decode_value(keyword, value, encodings)
            for keyword, value in raw.items()}


def _typed(attributes: dict) -> list:
    # 1 == True and "a" == "a" whatever the container: compare types too.
    return [(k, type(v), v) for k, v in attributes.items()]


def _assert_decodes_as_reference(data: bytes, syntax: str | None) -> None:
    expected = _reference(parse(data, syntax).attributes)
    assert _typed(read_header(data, syntax).attributes) == _typed(expected)


@pytest.mark.skipif(not corpus_available(), reason="../shared/corpus is absent")
def test_every_corpus_attribute_decodes_as_the_python_decoder() -> None:
    failures, checked = [], 0
    for entry in corpus_files():
        data = entry.path.read_bytes()
        try:
            expected = _reference(parse(data).attributes)
        except MalformedDicomError:
            continue
        checked += 1
        mine = read_header(data).attributes
        if _typed(mine) != _typed(expected):
            failures.extend(
                f"{entry.relpath}: {k}: expected {expected.get(k)!r}, "
                f"got {mine.get(k)!r}"
                for k in expected.keys() | mine.keys()
                if _typed({k: mine.get(k)}) != _typed({k: expected.get(k)}))
    assert checked > 1500
    assert not failures, "\n".join(failures[:50])


@pytest.mark.skipif(not corpus_available(), reason="../shared/corpus is absent")
def test_corpus_text_decodes_natively_but_for_other_character_sets() -> None:
    """Nearly every corpus file decodes without the Python decoder; those
    that need it are the ones in character sets the walker leaves to
    it."""
    pending_files, checked = {}, 0
    for entry in corpus_files():
        try:
            result, _, pending = parse_decoded(entry.path.read_bytes(), None,
                                               parsing._charset_mode)
        except MalformedDicomError:
            continue
        checked += 1
        if pending:
            charset = result.attributes.get("SpecificCharacterSet", b"")
            pending_files[entry.relpath] = charset
            # The default repertoire and Latin-1 never need it.
            assert charset.strip(b" \x00") not in (b"", b"ISO_IR 100")
    assert checked > 1500 and len(pending_files) < 30
    assert "pydicom/charset_files/chrJapMulti.dcm" in pending_files


@pytest.mark.parametrize("charset", CHARSETS)
def test_crafted_values_decode_as_the_python_decoder(charset) -> None:
    for keyword in KEYWORDS:
        for value in VALUES:
            data = _dataset(charset, {keyword: value, "Rows": b"\x00\x02"})
            _assert_decodes_as_reference(data, EXPLICIT_VR_LITTLE_ENDIAN)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(charset=st.sampled_from(CHARSETS),
       values=st.dictionaries(
           st.sampled_from(KEYWORDS),
           st.lists(st.sampled_from([b"A", b" ", b"\x00", b"\\", b"=", b"^",
                                     b"1", b"-", b".", b"\x1b", b"\xe9",
                                     b"\xc3", b"\xa9", b"$B"]),
                    max_size=12).map(b"".join)))
def test_random_values_decode_as_the_python_decoder(charset, values) -> None:
    _assert_decodes_as_reference(_dataset(charset, values),
                                 EXPLICIT_VR_LITTLE_ENDIAN)


def test_pending_values_keep_their_place_in_tag_order() -> None:
    data = _dataset(b"\\ISO 2022 IR 87", {
        "SOPInstanceUID": b"1.2.3",
        "PatientName": b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
        "PatientID": b"ID1 "})
    result, _, pending = parse_decoded(data, EXPLICIT_VR_LITTLE_ENDIAN,
                                       parsing._charset_mode)
    assert pending == ["PatientName"]
    attributes = read_header(data, EXPLICIT_VR_LITTLE_ENDIAN).attributes
    assert list(attributes) == ["SpecificCharacterSet", "SOPInstanceUID",
                                "PatientName", "PatientID"]
    assert attributes["PatientName"] == "Yamada^Tarou=山田^太郎"
    assert attributes["PatientID"] == "ID1"


@pytest.mark.parametrize(("charset", "mode"), [
    (None, CHARSET_LATIN1), (b"ISO_IR 100", CHARSET_LATIN1),
    (b"ISO_IR 6", CHARSET_LATIN1), (b"ISO_IR 192", CHARSET_UTF8),
    (b"ISO_IR 144", CHARSET_ASCII), (b"\\ISO 2022 IR 87", CHARSET_LATIN1),
    (b"ISO 2022 IR 13\\ISO 2022 IR 87", CHARSET_ASCII),
    (b"GB18030", CHARSET_ASCII),
])
def test_character_sets_decode_in_the_mode_of_their_first_set(
        charset, mode) -> None:
    assert parsing._charset_mode(charset) == mode
    assert mode != CHARSET_PYTHON


def test_raw_attributes_are_a_copy_made_when_first_asked_for() -> None:
    buffer = bytearray(_dataset(b"ISO_IR 100", {"PatientID": b"ID1 ",
                                                "Rows": b"\x00\x02"}))
    result = parse(buffer, EXPLICIT_VR_LITTLE_ENDIAN)
    buffer[:] = b"\xff" * len(buffer)
    assert result.attributes == {"SpecificCharacterSet": b"ISO_IR 100",
                                 "PatientID": b"ID1 ", "Rows": 512}
    result.attributes = {}
    assert result.attributes == {}
