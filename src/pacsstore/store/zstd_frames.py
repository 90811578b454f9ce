"""One zstd frame read from disk, decompressed without trusting it.

Every zstd payload pacsstore writes outside the planes codecs (blocks of
codecs 1 and 4, compact index records) is exactly one frame that states
its content size. A reader holds it to that, because zstandard trusts a
frame more than a store may: it allocates the content size a frame
states whatever the limit it is given, allocates the whole limit for a
frame that states none, and ignores bytes after the frame. Each of
those is refused here, before anything is allocated for it.

Frames are written here too when many are made at once
(``compress_together``).
"""

from __future__ import annotations

import zstandard

# zstd's largest expansion of a frame: an RLE block of 4 bytes stands for
# 128 KiB at most. A frame stating more than this many times its own
# length is damaged.
MAX_EXPANSION = (128 << 10) // 4


def compress_together(compressor: zstandard.ZstdCompressor,
                      contents: list[bytes | bytearray | memoryview],
                      threads: int) -> list[bytes]:
    """``compressor.compress`` of each of ``contents``, the same frames,
    made in one call that releases the GIL for all of them, on up to
    ``threads`` threads. zstandard's cffi backend has no such call and
    its C backend refuses an empty content in it: those are compressed
    one by one."""
    batch = [i for i, content in enumerate(contents) if len(content)]
    frames: list[bytes | None] = [None] * len(contents)
    if len(batch) > 1:
        try:
            made = compressor.multi_compress_to_buffer(
                [contents[i] for i in batch], threads=threads)
        except (AttributeError, NotImplementedError):
            pass
        else:
            for position, i in enumerate(batch):
                frames[i] = made[position].tobytes()
    return [compressor.compress(content) if frame is None else frame
            for frame, content in zip(frames, contents)]


class FrameDamage(ValueError):
    """A payload that is not one sound zstd frame; the message says why,
    worded to follow "block at ..." or "index record ...". """


def content_of(decompressor: zstandard.ZstdDecompressor,
               frame: bytes | memoryview, limit: int | None = None) -> bytes:
    """The content of ``frame``: one zstd frame that states its content
    size, at most ``limit`` bytes when given (and never more than zstd
    can expand the frame to); FrameDamage otherwise."""
    try:
        stated = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise FrameDamage(f"does not decompress: {exc}") from None
    if stated < 0:
        raise FrameDamage("holds a zstd frame that does not state its "
                          "content size")
    bound = MAX_EXPANSION * len(frame)
    if limit is not None:
        bound = min(bound, limit)
    if stated > bound:
        raise FrameDamage(f"holds a zstd frame of {stated} bytes; at most "
                          f"{bound} are possible")
    # write_size: the stated size, so the content is one allocation of
    # the size just checked.
    stream = decompressor.decompressobj(write_size=max(stated, 1))
    try:
        content = stream.decompress(frame)
    except zstandard.ZstdError as exc:
        raise FrameDamage(f"does not decompress: {exc}") from None
    if not stream.eof:
        raise FrameDamage("holds a zstd frame cut short")
    if stream.unused_data:
        raise FrameDamage(f"has {len(stream.unused_data)} bytes after its "
                          f"zstd frame")
    return content
