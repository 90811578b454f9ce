"""Pre-filters for native pixel frames, applied in front of zstd.

zstd models bytes, and a 16-bit sample mixes two very different bytes:
the high byte follows the anatomy (long runs, few values) while the low
byte carries the noise. Interleaved, neither compresses well. The
``planes16`` filter regroups a frame of little-endian 16-bit samples
into three planes:

1. the high bytes, one per sample;
2. the high nibbles of the low bytes, two samples per byte;
3. the low nibbles of the low bytes, two samples per byte.

The low nibbles of a noisy image are close to random and the first two
planes are smooth, so zstd finds runs and skewed statistics it could not
see before. Measured on the CT study of the benchmarks (docs/format.md,
Codecs), this keeps 0.39 of a frame where zstd alone keeps 0.50, and in
less time. A difference to the previous sample (delta coding) was tried
as well and loses on these images: the noise of a reconstructed CT or MR
slice is high-pass, so neighbouring differences are noisier than the
samples themselves.

The filter is a pure permutation of bits, so it is exactly invertible on
any bytes whatever they mean: big-endian samples, garbage in the unused
high bits, an odd byte at the end (kept as it is, after the planes). An
odd number of samples leaves the last byte of planes 2 and 3 half used;
its high nibble is written as zero and ignored on the way back.
"""

from __future__ import annotations

# The loops are native (src/_native/filters.pyx): they run on every
# frame stored and read, and there the GIL is released for the pass.
from pacsstore._filters import planes16, unplanes16

__all__ = ["planes16", "planes16_length", "unplanes16"]


def planes16_length(raw_length: int) -> int:
    """Bytes of the filtered form of ``raw_length`` bytes: one more than
    the input when the sample count is odd (the half-used nibble bytes)."""
    if raw_length < 0:
        raise ValueError(f"a length cannot be negative: {raw_length}")
    return raw_length + (raw_length // 2) % 2
