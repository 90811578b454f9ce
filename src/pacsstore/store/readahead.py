"""Reading many instances in order, the next ones read ahead on a pool.

Most of the cost of reading an instance back is CPU spent outside the
GIL: zstd, CRC32, SHA-256 and the native planes16 inverse release it on
buffers of a frame's size. One instance at a time uses one core;
``read_in_order`` keeps ``READ_WORKERS`` threads reading, checking and
decoding the instances after the one the caller is looking at, and
hands them over strictly in the order asked for.

Each instance's result is allocated in the caller's thread (an empty
``FileAssembly`` of the record's size) and filled by a worker. Bytes
allocated by a worker and freed by the caller went back to the worker's
allocator arena, which handed them to the kernel; every next result
then began as fresh pages, about 90 page faults a CT slice. Allocated
and freed in one thread, the memory is reused.

What it holds is bounded by bytes, not by a count of instances: reading
ahead stops once the instances in flight (read or still being read)
reach ``window`` bytes of rebuilt files, so a study of large
multi-frame objects is read a few at a time and a study of small ones
many at a time. An instance larger than the window is read on its own.

Instances are located in the caller's thread, one read transaction
each, just before their reading is handed to the pool, so that the size
known from the record sizes the window. Locating also tells the kernel
which segment bytes are coming (posix_fadvise WILLNEED): from a cold
cache, the disk fetches the window while the workers decode, instead of
each worker waiting on its own read. An error about one position (a
UID that is not stored, one that is not a string, damage met while
reading it, an error of the caller's iterable) is kept and raised when
the iteration reaches that position, after every instance before it has
been handed over, and ends the iteration. Reading ahead stops at a
position that failed to locate; damage is only found by reading, so
later instances may have been read by then, and are dropped. Closing
the iterator (or dropping it) cancels what has not started and waits
for what has, so no read of the store outlives it.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from pacsstore._assemble import FileAssembly
from pacsstore.store.reader import InstanceReader

# One thread per core: the work is CPU-bound once the blocks are in the
# page cache, and while a cold read waits on the disk the caller's
# thread and the other workers keep the cores busy.
READ_WORKERS = max(2, min(8, os.cpu_count() or 2))
# Bytes of rebuilt instances read ahead of the caller: a few hundred CT
# slices' worth of work queued is no faster than a few dozen, and this
# keeps a study read within tens of megabytes.
DEFAULT_WINDOW = 64 << 20
# Instances in flight at most, however small: enough to keep every
# worker busy while the caller takes one, few enough that an early stop
# wastes little.
_MAX_AHEAD = 4 * READ_WORKERS


def read_in_order(locate: Callable[[object], InstanceReader],
                  uids: Iterable[object], *,
                  window: int = DEFAULT_WINDOW,
                  workers: int = READ_WORKERS) -> Iterator[bytes]:
    """The bytes of each instance of ``uids``, in order (see the module
    documentation). ``locate`` turns one UID into a reader, raising for
    a UID it cannot."""
    pending: collections.deque[tuple[Future[bytes] | Exception, int]] = \
        collections.deque()
    source = iter(uids)
    ahead_bytes = 0
    more = True
    pool = ThreadPoolExecutor(workers, thread_name_prefix="pacsstore-read")
    try:
        while True:
            while more and (not pending or (
                    ahead_bytes < window and len(pending) < _MAX_AHEAD)):
                slot = _start_next(source, locate, pool)
                if slot is None or isinstance(slot[0], Exception):
                    # The end of the UIDs, or a position that failed:
                    # nothing after it is located or read.
                    more = False
                if slot is not None:
                    pending.append(slot)
                    ahead_bytes += slot[1]
            if not pending:
                return
            work, size = pending.popleft()
            ahead_bytes -= size
            if isinstance(work, Exception):
                raise work
            yield work.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_next(source: Iterator[object],
                locate: Callable[[object], InstanceReader],
                pool: ThreadPoolExecutor
                ) -> tuple[Future[bytes] | Exception, int] | None:
    """Locate the next instance and hand its reading to the pool: (the
    reading, its size), (the error for this position, 0), or None at
    the end of ``source``."""
    try:
        uid = next(source)
    except StopIteration:
        return None
    except Exception as exc:  # noqa: BLE001 - raised at its position
        return exc, 0
    try:
        reader = locate(uid)
        reader.will_need()
        size = reader.record["size"]
        # Allocated here, filled by a worker: see the module documentation.
        assembly = FileAssembly(size)
    except Exception as exc:  # noqa: BLE001 - raised at its position
        return exc, 0
    return pool.submit(reader.read_all, assembly), size
