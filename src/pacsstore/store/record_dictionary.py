"""The record dictionary: frozen bytes that instance records are
compressed against (codec 4 of docs/format.md, and the compact instance
records of the index).

An instance record is about 2 KB of JSON, most of it the same keys and
many of the same values in every record: compressed alone, zstd has
seen none of it before and keeps half the bytes. Compressed against a
dictionary holding the record's skeleton, its attribute keywords and
the UIDs and code strings of the standard that records repeat, the
corpus's records keep 0.58 of what plain zstd keeps (1.16 against
1.99 MB; a dictionary trained on records would do better still, but
could not be frozen without being taken from someone's data).

These bytes are part of the storage format: a block or an index record
written against them must decompress with them for as long as the store
lives. They must never change. A different dictionary is a new codec
(tests/test_record_encoding.py checks the digest below).

zstd takes a raw-content dictionary as history before the first byte,
and a match costs fewer bits the nearer it lies, so the skeleton, which
every record repeats, comes last.
"""

from __future__ import annotations

import threading

import zstandard

from pacsstore.store import zstd_frames

_STANDARD_VALUES = (
    # Transfer syntaxes (PS3.5 Annex A, PS3.6 Table A-1).
    '"1.2.840.10008.1.2","1.2.840.10008.1.2.2","1.2.840.10008.1.2.1.99",'
    '"1.2.840.10008.1.2.4.50","1.2.840.10008.1.2.4.51",'
    '"1.2.840.10008.1.2.4.57","1.2.840.10008.1.2.4.70",'
    '"1.2.840.10008.1.2.4.80","1.2.840.10008.1.2.4.81",'
    '"1.2.840.10008.1.2.4.90","1.2.840.10008.1.2.4.91",'
    '"1.2.840.10008.1.2.4.201","1.2.840.10008.1.2.4.202",'
    '"1.2.840.10008.1.2.4.203","1.2.840.10008.1.2.5",'
    '"1.2.840.10008.1.2.4.100","1.2.840.10008.1.2.4.101",'
    # Storage SOP classes (PS3.4 Table B.5-1), the commonest.
    '"1.2.840.10008.5.1.4.1.1.1","1.2.840.10008.5.1.4.1.1.1.1",'
    '"1.2.840.10008.5.1.4.1.1.1.2","1.2.840.10008.5.1.4.1.1.2.1",'
    '"1.2.840.10008.5.1.4.1.1.3.1","1.2.840.10008.5.1.4.1.1.4.1",'
    '"1.2.840.10008.5.1.4.1.1.6.1","1.2.840.10008.5.1.4.1.1.7",'
    '"1.2.840.10008.5.1.4.1.1.12.1","1.2.840.10008.5.1.4.1.1.20",'
    '"1.2.840.10008.5.1.4.1.1.66.4","1.2.840.10008.5.1.4.1.1.88.11",'
    '"1.2.840.10008.5.1.4.1.1.88.22","1.2.840.10008.5.1.4.1.1.88.33",'
    '"1.2.840.10008.5.1.4.1.1.104.1","1.2.840.10008.5.1.4.1.1.128",'
    '"1.2.840.10008.5.1.4.1.1.481.1","1.2.840.10008.5.1.4.1.1.481.2",'
    '"1.2.840.10008.5.1.4.1.1.481.3","1.2.840.10008.5.1.4.1.1.481.5",'
    '"1.2.840.10008.5.1.4.1.1.2","1.2.840.10008.5.1.4.1.1.4",'
    # Code strings of the attributes records keep.
    '"Modality":"CR","Modality":"DX","Modality":"MG","Modality":"NM",'
    '"Modality":"PT","Modality":"XA","Modality":"RF","Modality":"OT",'
    '"Modality":"SR","Modality":"SEG","Modality":"RTPLAN","Modality":"US",'
    '"Modality":"CT","Modality":"MR",'
    '"PatientSex":"O","PatientSex":"F","PatientSex":"M",'
    '"PhotometricInterpretation":"PALETTE COLOR",'
    '"PhotometricInterpretation":"YBR_FULL_422",'
    '"PhotometricInterpretation":"YBR_FULL",'
    '"PhotometricInterpretation":"MONOCHROME1",'
    '"PhotometricInterpretation":"RGB",'
    '"SpecificCharacterSet":["ISO_IR 192"],'
    '"ImageType":["DERIVED","SECONDARY"],"ImageType":["ORIGINAL","PRIMARY",'
    '"AXIAL"],"ImageType":["ORIGINAL","PRIMARY","OTHER"],'
    '"BodyPartExamined":"CHEST","BodyPartExamined":"HEAD",'
    '"BodyPartExamined":"ABDOMEN","Laterality":"L","Laterality":"R",'
)

# Every attribute keyword a record may keep (the levels of
# store/hierarchy.py when these bytes were frozen), as they appear in it.
_KEYWORDS = (
    '"IssuerOfPatientID":"","PatientBirthTime":"","OtherPatientIDs":"",'
    '"OtherPatientNames":"","EthnicGroup":"","PatientComments":"",'
    '"NameOfPhysiciansReadingStudy":"","AdmittingDiagnosesDescription":"",'
    '"Occupation":"","AdditionalPatientHistory":"","PatientAge":"0",'
    '"SeriesDate":"","SeriesTime":"","BodyPartExamined":"",'
    '"Laterality":"","ProtocolName":"",'
    '"PerformedProcedureStepStartDate":"",'
    '"PerformedProcedureStepStartTime":"",'
    '"PerformedProcedureStepDescription":"",'
    '"PerformingPhysicianName":"","InstitutionName":"",'
    '"InstitutionalDepartmentName":"","TransferSyntaxUID":"",'
    '"AvailableTransferSyntaxUID":"","AcquisitionNumber":1,'
    '"ContentDate":"","ContentTime":"","AcquisitionDate":"",'
    '"AcquisitionTime":"","AcquisitionDateTime":"","NumberOfFrames":1,'
)

# The record itself, in the order records are built (store/prepare.py).
_SKELETON = (
    '{"v":1,"sop_instance_uid":"1.2.840.10008.","sop_class_uid":'
    '"1.2.840.10008.5.1.4.1.1.","transfer_syntax":"1.2.840.10008.1.2.1",'
    '"patient":"","study":"1.2.840.","series":"1.2.840.","size":0,'
    '"sha256":"","layout":"encapsulated","frames":0,"frame_bits":0,'
    '"pixel_offset":null,"cuts":[],"layout":"bitpacked","layout":"whole",'
    '"layout":"none","layout":"native","frames":1,"frame_bits":0,'
    '"pixel_offset":0,"cuts":[[0,0,0,0]],"source_ae":null,"attributes":{'
    '"SpecificCharacterSet":["ISO_IR 100"],"ImageType":["ORIGINAL",'
    '"PRIMARY"],"SOPClassUID":"1.2.840.10008.5.1.4.1.1.","SOPInstanceUID":'
    '"1.2.840.","StudyDate":"","SeriesDate":"","ContentDate":"",'
    '"StudyTime":"","SeriesTime":"","ContentTime":"","AccessionNumber":"",'
    '"Modality":"","Manufacturer":"","InstitutionName":"",'
    '"ReferringPhysicianName":"","StationName":"","StudyDescription":"",'
    '"SeriesDescription":"","OperatorsName":"","ManufacturerModelName":"",'
    '"PatientName":"","PatientID":"","PatientBirthDate":"",'
    '"PatientSex":"","PatientAge":"","BodyPartExamined":"",'
    '"ProtocolName":"","StudyInstanceUID":"1.2.840.",'
    '"SeriesInstanceUID":"1.2.840.","StudyID":"","SeriesNumber":1,'
    '"InstanceNumber":1,"SamplesPerPixel":1,"PhotometricInterpretation":'
    '"MONOCHROME2","Rows":512,"Columns":512,"BitsAllocated":16,'
    '"BitsStored":12,"PixelRepresentation":0},"header":"","blocks":["",'
    '""],"content_sha256":"","manifest":[1,0]}'
)

DICTIONARY = (_STANDARD_VALUES + _KEYWORDS + _SKELETON).encode("ascii")
# The digest of DICTIONARY, as docs/format.md gives it.
DICTIONARY_SHA256 = (
    "2dec3caf8af145781504acb30027ac4aabd0551c8f666eebdb4de8d62e0e598d")

# zstd's level for records: they are small, and a deeper search finds
# little more in them (level 19 keeps 1.05 MB of the corpus's records
# against level 3's 1.16).
_LEVEL = 3
_dictionary = zstandard.ZstdCompressionDict(
    DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_dictionary.precompute_compress(level=_LEVEL)
# Compression contexts are not to be shared by threads using them at
# once: one per thread, made on first use.
_local = threading.local()


def compress(record: bytes) -> bytes:
    """A zstd frame of ``record`` against the dictionary, with the
    content size in its header and the checksum of its content."""
    return _compressor().compress(record)


def compress_together(records: list[bytes], threads: int) -> list[bytes]:
    """``compress`` of each record, in one call that releases the GIL for
    all of them (zstd_frames.compress_together)."""
    return zstd_frames.compress_together(_compressor(), records, threads)


def _compressor() -> zstandard.ZstdCompressor:
    found = getattr(_local, "compressor", None)
    if found is None:
        # The checksum: a record's frame carries none of its own, and the
        # index keeps it outside any block (records.py); without it a
        # flipped bit could decompress to another record (a cut moved
        # by one byte), which a reader would then follow.
        found = _local.compressor = zstandard.ZstdCompressor(
            level=_LEVEL, dict_data=_dictionary, write_dict_id=False,
            write_checksum=True)
    return found


def decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompression context with the dictionary."""
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor(
            dict_data=_dictionary)
    return found
