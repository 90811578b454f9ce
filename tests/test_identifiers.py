"""Request Identifiers decoded by pacsstore.net.identifiers must be the
Datasets pynetdicom's ``decode`` gives: element for element, VR for VR,
value for value, in every character set, or the same failure."""

from __future__ import annotations

import warnings
import zlib
from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian)
from pynetdicom.dsutils import decode, encode

from corpus import corpus_files
from pacsstore.net import identifiers
from pacsstore.net.identifiers import decode_identifier

LITTLE_ENDIAN = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
QUERY_GROUPS = (0x0008, 0x0010, 0x0020, 0x0032, 0x0040)


def decoded(dataset: Dataset) -> list | str:
    """Every element as (tag, VR, value), or the error reading them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [(int(e.tag), e.VR, _plain_value(e.value))
                    for e in dataset]
    except Exception as error:  # noqa: BLE001 - compared, not hidden
        return f"{type(error).__name__}"


def _plain_value(value):
    if isinstance(value, Sequence):
        return [decoded(item) for item in value]
    if isinstance(value, (list, tuple)) or type(value).__name__ == \
            "MultiValue":
        return [(type(v).__name__, str(v)) for v in value]
    return (type(value).__name__, str(value) if value is not None else None)


def theirs(data: bytes, syntax) -> list | str:
    """What pynetdicom's decode gives, read element by element."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decoded(decode(BytesIO(data), syntax.is_implicit_VR,
                              syntax.is_little_endian, syntax.is_deflated))


def ours(data: bytes, syntax) -> list | str:
    """What decode_identifier gives (it raises what pydicom raises on
    reading, at once)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = decode_identifier(data, syntax)
    except Exception as error:  # noqa: BLE001 - compared, not hidden
        return f"{type(error).__name__}"
    return decoded(dataset)


@pytest.fixture
def plain_count(monkeypatch):
    """How many identifiers the plain path decoded (not pydicom)."""
    counted = {"plain": 0}
    original = identifiers._plain

    def counting(data, implicit):
        result = original(data, implicit)
        counted["plain"] += 1
        return result

    monkeypatch.setattr(identifiers, "_plain", counting)
    return counted


def query_of(path) -> Dataset | None:
    """An identifier made of a real header's query-group elements (None
    where pydicom cannot read them all)."""
    identifier = Dataset()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = dcmread(path, stop_before_pixels=True, force=True)
            for element in header:
                # Sequences go to pydicom whole; they have their test.
                if element.tag.group in QUERY_GROUPS and \
                        element.VR != "SQ":
                    identifier.add(element)
    except Exception:  # noqa: BLE001 - such files are for other tests
        return None
    identifier.QueryRetrieveLevel = "IMAGE"
    return identifier


def corpus_sample() -> list:
    readable = [entry for entry in corpus_files() if entry.pydicom_reads
                and "dicomdir" not in entry.relpath.lower()]
    return readable[::3]


def test_identifiers_equal_pydicom_over_the_corpus(plain_count):
    files = corpus_sample()
    if not files:
        pytest.skip("../shared/corpus is absent")
    compared = 0
    for entry in files:
        identifier = query_of(entry.path)
        if identifier is None:
            continue
        for syntax in LITTLE_ENDIAN:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    data = encode(identifier, syntax.is_implicit_VR, True)
                except Exception:  # noqa: BLE001 - pydicom cannot write it
                    data = None
            if not data:
                continue
            expected = theirs(data, syntax)
            assert ours(data, syntax) == expected, entry.relpath
            compared += 1
    assert compared > len(files)
    # Values pydicom's converters refuse, UN elements and the like go to
    # pydicom whole; most do not.
    assert plain_count["plain"] > compared // 2


def test_identifiers_charsets_of_the_corpus_decode_alike(plain_count):
    charsets = {}
    for entry in corpus_files():
        if not entry.pydicom_reads:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = dcmread(entry.path, stop_before_pixels=True,
                             force=True, specific_tags=[
                                 "SpecificCharacterSet", "PatientName"])
        charset = header.get("SpecificCharacterSet")
        key = str(charset)
        if charset and key not in charsets and "PatientName" in header:
            charsets[key] = entry.path
    if len(charsets) < 3:
        pytest.skip("the corpus has too few character sets")
    for path in charsets.values():
        identifier = Dataset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = dcmread(path, stop_before_pixels=True, force=True)
        identifier.SpecificCharacterSet = header.SpecificCharacterSet
        identifier.QueryRetrieveLevel = "PATIENT"
        identifier.add(header["PatientName"])
        identifier.PatientID = ""
        data = encode(identifier, False, True)
        expected = theirs(data, ExplicitVRLittleEndian)
        assert ours(data, ExplicitVRLittleEndian) == expected
    assert plain_count["plain"] >= 3


def _tag_bytes(tag: int) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + \
        (tag & 0xFFFF).to_bytes(2, "little")


def _implicit(tag: int, value: bytes) -> bytes:
    return _tag_bytes(tag) + len(value).to_bytes(4, "little") + value


def _explicit(tag: int, vr: str, value: bytes) -> bytes:
    prefix = _tag_bytes(tag)
    if vr in ("UC", "UR", "UT", "UN", "SQ", "OB"):
        return prefix + vr.encode() + b"\0\0" + \
            len(value).to_bytes(4, "little") + value
    return prefix + vr.encode() + len(value).to_bytes(2, "little") + value


KEYS = [(0x00080020, "DA"), (0x00080030, "TM"), (0x00080050, "SH"),
        (0x00080052, "CS"), (0x00080061, "CS"), (0x00080090, "PN"),
        (0x00081030, "LO"), (0x00100010, "PN"), (0x00100020, "LO"),
        (0x00101010, "AS"), (0x00102160, "SH"), (0x00104000, "LT"),
        (0x0020000D, "UI"), (0x00200011, "IS"), (0x00201208, "IS"),
        (0x00181050, "DS"), (0x00400244, "DA"), (0x00280010, "US")]
CHARSETS = [None, b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 144",
            b"\\ISO 2022 IR 87", b"ISO 2022 IR 149", b"GB18030",
            b"NOT A CHARSET"]
VALUE_BYTES = st.binary(max_size=24) | st.sampled_from(
    [b"", b"DOE*", b"Sm?th^J*", b"20150101-20151231", b"CT\\MR",
     b"\xc4\xe9", "Ya\u0301mada^Tarou".encode(), b"  12 ", b"1.2.3\0",
     b"\x1b$B;3ED\x1b(B", b"12\\x3"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(charset=st.sampled_from(CHARSETS),
       chosen=st.lists(st.tuples(st.sampled_from(KEYS), VALUE_BYTES),
                       max_size=10),
       implicit=st.booleans())
def test_identifiers_random_requests_decode_alike(charset, chosen,
                                                  implicit):
    elements = {}
    if charset is not None:
        elements[0x00080005] = ("CS", charset + b" " * (len(charset) % 2))
    for (tag, vr), value in chosen:
        elements[tag] = (vr, value + b" " * (len(value) % 2))
    data = b"".join(
        _implicit(tag, value) if implicit else _explicit(tag, vr, value)
        for tag, (vr, value) in sorted(elements.items()))
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    assert ours(data, syntax) == \
        theirs(data, syntax)


def _query() -> Dataset:
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 100"
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "M\u00fcller*"
    identifier.StudyDate = "20150101-20151231"
    identifier.ModalitiesInStudy = ["CT", "MR"]
    identifier.StudyInstanceUID = ""
    identifier.NumberOfStudyRelatedInstances = None
    return identifier


def test_identifiers_plain_request_takes_the_plain_path(plain_count):
    for syntax in LITTLE_ENDIAN:
        data = encode(_query(), syntax.is_implicit_VR, True)
        assert ours(data, syntax) == \
            theirs(data, syntax)
    assert plain_count["plain"] == 2


@pytest.mark.parametrize("case", [
    "sequence", "big endian", "deflated", "out of order", "unknown VR",
    "empty"])
def test_identifiers_other_requests_decode_as_pydicom_does(case):
    identifier = _query()
    syntax = ExplicitVRLittleEndian
    if case == "sequence":
        item = Dataset()
        item.CodeValue = "X"
        identifier.ProcedureCodeSequence = Sequence([item])
    data = encode(identifier, False, True)
    if case == "big endian":
        syntax = ExplicitVRBigEndian
        data = encode(identifier, False, False)
    elif case == "deflated":
        syntax = DeflatedExplicitVRLittleEndian
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    elif case == "out of order":
        data = _explicit(0x00100020, "LO", b"ID") + data
    elif case == "unknown VR":
        data = data + _explicit(0x00200010, "ZZ", b"AB")
    elif case == "empty":
        data = b""
    assert ours(data, syntax) == \
        theirs(data, syntax)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian,
                                    ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian])
@pytest.mark.parametrize("cut", ["last value", "a length that lies"])
def test_identifiers_cut_short_are_refused(syntax, cut):
    """pydicom reads an element whose length runs past the end as the
    bytes there are, and a query cut short was answered as if whole
    (network.md: 0xC100 for a value of the wrong length)."""
    implicit = syntax == ImplicitVRLittleEndian
    data = encode(_query(), implicit, syntax != ExplicitVRBigEndian)
    if cut == "last value":
        data = data[:-3]
    else:
        level = (b"\x08\x00\x52\x00" + (b"\xff\x00\x00\x00" if implicit
                                          else b"CS\xff\x00")
                 if syntax != ExplicitVRBigEndian
                 else b"\x00\x08\x00\x52CS\x00\xff")
        data = level + b"STUDY "
    with pytest.raises(ValueError, match="runs past the end"):
        decode_identifier(data, syntax)
