"""Per-thread scratch buffers for the intermediates of a read.

Reading a block goes through two buffers that nothing keeps: the payload
as read from its segment, and (for a planes16 frame) the filtered
samples zstd writes. A fresh buffer of half a megabyte is mostly page
faults, since the allocator hands freed large blocks back to the kernel:
0.40 ms against 0.20 ms for zstd to fill one reused buffer with a CT
frame. Each thread therefore keeps one buffer per use, grown as needed.
A view handed out is valid only until the same thread's next call for
that use, so no view may outlive the read it serves.
"""

from __future__ import annotations

import threading

# Buffers are kept up to this size; a larger request gets a buffer of its
# own, so that one huge frame does not pin its size in every thread.
KEEP_LIMIT = 16 << 20


class ThreadScratch:
    """One reusable buffer per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def view(self, size: int) -> memoryview:
        """A writable view of ``size`` bytes of this thread's buffer."""
        if size > KEEP_LIMIT:
            return memoryview(bytearray(size))
        found = getattr(self._local, "buffer", None)
        if found is None or len(found) < size:
            found = self._local.buffer = bytearray(size)
        return memoryview(found)[:size]
