"""The re-send test: two sends are the same instance exactly when their
datasets are the same bytes in the same transfer syntax, whatever file
meta stands in front of them."""

from __future__ import annotations

import pytest

from pacsstore import Archive, ConflictError
from test_archive_concurrency import _bare_dataset
from test_store_support import CT_SMALL, EMRI_10_FRAMES, corpus_bytes


@pytest.mark.parametrize("relpath", [CT_SMALL, EMRI_10_FRAMES])
def test_content_same_dataset_under_another_meta_is_a_duplicate(
        tmp_path, relpath):
    body, syntax, sop_class, uid = _bare_dataset(corpus_bytes(relpath))
    with Archive(tmp_path / "store") as archive:
        first = archive.store_received(body, syntax, sop_class_uid=sop_class,
                                       sop_instance_uid=uid,
                                       source_ae="SCANNER_A")
        again = archive.store_received(body, syntax, sop_class_uid=sop_class,
                                       sop_instance_uid=uid,
                                       source_ae="A_MUCH_LONGER_AE")
        assert (first.status, again.status) == ("stored", "duplicate")
        assert again.bytes_written == 0


@pytest.mark.parametrize("where", ["header", "last pixel byte"])
def test_content_one_changed_byte_is_a_conflict(tmp_path, where):
    body, syntax, sop_class, uid = _bare_dataset(corpus_bytes(CT_SMALL))
    changed = bytearray(body)
    if where == "header":  # CT_small's PatientID "1CT1" becomes "1CT0"
        position = body.index(b"1CT1") + 3
    else:
        position = len(body) - 1
    changed[position] ^= 0x01
    with Archive(tmp_path / "store") as archive:
        archive.store_received(body, syntax, sop_class_uid=sop_class,
                               sop_instance_uid=uid)
        with pytest.raises(ConflictError):
            archive.store_received(bytes(changed), syntax,
                                   sop_class_uid=sop_class,
                                   sop_instance_uid=uid)
        assert archive.get(uid).endswith(body)
