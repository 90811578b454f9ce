# The planes16 filter and its inverse as plain C loops, shared by the
# filter module (which returns new bytes or compresses the planes) and the
# file assembly (which writes in place).
# Included, not imported: a cdef function is inlined into each module.

from libc.stdint cimport uint8_t


cdef inline Py_ssize_t _filtered_length(Py_ssize_t raw_length) noexcept nogil:
    # One more byte than the input when the sample count is odd: the
    # half-used byte of each nibble plane.
    return raw_length + (raw_length // 2) % 2


cdef inline int _check_planes(Py_ssize_t filtered_length,
                              Py_ssize_t raw_length) except -1:
    """ValueError unless ``filtered_length`` bytes of planes make
    ``raw_length`` bytes of samples."""
    if raw_length < 0:
        raise ValueError(f"a length cannot be negative: {raw_length}")
    cdef Py_ssize_t size = _filtered_length(raw_length)
    if filtered_length != size:
        raise ValueError(
            f"planes16 data for {raw_length} bytes must be {size} bytes "
            f"long, not {filtered_length}")
    return 0


cdef inline void _planes16_into(const uint8_t* raw, Py_ssize_t length,
                                uint8_t* filtered) noexcept nogil:
    """Write the ``_filtered_length(length)`` bytes of the planes of the
    ``length`` bytes at ``raw``."""
    cdef Py_ssize_t size = _filtered_length(length)
    cdef Py_ssize_t samples = length // 2
    cdef Py_ssize_t pairs = (samples + 1) // 2
    cdef uint8_t* high = filtered
    cdef uint8_t* upper = high + samples
    cdef uint8_t* lower = upper + pairs
    cdef Py_ssize_t i
    cdef uint8_t first, second
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
        filtered[size - 1] = raw[length - 1]


cdef inline void _unplanes16_into(const uint8_t* filtered,
                                  Py_ssize_t raw_length,
                                  uint8_t* raw) noexcept nogil:
    """Write the ``raw_length`` bytes that ``filtered`` (of
    ``_filtered_length(raw_length)`` bytes) is the planes of."""
    cdef Py_ssize_t size = _filtered_length(raw_length)
    cdef Py_ssize_t samples = raw_length // 2
    cdef Py_ssize_t pairs = (samples + 1) // 2
    cdef const uint8_t* high = filtered
    cdef const uint8_t* upper = high + samples
    cdef const uint8_t* lower = upper + pairs
    cdef Py_ssize_t i
    # Two samples (four bytes) a step, written in order.
    for i in range(samples // 2):
        raw[4 * i] = (lower[i] & 0x0F) | ((upper[i] & 0x0F) << 4)
        raw[4 * i + 1] = high[2 * i]
        raw[4 * i + 2] = (lower[i] >> 4) | (upper[i] & 0xF0)
        raw[4 * i + 3] = high[2 * i + 1]
    if samples % 2:
        raw[2 * (samples - 1)] = (lower[pairs - 1] & 0x0F) | \
            ((upper[pairs - 1] & 0x0F) << 4)
        raw[2 * samples - 1] = high[samples - 1]
    if raw_length % 2:
        raw[raw_length - 1] = high[size - 1]
