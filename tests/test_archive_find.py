"""find(): what each level answers (its attributes and those of the
levels above) and the keys and values each level accepts or refuses."""

from __future__ import annotations

import pydicom
import pytest

from pacsstore import Archive, QueryError
from pacsstore._parse import _PIXEL_ONLY, _WANTED
from pacsstore.store import hierarchy
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
