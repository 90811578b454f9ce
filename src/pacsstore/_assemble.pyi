"""Type stubs of the native file assembly (src/_native/assemble.pyx)."""

Buffer = bytes | bytearray | memoryview

# What append_planes16_block found; its detail is in brackets.
PLANES_DECODED: int      # (None)
PLANES_BAD_CRC: int      # (the CRC32 computed)
PLANES_BAD_ZSTD: int     # (zstd's description of the error)
PLANES_BAD_LENGTH: int   # (the bytes of planes it decompresses to, at least)
PLANES_BAD_DIGEST: int   # (None)

class PlanesDecoder:
    """A zstd decompression context; one per thread."""

    def __init__(self) -> None: ...

class FileAssembly:
    """``size`` bytes, written front to back, then taken by ``finish``:
    a file rebuilt in the bytes object that is returned."""

    def __init__(self, size: int) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def filled(self) -> int:
        """Bytes written so far."""
    def append(self, data: Buffer) -> memoryview:
        """Copy ``data`` in next; a read-only view of where it went.
        OverflowError when it does not fit."""
    def append_planes16_block(self, decoder: PlanesDecoder, payload: Buffer,
                              crc_seed: int, crc: int, raw_length: int,
                              digest: Buffer, scratch: bytearray | memoryview
                              ) -> tuple[int, object]:
        """Check and decode a planes16 block's payload into the next
        ``raw_length`` bytes in one call without the GIL (CRC32, zstd
        into ``scratch``, the inverse, SHA-256 against ``digest``);
        (outcome, detail). Only a decoded block counts as written."""
    def finish(self) -> bytes:
        """The assembled bytes; ValueError unless every byte is
        written. The assembly is spent afterwards."""
