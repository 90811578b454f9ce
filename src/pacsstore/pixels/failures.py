"""What counts as "this data does not decode (or encode)".

pydicom's pixel handlers and the codecs behind them raise whatever their
code raises (ValueError, RuntimeError, NotImplementedError, struct.error,
...), and each means that the pixels in hand cannot be coded: callers
turn it into FrameDecodeError or TranscodeError. One codec stops
differently: pylibjpeg-rle's decoder is Rust, and a panic inside it (an
index out of bounds on a damaged RLE segment) surfaces as pyo3's
PanicException, a BaseException, which ``except Exception`` lets
through to kill the thread that asked.
"""

from __future__ import annotations


def is_codec_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by pydicom or a codec under it, means only
    that the data does not code. MemoryError is not: it says nothing of
    the data, and is raised as it is."""
    if isinstance(exc, MemoryError):
        return False
    if isinstance(exc, Exception):
        return True
    kind = type(exc)
    return kind.__name__ == "PanicException" and \
        kind.__module__ == "pyo3_runtime"
