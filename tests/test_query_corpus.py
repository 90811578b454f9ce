"""The attribute indexes over real files: for values taken from a sample
of the corpus (names in many character sets, dates as devices write
them, multi-valued attributes), a query served by the indexes answers
what a scan of the records answers, and finds the entity it was taken
from."""

from __future__ import annotations

import re
from unittest import mock

import pytest

from corpus import corpus_files
from pacsstore import Archive
from pacsstore.store import secondary

# Every n-th file pydicom reads: a sample that keeps the test short.
SAMPLE_STEP = 3
DATE = re.compile(r"\d{8}|\d{4}\.\d{2}\.\d{2}")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    files = [e for e in corpus_files() if e.pydicom_reads][::SAMPLE_STEP]
    if not files:
        pytest.skip("../shared/corpus is absent")
    with Archive(tmp_path_factory.mktemp("corpus") / "store") as opened:
        opened.store_many((e.path for e in files), skip_invalid=True)
        yield opened


Query = tuple[str, dict, str, str]   # level, keys, unique key, its value


def _series_queries(archive: Archive) -> list[Query]:
    return [("series", {"Modality": series["Modality"]},
             "SeriesInstanceUID", series.get("SeriesInstanceUID", ""))
            for series in archive.find("series")
            if isinstance(series.get("Modality"), str)]


def _study_keys(study: dict) -> list[dict]:
    keys: list[dict] = []
    name = study.get("PatientName")
    if isinstance(name, str) and name:
        keys += [{"PatientName": form} for form in
                 (name, name.lower(), name[:3] + "*", "*" + name[-2:])]
    date = study.get("StudyDate")
    # Devices write dates in either form; some write anything.
    if isinstance(date, str) and DATE.fullmatch(date):
        keys += [{"StudyDate": date}, {"StudyDate": f"{date[:4]}-"}]
    accession = study.get("AccessionNumber")
    if isinstance(accession, str) and accession:
        keys.append({"AccessionNumber": accession})
    keys += [{"Modality": m} for m in study.get("ModalitiesInStudy", [])]
    return keys


def _queries(archive: Archive) -> list[Query]:
    """Queries for values the archive holds, and what each must find."""
    queries = _series_queries(archive)
    for study in archive.find("study"):
        uid = study.get("StudyInstanceUID", "")
        queries += [("study", keys, "StudyInstanceUID", uid)
                    for keys in _study_keys(study)]
    return queries


def test_query_corpus_indexes_answer_as_a_scan_does(archive):
    queries = _queries(archive)
    assert len(queries) > 50
    for level, keys, unique, wanted in queries:
        found = archive.find(level, **keys)
        assert wanted in {a.get(unique, "") for a in found}, keys
        with mock.patch.object(secondary, "lookup", return_value=None):
            assert archive.find(level, **keys) == found, keys
