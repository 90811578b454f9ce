"""The instance record is encoded once, on the preparing thread, and
compressed once, as its manifest block: the committer puts that payload
into the index with the manifest's position in front (records.py), or
the record compressed against its series' base record
(record_bases.py). The record read back must be the one prepared, in
each of the index's forms, and a damaged index value must say so rather
than decode."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import lmdb
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pacsstore import Archive, rebuild_index
from pacsstore.errors import CorruptStoreError
from pacsstore.store import blocks, record_dictionary
from pacsstore.store.blocks import Codec, Kind
from pacsstore.store.records import (
    AGAINST_BASE,
    COMPACT,
    decode_instance,
    dumps,
    encode_instance,
    instance_for_commit,
    with_manifest,
)
from pacsstore.synthetic import write_ct_series
from test_store_support import (CT_SMALL, MR_SMALL, base_values,
                                corpus_bytes, corpus_path,
                                index_format_version, instance_json)

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
_RECORDS = st.dictionaries(st.text(), _VALUES, min_size=1, max_size=8) \
    .filter(lambda record: "manifest" not in record)
# Segment numbers are 8 decimal digits (format.md), offsets 64 bits.
_SEGMENTS = st.integers(0, 99_999_999)
_OFFSETS = st.integers(0, 2**64 - 1)


@given(_RECORDS, _SEGMENTS, _OFFSETS)
def test_the_position_added_to_an_encoding_is_dumps_of_the_record(
        record, segment, offset):
    encoded = dumps(record)
    record["manifest"] = [segment, offset]
    assert with_manifest(encoded, segment, offset) == dumps(record)


@pytest.mark.parametrize("encoded", [b"{}", b"[1]", b'"x"', b""])
def test_only_the_encoding_of_a_record_with_keys_takes_a_position(encoded):
    with pytest.raises(ValueError):
        with_manifest(encoded, 1, 2)


# The fields readers take from every instance record, as they must be
# (records.record_defect).
_FIELDS = {"sop_instance_uid": "1.2", "patient": "", "study": "1.3",
           "series": "1.4", "transfer_syntax": "1.2.840.10008.1.2.1",
           "size": 0, "sha256": "ab" * 32, "header": "cd" * 32,
           "blocks": [], "attributes": {}, "cuts": []}


@given(_RECORDS.map(lambda more: {**more, **_FIELDS}), _SEGMENTS, _OFFSETS)
def test_both_forms_decode_to_the_record(record, segment, offset):
    manifest = blocks.encode(Kind.MANIFEST, dumps(record),
                             compressor=zstandard.ZstdCompressor())
    committed = instance_for_commit(dumps(record), manifest, segment, offset)
    record["manifest"] = [segment, offset]
    for value in (committed, encode_instance(record), dumps(record)):
        decoded = decode_instance(value, "test")
        assert decoded == record
        assert list(decoded)[-1] == "manifest"


def test_a_manifest_kept_raw_gives_a_json_record():
    record = dict(_FIELDS)
    raw = blocks.seal(Kind.MANIFEST, blocks.digest(dumps(record)),
                      len(dumps(record)),
                      blocks.Coded(Codec.RAW, dumps(record)))
    value = instance_for_commit(dumps(record), raw, 4, 5)
    assert value == dumps({**record, "manifest": [4, 5]})
    assert decode_instance(value, "test") == {**record, "manifest": [4, 5]}


def test_stored_records_are_their_manifests_content(tmp_path):
    """Each stored instance record gives its manifest's position, then
    ``dumps`` of the record without it, which is the content of its
    manifest block (codec 4). A series of one instance keeps its record
    compact: the very payload of its manifest block. In a series of
    three, the first record's content is the base (the base record is
    the payload of its manifest block) and the record names it and
    holds nothing more; the next two are compressed against it."""
    paths = write_ct_series(tmp_path / "ct", 3, seed=3)
    with Archive(tmp_path / "store") as archive:
        uids = [archive.store(corpus_bytes(name)).sop_instance_uid
                for name in (CT_SMALL, MR_SMALL)]
        uids += [r.sop_instance_uid for r in archive.store_many(paths)]
        index = archive._index
        with index.read() as txn:
            raws = [bytes(txn.get(uid.encode(), db=index.db["instances"]))
                    for uid in uids]
            bases = base_values(txn, index.db["record_bases"])
        assert [raw[0] for raw in raws] == [COMPACT] * 2 + [AGAINST_BASE] * 3
        assert len(raws[2]) == 21   # the base's own record: its CRC32
        assert all(len(raw) > 21 for raw in raws[3:])
        assert len(bases) == 1
        for uid, raw in zip(uids, raws):
            record = archive.record(uid)
            assert list(record)[-1] == "manifest"
            segment, offset = record.pop("manifest")
            assert struct.unpack_from("<IQ", raw, 1) == (segment, offset)
            header, content = archive._segments.read(segment, offset)
            assert header.kind is Kind.MANIFEST
            assert header.codec is Codec.ZSTD_RECORD
            assert content == dumps(record) == instance_json(raw, bases)
            if raw[0] == COMPACT:
                assert raw[13:] == record_dictionary.compress(content)
            elif len(raw) == 21:
                number = struct.unpack_from("<I", raw, 13)[0]
                assert bases[number] == record_dictionary.compress(content)


def test_compact_records_take_less_of_the_index(tmp_path):
    """The instances of the same files, once with JSON records (the form
    before index version 3) and once compact: the compact index holds
    the same records in fewer pages."""
    sources = [corpus_path(name) for name in (CT_SMALL, MR_SMALL)]
    sources += write_ct_series(tmp_path / "ct", 6, seed=5)
    pages = {}
    for form in ("compact", "json"):
        store = tmp_path / form
        with Archive(store) as archive:
            archive.store_many(sources)
            expected = {r["SOPInstanceUID"] for r in
                        archive.find("instance")}
        if form == "json":
            _as_json_records(store)
        with Archive(store, readonly=True) as archive:
            assert {r["SOPInstanceUID"] for r in
                    archive.find("instance")} == expected
            assert not archive.verify().problems
        pages[form] = _instance_pages(store)
    assert pages["compact"] < pages["json"]


def _as_json_records(store) -> None:
    env = lmdb.open(str(store / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(b"instances", txn=txn)
        bases = base_values(txn, env.open_db(b"record_bases", txn=txn))
        for key, raw in list(txn.cursor(db)):
            record = json.loads(instance_json(raw, bases))
            record["manifest"] = list(struct.unpack_from("<IQ", raw, 1))
            txn.put(key, dumps(record), db=db)
    env.close()


def _instance_pages(store) -> int:
    env = lmdb.open(str(store / "index"), max_dbs=16, readonly=True)
    with env.begin() as txn:
        stat = txn.stat(env.open_db(b"instances", txn=txn))
    env.close()
    return stat["leaf_pages"] + stat["branch_pages"] + \
        stat["overflow_pages"]


def _compact(payload: bytes) -> bytes:
    return struct.pack("<BIQ", COMPACT, 1, 2) + payload


@pytest.mark.parametrize("value, reason", [
    (b"", "neither JSON nor compact"),
    (b"\x07junk", "neither JSON nor compact"),
    (b"{not json", "not JSON"),
    (struct.pack("<BIQ", COMPACT, 1, 2), "too few"),
    (_compact(b"not zstd at all"), "does not decompress"),
    (_compact(record_dictionary.compress(b'["a list"]')),
     "without its manifest's place"),
    (_compact(record_dictionary.compress(b'{"manifest":[1,2]}')),
     "without its manifest's place"),
    (_compact(record_dictionary.compress(b'{"a":')), "not JSON"),
    (_compact(record_dictionary.compress(b'{"a":1}')),
     "its field 'sop_instance_uid' is missing or malformed"),
    (b'{"a":1}', "its field 'sop_instance_uid' is missing or malformed"),
    (_compact(record_dictionary.compress(dumps(
        {**_FIELDS, "transfer_syntax": None}))),
     "its field 'transfer_syntax' is missing or malformed"),
    (_compact(record_dictionary.compress(dumps({**_FIELDS, "blocks": 5}))),
     "its field 'blocks' is missing or malformed"),
    (dumps({**_FIELDS, "header": "zz", "manifest": [1, 2]}),
     "its field 'header' is missing or malformed"),
    (dumps({**_FIELDS, "attributes": [], "manifest": [1, 2]}),
     "its field 'attributes' is missing or malformed"),
    (dumps({**_FIELDS, "size": True, "manifest": [1, 2]}),
     "its field 'size' is missing or malformed"),
    (dumps({**_FIELDS, "cuts": [[1]], "manifest": [1, 2]}),
     "its cut [1] is malformed"),
    (b"[1]", "neither JSON nor compact"),
    (_compact(record_dictionary.compress(dumps(_FIELDS)) + b"trailing"),
     "has 8 bytes after its zstd frame"),
    (_compact(record_dictionary.compress(dumps(_FIELDS))[:-2]),
     "cut short"),
    (_compact(zstandard.ZstdCompressor(
        write_content_size=False).compress(b"{}" * 1000)),
     "does not state its content size"),
    (b'{"a":' + b"[" * 100_000, "nested too deep"),
    (_compact(record_dictionary.compress(b"[" * 100_000)),
     "nested too deep"),
])
def test_a_damaged_index_value_is_named(value, reason):
    with pytest.raises(CorruptStoreError, match="index record instance 1.2 "
                                                "is damaged") as caught:
        decode_instance(value, "instance 1.2")
    assert reason in caught.value.reason


def test_a_record_frame_stating_a_huge_size_is_refused_unallocated():
    # zstandard allocates what a frame states: 2**50 bytes here.
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"{}")
    assert frame[4] & 0xC0 == 0   # a 1-byte content size: widen it
    huge = frame[:4] + bytes([frame[4] | 0xC0]) + \
        struct.pack("<Q", 1 << 50) + frame[6:]
    with pytest.raises(CorruptStoreError,
                       match="zstd frame of 1125899906842624 bytes"):
        decode_instance(_compact(huge), "instance 1.2")


def test_the_record_dictionary_is_frozen():
    """Records and manifests written against it must decompress for
    the store's life; a changed dictionary is a new codec."""
    frozen = "2dec3caf8af145781504acb30027ac4aabd0551c8f666eebdb4de8d62e0e598d"
    assert hashlib.sha256(record_dictionary.DICTIONARY).hexdigest() == frozen
    assert record_dictionary.DICTIONARY_SHA256 == frozen


def test_verify_names_a_compact_record_that_does_not_decode(tmp_path):
    """verify names a compact record that does not decode, as it named a
    JSON one, and leaves it as it is."""
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(corpus_bytes(CT_SMALL)).sop_instance_uid
        damaged = encode_instance(archive.record(uid))[:20]
    env = lmdb.open(str(tmp_path / "store" / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(b"instances", txn=txn)
        txn.put(uid.encode(), damaged, db=db)
    env.close()
    with Archive(tmp_path / "store", readonly=True) as archive:
        report = archive.verify()
    [problem] = [p for p in report.problems if p.sop_instance_uid == uid]
    assert problem.message == (f"the index record of instance {uid} is "
                               f"unusable: it holds a zstd frame cut short")
    env = lmdb.open(str(tmp_path / "store" / "index"), max_dbs=16,
                    readonly=True)
    with env.begin() as txn:
        kept = txn.get(uid.encode(), db=env.open_db(b"instances", txn=txn))
    env.close()
    assert kept == damaged


def test_a_version_2_index_reads_as_it_is_and_upgrades_in_name(tmp_path):
    """Index version 3 only added the compact form: a version 2 index
    (JSON records) is read as it is, by a reader too, and a writer
    raises its version without rewriting a record."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        old = archive.store(corpus_bytes(CT_SMALL)).sop_instance_uid
    _as_json_records(store)
    env = lmdb.open(str(store / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format_version", struct.pack("<I", 2),
                db=env.open_db(b"meta", txn=txn))
        json_value = txn.get(old.encode(),
                             db=env.open_db(b"instances", txn=txn))
    env.close()
    assert json_value.startswith(b"{")
    with Archive(store, readonly=True) as reader:
        assert reader.get(old) == corpus_bytes(CT_SMALL)
    assert index_format_version(store) == 2
    with Archive(store) as writer:
        new = writer.store(corpus_bytes(MR_SMALL)).sop_instance_uid
        assert writer.get(old) == corpus_bytes(CT_SMALL)
        assert writer.verify().ok
        with writer._index.read() as txn:
            instances = writer._index.db["instances"]
            assert txn.get(old.encode(), db=instances) == json_value
            assert txn.get(new.encode(), db=instances)[0] == COMPACT
    assert index_format_version(store) == 4


def test_a_rebuilt_index_holds_records_against_bases(tmp_path):
    """rebuild-index writes the same instance records, those of a
    version 2 index's JSON records included: those of a series of
    several against a base record, the others compact."""
    store = tmp_path / "store"
    series = write_ct_series(tmp_path / "ct", 3, seed=5)
    with Archive(store) as archive:
        singles = {r.sop_instance_uid for r in archive.store_many(
            [corpus_path(n) for n in (CT_SMALL, MR_SMALL)])}
        archive.store_many(series)
    _as_json_records(store)
    before = _instance_values(store)
    assert all(raw.startswith(b"{") for raw in before.values())
    shutil.rmtree(store / "index")
    rebuild_index(store)
    after = _instance_values(store)
    assert after.keys() == before.keys()
    with Archive(store, readonly=True) as archive:
        for uid, raw in after.items():
            assert raw[0] == (COMPACT if uid in singles else AGAINST_BASE)
            assert archive.record(uid) == decode_instance(before[uid], uid)


def _instance_values(store) -> dict[str, bytes]:
    env = lmdb.open(str(store / "index"), max_dbs=16, readonly=True)
    with env.begin() as txn:
        values = {key.decode(): raw for key, raw in
                  txn.cursor(env.open_db(b"instances", txn=txn))}
    env.close()
    return values


def test_no_flipped_bit_of_a_compact_record_decodes_to_another(tmp_path):
    """The compact record lies in the index outside every block's CRC32.
    Its frame carries zstd's checksum, so a bit flipped anywhere in it
    either fails to decode (DamagedRecord) or, never, gives a record
    that differs: before the checksum, about two in five such flips of
    the corpus's records decoded, some to a cut one byte off, and get()
    returned wrong bytes of the right length."""
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(corpus_bytes(MR_SMALL)).sop_instance_uid
        original = archive.record(uid)
    raw = encode_instance(original)
    frame_start = 13   # after the form byte, segment and offset
    refused = 0
    for bit in range(frame_start * 8, len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            record = decode_instance(bytes(flipped), uid)
        except CorruptStoreError:
            refused += 1
            continue
        # A bit zstd does not read (in the frame header's window size,
        # say) changes nothing.
        assert record == original, f"bit {bit} gave another record"
    assert refused > 0.9 * (len(raw) - frame_start) * 8
