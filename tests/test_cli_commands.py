"""The pacsstore command through click's runner, on real corpus files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus import CORPUS_ROOT, corpus_available
from pacsstore.cli import looks_like_dicom, main as cli

pytestmark = pytest.mark.skipif(not corpus_available(),
                                reason="corpus is absent")

# A few corpus files of different studies, modalities and syntaxes.
FILES = (
    "pydicom/test_files/CT_small.dcm",
    "pydicom/test_files/MR_small.dcm",
    "pydicom/test_files/JPEG2000.dcm",
    "pydicom/test_files/rtplan.dcm",
    "dcm_qa_ts/2.dcm",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Corpus files in nested folders, beside two non-DICOM files."""
    root = tmp_path_factory.mktemp("input")
    for number, relpath in enumerate(FILES):
        target = root / f"sub{number % 2}" / Path(relpath).name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(CORPUS_ROOT / relpath, target)
    shutil.copy(CORPUS_ROOT / "README.md", root / "README.md")
    shutil.copy(CORPUS_ROOT / "MANIFEST.tsv", root / "sub1" / "MANIFEST.tsv")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory, folder) -> Path:
    path = tmp_path_factory.mktemp("cli") / "store"
    result = CliRunner().invoke(cli, ["--store", str(path), "ingest",
                                      str(folder)])
    assert result.exit_code == 0, result.output
    assert f"{len(FILES)} files stored, 0 duplicate, 0 rejected" in \
        result.output
    assert "skipped 2 non-DICOM" in result.output
    return path


def run(*args: str, env: dict | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_ingest_again_finds_duplicates(store, folder):
    output = run("--store", str(store), "ingest", str(folder))
    assert f"0 files stored, {len(FILES)} duplicate" in output


def test_cli_get_writes_the_file_as_stored(store, tmp_path):
    from pydicom import dcmread
    source = CORPUS_ROOT / FILES[0]
    uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    target = tmp_path / "out.dcm"
    run("--store", str(store), "get", uid, "-o", str(target))
    assert target.read_bytes() == source.read_bytes()


def test_cli_get_unknown_uid_fails_with_message(store, tmp_path):
    result = CliRunner().invoke(cli, ["--store", str(store), "get", "1.2.3",
                                      "-o", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "1.2.3" in result.output
    assert not (tmp_path / "x").exists()


def test_cli_find_filters(store):
    from pydicom import dcmread
    ct = dcmread(CORPUS_ROOT / FILES[0], stop_before_pixels=True)
    studies = json.loads(run("--store", str(store), "find", "--format",
                             "json"))
    assert len(studies) >= 3
    by_id = json.loads(run("--store", str(store), "find", "--patient-id",
                           str(ct.PatientID), "--format", "json"))
    assert {s["StudyInstanceUID"] for s in by_id} >= {ct.StudyInstanceUID}
    assert all(s["PatientID"] == ct.PatientID for s in by_id)
    series = json.loads(run("--store", str(store), "find", "--level",
                            "series", "--modality", "MR", "--format",
                            "json"))
    assert series and all(s["Modality"] == "MR" for s in series)
    instances = json.loads(run("--store", str(store), "find", "--level",
                               "instance", "--series-uid",
                               str(ct.SeriesInstanceUID), "--format",
                               "json"))
    assert [i["SOPInstanceUID"] for i in instances] == [ct.SOPInstanceUID]
    none = json.loads(run("--store", str(store), "find", "--study-date",
                          "18000101", "--format", "json"))
    assert none == []


def test_cli_find_table_lists_studies(store):
    output = run("--store", str(store), "find", "--level", "study",
                 "--format", "table")
    assert "study answers" in output
    assert "PatientName" in output  # whole headers, not "Patien..."


def test_cli_stats_counts_instances(store):
    numbers = json.loads(run("--store", str(store), "stats", "--json"))
    assert numbers["instances"] == len(FILES)
    assert numbers["stored_bytes"] > 0
    assert "instances" in run("--store", str(store), "stats")


def test_cli_store_from_environment(store):
    numbers = json.loads(run("stats", "--json",
                             env={"PACSSTORE_PATH": str(store)}))
    assert numbers["instances"] == len(FILES)


def test_cli_read_commands_refuse_a_missing_store(tmp_path):
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "none"),
                                      "stats"])
    assert result.exit_code == 1
    assert "no store at" in result.output


def test_cli_looks_like_dicom_on_corpus_and_text():
    assert looks_like_dicom((CORPUS_ROOT / FILES[0]).read_bytes()[:132])
    no_preamble = CORPUS_ROOT / "pydicom/test_files/ExplVR_LitEndNoMeta.dcm"
    assert looks_like_dicom(no_preamble.read_bytes()[:132])
    assert not looks_like_dicom((CORPUS_ROOT / "README.md").read_bytes()
                                [:132])
