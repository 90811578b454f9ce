"""Named corpus files that the store tests use, with a skip when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus import CORPUS_ROOT

CT_SMALL = "pydicom/test_files/CT_small.dcm"
MR_SMALL = "pydicom/test_files/MR_small.dcm"
EMRI_10_FRAMES = "pydicom-data/emri_small.dcm"
RLE_2_FRAMES = "pydicom/test_files/SC_rgb_rle_2frame.dcm"
JPEG_FRAGMENTED = ("dicomParser/testImages/encapsulated/multi-frame/"
                   "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm")
BITPACKED_SEG = "dcmqi/segmentations/23x38x3/seg/label.seg"
CT_TS = "cornerstone3D/examplesOld/test-images/CTImage.dcm_"
# The same CT image (one SOP Instance UID) in two transfer syntaxes.
SAME_UID_EXPLICIT = CT_TS + ("LittleEndianExplicitTransferSyntax_"
                             "1.2.840.10008.1.2.1.dcm")
SAME_UID_IMPLICIT = CT_TS + ("LittleEndianImplicitTransferSyntax_"
                             "1.2.840.10008.1.2.dcm")
DEFLATED = CT_TS + ("DeflatedExplicitVRLittleEndianTransferSyntax_"
                    "1.2.840.10008.1.2.1.99.dcm")
DICOMDIR = "pydicom/test_files/dicomdirtests/DICOMDIR"


def corpus_path(relpath: str) -> Path:
    path = CORPUS_ROOT / relpath
    if not path.is_file():
        pytest.skip(f"corpus file {relpath} is absent")
    return path


def corpus_bytes(relpath: str) -> bytes:
    return corpus_path(relpath).read_bytes()


def frame_codecs(archive, uid: str) -> list:
    """The codec each frame block of instance ``uid`` was stored with."""
    from pacsstore.store.blocks import Codec
    record = archive.record(uid)
    with archive._index.read() as txn:
        return [Codec(archive._index.block(txn, bytes.fromhex(n)).codec)
                for n in record["blocks"]]


def index_format_version(store: Path) -> int:
    """The format version a store's index says it is, read with LMDB
    itself (a pacsstore open may upgrade it)."""
    import struct

    import lmdb
    env = lmdb.open(str(store / "index"), max_dbs=16, readonly=True)
    with env.begin() as txn:
        raw = txn.get(b"format_version", db=env.open_db(b"meta", txn=txn))
    env.close()
    return struct.unpack("<I", raw)[0]


def instance_json(raw: bytes, base_values: dict[int, bytes]) -> bytes:
    """The JSON an index value of an instance record holds (without the
    manifest's place), decoded as docs/format.md describes the forms
    and not with pacsstore's decoder: compact (0x01), or against a base
    record (0x02) whose value ``base_values`` gives by number."""
    import struct
    import zlib

    import zstandard

    from pacsstore.store import record_dictionary
    dictionary = record_dictionary.decompressor()
    if raw[0] == 0x01:
        return dictionary.decompress(raw[13:])
    assert raw[0] == 0x02
    (number,) = struct.unpack_from("<I", raw, 13)
    base = dictionary.decompress(base_values[number])
    if len(raw) == 21:   # a reference: the CRC32 of the base's content
        assert struct.unpack_from("<I", raw, 17)[0] == zlib.crc32(base)
        return base
    against = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(
        base, dict_type=zstandard.DICT_TYPE_RAWCONTENT))
    return against.decompress(raw[17:])


def base_values(txn, db) -> dict[int, bytes]:
    """The base records of an index, by number (big-endian u32 keys)."""
    import struct
    return {struct.unpack(">I", k)[0]: bytes(v) for k, v in txn.cursor(db)}
