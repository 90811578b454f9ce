"""Type stubs of the native planes16 filter and encoder
(src/_native/filters.pyx); the layout is described in
pacsstore.store.filters, the codec in docs/format.md."""

from collections.abc import Iterable, Mapping

Buffer = bytes | bytearray | memoryview

PLANES: int
BLOCK_SIZE_MAX: int

def planes16(content: Buffer) -> bytes:
    """High bytes, high nibbles and low nibbles of the low bytes of the
    16-bit samples of ``content``, then an odd last byte as it is."""

def unplanes16(filtered: Buffer, raw_length: int) -> bytes:
    """The exact inverse of :func:`planes16` for ``raw_length`` bytes;
    ValueError when ``filtered`` is not of the length that makes."""

class PlanesEncoder:
    """The planes16 filter, then one zstd frame for each plane, each with
    its own settings (zstd parameter names of
    zstandard.ZstdCompressionParameters, and block_size). One encoder
    per thread."""

    def __init__(self, settings: Iterable[Mapping[str, int]]) -> None: ...

    def encode(self, content: Buffer) -> bytes:
        """The compressed planes of ``content``: three zstd frames."""
