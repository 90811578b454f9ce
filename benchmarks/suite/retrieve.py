"""Reading back: ``Archive.get_many`` of a whole CT study against reading
the same files (and against ``Archive.get`` called once per instance),
and ``Archive.frame`` of one frame against pydicom reading the whole
multi-frame file.

"From disk" means cold: before each repetition both sides' files (the
CT files; the store's segments and index) are written back and dropped
from the page cache with posix_fadvise(DONTNEED), which evicts exactly
those files and leaves the rest of the machine's cache alone. A warm row
beside it reads everything from the page cache. Both reads of the
store (get_many, and the get loop) are checked byte for byte against the
files once, outside the timing.

Frames are read warm on both sides: the object was just written, and a
cold pydicom read of a gigabyte would only widen the gap.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pydicom

from benchmarks.data import (FRAME_BYTES, LARGE_FRAMES, SMALLER_FRAMES,
                             total_bytes)
from benchmarks.measure import Sample, Stopwatch, measure
from benchmarks.rows import Comparison, Row, Target, duration, rate
from benchmarks.suite import Context
from pacsstore import Archive
from pacsstore.store.readahead import READ_WORKERS

# Frames read per repetition, spread over the object; a row reports the
# time of one.
FRAME_PICKS = 16


def run(context: Context) -> list[Row]:
    ct = context.data.ct_study()
    store = context.folder("retrieve-ct")
    try:
        with Archive(store) as archive:
            archive.store_many(ct)
        rows = _get_rows(context, store, ct)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return rows + _frame_rows(context)


# Whole instances -------------------------------------------------------------

def _get_rows(context: Context, store: Path, ct: list[Path]) -> list[Row]:
    uids = _check_round_trip(store, ct)
    store_files = [p for p in store.rglob("*") if p.is_file()]
    quantity = rate("MB/s", total_bytes(ct) / 1e6)
    rows = []
    for cold, label in ((True, "cold"), (False, "warm")):
        ours = measure(_get_study(store, uids, store_files, cold),
                       context.repeat)
        files = measure(_read_files(ct, cold), context.repeat)
        one_by_one = measure(_get_all(store, uids, store_files, cold),
                             context.repeat)
        rows.append(Row(
            f"retrieve.get_{label}", f"get of a stored CT study "
            f"({len(ct)} instances), {label} page cache",
            quantity, ours, [
                Comparison("reading the same files", files,
                           Target(">=", 1) if cold else None),
                Comparison("Archive.get, one instance at a time",
                           one_by_one)],
            ["Archive.get_many, in study order, reading ahead on "
             f"{READ_WORKERS} threads; every read checks each block's "
             "CRC32 and SHA-256"]))
    return rows


def _check_round_trip(store: Path, ct: list[Path]) -> list[str]:
    uids = []
    with Archive(store, readonly=True) as archive:
        for path in ct:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True)
                      .SOPInstanceUID)
            if archive.get(uid) != path.read_bytes():
                raise RuntimeError(f"get({uid}) differs from {path}")
            uids.append(uid)
        for uid, path, data in zip(uids, ct, archive.get_many(uids)):
            if data != path.read_bytes():
                raise RuntimeError(f"get_many gave other bytes for {uid} "
                                   f"than {path}")
    return uids


def _get_study(store: Path, uids: Sequence[str], store_files: list[Path],
               cold: bool):
    def get_study(watch: Stopwatch) -> None:
        if cold:
            evict(store_files)
        with Archive(store, readonly=True) as archive, watch:
            for _ in archive.get_many(uids):
                pass
    return get_study


def _get_all(store: Path, uids: Sequence[str], store_files: list[Path],
             cold: bool):
    def get_all(watch: Stopwatch) -> None:
        if cold:
            evict(store_files)
        with Archive(store, readonly=True) as archive, watch:
            for uid in uids:
                archive.get(uid)
    return get_all


def _read_files(paths: Sequence[Path], cold: bool):
    def read_files(watch: Stopwatch) -> None:
        if cold:
            evict(paths)
        with watch:
            for path in paths:
                path.read_bytes()
    return read_files


def evict(paths: Sequence[Path]) -> None:
    """Write back and drop these files' pages from the page cache."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# One frame -------------------------------------------------------------------

def _frame_rows(context: Context) -> list[Row]:
    timings = {frames: _frame_timings(context, frames)
               for frames in (SMALLER_FRAMES, LARGE_FRAMES)}
    ours, whole = timings[LARGE_FRAMES]
    smaller, _ = timings[SMALLER_FRAMES]
    large_mb = LARGE_FRAMES * FRAME_BYTES / 1e6
    small_mb = SMALLER_FRAMES * FRAME_BYTES / 1e6
    return [
        Row("retrieve.frame", f"one frame of a {large_mb:,.0f} MB "
            f"multi-frame object ({LARGE_FRAMES} frames)", duration(),
            ours, [Comparison("pydicom dcmread of the whole file, then "
                              "the frame", whole, Target(">=", 100))],
            [f"median over {FRAME_PICKS} frames spread over the object, "
             f"per frame; warm page cache on both sides"]),
        Row("retrieve.frame_flat", f"one frame, {large_mb:,.0f} MB object "
            f"against {small_mb:,.0f} MB", duration(), ours, [
                Comparison(f"the same, {small_mb:,.0f} MB object", smaller,
                           Target(">=", 1 / 1.5,
                                  label="≥ 0.67x (flat: within 1.5x)"))],
            [f"the object grows {LARGE_FRAMES // SMALLER_FRAMES}x; a frame "
             f"read that is flat in object size stays within 1.5x"]),
    ]


def _frame_timings(context: Context, frames: int) -> tuple[Sample, Sample]:
    path = context.data.multiframe(frames)
    uid = context.data.multiframe_uid(frames)
    picks = [i * (frames - 1) // (FRAME_PICKS - 1)
             for i in range(FRAME_PICKS)]
    store = context.folder(f"frames-{frames}")
    try:
        with Archive(store) as archive:
            archive.store(path)
        _check_frames(store, uid, path, picks)
        ours = measure(_read_frames(store, uid, picks), context.repeat)
        whole = measure(_pydicom_frame(path, picks[len(picks) // 2]),
                        context.repeat)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return ours.scaled(1 / len(picks)), whole


def _check_frames(store: Path, uid: str, path: Path,
                  picks: list[int]) -> None:
    ds = pydicom.dcmread(path)
    with Archive(store, readonly=True) as archive:
        for index in picks[:3]:
            expected = ds.PixelData[index * FRAME_BYTES:
                                    (index + 1) * FRAME_BYTES]
            if archive.frame(uid, index) != expected:
                raise RuntimeError(f"frame {index} of {uid} differs")


def _read_frames(store: Path, uid: str, picks: list[int]):
    def read_frames(watch: Stopwatch) -> None:
        with Archive(store, readonly=True) as archive, watch:
            for index in picks:
                archive.frame(uid, index)
    return read_frames


def _pydicom_frame(path: Path, index: int):
    def pydicom_frame(watch: Stopwatch) -> None:
        with watch:
            ds = pydicom.dcmread(path)
            ds.PixelData[index * FRAME_BYTES:(index + 1) * FRAME_BYTES]
    return pydicom_frame
