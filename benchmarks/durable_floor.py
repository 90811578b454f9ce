"""The least a receiver that answers only once an instance is durable
can do: the node's own network path (pacsstore.net.Node, its storage
fast path and handler) in front of an archive that writes each dataset
into one log file and fdatasyncs it before answering. No parse, no
digest, no compression, no index.

``python -m benchmarks.durable_floor PORT LOG SIZE`` serves until
SIGTERM; with LOG ``-`` the archive keeps nothing and answers at once,
which leaves the cost of the node's network path alone.

The log is a sequence of records, each an 8-byte little-endian length
and the dataset bytes as received, so that the benchmark can count what
it holds (:func:`count_records`). Before the node listens, the log is
filled with SIZE bytes of zeros and synced: a flush of data written
over space the file already has needs no journal commit for the file's
size, and took about half as long as one after an append on the
benchmark's machine (a 4 KiB write 0.15 against 0.22-0.27 ms, 512 KB
0.37-0.41 against 0.52-0.73 ms), so the floor takes the cheaper of the
two. Of the other durable writes tried on that disk (O_DSYNC, RWF_DSYNC,
fallocated space, a file per instance, O_DIRECT), only O_DIRECT with
O_DSYNC was faster, by 5-8% a write.

Concurrent associations reserve their places in the log under a lock
and write and fdatasync outside it, so that their flushes can share the
file system's journal commits, as the store's group commit shares its
syncs.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers import PACSSTORE_AE
from benchmarks.processes import LOOPBACK
from pacsstore.net.node import Node

_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class Appended:
    """What the node's C-STORE handler reads of a store's result."""

    status: str = "stored"
    error: str | None = None


class AppendOnlyLog:
    """The receiving part of an archive, reduced to a durable append."""

    def __init__(self, path: Path, preallocate: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                           0o644)
        self._end = 0
        self._lock = threading.Lock()
        self._fill_with_zeros(preallocate)

    def _fill_with_zeros(self, size: int) -> None:
        zeros = bytes(1 << 20)
        for offset in range(0, size, len(zeros)):
            os.pwrite(self._fd, zeros[:size - offset], offset)
        os.fsync(self._fd)

    def store_received(self, dataset: bytes | memoryview,
                       transfer_syntax: str, *, sop_class_uid: str,
                       sop_instance_uid: str,
                       source_ae: str | None = None) -> Appended:
        length = len(dataset)
        with self._lock:
            offset, self._end = self._end, self._end + 8 + length
        written = os.pwritev(self._fd, [_LENGTH.pack(length), dataset],
                             offset)
        if written != 8 + length:
            raise OSError(f"short write: {written} of {8 + length} bytes")
        os.fdatasync(self._fd)
        return Appended()

    def close(self) -> None:
        os.close(self._fd)


class Discard:
    """The receiving part of an archive that keeps nothing."""

    def store_received(self, dataset: bytes | memoryview,
                       transfer_syntax: str, *, sop_class_uid: str,
                       sop_instance_uid: str,
                       source_ae: str | None = None) -> Appended:
        return Appended()

    def close(self) -> None:
        pass


def count_records(path: Path) -> int:
    """How many whole records the log holds (a zero length is the zeros
    after the last)."""
    data = path.read_bytes()
    count = offset = 0
    while offset + 8 <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        if length == 0:
            break
        offset += 8 + length
        if offset > len(data):
            break
        count += 1
    return count


def main(port: int, log: str, preallocate: int) -> None:
    archive = (Discard() if log == "-"
               else AppendOnlyLog(Path(log), preallocate))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node = Node(archive, ae_title=PACSSTORE_AE,  # type: ignore[arg-type]
                port=port, host=LOOPBACK)
    with node:
        while not stop.wait(0.5):
            pass
    archive.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
