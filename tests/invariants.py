"""What every walk of hostile bytes must satisfy.

Shared by the mutation tests, the regression replay and the fuzz harness
(fuzz/fuzz_parse.py), so that all three hold the walker and the store to
the same promises (ARCHITECTURE.md, invariant 5):

- the walk returns a result whose every offset lies inside the buffer it
  describes, or raises MalformedDicomError with the byte offset;
- the header/frame split of that result cuts in bounds, without overlap,
  and splices back to exactly the bytes that were split;
- a store either keeps the instance (``get`` returns the input, byte for
  byte) or raises a PacsstoreError and leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import faulthandler
import time
from collections.abc import Iterator
from typing import Any

from pacsstore._parse import ParseResult, parse
from pacsstore.errors import MalformedDicomError, PacsstoreError
from pacsstore.store import layout
from pacsstore.store.results import DUPLICATE, STORED

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
# Syntaxes a bare dataset can be claimed to be in; the walker treats every
# other one (the encapsulated syntaxes) as explicit VR little endian.
BARE_SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED,
                 "1.2.840.10008.1.2.4.50")

# Seconds one walk of a small input may take before it counts as a hang.
# A walk of the corpus's largest file takes milliseconds; the bound only
# has to be far above that and far below a CI job's patience.
WALK_SECONDS = 5.0


# Instances read back after each failed store (first ones, latest ones).
CHECKED = 8


class Hang(AssertionError):
    """A walk took longer than its bound."""


@contextlib.contextmanager
def time_bound(seconds: float, what: str) -> Iterator[None]:
    """Fail when the body takes longer than ``seconds``, and kill the
    process with a traceback of every thread when it takes four times
    that: a loop in native code without the GIL cannot be interrupted
    any other way, and a killed run is a failure, where a hung one is
    not."""
    faulthandler.dump_traceback_later(4 * seconds + 10, exit=True)
    start = time.monotonic()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.monotonic() - start
    if elapsed > seconds:
        raise Hang(f"{what} took {elapsed:.1f} s (bound {seconds} s)")


def check_malformed(error: MalformedDicomError, size: int) -> None:
    """A rejection says where: a byte offset (an empty input has none)."""
    assert isinstance(error, MalformedDicomError), error
    if size:
        assert error.offset is not None, f"no offset in {error}"
        assert 0 <= error.offset <= size + 12, \
            f"offset {error.offset} outside the {size}-byte input: {error}"
    if error.tag is not None:
        assert 0 <= error.tag <= 0xFFFFFFFF, error.tag


def walk(data: bytes, syntax: str | None = None, *,
         bounded: bool = True) -> ParseResult | None:
    """parse() under a time bound (unless the caller has its own, as
    libFuzzer does): its result after checking it, or None when it
    refused the bytes as it may."""
    try:
        with (time_bound(WALK_SECONDS, "parse") if bounded
              else contextlib.nullcontext()):
            result = parse(data, syntax)
    except MalformedDicomError as error:
        check_malformed(error, len(data))
        return None
    check_result(result, data)
    return result


def check_result(result: ParseResult, data: bytes) -> None:
    """Every offset of the result inside the buffer it refers to."""
    size = len(data)
    described = (len(result.inflated) if result.inflated is not None
                 else size)
    assert 0 <= result.dataset_offset <= size, result.dataset_offset
    start = 0 if result.inflated is not None else result.dataset_offset
    assert start <= result.end_offset <= described, \
        (result.dataset_offset, result.end_offset, described)
    assert isinstance(result.transfer_syntax, str)
    for tag, value in result.meta.items():
        assert tag >> 16 == 0x0002 and isinstance(value, bytes), tag
    if result.pixel is not None:
        check_pixel(result.pixel, described)


def check_pixel(pixel: Any, size: int) -> None:
    assert 0 <= pixel.element_offset < pixel.value_offset, \
        (pixel.element_offset, pixel.value_offset)
    assert pixel.value_offset <= pixel.end_offset <= size, \
        (pixel.value_offset, pixel.end_offset, size)
    assert pixel.frames_announced >= 1
    if not pixel.encapsulated:
        assert pixel.value_length >= 0
        available = (pixel.end_offset - pixel.value_offset) * 8
        assert pixel.frame_count * pixel.frame_bits <= available
        return
    assert pixel.value_length == -1
    offsets, lengths = pixel.fragment_offsets, pixel.fragment_lengths
    assert len(offsets) == len(lengths)
    previous = pixel.value_offset
    for offset, length in zip(offsets, lengths):
        # Each fragment value follows its 8-byte item header, after the
        # one before it, and ends inside the element.
        assert offset >= previous + 8, (offset, previous)
        assert length >= 0 and offset + length <= pixel.end_offset, \
            (offset, length, pixel.end_offset)
        previous = offset + length
    firsts, counts = pixel.frame_first_fragment, pixel.frame_fragment_count
    assert len(firsts) == len(counts) == pixel.frame_count
    for first, count in zip(firsts, counts):
        # A frame may hold no fragment: pydicom's mapping by a Basic
        # Offset Table whose second offset is 0 yields an empty first
        # frame, and the walker maps as pydicom does.
        assert count >= 0 and 0 <= first and first + count <= len(offsets), \
            (first, count, len(offsets))


def check_split(data: bytes, result: ParseResult) -> None:
    """The store's header/frame split of a walk it accepted succeeds and
    splices back to the bytes exactly: the walker promises cuts in
    bounds and apart (layout._cut_out refuses others, which would turn
    a file the walk read into one the store refuses)."""
    deflated = result.transfer_syntax == DEFLATED
    parts = layout.split(data, result.pixel, deflated)
    blocks = [bytes(block) for block in parts.blocks]
    joined = b"".join(layout.splice(parts.header, parts.cuts,
                                    blocks.__getitem__))
    assert joined == data, "split and splice do not give the input back"


def check_walk_and_split(data: bytes, syntax: str | None = None) -> None:
    result = walk(data, syntax)
    if result is not None and syntax is None:
        check_split(data, result)


@contextlib.contextmanager
def store_unchanged_on_failure(archive: Any,
                               kept: dict[str, bytes]) -> Iterator[None]:
    """The body may store or fail; a failure leaves ``archive`` with the
    same stats and the instances of ``kept`` (uid -> bytes) intact: the
    first and the latest few of them are read back, which bounds the
    cost of a long run while covering the seeds and what came just
    before."""
    before = archive.stats()
    try:
        yield
    except PacsstoreError:
        assert archive.stats() == before, "a failed store changed the stats"
        uids = list(kept)
        for uid in dict.fromkeys(uids[:CHECKED] + uids[-CHECKED:]):
            assert archive.get(uid) == kept[uid], f"{uid} changed"
        raise


def store_or_refuse(archive: Any, data: bytes,
                    kept: dict[str, bytes]) -> str | None:
    """Store ``data``: its SOP Instance UID when it was stored (and reads
    back exactly; it joins ``kept``), None when it was refused with a
    pacsstore error that left the store unchanged. ``kept`` must hold
    every instance stored so far."""
    try:
        with time_bound(WALK_SECONDS * 4, "store"), \
                store_unchanged_on_failure(archive, kept):
            stored = archive.store(data)
    except MalformedDicomError as error:
        check_malformed(error, len(data))
        return None
    except PacsstoreError:
        return None
    uid = stored.sop_instance_uid
    if stored.status == DUPLICATE:
        # The same dataset again behind another file meta: a re-send,
        # which keeps the bytes stored first.
        assert archive.get(uid) == kept[uid], f"{uid} changed on a re-send"
        return uid
    assert stored.status == STORED, stored.status
    assert archive.get(uid) == data, "get() differs from what was stored"
    kept[uid] = data
    return uid
