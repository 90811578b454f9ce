"""C-FIND and C-MOVE/C-GET identifiers (pacsstore.store.cfind): levels
and models, hierarchical and relational queries, the keys a response
holds, and names in the character sets of the corpus, sent through the
encoding pynetdicom puts on the wire."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from pacsstore import Archive, QueryError
from pacsstore.store.cfind import find_identifiers, instances_for_retrieve
from test_store_support import CT_SMALL, MR_SMALL, corpus_path

FRENCH = "pydicom/charset_files/chrFren.dcm"          # ISO_IR 100
CHINESE_UTF8 = "pydicom/charset_files/chrX1.dcm"      # ISO_IR 192
JAPANESE = "pydicom/charset_files/chrH31.dcm"         # \ISO 2022 IR 87
JAPANESE_KANA = "pydicom/charset_files/chrJapMulti.dcm"
KOREAN = "pydicom/charset_files/chrI2.dcm"            # \ISO 2022 IR 149
KOREAN_HANGUL = "pydicom/charset_files/chrKoreanMulti.dcm"
CHARSET_FILES = (FRENCH, CHINESE_UTF8, JAPANESE, JAPANESE_KANA, KOREAN,
                 KOREAN_HANGUL)
JAPANESE_SET = ["", "ISO 2022 IR 87"]
KOREAN_SET = ["", "ISO 2022 IR 149"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    with Archive(tmp_path_factory.mktemp("cfind") / "store") as opened:
        for relpath in (CT_SMALL, MR_SMALL, *CHARSET_FILES):
            assert opened.store(corpus_path(relpath)).status == "stored"
        yield opened


def _header(relpath: str) -> pydicom.Dataset:
    return pydicom.dcmread(corpus_path(relpath), stop_before_pixels=True)


def _request(level: str, charset=None, **keys) -> Dataset:
    """A request Identifier as the node receives it: encoded in its
    character set as an SCU sends it, decoded as pynetdicom does."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    if charset is not None:
        ds.SpecificCharacterSet = charset
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return _wire(ds)


def _wire(ds: Dataset) -> Dataset:
    return decode(io.BytesIO(encode(ds, True, True)), True, True)


def _find(archive, request, model="study", **options) -> list[Dataset]:
    """Responses as the SCU decodes them off the wire."""
    return [_wire(response) for response in
            find_identifiers(archive, request, model=model, **options)]


# Levels, models and the keys of a response -----------------------------


def test_cfind_response_holds_exactly_the_requested_keys(archive):
    ct = _header(CT_SMALL)
    request = _request("STUDY", PatientID=ct.PatientID, PatientName="",
                       StudyDate="", StudyInstanceUID="",
                       ModalitiesInStudy="", SOPClassesInStudy="",
                       NumberOfStudyRelatedInstances="",
                       NumberOfStudyRelatedSeries="", StudyDescription="",
                       AccessionNumber="")
    [response] = _find(archive, request)
    asked = {e.keyword for e in request} - {"QueryRetrieveLevel"}
    assert {e.keyword for e in response} == asked | {"QueryRetrieveLevel"}
    assert response.QueryRetrieveLevel == "STUDY"
    assert response.PatientName == ct.PatientName
    assert response.StudyDate == ct.StudyDate
    assert response.StudyInstanceUID == ct.StudyInstanceUID
    assert response.ModalitiesInStudy == "CT"
    assert response.SOPClassesInStudy == ct.SOPClassUID
    assert response.NumberOfStudyRelatedInstances == 1
    assert response.NumberOfStudyRelatedSeries == 1
    assert response.StudyDescription == ct.StudyDescription
    # CT_small has no accession number: returned, empty.
    assert response.AccessionNumber == ""


def test_cfind_patient_root_patient_level_counts(archive):
    mr = _header(MR_SMALL)
    request = _request("PATIENT", PatientID=mr.PatientID, PatientName="",
                       PatientSex="", NumberOfPatientRelatedStudies="",
                       NumberOfPatientRelatedSeries="",
                       NumberOfPatientRelatedInstances="")
    [response] = _find(archive, request, model="patient")
    assert response.PatientName == mr.PatientName
    assert response.PatientSex == mr.PatientSex
    assert (response.NumberOfPatientRelatedStudies,
            response.NumberOfPatientRelatedSeries,
            response.NumberOfPatientRelatedInstances) == (1, 1, 1)


def test_cfind_image_level_answers_instance_keys(archive):
    ct = _header(CT_SMALL)
    request = _request("IMAGE", StudyInstanceUID=ct.StudyInstanceUID,
                       SeriesInstanceUID=ct.SeriesInstanceUID,
                       SOPInstanceUID="", SOPClassUID="", InstanceNumber="",
                       Rows=None, AvailableTransferSyntaxUID="",
                       InstanceAvailability="", RetrieveAETitle="")
    [response] = _find(archive, request, retrieve_ae_title="PACSSTORE")
    assert response.SOPInstanceUID == ct.SOPInstanceUID
    assert response.SOPClassUID == ct.SOPClassUID
    assert response.InstanceNumber == ct.InstanceNumber
    assert response.Rows == ct.Rows
    assert response.AvailableTransferSyntaxUID == \
        ct.file_meta.TransferSyntaxUID
    assert response.InstanceAvailability == "ONLINE"
    assert response.RetrieveAETitle == "PACSSTORE"


def test_cfind_study_level_modality_is_modalities_in_study(archive):
    responses = _find(archive, _request("STUDY", Modality="MR",
                                        StudyInstanceUID=""))
    assert [r.StudyInstanceUID for r in responses] == \
        [_header(MR_SMALL).StudyInstanceUID]
    assert responses[0].Modality == "MR"


def test_cfind_list_of_modalities_matches_any(archive):
    request = _request("STUDY", ModalitiesInStudy=["CT", "MR"],
                       StudyInstanceUID="")
    responses = _find(archive, request)
    assert {r.StudyInstanceUID for r in responses} == {
        _header(CT_SMALL).StudyInstanceUID,
        _header(MR_SMALL).StudyInstanceUID}


@pytest.mark.parametrize("model, level", [
    ("study", "PATIENT"), ("study", "FRAME"), ("patient", ""),
    ("patient", "image"),
])
def test_cfind_unknown_level_is_a_query_error(archive, model, level):
    with pytest.raises(QueryError, match="QueryRetrieveLevel"):
        find_identifiers(archive, _request(level), model=model)


def test_cfind_unknown_model_is_a_query_error(archive):
    with pytest.raises(QueryError, match="model"):
        find_identifiers(archive, _request("STUDY"), model="worklist")


def test_cfind_missing_level_is_a_query_error(archive):
    request = Dataset()
    request.PatientName = "*"
    with pytest.raises(QueryError, match="QueryRetrieveLevel"):
        find_identifiers(archive, request, model="study")


@pytest.mark.parametrize("model, level, keys, missing", [
    ("patient", "STUDY", {"StudyDate": ""}, "PatientID"),
    ("patient", "SERIES", {"PatientID": "1CT1"}, "StudyInstanceUID"),
    ("study", "SERIES", {"Modality": "CT"}, "StudyInstanceUID"),
    ("study", "IMAGE", {"StudyInstanceUID": "1.2"}, "SeriesInstanceUID"),
    ("patient", "STUDY", {"PatientID": "1CT*"}, "PatientID"),
    ("study", "IMAGE", {"StudyInstanceUID": ["1.2", "1.3"],
                        "SeriesInstanceUID": "1.4"}, "StudyInstanceUID"),
])
def test_cfind_hierarchical_query_needs_unique_keys_above(
        archive, model, level, keys, missing):
    with pytest.raises(QueryError, match=missing):
        find_identifiers(archive, _request(level, **keys), model=model)


def test_cfind_relational_query_needs_no_unique_keys_above(archive):
    ct = _header(CT_SMALL)
    request = _request("IMAGE", PatientName=str(ct.PatientName),
                       SOPInstanceUID="")
    [response] = _find(archive, request, relational=True)
    assert response.SOPInstanceUID == ct.SOPInstanceUID
    [response] = _find(archive, request, model="patient", relational=True)
    assert response.SOPInstanceUID == ct.SOPInstanceUID


def test_cfind_key_of_a_lower_level_with_a_value_is_a_query_error(archive):
    with pytest.raises(QueryError, match=r"SOPInstanceUID \(0008,0018\)"):
        find_identifiers(archive, _request("STUDY", SOPInstanceUID="1.2"),
                         model="study")
    # Asked back without a value, it is answered empty.
    responses = _find(archive, _request("STUDY", SeriesDescription="",
                                        PatientID="1CT1"))
    assert [r.SeriesDescription for r in responses] == [""]


def test_cfind_unindexed_key_is_universal_and_returned_empty(archive):
    ct = _header(CT_SMALL)
    request = _request("STUDY", PatientID=ct.PatientID, PatientWeight="80",
                       ReferencedStudySequence=Sequence([Dataset()]))
    request.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.3"
    [response] = _find(archive, request)
    assert response.PatientWeight is None
    assert len(response.ReferencedStudySequence) == 0


@pytest.mark.parametrize("length", [16, 70_000])
def test_cfind_key_that_came_as_bytes_is_refused_not_universal(archive,
                                                               length):
    # DCMTK sends a PatientName of 65,536 bytes or more as UN: matched
    # universally it would answer every study.
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.add(DataElement(0x00100010, "UN", b"A" * length))
    on_wire = decode(io.BytesIO(encode(ds, False, True)), False, True)
    if length < 0xFFFF:
        # pydicom reads a short UN of a known tag with the tag's own VR.
        assert on_wire["PatientName"].VR == "PN"
        assert _find(archive, on_wire) == []
        return
    assert on_wire["PatientName"].VR == "UN"
    with pytest.raises(QueryError, match=r"PatientName \(0010,0010\) came "
                                         r"as UN, 70000 bytes"):
        find_identifiers(archive, on_wire, model="study")


def test_cfind_reports_the_keys_it_cannot_match_or_return(archive):
    ct = _header(CT_SMALL)
    request = _request("STUDY", PatientID=ct.PatientID, PatientWeight="80",
                       StudyDescription="", SeriesNumber="",
                       ReferencedStudySequence=Sequence([]))
    answers = find_identifiers(archive, request, model="study")
    # In tag order; SeriesNumber, of the level below and empty, is not a
    # study key.
    assert answers.unsupported_keys == ("ReferencedStudySequence",
                                        "PatientWeight")
    assert len(list(answers)) == 1
    held = find_identifiers(archive, _request(
        "STUDY", PatientID=ct.PatientID, StudyDescription=""),
        model="study")
    assert held.unsupported_keys == ()
    # Filled by the node, not the index, and returned: not unsupported
    # (they gave 0xFF01 though every response carried them).
    filled = find_identifiers(archive, _request(
        "STUDY", PatientID=ct.PatientID, RetrieveAETitle="",
        InstanceAvailability=""), model="study",
        retrieve_ae_title="PACSSTORE")
    assert filled.unsupported_keys == ()


def test_cfind_bad_value_is_a_query_error_naming_the_key(archive):
    with pytest.raises(QueryError, match="StudyDate"):
        find_identifiers(archive, _request("STUDY", StudyDate="last week"),
                         model="study")
    with pytest.raises(QueryError, match="StudyInstanceUID"):
        find_identifiers(archive, _request("STUDY",
                                           StudyInstanceUID="1.3.6.*"),
                         model="study")


def test_cfind_empty_required_key_matches_any_value(archive):
    # The charset files have no StudyDate: unknown, so they match a
    # date range (PS3.4 C.2.2.1.2); Archive.find matches exactly.
    request = _request("STUDY", StudyDate="20040101-20040131",
                       StudyInstanceUID="")
    found = {r.StudyInstanceUID for r in _find(archive, request)}
    assert _header(CT_SMALL).StudyInstanceUID in found
    assert _header(FRENCH).StudyInstanceUID in found
    assert _header(MR_SMALL).StudyInstanceUID not in found
    assert [s["StudyInstanceUID"] for s in archive.find(
        "study", StudyDate="20040101-20040131")] == \
        [_header(CT_SMALL).StudyInstanceUID]


def test_cfind_combined_date_and_time_range(archive):
    # CT_small: 2004-01-19 07:27:30; MR_small: 2004-08-26 18:50:59.
    keys = {"StudyDate": "20040119-20040826", "StudyTime": "0800-1900",
            "PatientName": "CompressedSamples*", "StudyInstanceUID": ""}
    separate = _find(archive, _request("STUDY", **keys))
    combined = _find(archive, _request("STUDY", **keys),
                     combined_datetime=True)
    mr = _header(MR_SMALL).StudyInstanceUID
    assert [r.StudyInstanceUID for r in separate] == [mr]
    assert [r.StudyInstanceUID for r in combined] == [mr]
    # From 2004-01-01 19:00 to 2004-08-26 18:51: as one range it holds
    # both studies; as a time of day on its own it is no range at all.
    keys.update(StudyDate="20040101-20040826", StudyTime="1900-1851")
    combined = _find(archive, _request("STUDY", **keys),
                     combined_datetime=True)
    assert {r.StudyInstanceUID for r in combined} == {
        _header(CT_SMALL).StudyInstanceUID, mr}
    with pytest.raises(QueryError, match="StudyTime: the range"):
        find_identifiers(archive, _request("STUDY", **keys), model="study")


# Character sets ------------------------------------------------------------


@pytest.mark.parametrize("relpath, query, charset, answered_in", [
    # In the file's own character set.
    (FRENCH, "Buc^Jérôme", "ISO_IR 100", "ISO_IR 100"),
    (CHINESE_UTF8, "Wang^XiaoDong=王^小東", "ISO_IR 192", "ISO_IR 192"),
    (JAPANESE, "Yamada^Tarou=山田^太郎=やまだ^たろう", JAPANESE_SET,
     JAPANESE_SET),
    (JAPANESE_KANA, "やまだ*", JAPANESE_SET, JAPANESE_SET),
    (KOREAN, "=洪^吉洞", KOREAN_SET, KOREAN_SET),
    (KOREAN_HANGUL, "김희중", KOREAN_SET, KOREAN_SET),
    # In another one that can write the name.
    (FRENCH, "buc^jér*", "ISO_IR 192", "ISO_IR 192"),
    (JAPANESE, "山田^太郎", "ISO_IR 192", "ISO_IR 192"),
    (KOREAN_HANGUL, "김희중", "ISO_IR 192", "ISO_IR 192"),
    (CHINESE_UTF8, "*=王^小東", JAPANESE_SET, JAPANESE_SET),
    # In one that cannot: the query matches, the answer is in UTF-8.
    (JAPANESE, "YAMADA^*", "ISO_IR 100", "ISO_IR 192"),
    (KOREAN, "Hong^Gildong", None, "ISO_IR 192"),
    (KOREAN_HANGUL, "*", JAPANESE_SET, "ISO_IR 192"),
    (FRENCH, "Buc*", None, "ISO_IR 192"),
])
def test_cfind_names_match_and_come_back_in_a_charset_that_holds_them(
        archive, relpath, query, charset, answered_in):
    original = _header(relpath)
    request = _request("STUDY", charset, PatientName=query,
                       PatientID=original.PatientID, StudyInstanceUID="")
    if charset is not None:
        # The query travelled in its own character set.
        assert request.SpecificCharacterSet == charset
    [response] = _find(archive, request)
    assert str(response.PatientName) == str(original.PatientName)
    assert response.PatientID == original.PatientID
    assert response.SpecificCharacterSet == answered_in


def test_cfind_ascii_answer_keeps_the_request_charset(archive):
    ct = _header(CT_SMALL)
    plain = _find(archive, _request("STUDY", PatientID=ct.PatientID,
                                    PatientName=""))
    assert "SpecificCharacterSet" not in plain[0]
    latin = _find(archive, _request("STUDY", "ISO_IR 100",
                                    PatientID=ct.PatientID, PatientName=""))
    assert latin[0].SpecificCharacterSet == "ISO_IR 100"


# Retrieve -------------------------------------------------------------------


def test_retrieve_study_names_every_instance_of_it(archive):
    ct = _header(CT_SMALL)
    request = _request("STUDY", StudyInstanceUID=ct.StudyInstanceUID)
    assert instances_for_retrieve(archive, request, model="study") == \
        [ct.SOPInstanceUID]
    request = _request("STUDY", PatientID=ct.PatientID,
                       StudyInstanceUID=ct.StudyInstanceUID)
    assert instances_for_retrieve(archive, request, model="patient") == \
        [ct.SOPInstanceUID]


def test_retrieve_lists_of_uids_at_the_retrieve_level(archive):
    ct, mr = _header(CT_SMALL), _header(MR_SMALL)
    request = _request("STUDY", StudyInstanceUID=[ct.StudyInstanceUID,
                                                  mr.StudyInstanceUID])
    assert sorted(instances_for_retrieve(archive, request, model="study")) \
        == sorted([ct.SOPInstanceUID, mr.SOPInstanceUID])
    request = _request("IMAGE", StudyInstanceUID=mr.StudyInstanceUID,
                       SeriesInstanceUID=mr.SeriesInstanceUID,
                       SOPInstanceUID=[mr.SOPInstanceUID, "1.2.3"])
    assert instances_for_retrieve(archive, request, model="study") == \
        [mr.SOPInstanceUID]


def test_retrieve_patient_level_names_the_patients_instances(archive):
    mr = _header(MR_SMALL)
    request = _request("PATIENT", PatientID=mr.PatientID)
    assert instances_for_retrieve(archive, request, model="patient") == \
        [mr.SOPInstanceUID]


@pytest.mark.parametrize("level, keys, reason", [
    ("STUDY", {}, "StudyInstanceUID with a value"),
    ("SERIES", {"SeriesInstanceUID": "1.2"}, "StudyInstanceUID"),
    ("STUDY", {"StudyInstanceUID": "1.3.*"}, "wildcards"),
    ("IMAGE", {"StudyInstanceUID": ["1.2", "1.3"],
               "SeriesInstanceUID": "1.4", "SOPInstanceUID": "1.5"},
     "takes one value"),
])
def test_retrieve_without_its_unique_keys_is_a_query_error(
        archive, level, keys, reason):
    with pytest.raises(QueryError, match=reason):
        instances_for_retrieve(archive, _request(level, **keys),
                               model="study")


def test_retrieve_relational_needs_only_the_level_key(archive):
    mr = _header(MR_SMALL)
    request = _request("SERIES", SeriesInstanceUID=mr.SeriesInstanceUID)
    assert instances_for_retrieve(archive, request, model="study",
                                  relational=True) == [mr.SOPInstanceUID]


def test_cfind_empty_patient_id_is_unknown_only_where_it_is_required(
        tmp_path):
    # Study Root: PatientID is a required key of the study level, so a
    # study without one matches any PatientID. Patient Root: it is the
    # unique key of the patient, and "the studies of patient X" are X's.
    ct = pydicom.dcmread(corpus_path(CT_SMALL))
    with Archive(tmp_path / "store") as archive:
        archive.store(ct)
        ct.SOPInstanceUID += ".1"
        ct.StudyInstanceUID += ".1"
        ct.SeriesInstanceUID += ".1"
        ct.PatientID = ""
        archive.store(ct)
        request = _request("STUDY", PatientID="1CT1", StudyInstanceUID="")
        assert len(_find(archive, request, model="study")) == 2
        [own] = _find(archive, request, model="patient")
        assert own.PatientID == "1CT1"
