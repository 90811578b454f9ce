"""The matching rules of find() (values, wildcards, lists, date and time
ranges) and the file meta of received data."""

from __future__ import annotations

import io

import pydicom
import pytest

from pacsstore import NotStorableError, QueryError
from pacsstore.filemeta import build_file_meta
from pacsstore.store.query import compile_query, matches


@pytest.mark.parametrize("value, pattern, expected", [
    ("12345", "12345", True),
    ("12345", "1234", False),
    ("12345", "12*", True),
    ("12345", "*45", True),
    ("12345", "1?345", True),
    ("12345", "1?45", False),
    ("Doe^John", "doe^john", False),   # single value matching is exact
    (None, "x", False),
    (None, "*", True),                 # universal matching
    (None, "", True),
    (["ORIGINAL", "PRIMARY"], "PRIM*", True),
    ("a.b", "a?b", True),
    ("a+b", "a+b", True),              # regex characters are literal
])
def test_query_matches(value, pattern, expected):
    assert matches(value, pattern) is expected


def test_query_uid_list_matching():
    assert matches("1.2.3", "1.2.4\\1.2.3", "StudyInstanceUID")
    assert not matches("1.2.5", "1.2.4\\1.2.3", "StudyInstanceUID")


def test_filemeta_is_read_back_by_pydicom():
    meta = build_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                           sop_instance_uid="1.2.3.4.5",
                           transfer_syntax="1.2.840.10008.1.2",
                           source_ae="CT_SCANNER")
    assert meta[:128] == b"\0" * 128 and meta[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(meta), force=True)
    fm = ds.file_meta
    assert fm.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert fm.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert fm.SourceApplicationEntityTitle == "CT_SCANNER"
    assert fm.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert fm.FileMetaInformationVersion == b"\x00\x01"


@pytest.mark.parametrize("uid", [
    "999.999.01.23.45.6789",                   # leading zero components
    "ad111191-79e4-4892-9b91-2f84967a4b23",    # a UUID
    "dccc9599087131742838cc1162a630fea87ba9bf61ac09bfda90d4adfa5ddaed",
    "1.2.3 ",                                  # a space is printable
])
def test_filemeta_accepts_uids_real_devices_send(uid):
    meta = build_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                           sop_instance_uid=uid,
                           transfer_syntax="1.2.840.10008.1.2")
    ds = pydicom.dcmread(io.BytesIO(meta), force=True)
    assert ds.file_meta.MediaStorageSOPInstanceUID == uid.rstrip()


@pytest.mark.parametrize("uid, reason", [
    ("", "is empty"),
    ("   ", "is empty"),
    ("1." * 32 + "1", "is 65 characters; a UI element holds at most 64"),
    ("1.2\\3.4", "has '\\\\' at position 3"),
    ("1.2.\u00e9", "has 'é' at position 4"),
    ("1.2\x00", "has '\\x00' at position 3"),
    (None, "must be a string; found NoneType"),
])
def test_filemeta_refuses_what_a_ui_element_cannot_hold(uid, reason):
    with pytest.raises(NotStorableError) as caught:
        build_file_meta(sop_class_uid="1.2", sop_instance_uid=uid,
                        transfer_syntax="1.2.840.10008.1.2")
    assert "SOP Instance UID" in str(caught.value)
    assert reason in str(caught.value)


def test_filemeta_refuses_a_bad_ae_title():
    with pytest.raises(NotStorableError, match="AE"):
        build_file_meta(sop_class_uid="1.2", sop_instance_uid="1.2",
                        transfer_syntax="1.2.840.10008.1.2",
                        source_ae="A" * 17)


@pytest.mark.parametrize("value, pattern, expected", [
    ("20040615", "20040101-20041231", True),
    ("20050101", "20040101-20041231", False),
    ("20041231", "-2004", True),            # a bound to the year
    ("20050101", "-2004", False),
    ("20040101", "2004-", True),
    ("20031231", "2004-", False),
    ("20040615", "200406", True),           # a single value is D-D
    ("20040615", "20040615", True),
    ("20040616", "20040615", False),
    (["20030101", "20040615"], "2004-", True),
    (None, "2004-", False),
    ("", "2004-", False),
    ("20040615", "2004*", True),            # wildcards still apply
])
def test_query_date_range_matching(value, pattern, expected):
    assert matches(value, pattern, "StudyDate") is expected


@pytest.mark.parametrize("keyword, value, pattern, expected", [
    ("StudyTime", "143000.123", "1400-1500", True),
    ("StudyTime", "150100", "1400-1500", False),
    ("StudyTime", "120000", "12", True),
    ("AcquisitionDateTime", "20040615120000+0100", "20040615", True),
    ("AcquisitionDateTime", "20040615120000", "200406151300-", False),
])
def test_query_time_and_datetime_ranges(keyword, value, pattern, expected):
    assert matches(value, pattern, keyword) is expected


@pytest.mark.parametrize("keyword, pattern, reason", [
    ("StudyDate", "yesterday", "expected YYYYMMDD"),
    ("StudyDate", "-", "expected YYYYMMDD"),
    ("StudyDate", "2004-01-01", "expected YYYYMMDD"),
    ("StudyDate", "20050101-20040101", "ends before it starts"),
    ("StudyTime", "12h00", "expected HHMMSS"),
    ("AcquisitionDateTime", "20040101+0100", "UTC offsets"),
])
def test_query_unmatchable_date_values_are_query_errors(keyword, pattern,
                                                        reason):
    with pytest.raises(QueryError, match=reason):
        matches("20040101", pattern, keyword)


def test_query_list_values_are_any_of_for_uid_keys_only():
    assert matches("1.2.3", ("1.2.4", "1.2.3"), "StudyInstanceUID")
    assert matches("1.2.3", ["1.2.3"], "SOPInstanceUID")
    assert not matches("1.2.3", [], "SOPInstanceUID")
    with pytest.raises(QueryError, match="only for UID keys"):
        matches("Doe^John", ["Doe^John"], "PatientName")
    with pytest.raises(QueryError, match="holds strings"):
        matches("1.2.3", [1, 2], "SOPInstanceUID")
    with pytest.raises(QueryError, match="expected a string"):
        matches("1.2.3", b"1.2.3", "SOPInstanceUID")


@pytest.mark.parametrize("value, pattern, expected", [
    ("Doe^John", "doe^john", True),         # PN ignores case
    ("Doe^John", "DOE*", True),
    ("Doe^John^^^", "Doe^John", True),      # empty components trail
    ("OB^^^^", "OB^*", True),
    ("OB", "ob^?*", True),
    ("Doe^John", "Doe^John^*^*^*^*", False),  # more than five components
    ("Doe^John", "Doe", False),             # the whole name, not a part
    ("Straße^Ölaf", "STRASSE*", True),      # Unicode case folding
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "山田^太郎", True),   # any group
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "yamada*", True),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "=山田*", True),      # group 2
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "=Yamada*", False),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada^Tarou=", True),
    ("Yamada^Tarou", "Yamada^Tarou=山田^太郎", False),
    ("Doe^John", "^", True),                # separators only: universal
    ("Doe^John", "=", True),
    ("^^^^", "Doe*", False),
    ("^^^^", "*", True),
])
def test_query_person_name_matching(value, pattern, expected):
    assert matches(value, pattern, "PatientName") is expected


@pytest.mark.parametrize("keyword, value, pattern, expected", [
    ("PatientID", " 123", "123", False),    # LO: leading spaces are text
    ("PatientID", "123", "123  ", True),    # trailing spaces are padding
    ("Modality", "CT", " CT ", True),       # CS: neither is significant
    ("StudyDescription", "Chest", "chest", False),
    ("SeriesNumber", 7, "+7", True),        # integers match by value
    ("SeriesNumber", 7, "007", True),
    ("SeriesNumber", 7, 7, True),
    ("SeriesNumber", None, "7", False),
    ("StudyDate", "2004.01.19", "20040101-20040131", True),  # ACR-NEMA
    ("StudyTime", "14:30:00", "1400-1500", True),
    ("StudyDate", "20040119", "2004.01.01-2004.01.31", True),
    ("StudyDate", "1994.11.05", "1994.11.05", True),
    ("ModalitiesInStudy", ["CT", "SR"], "MR\\SR", True),
    ("ModalitiesInStudy", ["CT", "SR"], ["MR", "C*"], True),
    ("ModalitiesInStudy", ["CT", "SR"], "M*", False),
    ("SOPClassesInStudy", ["1.2.3"], ["1.2.4", "1.2.3"], True),
])
def test_query_value_matching_by_vr(keyword, value, pattern, expected):
    assert matches(value, pattern, keyword) is expected


@pytest.mark.parametrize("keyword, pattern, reason", [
    ("StudyInstanceUID", "1.2.*", "not wildcards"),
    ("SOPInstanceUID", ["1.2", "1.?"], "not wildcards"),
    ("SeriesNumber", "1*", "expected a whole number"),
    ("InstanceNumber", "one", "expected a whole number"),
    ("PatientName", ["Doe"], "only for UID keys, ModalitiesInStudy"),
    ("PatientName", 3.5, "expected a string"),
])
def test_query_values_a_key_cannot_match_on_are_query_errors(keyword,
                                                             pattern,
                                                             reason):
    with pytest.raises(QueryError, match=reason):
        matches("1", pattern, keyword)


@pytest.mark.parametrize("date, time, when, expected", [
    ("20060705-20060707", "1000-1800", ("20060705", "090000"), False),
    ("20060705-20060707", "1000-1800", ("20060705", "100000"), True),
    ("20060705-20060707", "1000-1800", ("20060706", "030000"), True),
    ("20060705-20060707", "1000-1800", ("20060707", "180059"), True),
    ("20060705-20060707", "1000-1800", ("20060707", "181000"), False),
    ("-20060707", "-1800", ("20060707", "175959"), True),
    ("-20060707", "-1800", ("20060707", "181500"), False),
    ("2006-", "12-", ("20060101", "115959"), False),
    ("2006-", "12-", ("20060101", "120000"), True),
    ("20060705-20060707", "1900-0800", ("20060706", "120000"), True),
])
def test_query_combined_date_and_time_range(date, time, when, expected):
    # PS3.4 C.2.2.2.5.1: two ranges of the same form, one datetime range.
    query = compile_query("study", {"StudyDate": date, "StudyTime": time},
                          combined_datetime=True)
    [joined] = query.conditions
    assert joined.test_pair(*when) is expected


def test_query_combined_range_needs_the_same_form_on_both_keys():
    # A single date and a time range: matched one by one.
    query = compile_query("study", {"StudyDate": "20060705",
                                    "StudyTime": "1000-1800"},
                          combined_datetime=True)
    assert {c.keyword for c in query.conditions} == {"StudyDate",
                                                     "StudyTime"}
    with pytest.raises(QueryError, match="ends before it starts"):
        compile_query("study", {"StudyDate": "20060705",
                                "StudyTime": "1900-0800"},
                      combined_datetime=True)
