"""Layout: how an instance's bytes become a header block and frame blocks,
and how they are spliced back.

The header block is the Part 10 file with the frame bytes cut out. Each
cut is recorded as ``(file offset, length, block index, offset in
block)``, so reading walks the header block and, at each cut, copies the
named slice of a frame block: the result is the original file, byte for
byte, whatever the file did (padding after the frames, odd item tags,
trailing elements after the pixel data all stay in the header block).

What a frame block holds depends on the pixel data:

- native, byte-aligned frames: one cut and one block per frame. A value
  shorter than its frames promise (a truncated file) yields the frames it
  has, the last one short; trailing padding stays in the header.
- encapsulated: one cut per fragment value; a frame block is the
  concatenation of the frame's fragment values, which is what
  ``pydicom.encaps.generate_frames`` yields. Item tags, lengths and the
  offset tables stay in the header block.
- native frames that are not byte aligned (1-bit images whose frames end
  mid-byte): one block holding the whole value; frames are cut out of it
  on read, bit by bit.
- deflated datasets, and instances without pixel data: no cuts; the whole
  file is the header block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from pacsstore.errors import MalformedDicomError

NONE = "none"
NATIVE = "native"
ENCAPSULATED = "encapsulated"
BITPACKED = "bitpacked"
WHOLE = "whole"  # deflated: frames are found again by inflating on read


class Cut(NamedTuple):
    file_offset: int
    length: int
    block: int
    block_offset: int


@dataclass
class Split:
    header: bytes
    blocks: list[bytes | memoryview]
    cuts: list[Cut]
    layout: str
    frame_count: int
    frame_bits: int


def split(buffer: bytes | memoryview, pixel: Any | None,
          deflated: bool) -> Split:
    """Cut the frames out of ``buffer`` according to the parsed pixel
    layout (``pacsstore._parse.PixelLayout``)."""
    view = memoryview(buffer)
    if deflated or pixel is None:
        layout = WHOLE if deflated and pixel is not None else NONE
        count = pixel.frame_count if pixel is not None else 0
        return Split(bytes(view), [], [], layout, count, 0)
    if pixel.encapsulated:
        blocks, cuts = _split_encapsulated(view, pixel)
        layout = ENCAPSULATED
    elif pixel.frame_bits % 8:
        blocks, cuts = _split_whole_value(view, pixel)
        layout = BITPACKED
    else:
        blocks, cuts = _split_native(view, pixel)
        layout = NATIVE
    header = _cut_out(view, cuts)
    count = len(blocks) if layout != BITPACKED else pixel.frame_count
    return Split(header, blocks, cuts, layout, count, pixel.frame_bits)


def _split_native(view: memoryview, pixel: Any) -> tuple[list, list[Cut]]:
    blocks: list[bytes | memoryview] = []
    cuts: list[Cut] = []
    size, length = pixel.frame_size, _value_bytes(pixel)
    for index in range(pixel.frame_count if size else 0):
        start = index * size
        if start >= length:
            break
        part = min(size, length - start)
        offset = pixel.value_offset + start
        blocks.append(view[offset:offset + part])
        cuts.append(Cut(offset, part, index, 0))
    return blocks, cuts


def _value_bytes(pixel: Any) -> int:
    """Bytes of a native value that are in the file: its length, or what
    a truncated file kept of it (the parser clips end_offset)."""
    return pixel.end_offset - pixel.value_offset


def _split_whole_value(view: memoryview,
                       pixel: Any) -> tuple[list, list[Cut]]:
    length = _value_bytes(pixel)
    if not length:
        return [], []
    offset = pixel.value_offset
    return [view[offset:offset + length]], [Cut(offset, length, 0, 0)]


def _split_encapsulated(view: memoryview,
                        pixel: Any) -> tuple[list, list[Cut]]:
    blocks: list[bytes | memoryview] = []
    cuts: list[Cut] = []
    firsts, counts = pixel.frame_first_fragment, pixel.frame_fragment_count
    for index, (first, count) in enumerate(zip(firsts, counts)):
        parts, position = [], 0
        for fragment in range(first, first + count):
            offset = pixel.fragment_offsets[fragment]
            length = pixel.fragment_lengths[fragment]
            if length:
                cuts.append(Cut(offset, length, index, position))
                parts.append(view[offset:offset + length])
                position += length
        blocks.append(parts[0] if len(parts) == 1 else
                      b"".join(parts))
    cuts.sort()
    return blocks, cuts


def _cut_out(view: memoryview, cuts: Sequence[Cut]) -> bytes:
    """The buffer without the cut ranges; checks they are in bounds and
    do not overlap (the parser promises it; a broken promise must not
    corrupt what is stored)."""
    parts, position = [], 0
    for cut in cuts:
        end = cut.file_offset + cut.length
        if cut.file_offset < position or end > len(view):
            raise MalformedDicomError(
                f"pixel data cut [{cut.file_offset}, {end}) overlaps "
                f"another or leaves the {len(view)}-byte file",
                tag=0x7FE00010, offset=cut.file_offset)
        parts.append(view[position:cut.file_offset])
        position = end
    parts.append(view[position:])
    return b"".join(parts)


def splice(header: bytes, cuts: Sequence[Cut],
           block: Callable[[int], bytes]) -> Iterator[memoryview]:
    """The original file, as consecutive chunks: header runs and frame
    slices. ``block(i)`` gives the content of frame block ``i``; it is
    called lazily, in cut order, so a streaming reader can hold one block
    at a time."""
    head = memoryview(header)
    for piece in plan(cuts):
        if isinstance(piece, slice):
            run = head[piece]
            if run:
                yield run
        else:
            content = memoryview(block(piece.block))
            yield content[piece.block_offset:
                          piece.block_offset + piece.length]


def plan(cuts: Sequence[Cut]) -> Iterator[slice | Cut]:
    """The original file in order, as the pieces ``splice`` joins: a
    slice of the header block, or a cut of a frame block. The last
    header slice is open-ended (everything after the pixel data)."""
    position = consumed = 0
    for cut in cuts:
        gap = cut.file_offset - position
        if gap:
            yield slice(consumed, consumed + gap)
            consumed += gap
        yield cut
        position = cut.file_offset + cut.length
    yield slice(consumed, None)


def bit_frame(value: bytes, index: int, frame_bits: int) -> bytes:
    """Frame ``index`` of a bit-packed native value, repacked to start at
    bit 0 (DICOM packs the first pixel into the least significant bit)."""
    bits = np.unpackbits(np.frombuffer(value, np.uint8), bitorder="little")
    start = index * frame_bits
    chunk = bits[start:start + frame_bits]
    return np.packbits(chunk, bitorder="little").tobytes()
