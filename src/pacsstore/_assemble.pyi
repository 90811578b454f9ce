"""Type stubs of the native file assembly (src/_native/assemble.pyx)."""

Buffer = bytes | bytearray | memoryview

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
    def append_unplanes16(self, filtered: Buffer,
                          raw_length: int) -> memoryview:
        """Write the ``raw_length`` bytes whose planes16 planes
        ``filtered`` holds next; a read-only view of them."""
    def finish(self) -> bytes:
        """The assembled bytes; ValueError unless every byte is
        written. The assembly is spent afterwards."""
