"""The parser on small hand-built hostile datasets: values that are
legal byte strings but absurd numbers, and deflate streams that expand
without bound. Each must give a layout or MalformedDicomError, never
another exception and never unbounded memory."""

from __future__ import annotations

import struct
import zlib

import pytest

import pacsstore._parse as native
from pacsstore._parse import EXPLICIT_VR_LITTLE_ENDIAN, parse
from pacsstore.errors import MalformedDicomError
from pacsstore.filemeta import build_file_meta

DEFLATED = native.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2s2xI", group, element, vr,
                           len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _us(tag: int, value: int) -> bytes:
    return _element(tag, b"US", struct.pack("<H", value))


def _dataset(*elements: bytes) -> bytes:
    return (_element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\x00")
            + _element(0x00080018, b"UI", b"1.2.3.4\x00")
            + b"".join(elements))


META = build_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                       sop_instance_uid="1.2.3.4",
                       transfer_syntax=DEFLATED)


def _deflated_file(dataset: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return META + packer.compress(dataset) + packer.flush()


def test_parse_geometry_past_63_bits_is_a_layout_not_an_overflow() -> None:
    # 65535 ** 4 bits per frame does not fit a signed 64-bit integer.
    data = _dataset(_us(0x00280002, 65535), _us(0x00280010, 65535),
                    _us(0x00280011, 65535), _us(0x00280100, 65535),
                    _element(0x7FE00010, b"OW", b"\0" * 16))
    pixel = parse(data, EXPLICIT_VR_LITTLE_ENDIAN).pixel
    assert pixel.frame_bits == 65535 ** 4
    assert pixel.frame_size == (65535 ** 4 + 7) // 8
    assert pixel.frame_count == 0


@pytest.mark.parametrize("frames", [b"99999999999999999999", b"1e300 "])
def test_parse_number_of_frames_past_ssize_t_is_clamped(frames) -> None:
    data = _dataset(_element(0x00280008, b"IS", frames),
                    _us(0x00280010, 2), _us(0x00280011, 2),
                    _us(0x00280100, 8),
                    _element(0x7FE00010, b"OB", b"\1" * 12))
    pixel = parse(data, EXPLICIT_VR_LITTLE_ENDIAN).pixel
    assert pixel.frames_announced == 2 ** 63 - 1
    assert pixel.frame_count == 3


def test_parse_deflate_bomb_is_refused_at_the_inflate_cap(
        monkeypatch) -> None:
    # A private OB of zeros: 4 MiB inflated from about 4 KiB.
    bomb = _deflated_file(_dataset(
        _element(0x00091010, b"OB", b"\0" * (4 << 20))))
    assert len(bomb) < 16 << 10
    monkeypatch.setattr(native, "MAX_INFLATED_SIZE", 1 << 20)
    with pytest.raises(MalformedDicomError,
                       match="inflates past 1048576 bytes") as caught:
        parse(bomb)
    # The offset names where the deflate stream starts.
    assert caught.value.offset == len(META)


def test_parse_deflated_dataset_at_the_inflate_cap_is_read(
        monkeypatch) -> None:
    dataset = _dataset(_element(0x00091010, b"OB", b"\0" * 1000))
    monkeypatch.setattr(native, "MAX_INFLATED_SIZE", len(dataset))
    assert parse(_deflated_file(dataset)).inflated == dataset


def test_parse_default_inflate_cap_is_one_gibibyte() -> None:
    assert native.MAX_INFLATED_SIZE == 1 << 30
