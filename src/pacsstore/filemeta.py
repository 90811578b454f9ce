"""The Part 10 file meta group for a dataset received over the network.

A C-STORE delivers a bare dataset plus, in the presentation context and
the request, its transfer syntax and SOP class and instance UIDs. The
archive keeps it as a Part 10 file: a 128-byte zero preamble, ``DICM``,
and a file meta group (PS3.10 7.1) in Explicit VR Little Endian, followed
by the dataset bytes exactly as they arrived.

The group is built deterministically from its inputs (no timestamps), so
that the same dataset received twice from the same sender yields the same
file, and a re-send is recognised as one.
"""

from __future__ import annotations

import re
import struct

from pacsstore.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsstore.errors import NotStorableError

PREAMBLE = b"\x00" * 128 + b"DICM"

# The most a UI value can hold (PS3.5 6.2, table 6.2-1).
MAX_UID_BYTES = 64
# PS3.5 6.2: AE titles are up to 16 characters, no backslash or control.
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_uid(name: str, value: str) -> str:
    """Refuse only a UID that cannot be written into a UI element.

    PS3.5 9.1 asks for digits and dots without leading zeros, but real
    devices send other UIDs (a UUID, hex digests, "999.999.01.23"), and
    file ingest keeps such files; refusing them from the network would
    lose the same images for arriving the other way. What a UI element
    cannot hold is refused: nothing, more than 64 bytes, a character
    outside printable ASCII, or a backslash (which separates values).
    """
    if not isinstance(value, str):
        raise NotStorableError(
            f"{name} must be a string; found {type(value).__name__}")
    if not value.strip(" "):
        raise NotStorableError(
            f"{name} is empty; a UID needs at least one character")
    for position, char in enumerate(value):
        if not " " <= char <= "~" or char == "\\":
            raise NotStorableError(
                f"{name} {value!r} has {char!r} at position {position}; a "
                f"UI element holds printable ASCII without backslash")
    if len(value) > MAX_UID_BYTES:
        raise NotStorableError(
            f"{name} {value!r} is {len(value)} characters; a UI element "
            f"holds at most {MAX_UID_BYTES}")
    return value


def _element(group_element: int, vr: bytes, value: bytes) -> bytes:
    group, element = group_element >> 16, group_element & 0xFFFF
    if vr in (b"OB", b"UN", b"SQ", b"UT", b"OW"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def build_file_meta(*, sop_class_uid: str, sop_instance_uid: str,
                    transfer_syntax: str,
                    source_ae: str | None = None) -> bytes:
    """Preamble, ``DICM`` and the file meta group, ready to be followed by
    the dataset bytes."""
    elements = [
        _element(0x00020001, b"OB", b"\x00\x01"),
        _element(0x00020002, b"UI", _ui(_check_uid(
            "SOP Class UID", sop_class_uid))),
        _element(0x00020003, b"UI", _ui(_check_uid(
            "SOP Instance UID", sop_instance_uid))),
        _element(0x00020010, b"UI", _ui(_check_uid(
            "Transfer Syntax UID", transfer_syntax))),
        _element(0x00020012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
        _element(0x00020013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
    ]
    if source_ae:
        ae = source_ae.strip()
        if not _AE.match(ae):
            raise NotStorableError(
                f"source AE title must be 1-16 printable characters "
                f"without backslash; found {source_ae!r}")
        elements.append(_element(0x00020016, b"AE", _text(ae)))
    body = b"".join(elements)
    length = _element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE + length + body
