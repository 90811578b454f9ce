"""Type stubs of the native planes16 filter (src/_native/filters.pyx);
the layout is described in pacsstore.store.filters."""

Buffer = bytes | bytearray | memoryview

def planes16(content: Buffer) -> bytes:
    """High bytes, high nibbles and low nibbles of the low bytes of the
    16-bit samples of ``content``, then an odd last byte as it is."""

def unplanes16(filtered: Buffer, raw_length: int) -> bytes:
    """The exact inverse of :func:`planes16` for ``raw_length`` bytes;
    ValueError when ``filtered`` is not of the length that makes."""
