"""Structure-aware mutations of real corpus files through the walker and
the store.

Each example takes a seed file of the corpus, lists its element headers
(tests/dicom_elements.py) and changes it where a writer or an attacker
would: lengths made absurd (undefined, odd, past the end, near 2**32),
VR bytes replaced, explicit headers rewritten as implicit and back,
sequences nested past the walker's depth limit, the file cut at an
element boundary or inside a header, a transfer syntax in the file meta
that lies about the dataset, tags duplicated or swapped, and encapsulated
pixel data with offset tables and fragment lengths that point past the
end. The result must satisfy tests/invariants.py: the walk gives a
result inside the buffer or MalformedDicomError with an offset, within a
time bound; the store keeps it byte for byte or refuses it with a
pacsstore error and stays as it was.

HYPOTHESIS_PROFILE=ci (the default) keeps the run short; =fuzz runs a
thousand times as many examples of each test.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.encaps import generate_fragmented_frames

import invariants
from corpus import CORPUS_ROOT, corpus_available
from dicom_elements import (ITEM, LONG_VRS, PIXEL_DATA, UNDEFINED, Element,
                            list_elements)
from pacsstore import Archive
from pacsstore._parse import parse
from pacsstore.errors import MalformedDicomError, PacsstoreError
from pacsstore.parsing import read_header

pytestmark = [
    pytest.mark.skipif(not corpus_available(),
                       reason="../shared/corpus is absent"),
    # pydicom warns about the odd values mutation makes while decoding.
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

SEEDS = (
    "pydicom/test_files/rtplan.dcm",            # implicit, defined SQs
    "pydicom/test_files/reportsi.dcm",          # explicit, undefined SQs
    "pydicom/test_files/rtstruct.dcm",          # no meta, implicit
    "pydicom/test_files/JPEG2000.dcm",          # encapsulated, empty BOT
    "pydicom/test_files/SC_rgb_rle_2frame.dcm",  # two frames, with BOT
    "pydicom/test_files/SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "pydicom/test_files/SC_rgb_small_odd_big_endian.dcm",
    "pydicom/test_files/rtdose_1frame.dcm",     # implicit, native pixels
    "pydicom/test_files/ExplVR_BigEndNoMeta.dcm",
    "pydicom/test_files/UN_sequence.dcm",       # UN of undefined length
    "fo-dicom/TestData/Issue1097_FailToOpenDeflatedFileWithSQ.dcm",
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


def budget(examples: int) -> settings:
    """``examples`` in CI, a thousand times as many when fuzzing."""
    return settings(
        max_examples=examples * (1000 if PROFILE == "fuzz" else 1),
        deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow,
                               HealthCheck.data_too_large])


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    dataset_offset: int
    transfer_syntax: str
    elements: tuple[Element, ...]

    @property
    def implicit(self) -> bool:
        return self.transfer_syntax == invariants.IMPLICIT_LE

    @property
    def little(self) -> bool:
        return self.transfer_syntax != invariants.EXPLICIT_BE


@lru_cache(maxsize=None)
def seed(name: str) -> Seed:
    data = (CORPUS_ROOT / name).read_bytes()
    result = parse(data)
    deflated = result.transfer_syntax == invariants.DEFLATED
    elements = list_elements(data, result.dataset_offset,
                             result.transfer_syntax, deflated)
    return Seed(name, data, result.dataset_offset, result.transfer_syntax,
                tuple(elements))


# --- mutations -------------------------------------------------------------

# A mutation takes the bytes, the element it works at and a draw function,
# and returns new bytes. Mutations are applied from the last element to
# the first, so that the offsets of those still to come stay valid.
Draw = Callable[[st.SearchStrategy], object]

ABSURD_32 = (UNDEFINED, 0xFFFFFFFE, 0xFFFFFFF8, 0xFFFFFFF7, 0x80000000,
             0x7FFFFFFF, 0xFFFFFF00, 0)
ABSURD_16 = (0xFFFF, 0xFFFE, 0x8000, 0)
VRS = (b"SQ", b"UN", b"OB", b"OW", b"UT", b"US", b"UL", b"AT", b"ob",
       b"\0\0", b"  ", b"ZZ", b"AA", b"XX", b"FD")
TAGS = (ITEM, 0xFFFEE00D, 0xFFFEE0DD, PIXEL_DATA, 0x00020010, 0x00000000,
        0xFFFFFFFF, 0x00080018, 0x00080005)
SYNTAX_LIES = (
    invariants.IMPLICIT_LE, invariants.EXPLICIT_LE, invariants.EXPLICIT_BE,
    invariants.DEFLATED, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.201", "", "1.2.3\\4.5",
    "not a uid at all, and longer than sixty-four characters, too long")
# Depths around the walker's limit (MAX_DEPTH = 64 in parse.pyx), and
# far past it.
DEPTHS = (1, 62, 63, 64, 65, 66, 200, 5000)


def _pack(fmt: str, little: bool, *values: int) -> bytes:
    return struct.pack(("<" if little else ">") + fmt, *values)


def _tag_bytes(tag: int, little: bool) -> bytes:
    return _pack("HH", little, tag >> 16, tag & 0xFFFF)


def _set_length(data: bytes, e: Element, value: int) -> bytes:
    size = "I" if e.length_size == 4 else "H"
    packed = _pack(size, e.little, value & (0xFFFFFFFF if size == "I"
                                            else 0xFFFF))
    return data[:e.length_at] + packed + data[e.length_at + e.length_size:]


def mutate_length(data: bytes, e: Element, draw: Draw) -> bytes:
    remaining = len(data) - e.value
    honest = e.length if e.length != UNDEFINED else remaining
    near = (honest + 1, max(honest - 1, 0), honest ^ 1, remaining + 1,
            remaining + 8, honest * 2 + 1)
    absurd = ABSURD_32 if e.length_size == 4 else ABSURD_16
    return _set_length(data, e, draw(st.sampled_from(absurd + near)))


def mutate_vr(data: bytes, e: Element, draw: Draw) -> bytes:
    if e.vr is None:
        return mutate_tag(data, e, draw)
    vr = draw(st.sampled_from(VRS))
    return data[:e.offset + 4] + vr + data[e.offset + 6:]


def mutate_explicitness(data: bytes, e: Element, draw: Draw) -> bytes:
    """An explicit header rewritten as implicit (tag, 4-byte length), or
    an implicit one given a VR: a writer that switches mid-dataset."""
    tag = data[e.offset:e.offset + 4]
    rest = data[e.offset + e.header:]
    if e.vr is not None:
        return (data[:e.offset] + tag + _pack("I", e.little, e.length)
                + rest)
    vr = draw(st.sampled_from((b"UN", b"OB", b"SQ", b"LO")))
    if vr in LONG_VRS:
        header = vr + b"\0\0" + _pack("I", e.little, e.length)
    else:
        header = vr + _pack("H", e.little, e.length & 0xFFFF)
    return data[:e.offset] + tag + header + rest


def mutate_truncate(data: bytes, e: Element, draw: Draw) -> bytes:
    where = draw(st.sampled_from(("boundary", "header", "value")))
    if where == "boundary":
        return data[:e.offset]
    if where == "header":
        return data[:e.offset + draw(st.integers(1, e.header - 1))]
    end = e.end if e.end is not None else len(data)
    if end - e.value < 2:
        return data[:e.value]
    return data[:draw(st.integers(e.value + 1, min(end, len(data)) - 1))]


def _nest(depth: int, implicit: bool, little: bool, closed: bool) -> bytes:
    """``depth`` undefined-length sequences, each in an item of the one
    around it; closed by their delimiters or not."""
    if implicit:
        opener = _tag_bytes(0x00091010, little) + _pack("I", little,
                                                        UNDEFINED)
    else:
        opener = (_tag_bytes(0x00091010, little) + b"SQ\0\0"
                  + _pack("I", little, UNDEFINED))
    item = _tag_bytes(ITEM, little) + _pack("I", little, UNDEFINED)
    item_end = _tag_bytes(0xFFFEE00D, little) + _pack("I", little, 0)
    seq_end = _tag_bytes(0xFFFEE0DD, little) + _pack("I", little, 0)
    head = (opener + item) * depth
    return head + ((item_end + seq_end) * depth if closed else b"")


def mutate_nesting(data: bytes, e: Element, draw: Draw) -> bytes:
    nest = _nest(draw(st.sampled_from(DEPTHS)), e.implicit, e.little,
                 draw(st.booleans()))
    return data[:e.offset] + nest + data[e.offset:]


def mutate_tag(data: bytes, e: Element, draw: Draw) -> bytes:
    tag = _tag_bytes(draw(st.sampled_from(TAGS)), e.little)
    return data[:e.offset] + tag + data[e.offset + 4:]


def mutate_duplicate(data: bytes, e: Element, draw: Draw) -> bytes:
    if e.end is None or e.end > len(data):
        return mutate_length(data, e, draw)
    whole = data[e.offset:e.end]
    return data[:e.end] + whole * draw(st.integers(1, 3)) + data[e.end:]


def mutate_swap(data: bytes, e: Element, draw: Draw) -> bytes:
    """The element and the one after it exchanged: tags out of order."""
    if e.end is None or e.end + 8 > len(data):
        return mutate_duplicate(data, e, draw)
    following = _next_element_end(data, e)
    if following is None:
        return mutate_duplicate(data, e, draw)
    return (data[:e.offset] + data[e.end:following] + data[e.offset:e.end]
            + data[following:])


def _next_element_end(data: bytes, e: Element) -> int | None:
    """End of the element right after ``e``, when its length is defined
    and in the data."""
    at = e.end
    if e.vr is None:
        length = struct.unpack_from("<I" if e.little else ">I", data,
                                    at + 4)[0]
        end = at + 8 + length
    else:
        vr = data[at + 4:at + 6]
        if vr in LONG_VRS:
            if at + 12 > len(data):
                return None
            length = struct.unpack_from("<I" if e.little else ">I", data,
                                        at + 8)[0]
            end = at + 12 + length
        else:
            length = struct.unpack_from("<H" if e.little else ">H", data,
                                        at + 6)[0]
            end = at + 8 + length
    if length == UNDEFINED or end > len(data):
        return None
    return end


def mutate_fragment(data: bytes, e: Element, draw: Draw) -> bytes:
    """An item of encapsulated pixel data: the Basic Offset Table's
    entries past the end or not a multiple of 4, fragment lengths that
    lie, an item tag replaced by another."""
    action = draw(st.sampled_from(("length", "offsets", "tag")))
    if action == "offsets" and e.length >= 4 and e.end <= len(data):
        entries = e.length // 4
        values = [draw(st.sampled_from((0xFFFFFFF0, len(data), 0,
                                        0x7FFFFFFF, 3)))
                  for _ in range(entries)]
        table = _pack(f"{entries}I", e.little, *values)
        return data[:e.value] + table + data[e.value + 4 * entries:]
    if action == "tag":
        return mutate_tag(data, e, draw)
    return mutate_length(data, e, draw)


def mutate_extended_table(data: bytes, e: Element, draw: Draw) -> bytes:
    """An Extended Offset Table (7FE0,0001) and its lengths (7FE0,0002)
    put in front of the pixel data, with entries past the end, repeated
    or out of order."""
    count = draw(st.integers(0, 4))
    choices = st.sampled_from((0, 8, 16, len(data), 1 << 40, 2 ** 64 - 1))
    offsets = [draw(choices) for _ in range(count)]
    lengths = [draw(choices) for _ in range(draw(st.integers(0, 4)))]
    tables = b""
    for tag, values in ((0x7FE00001, offsets), (0x7FE00002, lengths)):
        raw = _pack(f"{len(values)}Q", e.little, *values)
        if e.implicit:
            tables += _tag_bytes(tag, e.little) + _pack("I", e.little,
                                                        len(raw)) + raw
        else:
            tables += (_tag_bytes(tag, e.little) + b"OV\0\0"
                       + _pack("I", e.little, len(raw)) + raw)
    return data[:e.offset] + tables + data[e.offset:]


def mutate_syntax(data: bytes, e: Element, draw: Draw) -> bytes:
    return with_syntax(data, e, draw(st.sampled_from(SYNTAX_LIES)),
                       fix_group_length=draw(st.booleans()))


def with_syntax(data: bytes, e: Element, syntax: str, *,
                fix_group_length: bool) -> bytes:
    """(0002,0010) made to claim another transfer syntax; the group
    length (0002,0000) follows it or is left to lie too."""
    uid = syntax.encode()
    uid += b"\0" * (len(uid) % 2)
    element = data[e.offset:e.offset + 6] + struct.pack("<H", len(uid))
    out = data[:e.offset] + element + uid + data[e.end:]
    group = 132 if data[128:132] == b"DICM" else 0
    if (fix_group_length and out[group:group + 4] == b"\2\0\0\0"
            and out[group + 4:group + 6] == b"UL"):
        length = struct.unpack_from("<I", out, group + 8)[0]
        length += len(uid) - e.length
        out = (out[:group + 8] + struct.pack("<I", length & 0xFFFFFFFF)
               + out[group + 12:])
    return out


MUTATIONS: dict[str, Callable[[bytes, Element, Draw], bytes]] = {
    "length": mutate_length,
    "vr": mutate_vr,
    "explicitness": mutate_explicitness,
    "truncate": mutate_truncate,
    "nesting": mutate_nesting,
    "tag": mutate_tag,
    "duplicate": mutate_duplicate,
    "swap": mutate_swap,
}


def _mutations_for(e: Element) -> list[str]:
    if e.kind == "fragment":
        return ["fragment", "truncate", "nesting"]
    if e.tag == 0x00020010 and e.kind == "meta":
        return ["syntax", "length", "truncate"]
    if e.tag == PIXEL_DATA:
        return ["extended_table", "length", "vr", "truncate", "tag"]
    return list(MUTATIONS)


ALL_MUTATIONS = {**MUTATIONS, "fragment": mutate_fragment,
                 "extended_table": mutate_extended_table,
                 "syntax": mutate_syntax}

_uids = itertools.count(1)


def fresh_uid(data: bytes, elements: tuple[Element, ...]) -> bytes:
    """The seed with a SOP Instance UID (0008,0018) no other example
    has, of the same length, so that mutants reach the store's success
    path instead of all conflicting with the seed."""
    for e in elements:
        if e.tag == 0x00080018 and e.depth == 0 and e.kind == "element":
            text = data[e.value:e.end].rstrip(b"\0 ")
            number = str(next(_uids)).encode()
            if len(text) < len(number) + 6:
                return data
            uid = b"2.25." + number.rjust(len(text) - 5, b"9")
            return data[:e.value] + uid + data[e.value + len(uid):]
    return data


@st.composite
def mutants(draw, seeds: tuple[str, ...] = SEEDS) -> bytes:
    original = seed(draw(st.sampled_from(seeds)))
    data = original.data
    if draw(st.integers(0, 9)):
        data = fresh_uid(data, original.elements)
    chosen = sorted(set(draw(st.lists(
        st.integers(0, len(original.elements) - 1), min_size=1,
        max_size=3))), reverse=True)
    for index in chosen:
        element = original.elements[index]
        if element.offset >= len(data):
            continue
        kind = draw(st.sampled_from(_mutations_for(element)))
        data = ALL_MUTATIONS[kind](data, element, draw)
    return data


# --- the walker ------------------------------------------------------------

@budget(1000)
@given(mutants())
def test_mutated_file_walks_to_a_result_inside_it_or_malformed(data):
    invariants.check_walk_and_split(data)


@budget(500)
@given(mutants(), st.sampled_from(invariants.BARE_SYNTAXES))
def test_mutated_dataset_walks_in_any_claimed_syntax(data, syntax):
    invariants.walk(data[seed_offset(data):], syntax)


def seed_offset(data: bytes) -> int:
    try:
        return parse(data).dataset_offset
    except MalformedDicomError:
        return 0


@budget(500)
@given(mutants())
def test_mutated_file_header_decodes_or_is_malformed(data):
    try:
        with invariants.time_bound(invariants.WALK_SECONDS, "read_header"):
            header = read_header(data)
    except MalformedDicomError as error:
        invariants.check_malformed(error, len(data))
        return
    for keyword, value in header.attributes.items():
        assert isinstance(value, (str, int, tuple)) or value is None, \
            (keyword, value)


# --- the walker, one mutation at a time, where it must refuse -------------

def _element_of(name: str, tag: int) -> tuple[Seed, Element]:
    original = seed(name)
    return original, next(e for e in original.elements if e.tag == tag)


def test_nesting_past_the_depth_limit_is_refused_with_its_offset():
    original, e = _element_of("pydicom/test_files/reportsi.dcm",
                              0x00100010)
    data = (original.data[:e.offset]
            + _nest(66, False, True, closed=True) + original.data[e.offset:])
    with pytest.raises(MalformedDicomError,
                       match="nested too deeply") as caught:
        parse(data)
    assert e.offset < caught.value.offset < e.offset + 66 * 20
    assert caught.value.tag == 0x00091010


def test_nesting_at_the_depth_limit_is_walked():
    original, e = _element_of("pydicom/test_files/reportsi.dcm",
                              0x00100010)
    data = (original.data[:e.offset]
            + _nest(63, False, True, closed=True) + original.data[e.offset:])
    result = invariants.walk(data)
    assert result is not None and not result.truncated
    assert result.attributes["PatientName"] == \
        parse(original.data).attributes["PatientName"]


def test_unclosed_nesting_is_refused_not_walked_to_the_end():
    original, e = _element_of("pydicom/test_files/rtplan.dcm", 0x00100010)
    data = (original.data[:e.offset]
            + _nest(5, True, True, closed=False) + original.data[e.offset:])
    with pytest.raises(MalformedDicomError, match="not closed"):
        parse(data)


@pytest.mark.parametrize("length", [0xFFFFFFFE, 0xFFFFFFF8, 0x80000000,
                                    0x7FFFFFFF, 0xFFFFFF00])
def test_item_length_past_the_end_names_the_item(length):
    original, e = _element_of("pydicom/test_files/reportsi.dcm",
                              0x00100010)
    sequence = (_tag_bytes(0x00091010, True) + b"SQ\0\0"
                + _pack("I", True, UNDEFINED)
                + _tag_bytes(ITEM, True) + _pack("I", True, length))
    data = original.data[:e.offset] + sequence + original.data[e.offset:]
    with pytest.raises(MalformedDicomError,
                       match="item value runs past the end") as caught:
        parse(data)
    assert caught.value.offset == e.offset + 12
    assert caught.value.tag == ITEM


def test_fragment_length_past_the_end_keeps_the_fragments_before_it():
    original = seed("pydicom/test_files/SC_rgb_rle_2frame.dcm")
    items = [e for e in original.elements if e.kind == "fragment"
             and e.tag == ITEM]
    data = _set_length(original.data, items[-1], 0xFFFFFFF0)
    result = invariants.walk(data)
    # The element still ends at its delimiter, found by a byte scan as
    # pydicom finds it; the broken fragment is no frame, and its bytes
    # stay in the header block.
    assert result.pixel.end_offset == len(data)
    assert result.pixel.fragment_offsets == [e.value for e in items[1:-1]]
    assert result.pixel.frame_count == len(items) - 2
    invariants.check_split(data, result)


def test_offset_table_past_the_end_maps_no_frame_out_of_bounds():
    original = seed("pydicom/test_files/SC_rgb_rle_2frame.dcm")
    bot = next(e for e in original.elements if e.kind == "fragment")
    table = struct.pack("<2I", 0, 0xFFFFFFF0)
    data = original.data[:bot.value] + table + original.data[bot.value + 8:]
    result = invariants.walk(data)
    assert result.pixel.basic_offset_table == [0, 0xFFFFFFF0]
    assert result.pixel.frame_count == 1
    invariants.check_split(data, result)


def test_offset_table_with_a_zero_second_offset_maps_frames_as_pydicom():
    original = seed("pydicom/test_files/SC_rgb_rle_2frame.dcm")
    bot = next(e for e in original.elements if e.kind == "fragment")
    table = struct.pack("<2I", 0xFFFFFFF0, 0)
    data = original.data[:bot.value] + table + original.data[bot.value + 8:]
    pixel = invariants.walk(data).pixel
    value = data[pixel.value_offset:pixel.end_offset]
    expected = list(generate_fragmented_frames(value, number_of_frames=2))
    assert [len(f) for f in expected] == [0, 2]
    assert pixel.frame_fragment_count == [0, 2]


@pytest.mark.parametrize("syntax", SYNTAX_LIES)
@pytest.mark.parametrize("name", ["pydicom/test_files/rtplan.dcm",
                                  "pydicom/test_files/JPEG2000.dcm",
                                  "pydicom/test_files/"
                                  "SC_rgb_small_odd_big_endian.dcm"])
def test_lying_transfer_syntax_gives_a_result_or_malformed(name, syntax):
    original, e = _element_of(name, 0x00020010)
    data = with_syntax(original.data, e, syntax, fix_group_length=True)
    result = invariants.walk(data)
    if result is not None:
        assert result.transfer_syntax == syntax
        invariants.check_split(data, result)


# --- the store -------------------------------------------------------------

def _store_seeds(archive: Archive) -> dict[str, bytes]:
    kept: dict[str, bytes] = {}
    for name in SEEDS:
        data = seed(name).data
        try:
            uid = archive.store(data).sop_instance_uid
        except PacsstoreError:
            continue  # a seed without its own SOP Instance UID
        kept[uid] = data
    assert len(kept) >= 8
    return kept


def test_store_of_mutated_files_keeps_them_exactly_or_changes_nothing(
        tmp_path):
    outcomes = {"stored": 0, "refused": 0}
    with Archive(tmp_path / "store") as archive:
        kept = _store_seeds(archive)

        @budget(400)
        @given(mutants())
        def store_one(data):
            uid = invariants.store_or_refuse(archive, data, kept)
            outcomes["stored" if uid else "refused"] += 1

        store_one()
        for uid, data in kept.items():
            assert archive.get(uid) == data
    # Both paths were taken: the test is not all refusals or all stores.
    assert outcomes["stored"] and outcomes["refused"], outcomes


def test_store_received_of_mutated_datasets_in_claimed_syntaxes(tmp_path):
    outcomes = {"stored": 0, "refused": 0}
    with Archive(tmp_path / "store") as archive:
        kept = _store_seeds(archive)

        @budget(250)
        @given(mutants(), st.sampled_from(invariants.BARE_SYNTAXES[:3]
                                          + ("honest",)))
        def receive_one(data, claimed):
            try:
                header = read_header(data)
            except MalformedDicomError:
                return
            uid = header.sop_instance_uid
            if uid is None or header.transfer_syntax == invariants.DEFLATED:
                return
            syntax = header.transfer_syntax if claimed == "honest" \
                else claimed
            dataset = data[header.result.dataset_offset:]
            before = archive.stats()
            try:
                with invariants.time_bound(invariants.WALK_SECONDS * 4,
                                           "store_received"):
                    stored = archive.store_received(
                        dataset, syntax,
                        sop_class_uid=header.sop_class_uid or "1.2.3",
                        sop_instance_uid=uid)
            except PacsstoreError:
                assert archive.stats() == before
                outcomes["refused"] += 1
                return
            assert archive.get(uid).endswith(dataset) or \
                stored.status == "duplicate"
            outcomes["stored"] += 1

        receive_one()
        for uid, data in kept.items():
            assert archive.get(uid) == data
    assert outcomes["stored"] and outcomes["refused"], outcomes
