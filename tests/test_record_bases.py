"""Instance records kept in the index against a base record of their
series (record_bases.py): the records read back are those written,
whatever happened to the base's transaction, its instance or its bytes,
and a damaged base is named, not followed."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys

import lmdb
import pydicom
import pytest
import zstandard

from pacsstore import Archive, rebuild_index
from pacsstore.errors import (CorruptStoreError, DamagedCopyError,
                              NewerFormatError)
from pacsstore.store import blocks
from pacsstore.store import records as records_module
from pacsstore.store.blocks import Kind
from pacsstore.store.index import Index
from pacsstore.store.record_bases import REMEMBERED
from pacsstore.store.records import (
    AGAINST_BASE,
    DamagedRecord,
    decode_instance,
    dumps,
    encode_instance,
    instance_record,
)
from test_store_support import (CT_SMALL, base_values, corpus_bytes,
                                index_format_version)


def _copy(number: int, series: int) -> bytes:
    """CT_small as instance ``number`` of series ``series``."""
    ds = pydicom.dcmread(io.BytesIO(corpus_bytes(CT_SMALL)))
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{series}.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{series}"
    ds.InstanceNumber = number
    ds.SliceLocation = float(number)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _values(store, database: str) -> dict[bytes, bytes]:
    env = lmdb.open(str(store / "index"), max_dbs=16, readonly=True)
    with env.begin() as txn:
        values = {bytes(k): bytes(v) for k, v in
                  txn.cursor(env.open_db(database.encode(), txn=txn))}
    env.close()
    return values


def _put(store, database: str, key: bytes, value: bytes | None) -> None:
    env = lmdb.open(str(store / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(database.encode(), txn=txn)
        if value is None:
            txn.delete(key, db=db)
        else:
            txn.put(key, value, db=db)
    env.close()


def _base_of(raw: bytes) -> int:
    assert raw[0] == AGAINST_BASE
    return struct.unpack_from("<I", raw, 13)[0]


def test_the_records_of_a_series_keep_a_fraction_of_their_compact_bytes(
        tmp_path):
    """Twelve instances of one series: one base, and records against it
    that keep less than half what the compact form keeps; each reads
    back as its manifest holds it."""
    store = tmp_path / "store"
    data = {n: _copy(n, 1) for n in range(12)}
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(
            data.values())]
        records = {uid: archive.record(uid) for uid in uids}
        for uid, record in records.items():
            segment, offset = record["manifest"]
            _, content = archive._segments.read(segment, offset)
            assert content == dumps({k: v for k, v in record.items()
                                     if k != "manifest"})
        assert [archive.get(uid) for uid in uids] == list(data.values())
    values = _values(store, "instances")
    assert len(_values(store, "record_bases")) == 1
    stored = sum(len(values[uid.encode()]) for uid in uids[1:])
    compact = sum(len(encode_instance(records[uid])) for uid in uids[1:])
    assert stored < 0.5 * compact


def _manifest(record: dict) -> blocks.EncodedBlock:
    return blocks.encode(Kind.MANIFEST, dumps(record),
                         compressor=zstandard.ZstdCompressor())


def _record(uid: str, series: str) -> dict:
    return {"sop_instance_uid": uid, "patient": "P", "study": "1.3",
            "series": series, "transfer_syntax": "1.2.840.10008.1.2.1",
            "size": 0, "sha256": "ab" * 32, "header": "cd" * 32,
            "blocks": [], "cuts": [],
            "attributes": {"SeriesDescription": f"series {series}",
                           "SOPInstanceUID": uid}}


class _Abort(Exception):
    pass


def _put_in(index: Index, records: dict[str, dict], *uids: str):
    """A write of the records ``uids`` into ``index``, each with a
    manifest place of its own."""
    def write(txn):
        for uid in uids:
            record = records[uid]
            index.put_instance(txn, uid, dumps(record), _manifest(record),
                               record["series"], 1, len(uid))
    return write


def test_a_base_whose_transaction_aborted_is_not_used(tmp_path):
    """The writer makes a base in a transaction that then aborts; the
    next transaction gives the base's number to another series' base.
    A record of the first series written then must not be compressed
    against the remembered bytes, which the index no longer holds."""
    index = Index(tmp_path / "index", readonly=False)
    try:
        records = {uid: _record(uid, series) for uid, series in
                   [("1.1", "9.1"), ("1.2", "9.1"), ("2.1", "9.2"),
                    ("2.2", "9.2"), ("1.3", "9.1")]}

        def aborted(txn):
            _put_in(index, records, "1.1", "1.2")(txn)
            assert len(base_values(txn, index.db["record_bases"])) == 1
            raise _Abort

        with pytest.raises(_Abort):
            index.write(aborted)
        index.write(_put_in(index, records, "2.1", "2.2"))
        index.write(_put_in(index, records, "1.3"))
        with index.read() as txn:
            for uid in ("1.1", "1.2"):
                assert index.record(txn, "instance", uid) is None
            for uid in ("2.1", "2.2", "1.3"):
                assert index.record(txn, "instance", uid) == \
                    {**records[uid], "manifest": [1, len(uid)]}
            bases = base_values(txn, index.db["record_bases"])
            raw = txn.get(b"1.3", db=index.db["instances"])
        assert len(bases) == 1
        assert raw[0] == records_module.COMPACT
    finally:
        index.close()


def _assert_one_base_for_series_9_1(index: Index, records: dict[str, dict]
                                    ) -> dict[str, bytes]:
    """Every record of ``records`` reads back, base 1 is the only base:
    1.1, the first record of series 9.1, is a reference to it and 1.2 is
    written against it. Returns the index values."""
    with index.read() as txn:
        values = {uid: bytes(txn.get(uid.encode(),
                                     db=index.db["instances"]))
                  for uid in records}
        assert list(base_values(txn, index.db["record_bases"])) == [1]
        for uid, record in records.items():
            assert index.record(txn, "instance", uid) == \
                {**record, "manifest": [1, len(uid)]}
    assert values["1.1"] == records_module.reference_to_base(
        1, 3, 1, dumps(records["1.1"]))
    assert _base_of(values["1.2"]) == 1
    return values


def test_a_series_of_one_instance_costs_no_base(tmp_path):
    """The first record of a series is written compact; the second makes
    the first's content a base and the first a reference to it."""
    index = Index(tmp_path / "index", readonly=False)
    try:
        records = {uid: _record(uid, "9.1") for uid in ("1.1", "1.2")}
        index.write(_put_in(index, records, "1.1"))
        with index.read() as txn:
            first = bytes(txn.get(b"1.1", db=index.db["instances"]))
            assert base_values(txn, index.db["record_bases"]) == {}
        assert first[0] == records_module.COMPACT
        index.write(_put_in(index, records, "1.2"))
        _assert_one_base_for_series_9_1(index, records)
    finally:
        index.close()


def test_a_first_record_changed_since_is_not_made_a_reference(tmp_path):
    """The series' first record was replaced (here: written again with
    another manifest place) before the second came: the base is made of
    the content the writer remembered, and the record as the index now
    holds it is left alone."""
    index = Index(tmp_path / "index", readonly=False)
    try:
        records = {uid: _record(uid, "9.1") for uid in ("1.1", "1.2")}
        index.write(_put_in(index, records, "1.1"))

        def moved(txn):
            txn.put(b"1.1", records_module.encode_instance(
                {**records["1.1"], "manifest": [2, 99]}),
                db=index.db["instances"])
        index.write(moved)
        index.write(_put_in(index, records, "1.2"))
        with index.read() as txn:
            assert index.record(txn, "instance", "1.1") == \
                {**records["1.1"], "manifest": [2, 99]}
            assert index.record(txn, "instance", "1.2") == \
                {**records["1.2"], "manifest": [1, 3]}
            raw = txn.get(b"1.1", db=index.db["instances"])
        assert raw[0] == records_module.COMPACT
    finally:
        index.close()


def test_records_read_back_across_more_series_than_the_writer_remembers(
        tmp_path):
    """Instances of more series than the writer remembers, sent in turn:
    each series is forgotten before its second instance comes, so none
    takes a base (each second record is a first again), and every record
    and instance reads back. In series order, each series takes one."""
    series = REMEMBERED + 6
    data = [_copy(n, s) for n in range(2) for s in range(series)]
    store = tmp_path / "store"
    with Archive(store) as archive:
        results = archive.store_many(data)
        assert [archive.get(r.sop_instance_uid) for r in results] == data
        assert archive.verify().ok
    assert len(_values(store, "record_bases")) == 0
    in_order = [_copy(n, s) for s in range(series, 2 * series)
                for n in range(2)]
    with Archive(store) as archive:
        results = archive.store_many(in_order)
        assert [archive.get(r.sop_instance_uid) for r in results] == \
            in_order
        assert archive.verify().ok
    assert len(_values(store, "record_bases")) == series


def test_a_writer_opened_anew_takes_a_new_base_for_a_known_series(tmp_path):
    store = tmp_path / "store"
    data = [_copy(n, 1) for n in range(4)]
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(data[:2])]
    with Archive(store) as archive:
        uids += [r.sop_instance_uid for r in archive.store_many(data[2:])]
    assert len(_values(store, "record_bases")) == 2
    with Archive(store, readonly=True) as archive:
        assert [archive.get(uid) for uid in uids] == data
        assert archive.verify().ok


def test_replacing_a_base_instance_keeps_its_series_readable(tmp_path):
    """The base record is the first instance's record as it was: once
    that instance is replaced by other content, the records compressed
    against the base still read, and so does the new one."""
    store = tmp_path / "store"
    data = [_copy(n, 1) for n in range(3)]
    with Archive(store, on_conflict="replace") as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(data)]
        ds = pydicom.dcmread(io.BytesIO(data[0]))
        ds.SeriesDescription = "replaced"
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        assert archive.store(out.getvalue()).status == "replaced"
        assert archive.get(uids[0]) == out.getvalue()
        assert [archive.get(uid) for uid in uids[1:]] == data[1:]
        assert archive.verify().ok


def test_a_damaged_base_is_named_for_each_record_and_a_rebuild_mends_it(
        tmp_path):
    """A base record whose bytes changed fails every record of its
    series with a DamagedRecord, which verify reports instance by
    instance; another series is untouched, and rebuild-index makes the
    records again from the manifests in the segments."""
    store = tmp_path / "store"
    ours = [_copy(n, 1) for n in range(3)]
    others = [_copy(n, 2) for n in range(2)]
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(ours)]
        other_uids = [r.sop_instance_uid for r in archive.store_many(others)]
    number = _base_of(_values(store, "instances")[uids[0].encode()])
    key = struct.pack(">I", number)
    value = bytearray(_values(store, "record_bases")[key])
    value[len(value) // 2] ^= 0x10
    _put(store, "record_bases", key, bytes(value))
    with Archive(store, readonly=True) as archive:
        for uid in uids:
            with pytest.raises(CorruptStoreError,
                               match=f"base record {number}"):
                archive.get(uid)
        assert [archive.get(uid) for uid in other_uids] == others
        report = archive.verify()
    # Their blocks' reference counts then disagree with the records
    # verify could read, as for any unusable record.
    unusable = [p for p in report.problems if p.kind == "record"]
    assert {p.sop_instance_uid for p in unusable} == set(uids)
    assert all(f"base record {number}" in p.message for p in unusable)
    assert {p.kind for p in report.problems} == {"record", "refcount",
                                                 "base-record"}
    shutil.rmtree(store / "index")
    rebuild_index(store)
    with Archive(store, readonly=True) as archive:
        assert [archive.get(uid) for uid in uids] == ours
        assert archive.verify().ok


def test_a_missing_base_is_named(tmp_path):
    store = tmp_path / "store"
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in
                archive.store_many([_copy(0, 1), _copy(1, 1)])]
    number = _base_of(_values(store, "instances")[uids[0].encode()])
    _put(store, "record_bases", struct.pack(">I", number), None)
    with Archive(store, readonly=True) as archive:
        for uid in uids:
            with pytest.raises(CorruptStoreError,
                               match=f"its base record {number} is missing"):
                archive.get(uid)
        problems = [p for p in archive.verify().problems
                    if p.kind == "record"]
    assert sorted(p.sop_instance_uid for p in problems) == sorted(uids)
    assert all(p.message.endswith(f"its base record {number} is missing")
               for p in problems)


def test_no_flipped_bit_of_a_record_against_a_base_decodes_to_another(
        tmp_path):
    """A record against a base carries zstd's checksum as the compact
    form does: a bit flipped in its frame, or in the base's own bytes,
    fails to decode or changes nothing, never gives another record."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        first, second = [r.sop_instance_uid for r in
                         archive.store_many([_copy(0, 1), _copy(1, 1)])]
        original = archive.record(second)
        index = archive._index
        with index.read() as txn:
            raw = bytes(txn.get(second.encode(), db=index.db["instances"]))
            bases = index.bases_in(txn)
            base = struct.pack(">I", _base_of(raw))
            base_value = bytes(txn.get(base, db=index.db["record_bases"]))
            frame_start = 17
            for bit in range(frame_start * 8, len(raw) * 8):
                flipped = bytearray(raw)
                flipped[bit // 8] ^= 1 << (bit % 8)
                try:
                    record = decode_instance(bytes(flipped), second, bases)
                except DamagedRecord:
                    continue
                assert record == original, f"bit {bit} gave another record"
    refused = 0
    for bit in range(0, len(base_value) * 8, 7):
        flipped = bytearray(base_value)
        flipped[bit // 8] ^= 1 << (bit % 8)
        _put(store, "record_bases", base, bytes(flipped))
        with Archive(store, readonly=True) as archive:
            try:
                record = archive.record(second)
            except CorruptStoreError:
                refused += 1
                continue
            assert record == original, f"base bit {bit} gave another record"
    assert refused > 0.9 * len(range(0, len(base_value) * 8, 7))


def test_an_index_of_version_3_reads_as_it_is_and_takes_bases_once_written(
        tmp_path):
    """An index written before base records (version 3: no base records
    database) is read as it is by a reader; a writer raises it to
    version 4 and writes new records against bases."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        old = archive.store(_copy(0, 1)).sop_instance_uid
        record = archive.record(old)
    env = lmdb.open(str(store / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"record_bases", txn=txn), delete=True)
        txn.put(old.encode(), encode_instance(record),
                db=env.open_db(b"instances", txn=txn))
        txn.put(b"format_version", struct.pack("<I", 3),
                db=env.open_db(b"meta", txn=txn))
    env.close()
    with Archive(store, readonly=True) as reader:
        assert reader.get(old) == _copy(0, 1)
        assert reader.verify().ok
    assert index_format_version(store) == 3
    with Archive(store) as writer:
        first, second = [r.sop_instance_uid for r in
                         writer.store_many([_copy(1, 1), _copy(2, 1)])]
        assert writer.get(old) == _copy(0, 1)
        assert writer.get(first) == _copy(1, 1)
        assert writer.get(second) == _copy(2, 1)
        assert writer.verify().ok
    assert index_format_version(store) == 4
    values = _values(store, "instances")
    assert values[old.encode()][0] == records_module.COMPACT
    assert values[first.encode()][0] == AGAINST_BASE
    assert values[second.encode()][0] == AGAINST_BASE


def test_a_reader_does_not_decode_with_a_base_it_kept_once_it_changed(
        tmp_path):
    """A reader keeps the bases it decoded, each with the bytes it came
    from: once the index holds other bytes under the number (damage
    here; a rebuild gives numbers to other bases), the kept base is not
    used."""
    store = tmp_path / "store"
    data = [_copy(n, 1) for n in range(2)]
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(data)]
    number = _base_of(_values(store, "instances")[uids[0].encode()])
    with Archive(store, readonly=True) as reader:
        assert [reader.get(uid) for uid in uids] == data
        damage = (
            "import lmdb, struct, sys\n"
            "env = lmdb.open(sys.argv[1], max_dbs=16)\n"
            "with env.begin(write=True) as txn:\n"
            "    db = env.open_db(b'record_bases', txn=txn)\n"
            "    key = struct.pack('>I', int(sys.argv[2]))\n"
            "    value = bytearray(txn.get(key, db=db))\n"
            "    value[len(value) // 2] ^= 0x10\n"
            "    txn.put(key, bytes(value), db=db)\n")
        subprocess.run([sys.executable, "-c", damage, str(store / "index"),
                        str(number)], check=True)
        for uid in uids:
            with pytest.raises(CorruptStoreError,
                               match=f"base record {number}"):
                reader.get(uid)


def test_no_flipped_bit_of_any_record_gives_another_instance(tmp_path):
    """Every bit of every stored record value flipped in turn, the base's
    number included: the reader gets the record of the instance asked
    for, or DamagedRecord, never another instance's. The first record of
    a series is a reference to its base with no frame of its own, so it
    carries the CRC32 of its content; before it did, a flip of the base
    number gave the first instance of another series. (The manifest's
    place is compared apart: it is outside every checksum, and reads do
    not use it.)"""
    store = tmp_path / "store"
    data = [_copy(n, s) for s in (1, 2, 3) for n in range(2)]
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(data)]
        expected = {uid: archive.record(uid) for uid in uids}
        index = archive._index
        with index.read() as txn:
            bases = index.bases_in(txn)
            raws = {uid: bytes(txn.get(uid.encode(),
                                       db=index.db["instances"]))
                    for uid in uids}
            assert sorted(len(raw) == 21 for raw in raws.values()) == \
                [False] * 3 + [True] * 3   # three references, three frames
            for uid, raw in raws.items():
                for bit in range(8, len(raw) * 8):
                    flipped = bytearray(raw)
                    flipped[bit // 8] ^= 1 << (bit % 8)
                    try:
                        record = instance_record(bytes(flipped), uid, bases)
                    except DamagedRecord:
                        continue
                    assert {**record, "manifest": None} == \
                        {**expected[uid], "manifest": None}, \
                        f"bit {bit} of {uid} gave another record"


def test_a_base_number_given_to_another_base_is_not_followed(tmp_path):
    """A base record lost (deleted here), and its number given to the
    base of a series stored since: the records written against the lost
    base are named damaged, not read as the new series' instances."""
    store = tmp_path / "store"
    ours = [_copy(n, 1) for n in range(3)]
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(ours)]
    number = _base_of(_values(store, "instances")[uids[0].encode()])
    _put(store, "record_bases", struct.pack(">I", number), None)
    with Archive(store) as archive:
        archive.store_many([_copy(n, 2) for n in range(3)])
    assert list(_values(store, "record_bases")) == [struct.pack(">I",
                                                                number)]
    with Archive(store, readonly=True) as archive:
        for uid in uids:
            with pytest.raises(CorruptStoreError, match=uid):
                archive.get(uid)
        assert {p.sop_instance_uid for p in archive.verify().problems
                if p.kind == "record"} == set(uids)


def test_a_record_cut_after_its_base_number_is_named(tmp_path):
    """A record against a base cut to its struct (no frame and no CRC32)
    is damaged; before, it read as the base's own record: the series'
    first instance, for another UID."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        second = archive.store_many([_copy(0, 1), _copy(1, 1)])[1]\
            .sop_instance_uid
    raw = _values(store, "instances")[second.encode()]
    _put(store, "instances", second.encode(), raw[:17])
    with Archive(store, readonly=True) as archive:
        with pytest.raises(CorruptStoreError, match="17 bytes are too few"):
            archive.get(second)


def test_a_record_of_another_instance_is_not_read_for_this_one(tmp_path):
    """The index value of one instance put under another's key (compact
    records, which no base or CRC32 ties to a key): the reader checks
    the SOP Instance UID the record names, as verify does."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        first, second = [r.sop_instance_uid for r in
                         archive.store_many([_copy(0, 1), _copy(0, 2)])]
    values = _values(store, "instances")
    assert values[first.encode()][0] == records_module.COMPACT
    _put(store, "instances", second.encode(), values[first.encode()])
    with Archive(store, readonly=True) as archive:
        with pytest.raises(CorruptStoreError,
                           match=f"names SOP Instance UID {first}"):
            archive.get(second)
        assert archive.get(first) == _copy(0, 1)


def test_a_retried_transaction_forgets_what_the_aborted_one_chose(
        tmp_path):
    """A transaction the index runs again once its map has grown: the
    bases and first records chosen in the aborted attempt are forgotten.
    Before, each record of the retry found itself as its series' first
    record and became a base of its own."""
    index = Index(tmp_path / "index", readonly=False)
    try:
        records = {uid: _record(uid, series) for uid, series in
                   [("1.1", "9.1"), ("2.1", "9.2"), ("1.2", "9.1")]}
        index.write(_put_in(index, records, "1.1"))
        attempts = []

        def full_once(txn):
            _put_in(index, records, "2.1", "1.2")(txn)
            attempts.append(txn)
            if len(attempts) == 1:
                raise lmdb.MapFullError("the map is full")

        index.write(full_once)
        assert len(attempts) == 2
        values = _assert_one_base_for_series_9_1(index, records)
        assert values["2.1"][0] == records_module.COMPACT
    finally:
        index.close()


def _as_version_3(store) -> None:
    """Make the store's index one written before base records."""
    env = lmdb.open(str(store / "index"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"record_bases", txn=txn), delete=True)
        txn.put(b"format_version", struct.pack("<I", 3),
                db=env.open_db(b"meta", txn=txn))
    env.close()


def test_a_reader_opened_before_the_upgrade_reads_what_the_writer_added(
        tmp_path):
    """A reader opened on a version 3 index, which has no base records'
    database, stays open while a writer in another process raises the
    index to version 4 and stores a series against a base: the reader
    reads those records too. Before, it had no handle on the new
    database and called every one of them damaged; then, the first read
    of one failed in LMDB (a handle opened after its transaction
    began)."""
    store = tmp_path / "store"
    data = [_copy(n, 1) for n in range(4)]
    with Archive(store) as archive:
        archive.store(data[0])
    _as_version_3(store)
    write = ("import sys\n"
             "from pacsstore import Archive\n"
             "with Archive(sys.argv[1]) as archive:\n"
             "    for path in sys.argv[2:]:\n"
             "        archive.store(open(path, 'rb').read())\n")
    paths = []
    for n, content in enumerate(data[1:]):
        paths.append(tmp_path / f"{n}.dcm")
        paths[-1].write_bytes(content)
    with Archive(store, readonly=True) as reader:
        uids = [pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in data]
        assert reader.get(uids[0]) == data[0]
        subprocess.run([sys.executable, "-c", write, str(store),
                        *map(str, paths)], check=True)
        # The first read after the upgrade meets a record against a base,
        # in a transaction begun before the database is opened.
        assert [reader.get(uid) for uid in reversed(uids)] == data[::-1]
        assert reader.verify().ok
    assert index_format_version(store) == 4
    assert len(_values(store, "record_bases")) == 1


def test_a_record_of_a_form_from_a_newer_format_is_named_so(tmp_path):
    """A reader opened before a newer pacsstore raised the index's format
    and wrote a record of a form this one does not know: the error says
    so, rather than calling the record damaged."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        uid = archive.store(_copy(0, 1)).sop_instance_uid
    newer = ("import lmdb, struct, sys\n"
             "env = lmdb.open(sys.argv[1], max_dbs=16)\n"
             "with env.begin(write=True) as txn:\n"
             "    txn.put(b'format_version', struct.pack('<I', 99),\n"
             "            db=env.open_db(b'meta', txn=txn))\n"
             "    txn.put(sys.argv[2].encode(), b'\\x7f' + bytes(20),\n"
             "            db=env.open_db(b'instances', txn=txn))\n")
    with Archive(store, readonly=True) as reader:
        subprocess.run([sys.executable, "-c", newer, str(store / "index"),
                        uid], check=True)
        with pytest.raises(NewerFormatError, match="format version 99"):
            reader.get(uid)


def test_a_resend_onto_a_damaged_record_is_refused_alone(tmp_path):
    """A damaged base makes the stored records of its series unreadable.
    A store_many with a re-send of one of them between two new
    instances refuses the re-send alone (DamagedCopyError: is it a
    re-send, what would it replace?) and stores the others. Before, the
    committer's read of the stored record raised for the whole batch,
    and store_many with skip_invalid raised with nothing stored."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in
                archive.store_many([_copy(n, 1) for n in range(2)])]
    number = _base_of(_values(store, "instances")[uids[1].encode()])
    key = struct.pack(">I", number)
    value = bytearray(_values(store, "record_bases")[key])
    value[len(value) // 2] ^= 0xFF
    _put(store, "record_bases", key, bytes(value))
    batch = [_copy(0, 2), _copy(1, 1), _copy(0, 3)]
    with Archive(store) as archive:
        results = archive.store_many(batch, skip_invalid=True)
        assert [r.status for r in results] == ["stored", "rejected",
                                               "stored"]
        assert "index record of its earlier copy is damaged" in \
            results[1].error
        assert archive.get(results[0].sop_instance_uid) == batch[0]
        assert archive.get(results[2].sop_instance_uid) == batch[2]
        with pytest.raises(DamagedCopyError):
            archive.store(_copy(1, 1))


@pytest.mark.parametrize("damaged_key", [b"\xff\xff\xff\xff", b"\xff\xff",
                                         b"\x00\x00\x00\x01\x00"])
def test_a_damaged_base_key_fails_no_store_and_verify_names_it(
        tmp_path, damaged_key):
    """A base record under a key that is not a number the writer can
    follow (the largest number, or not 4 bytes): new series are still
    stored and read back, with a base where a number is left, and verify
    names a key that is not a number. Before, the writer took the last
    key plus one, and every new base failed its batch (struct.error)."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        archive.store_many([_copy(n, 1) for n in range(2)])
    base_value = _values(store, "record_bases")[struct.pack(">I", 1)]
    _put(store, "record_bases", damaged_key, base_value)
    data = [_copy(n, s) for s in (2, 3) for n in range(2)]
    with Archive(store) as archive:
        uids = [archive.store(d).sop_instance_uid for d in data]
        assert [archive.get(uid) for uid in uids] == data
        report = archive.verify()
    problems = [(p.kind, p.message) for p in report.problems]
    if len(damaged_key) == 4:
        assert problems == []
    else:
        assert problems == [("base-record",
                             f"a base record's key is not a 4-byte number: "
                             f"{damaged_key!r}; `pacsstore rebuild-index` "
                             f"makes the base records again")]
    numbers = set(_values(store, "record_bases")) - {damaged_key}
    assert len(numbers) == (1 if damaged_key == b"\xff\xff\xff\xff" else 3)


def test_verify_names_a_damaged_base_no_record_uses(tmp_path):
    """A base that no record names (here every record of its series was
    put back in the compact form) is still checked: the writer would put
    new records of its series against it."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        records = [archive.record(r.sop_instance_uid) for r in
                   archive.store_many([_copy(n, 1) for n in range(2)])]
    key = struct.pack(">I", 1)
    value = bytearray(_values(store, "record_bases")[key])
    value[len(value) // 2] ^= 0x04
    _put(store, "record_bases", key, bytes(value))
    for record in records:
        _put(store, "instances", record["sop_instance_uid"].encode(),
             encode_instance(record))
    with Archive(store, readonly=True) as archive:
        problems = archive.verify().problems
    assert [p.kind for p in problems] == ["base-record"]
    assert problems[0].message.startswith("base record 1 does not "
                                          "decompress")
