"""Ingest through the API: ``Archive.store_many`` against Orthanc's REST
API (POST /instances) and against a pydicom copy (dcmread, then write the
file again).

Every side starts empty in each repetition: a new store, a new Orthanc
(compression off, its fastest), a new folder. pacsstore returns only
when every instance is durable (segments fdatasynced, index committed);
Orthanc fdatasyncs its files but not its SQLite index at commit; the
pydicom copy syncs nothing. store_many prepares on one thread per core;
Orthanc gets four concurrent keep-alive connections.

The work floor (benchmarks.work_floor) reads, hashes, writes and syncs
the same files with nothing else: no store that names its content by
SHA-256, writes every byte and answers durably does less, so its ratio
against Orthanc bounds such a store's; the durable copy is the same
without the digest.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pydicom

from benchmarks.data import total_bytes
from benchmarks.measure import Sample, Stopwatch, measure
from benchmarks.peers import orthanc
from benchmarks.rows import Comparison, Quantity, Row, Target, rate
from benchmarks.sending import REST_CONNECTIONS, upload
from benchmarks.suite import Context
from benchmarks.work_floor import durable_copy
from pacsstore import Archive

DURABILITY = ("pacsstore acknowledges durable data only; Orthanc "
              "fdatasyncs its files but not its index; the pydicom copy "
              "never syncs")
WORK_FLOOR = "work floor: read, SHA-256, write, one fdatasync"
DURABLE_COPY = "durable copy: read, write, one fdatasync"


def run(context: Context) -> list[Row]:
    ct = context.data.ct_study()
    reports = context.data.reports()
    return [
        _row(context, "ingest_api.ct", ct, "CT study",
             rate("MB/s", total_bytes(ct) / 1e6),
             orthanc_target=Target(">=", 5), copy_target=Target(">=", 1)),
        _row(context, "ingest_api.small", reports, "structured reports "
             "of 2-40 KB", rate("instances/s", len(reports)),
             orthanc_target=Target(">=", 10), copy_target=None),
    ]


def _row(context: Context, key: str, paths: list[Path], name: str,
         quantity: Quantity, *, orthanc_target: Target,
         copy_target: Target | None) -> Row:
    ours = measure(_store_many(context, paths), context.repeat)
    rest = measure(_orthanc_rest(context, paths), context.repeat)
    copy = measure(_pydicom_copy(context, paths), context.repeat)
    floor = measure(_work_floor(context, paths), context.repeat)
    bare = measure(_work_floor(context, paths, hashed=False),
                   context.repeat)
    megabytes = total_bytes(paths) / 1e6
    title = (f"API ingest, store_many, {name} ({len(paths):,} instances, "
             f"{megabytes:,.0f} MB), durable")
    return Row(key, title, quantity, ours, [
        Comparison(f"Orthanc REST POST /instances ({REST_CONNECTIONS} "
                   f"connections)", rest, orthanc_target),
        Comparison("pydicom read + write file", copy, copy_target),
        Comparison(WORK_FLOOR, floor),
        Comparison(DURABLE_COPY, bare),
    ], [DURABILITY, _floor_note(floor, bare, rest, orthanc_target)])


def _floor_note(floor: Sample, copy: Sample, orthanc: Sample,
                target: Target) -> str:
    """What the work floor and the durable copy say of the row's target
    against Orthanc, from the medians of this run."""
    hashed = orthanc.median / floor.median
    bare = orthanc.median / copy.median
    if not target.met(bare):
        verdict = ("so in this run no store that writes every byte it "
                   "is given and answers durably would reach the target "
                   f"of {target.bound:g}x, whatever it names its content "
                   "by")
    elif not target.met(hashed):
        verdict = ("so in this run no store that names its content by "
                   "SHA-256, writes every byte it is given and answers "
                   f"durably would reach the target of {target.bound:g}x")
    else:
        verdict = ("so the target was within reach of such a store in "
                   "this run")
    return ("the work floor reads each file, takes its SHA-256 and writes "
            "it into one file, starting its writeback, on one thread per "
            "core, and fdatasyncs that file once (no parse, compression or "
            "index); the durable copy is the same without the digest. "
            "They ran at "
            f"{hashed:.2f}x and {bare:.2f}x Orthanc's rate in this run, "
            f"{verdict}")


def _store_many(context: Context, paths: Sequence[Path]):
    def store_many(watch: Stopwatch) -> None:
        folder = context.folder("store-many")
        try:
            with Archive(folder) as archive:
                with watch:
                    results = archive.store_many(paths)
            _check_all_stored(results, len(paths))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return store_many


def _check_all_stored(results, expected: int) -> None:
    stored = sum(1 for r in results if r.status == "stored")
    if stored != expected:
        raise RuntimeError(f"store_many stored {stored} of {expected}")


def _orthanc_rest(context: Context, paths: Sequence[Path]):
    def orthanc_rest(watch: Stopwatch) -> None:
        folder = context.folder("orthanc-rest")
        try:
            with orthanc(folder, compression=False) as peer:
                with watch:
                    upload(peer, paths)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return orthanc_rest


def _work_floor(context: Context, paths: Sequence[Path], *,
                hashed: bool = True):
    expected = total_bytes(paths)

    def work_floor(watch: Stopwatch) -> None:
        folder = context.folder("work-floor")
        folder.mkdir(parents=True)
        try:
            with watch:
                names = durable_copy(paths, folder / "copy", hashed=hashed)
            if (folder / "copy").stat().st_size != expected or (
                    hashed and len(set(names)) != len(paths)):
                raise RuntimeError("the work floor lost files")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    work_floor.__name__ = "work_floor" if hashed else "durable_copy"
    return work_floor


def _pydicom_copy(context: Context, paths: Sequence[Path]):
    def pydicom_copy(watch: Stopwatch) -> None:
        folder = context.folder("pydicom-copy")
        folder.mkdir(parents=True)
        try:
            with watch:
                for path in paths:
                    pydicom.dcmread(path).save_as(folder / path.name)
            if len(list(folder.iterdir())) != len(paths):
                raise RuntimeError("the pydicom copy lost files")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return pydicom_copy

