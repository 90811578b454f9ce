"""Reading instances back: the original bytes, whole or streamed.

A read resolves the instance record once, in one read transaction, to
the positions of its blocks (of all of them for a whole read, of the
ones it needs for a frame), and then reads blocks with positional reads
outside any transaction. Every block is checked (CRC32, then SHA-256 of
the decompressed content against its name) before a byte of it is
returned, so damage on disk surfaces as CorruptStoreError, never as
wrong pixels.

A whole read rebuilds the file in the bytes object it returns
(pacsstore._assemble): a frame block that the file uses whole is decoded
straight into its place, so a CT slice costs one buffer of its size, not
three.

The stream holds the header block and one frame block at a time: a
multi-gigabyte instance streams in the memory of its largest frame.

A header block compressed against a base (store/bases.py) is read with
the base, which ``bases`` looks up and keeps for the next header of its
series.
"""

from __future__ import annotations

import collections
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pacsstore._assemble import FileAssembly
from pacsstore.errors import CorruptStoreError, NotFoundError
from pacsstore.store import layout
from pacsstore.store.blocks import HEADER_SIZE, BaseLookup
from pacsstore.store.index import BlockEntry, Index
from pacsstore.store.segments import SegmentReader


class InstanceReader:
    """The blocks of one instance, located once.

    ``select``, given the instance record, names the block positions to
    locate (0 the header block, 1.. the frame blocks); without it every
    block is. Reading one frame locates only its own blocks, so its cost
    does not grow with the number of frames. Either way the record and
    the block entries come from one read transaction, consistent with
    each other whatever a concurrent writer commits.
    """

    def __init__(self, index: Index, segments: SegmentReader,
                 uid: str,
                 select: Callable[[dict[str, Any]], Iterable[int]]
                 | None = None, *, bases: BaseLookup | None = None) -> None:
        self._segments = segments
        self._bases = bases
        with index.read() as txn:
            record = index.instance_to_read(txn, uid)
            if record is None:
                raise NotFoundError(f"no instance with SOP Instance UID "
                                    f"{uid} is stored")
            names = [record["header"], *record["blocks"]]
            positions = range(len(names)) if select is None \
                else select(record)
            self._entries = {p: self._entry(index, txn, names[p], uid)
                             for p in positions}
        self.record = record
        self._header: bytes | None = None
        self._names = names
        self._cuts: list[layout.Cut] | None = None

    @property
    def cuts(self) -> list[layout.Cut]:
        if self._cuts is None:
            self._cuts = [layout.Cut(*c) for c in self.record["cuts"]]
        return self._cuts

    @staticmethod
    def _entry(index: Index, txn: Any, name: str, uid: str) -> BlockEntry:
        entry = index.block(txn, bytes.fromhex(name))
        if entry is None:
            raise CorruptStoreError(
                f"block {name} of instance {uid} is missing from the index")
        return entry

    def _located(self, position: int) -> BlockEntry:
        entry = self._entries.get(position)
        if entry is None:
            raise LookupError(f"block {position} of instance "
                              f"{self.record['sop_instance_uid']} was not "
                              f"located by this reader")
        return entry

    def will_need(self) -> None:
        """Start fetching the located blocks from disk (see
        SegmentReader.will_need); the reading ahead of get_many calls
        it as it locates each instance."""
        for entry in self._entries.values():
            self._segments.will_need(entry.segment, entry.offset,
                                     HEADER_SIZE + entry.stored_length)

    def block(self, position: int) -> bytes:
        """Content of block ``position``: 0 is the header block, 1.. the
        frame blocks."""
        entry = self._located(position)
        _, content = self._segments.read(
            entry.segment, entry.offset,
            expect=bytes.fromhex(self._names[position]),
            stored_length=entry.stored_length, base=self._bases)
        return content

    def header(self) -> bytes:
        # frame() needs it twice: for the attributes and the pixel VR.
        if self._header is None:
            self._header = self.block(0)
        return self._header

    def frame_block(self, index: int) -> bytes:
        return self.block(index + 1)

    def chunks(self) -> Iterator[memoryview]:
        cached: dict[int, bytes] = {}

        def frame(index: int) -> bytes:
            # Consecutive cuts usually name the same block (the fragments
            # of one frame): keep the last one only.
            if index not in cached:
                cached.clear()
                cached[index] = self.frame_block(index)
            return cached[index]

        return layout.splice(self.header(), self.cuts, frame)

    def read_all(self, assembly: FileAssembly | None = None) -> bytes:
        """The whole file, decoded into the bytes object returned (see
        pacsstore._assemble): a frame block used whole, as a native frame
        is, is written straight into place; a block cut into several
        pieces is decoded once and sliced. ``assembly``, when given, is
        an empty one of the record's size to fill."""
        size = self.record["size"]
        if assembly is None:
            assembly = FileAssembly(size)
        elif assembly.size != size or assembly.filled:
            raise ValueError(f"an assembly of {assembly.size} bytes with "
                             f"{assembly.filled} written cannot hold a "
                             f"fresh read of {size} bytes")
        head = memoryview(self.header())
        cuts_of_block = collections.Counter(cut.block for cut in self.cuts)
        last: tuple[int, bytes] | None = None
        try:
            for piece in layout.plan(self.cuts):
                if isinstance(piece, slice):
                    assembly.append(head[piece])
                elif cuts_of_block[piece.block] == 1 and \
                        piece.block_offset == 0:
                    self._frame_onto(piece, assembly)
                else:
                    if last is None or last[0] != piece.block:
                        last = (piece.block, self.frame_block(piece.block))
                    assembly.append(memoryview(last[1])[
                        piece.block_offset:piece.block_offset + piece.length])
        except OverflowError:
            raise self._wrong_size(f"more than {size}") from None
        if assembly.filled != size:
            raise self._wrong_size(str(assembly.filled))
        return assembly.finish()

    def _frame_onto(self, cut: layout.Cut, assembly: FileAssembly) -> None:
        """Frame block ``cut.block``, which ``cut`` covers whole."""
        position = cut.block + 1
        entry = self._located(position)
        if entry.raw_length != cut.length:
            raise CorruptStoreError(
                f"block {self._names[position]} of instance "
                f"{self.record['sop_instance_uid']} holds "
                f"{entry.raw_length} bytes; its one cut in the file takes "
                f"{cut.length}")
        self._segments.read_onto(
            entry.segment, entry.offset,
            bytes.fromhex(self._names[position]), entry.stored_length,
            assembly, self._bases)

    def _wrong_size(self, rebuilt: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"instance {self.record['sop_instance_uid']} rebuilt to "
            f"{rebuilt} bytes; {self.record['size']} were stored")


class InstanceStream(io.RawIOBase):
    """A read-only, non-seekable file over an instance's chunks."""

    def __init__(self, reader: InstanceReader) -> None:
        super().__init__()
        self._chunks = reader.chunks()
        self._current = memoryview(b"")
        self._size = reader.record["size"]
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        while not self._current:
            try:
                self._current = next(self._chunks)
            except StopIteration:
                self._check_length()
                return 0
        count = min(len(target), len(self._current))
        target[:count] = self._current[:count]
        self._current = self._current[count:]
        self._position += count
        return count

    def _check_length(self) -> None:
        if self._position != self._size:
            raise CorruptStoreError(
                f"instance stream ended at {self._position} bytes; "
                f"{self._size} were stored")

    def tell(self) -> int:
        return self._position


def open_stream(reader: InstanceReader,
                buffer_size: int = 1 << 20) -> io.BufferedReader:
    return io.BufferedReader(InstanceStream(reader), buffer_size)
