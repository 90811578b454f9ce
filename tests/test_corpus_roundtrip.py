"""The whole corpus through the archive: stored, and back byte for byte.

The corpus is stored once per test module with the re-send policy
``replace``, because it holds the same SOP Instance UID with different
content (the same image in several transfer syntaxes): under ``replace``
the last file stored with a UID is the one the archive must return, and
every earlier one with other content must be gone. The ``reject`` and
``keep-first`` policies are exercised on the same real pairs in
test_archive_resend.py.

pydicom is the oracle for what a file is: its SOP Instance UID (the
dataset's own (0008,0018), the only UID the archive files an instance
under) and its frames.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from corpus import CorpusFile, corpus_available, corpus_files
from pacsstore import Archive, StoreResult

pytestmark = pytest.mark.skipif(not corpus_available(),
                                reason="../shared/corpus is absent")


@dataclass(frozen=True)
class Stored:
    entry: CorpusFile
    result: StoreResult


# Files pydicom reads whose file meta names an instance in (0002,0003)
# while the dataset has no (0008,0018): a meta group does not make an
# instance, so the archive refuses them.
META_UID_ONLY = frozenset((
    "fo-dicom/TestData/FreezePattern.dcm",
    "libdicom/generated_encapsulated_defined_bot_1_to_1.dcm",  # 1.2.3.4
    "libdicom/generated_encapsulated_defined_bot_2_to_1.dcm",  # 1.2.3.4
    "libdicom/generated_encapsulated_defined_bot_2_to_2.dcm",  # 1.2.3.4
    "libdicom/generated_encapsulated_empty_bot_1_to_1.dcm",    # 1.2.3.4
    "libdicom/generated_encapsulated_empty_bot_2_to_1.dcm",    # 1.2.3.4
    "nibabel/nicom/tests/data/decimal_rescale.dcm",            # 1.2.3.4
    "pydicom/charset_files/chrSQEncoding.dcm",
    "pydicom/charset_files/chrSQEncoding1.dcm",
    "pydicom/test_files/UN_sequence.dcm",
    "pydicom/test_files/no_meta_group_length.dcm",
    "pydicom/test_files/priv_SQ.dcm",
))


def _read(entry: CorpusFile) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(entry.path, force=True,
                               stop_before_pixels=True)


def _oracle_uid(entry: CorpusFile) -> str | None:
    """The UID pydicom sees in the dataset: (0008,0018)."""
    uid = _read(entry).get("SOPInstanceUID")
    return str(uid) if uid else None


def _meta_uid(entry: CorpusFile) -> str | None:
    meta = getattr(_read(entry), "file_meta", None)
    uid = meta.get("MediaStorageSOPInstanceUID") if meta else None
    return str(uid) if uid else None


@pytest.fixture(scope="module")
def stored_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "store"
    entries = corpus_files()
    archive = Archive(path, on_conflict="replace")
    results = archive.store_many([e.path for e in entries],
                                 skip_invalid=True)
    assert len(results) == len(entries)
    yield archive, [Stored(e, r) for e, r in zip(entries, results)]
    archive.close()


def _winners(stored: list[Stored]) -> dict[str, Stored]:
    """Per UID, the file the archive must return under ``replace``."""
    winners: dict[str, Stored] = {}
    for item in stored:
        if item.result.status in ("stored", "replaced"):
            winners[item.result.sop_instance_uid] = item
    return winners


def test_corpus_every_readable_file_with_a_uid_is_stored(stored_corpus):
    _, stored = stored_corpus
    for item in stored:
        if not item.entry.pydicom_reads:
            continue
        uid = _oracle_uid(item.entry)
        if "dicomdir" in item.entry.flags:
            continue  # refused whatever its meta says: next test
        if uid is None:
            assert item.result.status == "rejected", item.entry.relpath
            reasons = ["no SOP Instance UID (0008,0018)"]
            if "no_preamble" in item.entry.flags:
                # A bare dataset that does not start with an element
                # (no_meta.dcm's stray first byte) shows nothing of DICOM.
                reasons.append("not a DICOM file")
            assert any(r in item.result.error for r in reasons), \
                (item.entry.relpath, item.result.error)
        else:
            assert item.result.status in ("stored", "replaced",
                                          "duplicate"), (
                item.entry.relpath, item.result.error)
            assert item.result.sop_instance_uid == uid


def test_corpus_files_with_only_a_meta_uid_are_refused(stored_corpus):
    _, stored = stored_corpus
    refused = {s.entry.relpath: s for s in stored
               if s.entry.pydicom_reads and "dicomdir" not in s.entry.flags
               and _oracle_uid(s.entry) is None and _meta_uid(s.entry)}
    assert set(refused) == META_UID_ONLY
    for item in refused.values():
        assert item.result.status == "rejected"
        assert "no SOP Instance UID (0008,0018)" in item.result.error
        assert _meta_uid(item.entry) in item.result.error


def test_corpus_dicomdirs_are_refused_as_not_storable(stored_corpus):
    _, stored = stored_corpus
    dicomdirs = [s for s in stored if "dicomdir" in s.entry.flags]
    assert dicomdirs
    for item in dicomdirs:
        assert item.result.status == "rejected"
        assert "DICOMDIR" in item.result.error


def test_corpus_get_returns_the_manifest_bytes(stored_corpus):
    archive, stored = stored_corpus
    winners = _winners(stored)
    assert len(winners) > 1500
    for uid, item in winners.items():
        data = archive.get(uid)
        assert hashlib.sha256(data).hexdigest() == item.entry.sha256, \
            item.entry.relpath


def test_corpus_open_streams_the_manifest_bytes(stored_corpus):
    archive, stored = stored_corpus
    for uid, item in _winners(stored).items():
        digest = hashlib.sha256()
        with archive.open(uid) as stream:
            while chunk := stream.read(65536):
                digest.update(chunk)
        assert digest.hexdigest() == item.entry.sha256, item.entry.relpath


def test_corpus_replace_keeps_the_last_of_each_uid(stored_corpus):
    archive, stored = stored_corpus
    replaced = [s for s in stored if s.result.status == "replaced"]
    assert replaced, "the corpus has UIDs sent with different content"
    winners = _winners(stored)
    for item in replaced:
        uid = item.result.sop_instance_uid
        got = hashlib.sha256(archive.get(uid)).hexdigest()
        assert got == winners[uid].entry.sha256
    assert archive.stats().instances == len(winners)


def test_corpus_duplicates_have_the_same_dataset_bytes(stored_corpus):
    archive, stored = stored_corpus
    for item in stored:
        if item.result.status != "duplicate":
            continue
        kept = archive.get(item.result.sop_instance_uid)
        sent = item.entry.path.read_bytes()
        # Only the file meta group may differ: the dataset is a common
        # suffix that starts within the first few hundred bytes.
        common = len(_common_suffix(kept, sent))
        assert common >= len(sent) - 1024, item.entry.relpath


def _common_suffix(a: bytes, b: bytes) -> bytes:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:]


def _sample(stored: list[Stored]) -> list[Stored]:
    """Winners with pixel data: every encapsulated file with more
    fragments than frames, every multi-frame file, and every fifth
    other one."""
    winners = list(_winners(stored).values())
    chosen = []
    for position, item in enumerate(winners):
        flags = item.entry.flags
        if not item.result.frames:
            continue
        if "fragments" in flags or "multiframe" in flags \
                or position % 5 == 0:
            chosen.append(item)
    return chosen


def _pydicom_frames(entry: CorpusFile) -> list[bytes] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(entry.path, force=True)
    if "PixelData" not in ds:
        return None
    count = int(ds.get("NumberOfFrames") or 1)
    if "encapsulated" in entry.flags:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    bits = ds.Rows * ds.Columns * ds.get("SamplesPerPixel", 1) \
        * ds.BitsAllocated
    if bits % 8:
        return None  # bit-packed frames: compared decoded, below
    size = bits // 8
    data = ds.PixelData
    return [data[i * size:(i + 1) * size] for i in range(count)
            if (i + 1) * size <= len(data)]


def test_corpus_frames_match_pydicom_splitting(stored_corpus):
    archive, stored = stored_corpus
    checked = 0
    for item in _sample(stored):
        expected = _pydicom_frames(item.entry)
        if not expected:
            continue
        uid = item.result.sop_instance_uid
        got = [archive.frame(uid, i) for i in range(len(expected))]
        assert got == expected, item.entry.relpath
        checked += 1
    assert checked > 100


def _decodable(item: Stored) -> bool:
    return item.entry.transfer_syntax != "1.2.840.10008.1.2.8.1" and \
        item.entry.pydicom_status == "ok"


def test_corpus_decoded_first_frames_match_pydicom(stored_corpus):
    archive, stored = stored_corpus
    manifest = {row.relpath: row for row in corpus_files()}
    checked = 0
    for item in _sample(stored)[::3]:
        if not _decodable(item):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(manifest[item.entry.relpath].path)
            try:
                expected = ds.pixel_array
            except (RuntimeError, NotImplementedError, ValueError,
                    AttributeError, TypeError):
                continue  # pydicom cannot decode it either: no oracle
        if int(ds.get("NumberOfFrames") or 1) > 1:
            expected = expected[0]
        got = archive.frame(item.result.sop_instance_uid, 0, decode=True)
        np.testing.assert_array_equal(got, expected,
                                      err_msg=item.entry.relpath)
        checked += 1
    assert checked > 30
