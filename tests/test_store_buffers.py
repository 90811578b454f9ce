"""Inputs whose bytes belong to the caller: what is stored must be what
the caller handed over at the call, even when the caller reuses the
buffer afterwards."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from pacsstore import Archive, NotStorableError
from pacsstore.synthetic import ct_series


def _files(count: int) -> list[bytes]:
    out = []
    for ds in ct_series(count, rows=64, columns=64):
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _through_one_array(files: list[bytes]):
    """A reader that fills one buffer per file (readinto style) and hands
    out views of it: each view is overwritten by the next file."""
    buffer = np.zeros(max(map(len, files)), np.uint8)
    for data in files:
        buffer[:len(data)] = np.frombuffer(data, np.uint8)
        yield memoryview(buffer)[:len(data)]


def _through_one_array_itself(files: list[bytes]):
    """The same array, handed out itself (a buffer, not a memoryview),
    one file long each time."""
    size = len(files[0])
    buffer = np.zeros(size, np.uint8)
    for data in (f for f in files if len(f) == size):
        buffer[:] = np.frombuffer(data, np.uint8)
        yield buffer


def _through_one_bytearray(files: list[bytes]):
    """The same with a bytearray, refilled in place for files of its
    size."""
    size = len(files[0])
    buffer = bytearray(size)
    for data in (f for f in files if len(f) == size):
        buffer[:] = data
        yield buffer


def _through_one_dataset(files: list[bytes]):
    """A template Dataset edited in place and yielded again."""
    ds = pydicom.dcmread(io.BytesIO(files[0]))
    for data in files:
        source = pydicom.dcmread(io.BytesIO(data))
        ds.SOPInstanceUID = source.SOPInstanceUID
        ds.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        ds.PixelData = source.PixelData
        yield ds


def _bytes(item) -> bytes:
    if isinstance(item, pydicom.Dataset):
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, item, enforce_file_format=True)
        return buffer.getvalue()
    return bytes(item)


@pytest.mark.parametrize("reader", [_through_one_array,
                                    _through_one_array_itself,
                                    _through_one_bytearray,
                                    _through_one_dataset])
def test_store_many_of_a_reused_buffer_stores_each_file_exactly(
        tmp_path, reader):
    files = _files(12)
    sent = [_bytes(item) for item in reader(files)]
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many(reader(files))
        assert [r.status for r in results] == ["stored"] * len(sent)
        for data, result in zip(sent, results):
            assert archive.get(result.sop_instance_uid) == data


def test_store_takes_any_buffer_and_names_what_it_takes_otherwise(
        tmp_path):
    data = _files(1)[0]
    with Archive(tmp_path / "s") as archive:
        as_array = np.frombuffer(data, np.uint8).copy()
        result = archive.store(as_array)
        assert archive.get(result.sop_instance_uid) == data
        with pytest.raises(NotStorableError,
                           match="bytes or another buffer .* found int"):
            archive.store(7)
