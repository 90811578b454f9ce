"""Type stubs of the native batch digests (src/_native/digests.pyx)."""

from collections.abc import Iterable

Buffer = bytes | bytearray | memoryview

def sha256_many(buffers: Iterable[Buffer]) -> list[bytes]:
    """The SHA-256 digest of each buffer, in order, taken in one call
    that releases the GIL once."""
