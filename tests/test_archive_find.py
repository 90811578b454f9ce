"""find(): what each level answers (its attributes and those of the
levels above) and the keys and values each level accepts or refuses."""

from __future__ import annotations

import copy
from unittest import mock

import pydicom
import pytest

from pacsstore import Archive, QueryError
from pacsstore._parse import _PIXEL_ONLY, _WANTED
from pacsstore.store import hierarchy, secondary
from test_store_support import CT_SMALL, MR_SMALL, corpus_path

# pydicom's CT_small.dcm has a study of 2004-01-19, MR_small.dcm one of
# 2004-08-26 (checked by test_find_dates_the_corpus_files_have).


@pytest.fixture
def archive(tmp_path):
    with Archive(tmp_path / "store") as opened:
        for relpath in (CT_SMALL, MR_SMALL):
            opened.store(corpus_path(relpath))
        yield opened


def _header(relpath: str) -> pydicom.Dataset:
    return pydicom.dcmread(corpus_path(relpath), stop_before_pixels=True)


def test_find_study_answer_carries_its_patient(archive):
    ct = _header(CT_SMALL)
    [study] = archive.find("study", StudyInstanceUID=ct.StudyInstanceUID)
    assert study["PatientName"] == str(ct.PatientName)
    assert study["PatientSex"] == ct.PatientSex
    # CT_small's birth date is empty: an empty value is not answered.
    assert study.get("PatientBirthDate", "") == ct.PatientBirthDate
    assert study["StudyDate"] == ct.StudyDate


def test_find_series_answer_carries_its_study_and_patient(archive):
    ct = _header(CT_SMALL)
    [series] = archive.find("series", Modality="CT")
    assert series["StudyDate"] == ct.StudyDate
    assert series["PatientName"] == str(ct.PatientName)
    assert series["PatientID"] == ct.PatientID


def test_find_instance_answer_carries_series_study_and_patient(archive):
    ct = _header(CT_SMALL)
    [instance] = archive.find("instance", SOPInstanceUID=ct.SOPInstanceUID)
    assert instance["Modality"] == "CT"
    assert instance["SeriesInstanceUID"] == ct.SeriesInstanceUID
    assert instance["StudyInstanceUID"] == ct.StudyInstanceUID
    assert instance["StudyDate"] == ct.StudyDate
    assert instance["PatientName"] == str(ct.PatientName)
    assert instance["Rows"] == ct.Rows


def test_find_study_level_modality_means_modalities_in_study(tmp_path):
    ct, mr = _header(CT_SMALL), pydicom.dcmread(corpus_path(MR_SMALL))
    mr.StudyInstanceUID = ct.StudyInstanceUID  # an MR series in the CT study
    mr.PatientID = ct.PatientID
    with Archive(tmp_path / "store") as archive:
        archive.store(corpus_path(CT_SMALL))
        archive.store(mr)
        [study] = archive.find("study", Modality="CT")
        assert study["ModalitiesInStudy"] == ["CT", "MR"]
        assert archive.find("study", Modality="MR") == [study]
        assert archive.find("study", Modality="US") == []


@pytest.mark.parametrize("level, keyword", [
    ("study", "SOPInstanceUID"),
    ("study", "Rows"),
    ("patient", "StudyDate"),
    ("series", "InstanceNumber"),
])
def test_find_key_of_a_lower_level_is_a_query_error(archive, level,
                                                    keyword):
    with pytest.raises(QueryError) as caught:
        archive.find(level, **{keyword: "1"})
    message = str(caught.value)
    assert keyword in message and f"the {level} level" in message
    assert "PatientID" in message  # the keys the level knows are listed


def test_find_list_of_uids_is_any_of(archive):
    ct, mr = _header(CT_SMALL), _header(MR_SMALL)
    uids = [ct.SOPInstanceUID, mr.SOPInstanceUID]
    found = archive.find("instance", SOPInstanceUID=uids)
    assert {i["SOPInstanceUID"] for i in found} == set(uids)
    studies = archive.find("study", StudyInstanceUID=(ct.StudyInstanceUID,))
    assert [s["StudyInstanceUID"] for s in studies] == [ct.StudyInstanceUID]
    with pytest.raises(QueryError, match="PatientName"):
        archive.find("study", PatientName=[str(ct.PatientName)])


@pytest.mark.parametrize("value, expected", [
    ("20040101-20041231", {"20040119", "20040826"}),
    ("-2004", {"20040119", "20040826"}),
    ("2004-", {"20040119", "20040826"}),
    ("20040201-", {"20040826"}),
    ("-20040131", {"20040119"}),
    ("200401", {"20040119"}),
    ("2005-", set()),
])
def test_find_study_date_ranges(archive, value, expected):
    found = archive.find("study", StudyDate=value)
    assert {s["StudyDate"] for s in found} == expected


def test_find_dates_the_corpus_files_have(archive):
    # The expected dates of the range test above, from the files.
    assert {_header(CT_SMALL).StudyDate, _header(MR_SMALL).StudyDate} == \
        {"20040119", "20040826"}


def test_find_unmatchable_date_is_a_query_error(archive):
    with pytest.raises(QueryError, match="StudyDate"):
        archive.find("study", StudyDate="last week")


def test_find_none_and_empty_are_universal(archive):
    everything = archive.find("study")
    assert len(everything) == 2
    assert archive.find("study", PatientName=None) == everything
    assert archive.find("study", AccessionNumber="") == everything
    assert archive.find("instance", SOPInstanceUID=None) == \
        archive.find("instance")


def test_find_instance_keys_cover_every_attribute_the_walker_records():
    recorded = {keyword for _, keyword, _ in _WANTED} - _PIXEL_ONLY
    levels = set(hierarchy.INSTANCE_KEYS)
    for keys in hierarchy.LEVEL_KEYS.values():
        levels |= set(keys)
    assert recorded <= levels


def _instance(ct: pydicom.Dataset, number: int, **changes) -> pydicom.Dataset:
    """CT_small as another instance (its own SOP Instance UID)."""
    ds = copy.deepcopy(ct)
    ds.SOPInstanceUID = f"{ct.SOPInstanceUID}.{number}"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def test_find_counts_follow_stores_and_replacements(tmp_path):
    ct = pydicom.dcmread(corpus_path(CT_SMALL))
    other_series = f"{ct.SeriesInstanceUID}.9"
    with Archive(tmp_path / "store", on_conflict="replace") as archive:
        archive.store(_instance(ct, 1))
        archive.store(_instance(ct, 2))
        archive.store(_instance(ct, 3, SeriesInstanceUID=other_series,
                                Modality="SR", SOPClassUID="1.2.840.10008."
                                "5.1.4.1.1.88.22"))
        [study] = archive.find("study")
        assert (study["NumberOfStudyRelatedSeries"],
                study["NumberOfStudyRelatedInstances"]) == (2, 3)
        assert study["ModalitiesInStudy"] == ["CT", "SR"]
        assert study["SOPClassesInStudy"] == [
            "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.22"]
        assert (study["NumberOfPatientRelatedStudies"],
                study["NumberOfPatientRelatedSeries"],
                study["NumberOfPatientRelatedInstances"]) == (1, 2, 3)
        # The SR instance replaced by a CT one of the first series: its
        # series goes, and with it SR from the study's lists.
        archive.store(_instance(ct, 3, InstanceNumber=3))
        [study] = archive.find("study")
        assert (study["NumberOfStudyRelatedSeries"],
                study["NumberOfStudyRelatedInstances"]) == (1, 3)
        assert study["ModalitiesInStudy"] == ["CT"]
        assert study["SOPClassesInStudy"] == ["1.2.840.10008.5.1.4.1.1.2"]
        assert archive.find("series", Modality="SR") == []
        assert archive.find("study", Modality="SR") == []
        [series] = archive.find("series")
        assert series["NumberOfSeriesRelatedInstances"] == 3


def test_find_a_replaced_patient_name_is_found_by_its_new_name(tmp_path):
    ct = pydicom.dcmread(corpus_path(CT_SMALL))
    with Archive(tmp_path / "store", on_conflict="replace") as archive:
        archive.store(_instance(ct, 1, PatientName="Old^Name"))
        archive.store(_instance(ct, 1, PatientName="New^Name"))
        assert archive.find("patient", PatientName="old*") == []
        [patient] = archive.find("patient", PatientName="new*")
        assert patient["PatientName"] == "New^Name"
        assert patient["NumberOfPatientRelatedInstances"] == 1


def test_find_instance_of_a_series_filed_elsewhere_stays_there(tmp_path,
                                                               caplog):
    # A later instance naming another study for a known series: the
    # series stays with its study, and no empty study is made.
    ct = pydicom.dcmread(corpus_path(CT_SMALL))
    with Archive(tmp_path / "store") as archive:
        archive.store(_instance(ct, 1))
        archive.store(_instance(ct, 2, StudyInstanceUID="1.2.3.4"))
        assert "belongs to study" in caplog.text
        [study] = archive.find("study")
        assert study["StudyInstanceUID"] == ct.StudyInstanceUID
        assert study["NumberOfStudyRelatedInstances"] == 2
        assert archive.find("study", StudyInstanceUID="1.2.3.4") == []
        assert len(archive.find("instance",
                                StudyInstanceUID=ct.StudyInstanceUID)) == 2


def test_find_answers_the_attributes_each_level_holds(tmp_path):
    ct = pydicom.dcmread(corpus_path(CT_SMALL))
    ds = _instance(ct, 1, OtherPatientIDs=["A1", "B2"],
                   PatientComments="allergic \\ to iodine",
                   StationName="CT01", ProtocolName="Chest routine",
                   Laterality="R", AcquisitionNumber=4,
                   NameOfPhysiciansReadingStudy="Reader^Rita")
    with Archive(tmp_path / "store") as archive:
        archive.store(ds)
        [patient] = archive.find("patient")
        assert patient["OtherPatientIDs"] == ["A1", "B2"]
        assert patient["PatientComments"] == "allergic \\ to iodine"
        [study] = archive.find("study")
        assert study["NameOfPhysiciansReadingStudy"] == "Reader^Rita"
        [series] = archive.find("series", StationName="CT01",
                                ProtocolName="Chest*", Laterality="R")
        assert series["Manufacturer"] == ct.Manufacturer
        assert series["InstitutionName"] == ct.InstitutionName
        [instance] = archive.find("instance", AcquisitionNumber="4")
        assert instance["AvailableTransferSyntaxUID"] == \
            ct.file_meta.TransferSyntaxUID


def test_find_match_unknown_lets_empty_required_keys_match(archive):
    # CT_small has no AccessionNumber: unknown, it matches any value
    # (PS3.4 C.2.2.1.2) when asked to; StudyDescription is no required
    # key, so its emptiness never matches.
    ct = _header(CT_SMALL)
    assert archive.find("study", AccessionNumber="X1") == []
    found = archive.find("study", AccessionNumber="X1", match_unknown=True)
    assert ct.StudyInstanceUID in {s["StudyInstanceUID"] for s in found}
    assert archive.find("study", match_unknown=True,
                        StudyDescription="nothing like it") == []


def test_find_person_names_ignore_case(archive):
    ct = _header(CT_SMALL)
    [patient] = archive.find("patient",
                             PatientName=str(ct.PatientName).upper())
    assert patient["PatientID"] == ct.PatientID


def test_find_match_unknown_takes_the_required_keys_to_apply_it_to(archive):
    ct = _header(CT_SMALL)
    found = archive.find("study", AccessionNumber="X1",
                         match_unknown={"AccessionNumber"})
    assert ct.StudyInstanceUID in {s["StudyInstanceUID"] for s in found}
    assert archive.find("study", AccessionNumber="X1",
                        match_unknown={"StudyDate"}) == []
    with pytest.raises(QueryError, match="StudyDescription.*not required"):
        archive.find("study", match_unknown={"StudyDescription"})
    with pytest.raises(QueryError, match="match_unknown is True, False"):
        archive.find("study", match_unknown="AccessionNumber")


@pytest.mark.parametrize("value, expected", [
    ("20040101-20040131", {"2004.01.19"}),
    ("2004-", {"2004.01.19", "2004", "20041231"}),
    ("20040201-", {"20041231"}),
    ("-2003", set()),
    ("-2004", {"2004.01.19", "2004", "20041231"}),
])
def test_find_date_ranges_over_dates_as_devices_write_them(tmp_path, value,
                                                           expected):
    # ACR-NEMA's 2004.01.19 is read as 20040119; a date cut short to its
    # year compares from the left. The attribute index and a scan of
    # the records agree.
    ct = pydicom.dcmread(corpus_path(CT_SMALL))
    with Archive(tmp_path / "store") as archive:
        for number, date in enumerate(("2004.01.19", "2004", "20041231")):
            archive.store(_instance(ct, number, StudyDate=date,
                                    StudyInstanceUID=f"1.2.3.{number}",
                                    SeriesInstanceUID=f"1.2.4.{number}"))
        found = archive.find("study", StudyDate=value)
        assert {s["StudyDate"] for s in found} == expected
        with mock.patch.object(secondary, "lookup", return_value=None):
            assert archive.find("study", StudyDate=value) == found


def test_an_instance_without_study_or_series_uid_answers_only_itself(
        tmp_path):
    """Filed under an empty study and series, it is no study or series
    answer (a C-FIND answer needs its unique key, and no query below
    could name it), but it answers at the instance level and reads
    back."""
    ds = pydicom.dcmread(corpus_path(CT_SMALL))
    del ds.StudyInstanceUID, ds.SeriesInstanceUID
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".1"
    with Archive(tmp_path / "s") as archive:
        archive.store(corpus_path(CT_SMALL))
        uid = archive.store(ds).sop_instance_uid
        assert [a["StudyInstanceUID"] for a in archive.find("study")] == \
            [_header(CT_SMALL).StudyInstanceUID]
        assert len(archive.find("series")) == 1
        assert {a["SOPInstanceUID"] for a in archive.find("instance")} == \
            {uid, _header(CT_SMALL).SOPInstanceUID}
        assert archive.dataset(uid).SOPInstanceUID == uid


def test_a_misspelt_key_is_refused_with_the_keys_the_level_knows(archive):
    with pytest.raises(QueryError, match=r"'Modalty' is not a DICOM "
                                         r"keyword; a study query knows "
                                         r".*ModalitiesInStudy"):
        archive.find("study", Modalty="CT")
