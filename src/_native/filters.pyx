# cython: language_level=3
"""The planes16 pixel pre-filter (see pacsstore.store.filters for the
layout and why), in C loops that run without the GIL, and the encoder
that compresses each of its planes.

Written natively because the filter runs on every frame stored and every
frame read: in numpy it is a dozen whole-array steps of 5-30 µs each,
and two threads reading a study took turns at the GIL between them, so
a second core gave nothing. Here each direction is one pass over the
bytes with the GIL released; the result is a new bytes object of exactly
the right size.

``PlanesEncoder`` filters a frame into a buffer it keeps and compresses
each plane as a zstd frame of its own, with settings chosen for that
plane (pacsstore.store.blocks decides which), in one call without the
GIL. Its buffers are reused because a fresh buffer of half a megabyte
is mostly page faults: the allocator hands freed large blocks back to
the kernel, and on a CT slice that cost as much as the filter itself.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdint cimport uint8_t


include "planes16.pxi"


cdef extern from "zstd_errors.h" nogil:
    ctypedef enum ZSTD_ErrorCode:
        ZSTD_error_dstSize_tooSmall


cdef extern from "zstd.h":
    ctypedef struct ZSTD_CCtx:
        pass
    ctypedef enum ZSTD_cParameter:
        ZSTD_c_windowLog
        ZSTD_c_hashLog
        ZSTD_c_chainLog
        ZSTD_c_searchLog
        ZSTD_c_minMatch
        ZSTD_c_targetLength
        ZSTD_c_strategy
        ZSTD_c_contentSizeFlag
    ctypedef enum ZSTD_EndDirective:
        ZSTD_e_flush
        ZSTD_e_end
    ctypedef enum ZSTD_ResetDirective:
        ZSTD_reset_session_only
    ctypedef struct ZSTD_inBuffer:
        const void* src
        size_t size
        size_t pos
    ctypedef struct ZSTD_outBuffer:
        void* dst
        size_t size
        size_t pos
    ZSTD_CCtx* ZSTD_createCCtx() nogil
    size_t ZSTD_freeCCtx(ZSTD_CCtx* context) nogil
    size_t ZSTD_CCtx_setParameter(ZSTD_CCtx* context, ZSTD_cParameter name,
                                  int value) nogil
    size_t ZSTD_CCtx_reset(ZSTD_CCtx* context,
                           ZSTD_ResetDirective reset) nogil
    size_t ZSTD_CCtx_setPledgedSrcSize(ZSTD_CCtx* context,
                                       unsigned long long size) nogil
    size_t ZSTD_compressStream2(ZSTD_CCtx* context, ZSTD_outBuffer* output,
                                ZSTD_inBuffer* input,
                                ZSTD_EndDirective mode) nogil
    size_t ZSTD_compressBound(size_t length) nogil
    unsigned ZSTD_isError(size_t code) nogil
    const char* ZSTD_getErrorName(size_t code) nogil


# The settings PlanesEncoder takes, by the names of
# zstandard.ZstdCompressionParameters, and block_size: the plane is cut
# into zstd blocks of at most that many bytes, each with literal
# statistics of its own (zstd's own blocks are of 128 KiB).
_PARAMETERS = {
    "window_log": ZSTD_c_windowLog,
    "hash_log": ZSTD_c_hashLog,
    "chain_log": ZSTD_c_chainLog,
    "search_log": ZSTD_c_searchLog,
    "min_match": ZSTD_c_minMatch,
    "target_length": ZSTD_c_targetLength,
    "strategy": ZSTD_c_strategy,
}
cdef enum:
    _PLANES = 3
PLANES = _PLANES
BLOCK_SIZE_MAX = 128 << 10
cdef size_t _BLOCK_SIZE_MIN = 4 << 10
# Buffers are kept up to this size; a larger frame gets buffers of its
# own for the call, so that one huge frame does not pin its size.
cdef size_t _KEEP_LIMIT = 16 << 20


def planes16(const uint8_t[::1] content not None):
    """The planes of ``content``: high bytes, then high nibbles, then low
    nibbles of the low bytes, then a last odd byte as it is."""
    cdef Py_ssize_t length = content.shape[0]
    out = PyBytes_FromStringAndSize(NULL, _filtered_length(length))
    if length == 0:
        return out
    cdef uint8_t* filtered = <uint8_t*>PyBytes_AS_STRING(out)
    cdef const uint8_t* raw = &content[0]
    with nogil:
        _planes16_into(raw, length, filtered)
    return out


def unplanes16(const uint8_t[::1] filtered not None, Py_ssize_t raw_length):
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


cdef class _Buffer:
    """A growable C buffer, kept between calls up to _KEEP_LIMIT."""

    cdef uint8_t* data
    cdef size_t capacity

    cdef uint8_t* reserve(self, size_t size) except NULL:
        if size > self.capacity or self.data is NULL:
            PyMem_RawFree(self.data)
            self.data = NULL
            self.capacity = 0
            self.data = <uint8_t*>PyMem_RawMalloc(size if size else 1)
            if self.data is NULL:
                raise MemoryError(f"no memory for {size} bytes of planes")
            self.capacity = size
        return self.data

    cdef void shrink(self) noexcept:
        if self.capacity > _KEEP_LIMIT:
            PyMem_RawFree(self.data)
            self.data = NULL
            self.capacity = 0

    def __dealloc__(self):
        PyMem_RawFree(self.data)


cdef class PlanesEncoder:
    """The planes16 filter, then one zstd frame for each plane (high
    bytes, high nibbles, the rest), each with its own settings; the
    frames are concatenated, which is a zstd stream that decompresses to
    the planes in order. Holds compression contexts and buffers: one
    encoder per thread (a call while another thread's call is running
    raises RuntimeError)."""

    cdef ZSTD_CCtx* _contexts[_PLANES]
    cdef size_t _block_sizes[_PLANES]
    cdef _Buffer _filtered
    cdef _Buffer _packed
    # Set, with the GIL held, for the length of a call: the contexts and
    # buffers are used without the GIL, and a second thread in them at
    # once would free a buffer the first is writing.
    cdef bint _busy

    def __cinit__(self, settings):
        self._filtered = _Buffer()
        self._packed = _Buffer()
        settings = tuple(settings)
        if len(settings) != _PLANES:
            raise ValueError(f"one setting per plane ({_PLANES}), not "
                             f"{len(settings)}")
        cdef int plane
        for plane in range(_PLANES):
            self._contexts[plane] = ZSTD_createCCtx()
            if self._contexts[plane] is NULL:
                raise MemoryError("no memory for a zstd compression context")
            setting = dict(settings[plane])
            self._block_sizes[plane] = _block_size(
                setting.pop("block_size", BLOCK_SIZE_MAX))
            self._configure(self._contexts[plane], setting)

    cdef int _configure(self, ZSTD_CCtx* context, dict setting) except -1:
        cdef size_t code = ZSTD_CCtx_setParameter(context,
                                                  ZSTD_c_contentSizeFlag, 1)
        for name, value in setting.items():
            if name not in _PARAMETERS:
                raise ValueError(f"no zstd parameter named {name!r}")
            _require_whole(name, value)
            code = ZSTD_CCtx_setParameter(context, _PARAMETERS[name], value)
            if ZSTD_isError(code):
                raise ValueError(
                    f"zstd refuses {name}={value!r}: "
                    f"{ZSTD_getErrorName(code).decode('ascii', 'replace')}")
        return 0

    def __dealloc__(self):
        cdef int plane
        for plane in range(_PLANES):
            if self._contexts[plane] is not NULL:
                ZSTD_freeCCtx(self._contexts[plane])

    def encode(self, const uint8_t[::1] content not None):
        """The compressed planes of ``content`` (bytes)."""
        if self._busy:
            raise RuntimeError("this PlanesEncoder is encoding in another "
                               "thread; each thread needs its own")
        self._busy = True
        try:
            return self._encode(content)
        finally:
            self._busy = False

    cdef object _encode(self, const uint8_t[::1] content):
        cdef Py_ssize_t length = content.shape[0]
        cdef Py_ssize_t samples = length // 2
        cdef Py_ssize_t pairs = (samples + 1) // 2
        cdef Py_ssize_t size = _filtered_length(length)
        cdef size_t[3] starts = [0, samples, samples + pairs]
        cdef size_t[3] ends = [samples, samples + pairs, size]
        cdef size_t bound = 0
        cdef size_t plane_length
        cdef int plane
        for plane in range(_PLANES):
            plane_length = ends[plane] - starts[plane]
            # zstd's bound is for its own blocks; each smaller block
            # may add a block header of 3 bytes.
            bound += ZSTD_compressBound(plane_length) + 3 * (
                plane_length // self._block_sizes[plane] + 1)
        cdef uint8_t* filtered = self._filtered.reserve(size)
        cdef ZSTD_outBuffer packed
        packed.dst = self._packed.reserve(bound)
        packed.size = bound
        packed.pos = 0
        cdef const uint8_t* raw = &content[0] if length else NULL
        cdef size_t code = 0
        with nogil:
            if length:
                _planes16_into(raw, length, filtered)
            for plane in range(_PLANES):
                code = _compress_plane(
                    self._contexts[plane], filtered + starts[plane],
                    ends[plane] - starts[plane], self._block_sizes[plane],
                    &packed)
                if ZSTD_isError(code):
                    break
        try:
            if ZSTD_isError(code):
                raise RuntimeError(
                    f"zstd failed to compress a plane: "
                    f"{ZSTD_getErrorName(code).decode('ascii', 'replace')}")
            return PyBytes_FromStringAndSize(<char*>packed.dst, packed.pos)
        finally:
            self._filtered.shrink()
            self._packed.shrink()


cdef int _require_whole(str name, object value) except -1:
    # A float would be truncated on the way to C without a word.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} takes a whole number, not {value!r}")
    return 0


cdef size_t _block_size(object value) except 0:
    _require_whole("block_size", value)
    if not _BLOCK_SIZE_MIN <= value <= BLOCK_SIZE_MAX:
        raise ValueError(f"block_size must be from {_BLOCK_SIZE_MIN} to "
                         f"{BLOCK_SIZE_MAX}, not {value!r}")
    return value


cdef size_t _compress_plane(ZSTD_CCtx* context, const uint8_t* plane,
                            size_t length, size_t block_size,
                            ZSTD_outBuffer* packed) noexcept nogil:
    """Append one zstd frame of ``length`` bytes to ``packed``, a block
    flushed every ``block_size`` bytes; zstd's result code."""
    cdef size_t code = ZSTD_CCtx_reset(context, ZSTD_reset_session_only)
    if ZSTD_isError(code):
        return code
    code = ZSTD_CCtx_setPledgedSrcSize(context, length)
    if ZSTD_isError(code):
        return code
    cdef ZSTD_inBuffer source
    cdef size_t offset = 0
    cdef size_t step
    cdef ZSTD_EndDirective mode
    while True:
        step = length - offset
        if step > block_size:
            step = block_size
        mode = ZSTD_e_end if offset + step == length else ZSTD_e_flush
        source.src = plane + offset
        source.size = step
        source.pos = 0
        # The output has room for the whole frame, so each call takes
        # all of its input and flushes it (returns 0); anything else
        # is an error.
        code = ZSTD_compressStream2(context, packed, &source, mode)
        if ZSTD_isError(code):
            return code
        if code != 0 or source.pos != step:
            # zstd's way of returning an error code.
            return <size_t>-<int>ZSTD_error_dstSize_tooSmall
        offset += step
        if mode == ZSTD_e_end:
            return 0
