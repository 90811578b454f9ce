# cython: language_level=3
"""The planes16 pixel pre-filter (see pacsstore.store.filters for the
layout and why), in C loops that run without the GIL.

Written natively because the filter runs on every frame stored and every
frame read: in numpy it is a dozen whole-array steps of 5-30 µs each,
and two threads reading a study took turns at the GIL between them, so
a second core gave nothing. Here each direction is one pass over the
bytes with the GIL released; the result is a new bytes object of exactly
the right size.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t


include "planes16.pxi"


def planes16(const uint8_t[::1] content):
    """The planes of ``content``: high bytes, then high nibbles, then low
    nibbles of the low bytes, then a last odd byte as it is."""
    cdef Py_ssize_t length = content.shape[0]
    cdef Py_ssize_t samples = length // 2
    cdef Py_ssize_t pairs = (samples + 1) // 2
    cdef Py_ssize_t size = _filtered_length(length)
    out = PyBytes_FromStringAndSize(NULL, size)
    if length == 0:
        return out
    cdef uint8_t* high = <uint8_t*>PyBytes_AS_STRING(out)
    cdef uint8_t* upper = high + samples
    cdef uint8_t* lower = upper + pairs
    cdef const uint8_t* raw = &content[0]
    cdef Py_ssize_t i
    cdef uint8_t first, second
    with nogil:
        for i in range(samples):
            high[i] = raw[2 * i + 1]
        for i in range(samples // 2):
            first = raw[4 * i]
            second = raw[4 * i + 2]
            upper[i] = (first >> 4) | (second & 0xF0)
            lower[i] = (first & 0x0F) | ((second & 0x0F) << 4)
        if samples % 2:
            first = raw[2 * (samples - 1)]
            upper[pairs - 1] = first >> 4
            lower[pairs - 1] = first & 0x0F
        if length % 2:
            high[size - 1] = raw[length - 1]
    return out


def unplanes16(const uint8_t[::1] filtered, Py_ssize_t raw_length):
    """The exact inverse of :func:`planes16` for ``raw_length`` bytes;
    ValueError when ``filtered`` is not of the length that makes."""
    _check_planes(filtered.shape[0], raw_length)
    out = PyBytes_FromStringAndSize(NULL, raw_length)
    if raw_length == 0:
        return out
    cdef uint8_t* raw = <uint8_t*>PyBytes_AS_STRING(out)
    cdef const uint8_t* source = &filtered[0]
    with nogil:
        _unplanes16_into(source, raw_length, raw)
    return out
