"""A segment whose creation fails (no space for its header) must leave
nothing behind: the writer rolls the batch back and the next batch, once
there is room, starts that segment again."""

from __future__ import annotations

import builtins
import errno

import pytest

from pacsstore import Archive
from pacsstore.errors import OutOfSpaceError
from pacsstore.store import segments
from pacsstore.store.segments import HEADER_SIZE
from test_store_support import CT_SMALL, MR_SMALL, corpus_bytes


class _FullDisk:
    """A file that is created but takes no bytes."""

    def __init__(self, path, mode):
        self._file = builtins.open(path, mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_segment_creation_without_space_leaves_no_file_and_store_goes_on(
        tmp_path, monkeypatch):
    store = tmp_path / "s"
    with Archive(store, segment_size=HEADER_SIZE + 1) as archive:
        archive.store(corpus_bytes(CT_SMALL))
        before = sorted(p.name for p in (store / "segments").iterdir())
        monkeypatch.setattr(segments, "open", _FullDisk, raising=False)
        with pytest.raises(OutOfSpaceError):
            archive.store(corpus_bytes(MR_SMALL))
        assert sorted(p.name for p in (store / "segments").iterdir()) \
            == before
        monkeypatch.undo()
        # Room again: the same segment number is started afresh.
        uid = archive.store(corpus_bytes(MR_SMALL)).sop_instance_uid
        assert archive.get(uid) == corpus_bytes(MR_SMALL)
