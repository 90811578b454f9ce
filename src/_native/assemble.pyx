# cython: language_level=3
"""A stored instance rebuilt in place, into the bytes object returned.

Reading an instance back ends in one bytes object of the file's size.
Joining the decoded pieces costs a second buffer of that size per frame
(the decoded frame, then the joined file) and a copy between them, and
a fresh buffer of half a megabyte is mostly page faults: the allocator
hands freed large blocks back to the kernel. ``FileAssembly`` allocates
the result once and lets each piece be written where it belongs, the
planes16 inverse included, so a CT slice is decoded straight into the
file that is returned.

The pieces go in strictly in order, and the result is handed out only
once every byte of it has been written: nothing of the uninitialised
allocation can reach a caller.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t
from libc.string cimport memcpy


include "planes16.pxi"


cdef class FileAssembly:
    """``size`` bytes, written front to back, then taken by ``finish``."""

    cdef object _out
    cdef Py_ssize_t _size
    cdef Py_ssize_t _filled

    def __cinit__(self, Py_ssize_t size):
        if size < 0:
            raise ValueError(f"a size cannot be negative: {size}")
        self._out = PyBytes_FromStringAndSize(NULL, size)
        self._size = size
        self._filled = 0

    @property
    def size(self):
        return self._size

    @property
    def filled(self):
        """Bytes written so far."""
        return self._filled

    cdef uint8_t* _claim(self, Py_ssize_t count) except NULL:
        """The next ``count`` bytes to write, once it is known they fit."""
        if self._out is None:
            raise ValueError("this assembly was already finished")
        if count > self._size - self._filled:
            raise OverflowError(
                f"{count} more bytes do not fit: {self._filled} of "
                f"{self._size} are written")
        cdef uint8_t* start = <uint8_t*>PyBytes_AS_STRING(self._out)
        return start + self._filled

    cdef object _advance(self, Py_ssize_t count):
        """Count ``count`` bytes as written; a read-only view of them."""
        cdef Py_ssize_t start = self._filled
        self._filled += count
        return memoryview(self._out)[start:self._filled]

    def append(self, const uint8_t[::1] data):
        """Copy ``data`` in next; a read-only view of where it went."""
        cdef Py_ssize_t count = data.shape[0]
        cdef uint8_t* target = self._claim(count)
        if count:
            with nogil:
                memcpy(target, &data[0], count)
        return self._advance(count)

    def append_unplanes16(self, const uint8_t[::1] filtered,
                          Py_ssize_t raw_length):
        """Write the ``raw_length`` bytes whose planes16 planes
        ``filtered`` holds (see ``pacsstore._filters.unplanes16``) next;
        a read-only view of them."""
        _check_planes(filtered.shape[0], raw_length)
        cdef uint8_t* target = self._claim(raw_length)
        if raw_length:
            with nogil:
                _unplanes16_into(&filtered[0], raw_length, target)
        return self._advance(raw_length)

    def finish(self):
        """The assembled bytes; ValueError unless every byte is written.
        The assembly is spent afterwards."""
        if self._out is None:
            raise ValueError("this assembly was already finished")
        if self._filled != self._size:
            raise ValueError(
                f"only {self._filled} of {self._size} bytes are written")
        out, self._out = self._out, None
        return out
