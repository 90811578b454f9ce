"""Element boundaries of a DICOM file, for mutating it element by element.

A small, independent walker in Python: it lists every element header it
can find (file meta, dataset, items of sequences, fragments of
encapsulated pixel data) with the offsets of its tag, VR and length, so
that a test can change a length, a VR or a tag exactly where one lies,
cut a file at an element boundary or inside a header, or insert
elements between two others. It is meant for well-formed seed files and
stops quietly at anything it does not understand; the walker under test
is pacsstore._parse, not this.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
# Nesting the listing follows; seeds nest a few levels.
MAX_LISTED_DEPTH = 16


@dataclass(frozen=True)
class Element:
    offset: int          # of the tag
    header: int          # bytes of tag, VR and length
    tag: int
    vr: bytes | None     # None when implicit, for items and delimiters
    length: int          # as encoded
    length_at: int       # offset of the length field
    length_size: int     # 2 or 4
    little: bool
    depth: int           # 0 for the top-level dataset and the meta
    kind: str            # "meta", "element", "item", "delimiter", "fragment"

    @property
    def value(self) -> int:
        return self.offset + self.header

    @property
    def end(self) -> int | None:
        """First byte after a defined-length element."""
        if self.length == UNDEFINED:
            return None
        return self.value + self.length

    @property
    def implicit(self) -> bool:
        return self.vr is None


def encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit, little) of a transfer syntax, as pacsstore reads it."""
    if transfer_syntax == "1.2.840.10008.1.2":
        return True, True
    if transfer_syntax == "1.2.840.10008.1.2.2":
        return False, False
    return False, True


def list_elements(data: bytes, dataset_offset: int, transfer_syntax: str,
                  deflated: bool = False) -> list[Element]:
    """Every element header of the file meta and (unless it is deflated)
    of the dataset starting at ``dataset_offset``, in file order."""
    found: list[Element] = []
    start = 132 if data[128:132] == b"DICM" else 0
    _Lister(data, found).dataset(start, dataset_offset, False, True, 0,
                                 "meta")
    if not deflated:
        implicit, little = encoding(transfer_syntax)
        _Lister(data, found).dataset(dataset_offset, len(data), implicit,
                                     little, 0, "element")
    return found


class _Lister:
    def __init__(self, data: bytes, found: list[Element]) -> None:
        self.data = data
        self.found = found

    def _u16(self, at: int, little: bool) -> int:
        return struct.unpack_from("<H" if little else ">H", self.data, at)[0]

    def _u32(self, at: int, little: bool) -> int:
        return struct.unpack_from("<I" if little else ">I", self.data, at)[0]

    def _tag(self, at: int, little: bool) -> int:
        return (self._u16(at, little) << 16) | self._u16(at + 2, little)

    def header(self, pos: int, end: int, implicit: bool, little: bool,
               depth: int, kind: str) -> Element | None:
        if end - pos < 8:
            return None
        tag = self._tag(pos, little)
        vr = bytes(self.data[pos + 4:pos + 6])
        if tag >> 16 == 0xFFFE:
            if tag != ITEM:
                kind = "delimiter"
            elif kind != "fragment":
                kind = "item"
            return Element(pos, 8, tag, None, self._u32(pos + 4, little),
                           pos + 4, 4, little, depth, kind)
        if implicit or not vr.isalpha():
            return Element(pos, 8, tag, None, self._u32(pos + 4, little),
                           pos + 4, 4, little, depth, kind)
        if vr in LONG_VRS:
            if end - pos < 12:
                return None
            return Element(pos, 12, tag, vr, self._u32(pos + 8, little),
                           pos + 8, 4, little, depth, kind)
        return Element(pos, 8, tag, vr, self._u16(pos + 6, little),
                       pos + 6, 2, little, depth, kind)

    def dataset(self, pos: int, end: int, implicit: bool, little: bool,
                depth: int, kind: str) -> int:
        """List elements from pos to end or to an item delimiter; returns
        where the listing stopped."""
        while pos < end:
            if kind == "meta" and self._u16(pos, True) != 0x0002:
                return pos
            element = self.header(pos, end, implicit, little, depth, kind)
            if element is None:
                return end
            self.found.append(element)
            if element.tag == ITEM_END:
                return element.value
            if element.length != UNDEFINED:
                if self.holds_items(element) and depth < MAX_LISTED_DEPTH:
                    self.items(element.value, element.end, implicit, little,
                               depth + 1)
                pos = element.end
                continue
            if element.tag == PIXEL_DATA and depth == 0:
                pos = self.fragments(element.value, end, little)
            elif element.vr in (b"SQ", b"UN", None) \
                    and depth < MAX_LISTED_DEPTH:
                # A UN of undefined length holds implicit VR little
                # endian (PS3.5 6.2.2).
                un = element.vr == b"UN"
                pos = self.items(element.value, end, implicit or un,
                                 little or un, depth + 1)
            else:
                return end
        return pos

    def holds_items(self, element: Element) -> bool:
        """A defined-length sequence: SQ, or without a VR to tell, a
        value that starts with an item tag."""
        if element.vr == b"SQ":
            return True
        return (element.vr is None and element.length >= 8
                and element.value + 8 <= len(self.data)
                and self._tag(element.value, element.little) == ITEM)

    def items(self, pos: int, end: int, implicit: bool, little: bool,
              depth: int) -> int:
        while end - pos >= 8:
            item = self.header(pos, end, True, little, depth, "item")
            self.found.append(item)
            if item.tag == SEQ_END:
                return item.value
            if item.tag != ITEM:
                return end
            if item.length == UNDEFINED:
                pos = self.dataset(item.value, end, implicit, little, depth,
                                   "element")
            else:
                self.dataset(item.value, min(item.end, end), implicit,
                             little, depth, "element")
                pos = item.end
        return end

    def fragments(self, pos: int, end: int, little: bool) -> int:
        while end - pos >= 8:
            item = self.header(pos, end, True, little, 1, "fragment")
            self.found.append(item)
            if item.tag != ITEM or item.length == UNDEFINED:
                return item.value
            pos = item.end
        return end
