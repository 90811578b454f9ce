"""The committer thread never leaves a caller waiting: when it meets an
error it cannot hand back to one batch, every waiting and later store
fails with an error instead of blocking."""

from __future__ import annotations

import errno
import threading

from pacsstore import Archive, PacsstoreError
from test_store_support import CT_SMALL, MR_SMALL, corpus_bytes


def _store_in_thread(archive, data):
    outcome = {}

    def run():
        try:
            outcome["result"] = archive.store(data)
        except BaseException as exc:  # noqa: BLE001 - recorded for asserts
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # A hang detector, not a speed check: a healthy failure is immediate.
    thread.join(60)
    assert not thread.is_alive(), "store() blocked on a dead committer"
    return outcome


def test_committer_failing_rollback_fails_callers_instead_of_hanging(
        tmp_path, monkeypatch):
    store = tmp_path / "store"
    archive = Archive(store)
    kept = archive.store(corpus_bytes(CT_SMALL)).sop_instance_uid
    writer = archive._committer._writer

    def broken_disk(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer, "flush", broken_disk)
    monkeypatch.setattr(writer, "rollback", broken_disk)

    first = _store_in_thread(archive, corpus_bytes(MR_SMALL))
    assert isinstance(first.get("error"), OSError)
    later = _store_in_thread(archive, corpus_bytes(MR_SMALL))
    assert isinstance(later.get("error"), PacsstoreError)
    assert "reopen the store" in str(later["error"])
    monkeypatch.undo()
    archive.close()

    with Archive(store) as reopened:
        assert reopened.get(kept) == corpus_bytes(CT_SMALL)
        assert reopened.store(corpus_bytes(MR_SMALL)).status == "stored"
