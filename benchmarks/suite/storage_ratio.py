"""Bytes on disk: a pacsstore store against Orthanc with StorageCompression
(zlib), on the CT study and on the corpus.

Both sides hold the same instances, and the bytes counted are those of
every file each keeps, data and index, after it has closed (Orthanc
checkpoints its SQLite WAL into the index on exit). A sparse file counts
what it has allocated: LMDB's map is a sparse file. The corpus side is
the corpus files that both pacsstore and Orthanc store, one per SOP
Instance UID. Sizes are deterministic, so each is measured once.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from benchmarks import data
from benchmarks.measure import Sample
from benchmarks.peers import orthanc
from benchmarks.rows import Comparison, Row, Target, size
from benchmarks.sending import upload, upload_accepted
from benchmarks.suite import Context
from pacsstore import Archive
from pacsstore.errors import PacsstoreError
from pacsstore.parsing import read_header

TARGET = Target("<=", 0.8)


def run(context: Context) -> list[Row]:
    rows = [_row(context, "storage.ct", "CT study", context.data.ct_study())]
    corpus = _corpus_both_keep(context)
    if corpus:
        rows.append(_row(context, "storage.corpus", "corpus", corpus))
    return rows


def _row(context: Context, key: str, name: str,
         paths: Sequence[Path]) -> Row:
    ours = _pacsstore_bytes(context, paths)
    compressed = _orthanc_bytes(context, paths, compression=True)
    plain = _orthanc_bytes(context, paths, compression=False)
    files = data.total_bytes(list(paths))
    return Row(key, f"stored bytes, {name} ({len(paths):,} instances, "
                    f"{files / 1e6:,.0f} MB of files)", size(),
               Sample.of([ours]), [
                   Comparison("Orthanc, StorageCompression (zlib)",
                              Sample.of([compressed]), TARGET),
                   Comparison("Orthanc, no compression",
                              Sample.of([plain])),
                   Comparison("the files themselves", Sample.of([files])),
               ], ["data and index, after close; deterministic, one run"])


def _pacsstore_bytes(context: Context, paths: Sequence[Path]) -> int:
    store = context.folder("storage-pacsstore")
    try:
        with Archive(store) as archive:
            results = archive.store_many(paths)
        if sum(r.status == "stored" for r in results) != len(paths):
            raise RuntimeError("pacsstore did not store every instance")
        return disk_bytes(store)
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _orthanc_bytes(context: Context, paths: Sequence[Path], *,
                   compression: bool) -> int:
    root = context.folder("storage-orthanc")
    try:
        with orthanc(root, compression=compression) as peer:
            upload(peer, paths)
        return disk_bytes(root / "storage") + disk_bytes(root / "index")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def disk_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``; a sparse file counts what it
    has allocated."""
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            total += min(stat.st_size, stat.st_blocks * 512)
    return total


def _corpus_both_keep(context: Context) -> list[Path]:
    """Corpus files, one per SOP Instance UID, that pacsstore stores and
    Orthanc accepts."""
    candidates = _one_per_uid([f.path for f in data.corpus_files()])
    store = context.folder("storage-corpus-probe")
    try:
        with Archive(store) as archive:
            results = archive.store_many(candidates, skip_invalid=True)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    ours = [p for p, r in zip(candidates, results) if r.status == "stored"]
    root = context.folder("storage-corpus-orthanc")
    try:
        with orthanc(root, compression=False) as peer:
            return upload_accepted(peer, ours)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _one_per_uid(paths: Sequence[Path]) -> list[Path]:
    chosen: dict[str, Path] = {}
    for path in paths:
        try:
            uid = read_header(path.read_bytes()).sop_instance_uid
        except PacsstoreError:
            continue
        if uid and uid not in chosen:
            chosen[uid] = path
    return list(chosen.values())
