# cython: language_level=3
"""SHA-256 of many buffers in one call that releases the GIL once.

hashlib releases the GIL around each digest of more than 2 KiB, and
takes it back when the digest is done. store_many names a chunk of small
instances while the committer thread runs Python for the chunk before:
taken one by one, each of those digests would end waiting for the
committer to let go of the GIL, a hand-over per digest. One call for
the chunk hands over once.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memset


include "sha256.pxi"


cdef enum:
    DIGEST_SIZE = 32


def sha256_many(buffers):
    """The SHA-256 digest of each buffer of ``buffers`` (a sequence of
    objects with the buffer protocol), in order, as bytes of 32."""
    buffers = list(buffers)
    cdef Py_ssize_t count = len(buffers)
    cdef Py_ssize_t i, held = 0
    cdef int failed = -1
    cdef unsigned int size
    if count == 0:
        return []
    cdef Py_buffer* views = <Py_buffer*>PyMem_Malloc(count * sizeof(Py_buffer))
    cdef unsigned char* found = <unsigned char*>PyMem_Malloc(
        count * DIGEST_SIZE)
    if views == NULL or found == NULL:
        PyMem_Free(views)
        PyMem_Free(found)
        raise MemoryError()
    memset(views, 0, count * sizeof(Py_buffer))
    try:
        for i in range(count):
            PyObject_GetBuffer(buffers[i], &views[i], PyBUF_SIMPLE)
            held += 1
        with nogil:
            for i in range(count):
                if not EVP_Digest(views[i].buf, <size_t>views[i].len,
                                  found + i * DIGEST_SIZE, &size,
                                  EVP_sha256(), NULL) \
                        or size != DIGEST_SIZE:
                    failed = i
                    break
        if failed >= 0:
            raise RuntimeError(f"OpenSSL's SHA-256 failed on buffer "
                               f"{failed} of {count}")
        return [PyBytes_FromStringAndSize(
                    <char*>found + i * DIGEST_SIZE, DIGEST_SIZE)
                for i in range(count)]
    finally:
        for i in range(held):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)
        PyMem_Free(found)
