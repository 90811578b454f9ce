"""Item lengths near 2**32 in inputs larger than 4 GiB.

An item length is a 32-bit field; the step past an item is 8 + length.
Computed in 32 bits, a length of 0xFFFFFFF8 steps by 0 and the walk
never ends (with the GIL held, in the fragment listing, it also grows a
list without bound). The inputs are sparse files mapped read-only, so
the test costs a few pages of memory, and each walk runs in a child
process with a timeout so that a hang fails instead of blocking the run.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
# The largest item length that is not "undefined": 8 + it is 2**32.
WIDE = 0xFFFFFFF8
ITEM, SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)

WALK = """
import mmap, sys
from pacsstore._parse import parse
with open(sys.argv[1], "rb") as handle:
    view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    result = parse(view, "1.2.840.10008.1.2")
    pixel = result.pixel
    print(result.end_offset, result.truncated,
          None if pixel is None else pixel.fragment_offsets,
          None if pixel is None else pixel.fragment_lengths)
"""


def _implicit(group: int, element: int, length: int) -> bytes:
    return struct.pack("<HHI", group, element, length)


def _sparse(path: Path, head: bytes, wide_length: int, tail: bytes) -> int:
    """``head``, then ``wide_length`` zero bytes (a hole), then ``tail``."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.seek(len(head) + wide_length)
        handle.write(tail)
    return len(head) + wide_length + len(tail)


def _walk(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", WALK, str(path)], capture_output=True,
        text=True, timeout=30, check=True,
        env=dict(os.environ, PYTHONPATH=str(SRC)))
    return out.stdout.strip()


@pytest.fixture
def sparse_ok(tmp_path: Path) -> Path:
    probe = tmp_path / "probe"
    try:
        _sparse(probe, b"x", 1 << 33, b"x")
    except OSError as exc:
        pytest.skip(f"no sparse 8 GiB file here: {exc}")
    probe.unlink()
    return tmp_path


def test_encapsulated_fragment_of_length_near_4gib_is_stepped_over(
        sparse_ok: Path):
    path = sparse_ok / "pixels.dcm"
    head = (_implicit(0x7FE0, 0x0010, 0xFFFFFFFF)   # undefined length
            + _implicit(*ITEM, 0)                    # empty offset table
            + _implicit(*ITEM, WIDE))                # one wide fragment
    size = _sparse(path, head, WIDE, _implicit(*SEQ_END, 0))
    assert _walk(path) == f"{size} False [{len(head)}] [{WIDE}]"


def test_sequence_item_of_length_near_4gib_is_stepped_over(sparse_ok: Path):
    path = sparse_ok / "sequence.dcm"
    head = (_implicit(0x0008, 0x1115, 0xFFFFFFFF)   # undefined-length SQ
            + _implicit(*ITEM, WIDE))                # one wide item
    size = _sparse(path, head, WIDE, _implicit(*SEQ_END, 0))
    assert _walk(path) == f"{size} False None None"
