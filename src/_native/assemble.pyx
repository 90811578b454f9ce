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

A planes16 frame block, the bulk of a CT or MR study read back, is
checked and decoded into its place in one call that releases the GIL
once (``append_planes16_block``): CRC32 of the payload, zstd into the
thread's scratch buffer, the planes16 inverse into the file, SHA-256 of
the bytes where they now lie. Done as four Python calls, each released
the GIL on its own, and with two threads reading, every release was a
hand-over to the other thread.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcmp, memcpy


include "planes16.pxi"


cdef extern from "zstd.h" nogil:
    ctypedef struct ZSTD_DCtx:
        pass
    ZSTD_DCtx* ZSTD_createDCtx()
    size_t ZSTD_freeDCtx(ZSTD_DCtx* context)
    size_t ZSTD_decompressDCtx(ZSTD_DCtx* context, void* target,
                               size_t capacity, const void* source,
                               size_t length)
    unsigned ZSTD_isError(size_t code)
    const char* ZSTD_getErrorName(size_t code)

cdef extern from "zstd_errors.h" nogil:
    ctypedef enum ZSTD_ErrorCode:
        ZSTD_error_dstSize_tooSmall
    ZSTD_ErrorCode ZSTD_getErrorCode(size_t code)

cdef extern from "zlib.h" nogil:
    unsigned long crc32(unsigned long crc, const unsigned char* data,
                        unsigned int length)

include "sha256.pxi"


# What append_planes16_block found, with its detail.
cdef enum:
    _DECODED = 0          # None
    _BAD_CRC = 1          # the CRC32 computed
    _BAD_ZSTD = 2         # zstd's description of the error
    _BAD_LENGTH = 3       # the bytes of planes it decompresses to (the
                          # scratch's length: at least that many)
    _BAD_DIGEST = 4       # None

PLANES_DECODED = _DECODED
PLANES_BAD_CRC = _BAD_CRC
PLANES_BAD_ZSTD = _BAD_ZSTD
PLANES_BAD_LENGTH = _BAD_LENGTH
PLANES_BAD_DIGEST = _BAD_DIGEST

# zlib's crc32 takes an unsigned int length: longer payloads go by parts.
cdef Py_ssize_t _CRC_STEP = 1 << 30


cdef uint32_t _crc32(uint32_t seed, const uint8_t* data,
                     Py_ssize_t length) noexcept nogil:
    cdef unsigned long crc = seed
    cdef Py_ssize_t step
    while length > 0:
        step = length if length < _CRC_STEP else _CRC_STEP
        crc = crc32(crc, data, <unsigned int>step)
        data += step
        length -= step
    return <uint32_t>crc


cdef class PlanesDecoder:
    """A zstd decompression context for append_planes16_block. A context
    holds state while it decodes, so each thread needs its own."""

    cdef ZSTD_DCtx* _context

    def __cinit__(self):
        self._context = ZSTD_createDCtx()
        if self._context is NULL:
            raise MemoryError("no memory for a zstd decompression context")

    def __dealloc__(self):
        if self._context is not NULL:
            ZSTD_freeDCtx(self._context)


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

    def append_planes16_block(self, PlanesDecoder decoder,
                              const uint8_t[::1] payload, uint32_t crc_seed,
                              uint32_t crc, Py_ssize_t raw_length,
                              const uint8_t[::1] digest,
                              uint8_t[::1] scratch):
        """Check and decode a planes16 block's payload into the next
        ``raw_length`` bytes, in one call without the GIL: its CRC32
        (``crc_seed`` the CRC32 of the block header's first 60 bytes)
        must be ``crc``, its zstd frame must hold the planes of
        ``raw_length`` bytes (decompressed into ``scratch``, which has a
        byte of room more, so that a frame holding more is seen without
        decoding the rest), and the SHA-256 of the bytes written must be
        ``digest``. Returns (outcome, detail), one of the PLANES_
        outcomes; only a decoded block counts as written."""
        cdef Py_ssize_t planes = _filtered_length(raw_length)
        if raw_length < 0 or digest.shape[0] != 32 or \
                scratch.shape[0] != planes + 1:
            raise ValueError(
                f"a block of {raw_length} bytes needs a 32-byte digest and "
                f"a scratch of {planes + 1} bytes, not {digest.shape[0]} "
                f"and {scratch.shape[0]}")
        cdef uint8_t* target = self._claim(raw_length)
        cdef const uint8_t* source = &payload[0] if payload.shape[0] \
            else NULL
        cdef Py_ssize_t length = payload.shape[0]
        cdef uint32_t computed
        cdef size_t decoded = 0
        cdef unsigned char found[32]
        cdef unsigned int found_size = 0
        cdef int outcome = _DECODED
        with nogil:
            computed = _crc32(crc_seed, source, length)
            if computed != crc:
                outcome = _BAD_CRC
            else:
                decoded = ZSTD_decompressDCtx(
                    decoder._context, &scratch[0], scratch.shape[0],
                    source, length)
                if ZSTD_isError(decoded):
                    outcome = _BAD_ZSTD
                    if ZSTD_getErrorCode(decoded) == \
                            ZSTD_error_dstSize_tooSmall:
                        outcome = _BAD_LENGTH
                elif <Py_ssize_t>decoded != planes:
                    outcome = _BAD_LENGTH
            if outcome == _DECODED:
                _unplanes16_into(&scratch[0], raw_length, target)
                if not EVP_Digest(target, raw_length, found, &found_size,
                                  EVP_sha256(), NULL) or found_size != 32:
                    outcome = _BAD_DIGEST
                elif memcmp(found, &digest[0], 32) != 0:
                    outcome = _BAD_DIGEST
        if outcome == _DECODED:
            self._filled += raw_length
            return outcome, None
        if outcome == _BAD_CRC:
            return outcome, computed
        if outcome == _BAD_ZSTD:
            return outcome, ZSTD_getErrorName(decoded).decode("ascii",
                                                              "replace")
        if outcome == _BAD_LENGTH:
            return outcome, (scratch.shape[0] if ZSTD_isError(decoded)
                             else decoded)
        return outcome, None

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
