"""C-FIND through the wire: DCMTK's findscu and pynetdicom against the
node, every level of both information models, the matching rules,
relational against hierarchical queries, C-CANCEL, and refusals."""

from __future__ import annotations

import logging
import struct
import subprocess
import threading
import time
import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import _config
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from pacsstore import Archive
from pacsstore.net import fastpath, qr
from pacsstore.net.dcmtk import dcmtk_tool
from pacsstore.net.status import refusal
from qr_support import (DCMTK_ENV, FIND, NODE_AE, PATIENTS, dcmtk_available,
                        fill, identifier, instance_uid, peer_table,
                        qr_association, run_node, series_uid, study_uid)

pytestmark = pytest.mark.network

S1, S2 = PATIENTS[0].studies
(S3,) = PATIENTS[1].studies
(S4,) = PATIENTS[2].studies


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with Archive(tmp_path_factory.mktemp("find") / "store") as archive:
        fill(archive)
        with run_node(archive, peer_table({})) as running:
            yield running


def find(node, model: str, query, *, relational: bool = False):
    """(final status dataset, [match identifiers]) of one C-FIND."""
    sop_class = FIND[model]
    ext_neg = []
    if relational:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = sop_class
        item.service_class_application_information = b"\x01"
        ext_neg.append(item)
    assoc = qr_association(node, [sop_class], ext_neg=ext_neg)
    try:
        responses = list(assoc.send_c_find(query, sop_class))
    finally:
        assoc.release()
    matches = [ident for status, ident in responses
               if status.Status in (0xFF00, 0xFF01)]
    return responses[-1][0], matches


def values(matches, keyword: str) -> set[str]:
    return {str(match.get(keyword, "")) for match in matches}


# findscu, each level of each model ---------------------------------------

def findscu(node, tmp_path: Path, model: str, keys: list[str],
            *extra: str) -> list:
    """The responses findscu wrote (-X), read back with pydicom."""
    out = tmp_path / "responses"
    out.mkdir()
    command = [dcmtk_tool("findscu"), "-P" if model == "patient" else "-S",
               "-aec", NODE_AE, "-X", "-od", str(out), *extra]
    for key in keys:
        command += ["-k", key]
    result = subprocess.run([*command, "127.0.0.1", str(node.port)],
                            env=DCMTK_ENV, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


DCMTK_LEVELS = [
    ("patient", ["QueryRetrieveLevel=PATIENT", "PatientID",
                 "PatientName"], "PatientID",
     {"PAT-001", "PAT-002", "PAT-003"}),
    ("patient", ["QueryRetrieveLevel=STUDY", "PatientID=PAT-001",
                 "StudyInstanceUID"], "StudyInstanceUID",
     {study_uid(S1), study_uid(S2)}),
    ("study", ["QueryRetrieveLevel=STUDY", "StudyDate=20200101-20211231",
               "StudyInstanceUID"], "StudyInstanceUID",
     {study_uid(S1), study_uid(S3)}),
    ("study", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID="
               f"{study_uid(S1)}", "SeriesInstanceUID", "Modality"],
     "SeriesInstanceUID",
     {series_uid(S1, S1.series[0]), series_uid(S1, S1.series[1])}),
    ("patient", ["QueryRetrieveLevel=IMAGE", "PatientID=PAT-002",
                 f"StudyInstanceUID={study_uid(S3)}",
                 f"SeriesInstanceUID={series_uid(S3, S3.series[0])}",
                 "SOPInstanceUID"], "SOPInstanceUID",
     {instance_uid(S3, S3.series[0], 1), instance_uid(S3, S3.series[0], 2)}),
]


@pytest.mark.skipif(not dcmtk_available(), reason="no DCMTK")
@pytest.mark.parametrize(("model", "keys", "keyword", "expected"),
                         DCMTK_LEVELS,
                         ids=["patient-PATIENT", "patient-STUDY",
                              "study-STUDY", "study-SERIES",
                              "patient-IMAGE"])
def test_net_find_findscu_answers_each_level(node, tmp_path, model, keys,
                                             keyword, expected):
    answers = findscu(node, tmp_path, model, keys)
    assert {str(a.get(keyword)) for a in answers} == expected
    level = keys[0].split("=")[1]
    assert {a.QueryRetrieveLevel for a in answers} == {level}


@pytest.mark.skipif(not dcmtk_available(), reason="no DCMTK")
def test_net_find_findscu_returns_requested_attributes(node, tmp_path):
    (answer,) = findscu(node, tmp_path, "patient",
                        ["QueryRetrieveLevel=PATIENT", "PatientID=PAT-002",
                         "PatientName", "PatientBirthDate", "PatientSex"])
    assert str(answer.PatientName) == "Roe^Jane"
    assert answer.PatientBirthDate == "19851224"
    assert answer.PatientSex == "F"


# Matching rules through the wire ----------------------------------------

@pytest.mark.parametrize(("keys", "expected"), [
    ({"PatientName": "Roe^Jane"}, {"PAT-002"}),
    ({"PatientName": "Do*"}, {"PAT-001"}),
    ({"PatientName": "?oe^*"}, {"PAT-001", "PAT-002"}),
    ({"PatientSex": "F"}, {"PAT-002", "PAT-003"}),
    ({"PatientBirthDate": "19600101-19791231"}, {"PAT-001", "PAT-003"}),
    ({"PatientName": ""}, {"PAT-001", "PAT-002", "PAT-003"}),
], ids=["single", "wildcard-star", "wildcard-question", "single-cs",
        "range", "universal"])
def test_net_find_patient_level_matching(node, keys, expected):
    status, matches = find(node, "patient", identifier(
        "PATIENT", PatientID="", **keys))
    assert status.Status == 0x0000
    assert values(matches, "PatientID") == expected


@pytest.mark.parametrize(("keys", "expected"), [
    ({"StudyDate": "-20200115"}, {S1, S4}),
    ({"StudyDate": "20210101-"}, {S2, S3}),
    ({"StudyDate": "20210301"}, {S3}),
    ({"AccessionNumber": "ACC-4"}, {S4}),
    ({"StudyDescription": "MR*"}, {S2, S3}),
    ({"StudyInstanceUID": [study_uid(S1), study_uid(S3)]}, {S1, S3}),
], ids=["range-open-start", "range-open-end", "single-date", "single",
        "wildcard", "uid-list"])
def test_net_find_study_level_matching(node, keys, expected):
    keys.setdefault("StudyInstanceUID", "")
    status, matches = find(node, "study", identifier("STUDY", **keys))
    assert status.Status == 0x0000
    assert values(matches, "StudyInstanceUID") == {study_uid(s)
                                                   for s in expected}


def test_net_find_universal_key_is_returned_filled(node):
    status, matches = find(node, "study", identifier(
        "STUDY", StudyInstanceUID=study_uid(S4), StudyDescription="",
        PatientName=""))
    assert status.Status == 0x0000
    (match,) = matches
    assert match.StudyDescription == "CT CHEST"
    assert str(match.PatientName) == "Smith^Anna"


# Relational against hierarchical ----------------------------------------

def test_net_find_hierarchical_series_query_needs_the_study(node):
    query = identifier("SERIES", Modality="MR", SeriesInstanceUID="")
    status, matches = find(node, "study", query)
    assert 0xC000 <= status.Status <= 0xCFFF
    assert status.ErrorComment
    assert matches == []


def test_net_find_relational_series_query_across_studies(node):
    query = identifier("SERIES", Modality="MR", SeriesInstanceUID="")
    status, matches = find(node, "study", query, relational=True)
    assert status.Status == 0x0000
    assert values(matches, "SeriesInstanceUID") == {
        series_uid(S2, S2.series[0]), series_uid(S3, S3.series[0])}


def test_net_find_agrees_only_to_the_options_it_has(node):
    sop_class = FIND["study"]
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = sop_class
    item.service_class_application_information = b"\x01\x00\x01"
    assoc = qr_association(node, [sop_class], ext_neg=[item])
    try:
        answered = assoc.acceptor.sop_class_extended
    finally:
        assoc.release()
    # Relational yes; combined date-time matching not asked for; fuzzy
    # semantic matching of person names (byte 2) declined.
    assert answered == {sop_class: b"\x01\x00\x00"}


# Refusals -----------------------------------------------------------------

@pytest.mark.parametrize(("model", "level", "keys", "code"), [
    ("study", "PATIENT", {"PatientID": ""}, 0xA900),
    ("patient", "WORKLIST", {"PatientID": ""}, 0xA900),
    ("study", "STUDY", {"StudyDate": "2020-13-45x",
                        "StudyInstanceUID": ""}, 0xC101),
], ids=["patient-level-in-study-root", "unknown-level", "bad-date"])
def test_net_find_refuses_with_status_and_comment(node, model, level, keys,
                                                  code):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the bad date
        query = identifier(level, **keys)
    status, matches = find(node, model, query)
    assert status.Status == code
    assert status.ErrorComment
    assert matches == []


def test_net_find_refusal_is_logged_whole_though_its_comment_is_cut(
        node, caplog):
    """The Error Comment holds 64 characters; the node's log has the
    whole reason, for the operator."""
    with caplog.at_level(logging.WARNING, logger="pacsstore.net"):
        status, _ = find(node, "study",
                         identifier("PATIENT", PatientID=""))
    assert status.ErrorComment.endswith("...")
    assert "study root has STUDY, SERIES, IMAGE" in caplog.text


def test_net_find_refuses_an_identifier_without_level(node):
    query = identifier("STUDY", StudyInstanceUID="")
    del query.QueryRetrieveLevel
    status, _ = find(node, "study", query)
    assert status.Status == 0xA900
    assert "QueryRetrieveLevel" in status.ErrorComment


def undecodable_identifier():
    """An identifier whose Rows (US) has three bytes: pydicom reads it,
    and fails only when the element is decoded."""
    level = struct.pack("<HH2sH", 0x0008, 0x0052, b"CS", 6) + b"STUDY "
    rows = struct.pack("<HH2sH", 0x0028, 0x0010, b"US", 3) + b"\1\2\3"
    return decode(BytesIO(level + rows + b"\0"), False, True)


def test_net_find_undecodable_identifier_is_refused(node, monkeypatch):
    # pynetdicom's own log of the request would decode it in the client.
    monkeypatch.setattr(_config, "LOG_REQUEST_IDENTIFIERS", False)
    status, matches = find(node, "study", undecodable_identifier())
    assert status.Status == 0xC100
    assert status.ErrorComment.startswith("identifier cannot be decoded")
    assert matches == []


def test_net_find_error_comment_is_one_line():
    comment = refusal(0xC101, "first line\nsecond\tline").ErrorComment
    assert comment == "first line second line"


def test_net_find_association_survives_a_refusal(node):
    assoc = qr_association(node, [FIND["study"]])
    try:
        refused = list(assoc.send_c_find(identifier("PATIENT"),
                                         FIND["study"]))
        answered = list(assoc.send_c_find(
            identifier("STUDY", StudyInstanceUID=study_uid(S2)),
            FIND["study"]))
    finally:
        assoc.release()
    assert refused[-1][0].Status == 0xA900
    assert [s.Status for s, _ in answered] == [0xFF00, 0x0000]


@pytest.mark.parametrize("path", ["fast", "pynetdicom"])
def test_net_find_pending_is_ff01_with_keys_the_index_lacks(node, path,
                                                            monkeypatch):
    # PS3.4 C.4.1.1.4: "optional keys not supported" is 0xFF01.
    if path == "pynetdicom":
        monkeypatch.setattr(fastpath, "eligible", lambda assoc: False)
    assoc = qr_association(node, [FIND["study"]])
    try:
        lacking = list(assoc.send_c_find(
            identifier("STUDY", StudyInstanceUID=study_uid(S2),
                       PatientWeight="", StudyDescription=""),
            FIND["study"]))
        held = list(assoc.send_c_find(
            identifier("STUDY", StudyInstanceUID=study_uid(S2),
                       StudyDescription=""), FIND["study"]))
    finally:
        assoc.release()
    assert [s.Status for s, _ in lacking] == [0xFF01, 0x0000]
    assert lacking[0][1].StudyDescription == held[0][1].StudyDescription
    assert [s.Status for s, _ in held] == [0xFF00, 0x0000]


# C-CANCEL -----------------------------------------------------------------

@pytest.fixture
def paused_matcher(monkeypatch):
    """The matcher, holding after its first match until released: the
    cancel then arrives while the find is still running."""
    release = threading.Event()
    real = qr.find_identifiers

    def paused(*args, **kwargs):
        answers = real(*args, **kwargs)
        return qr.Answers(_holding(answers), answers.unsupported_keys)

    def _holding(answers):
        for number, match in enumerate(answers):
            yield match
            if number == 0:
                release.wait(10)
                time.sleep(0.2)  # for the C-CANCEL to reach the DIMSE queue

    monkeypatch.setattr(qr, "find_identifiers", paused)
    return release


def test_net_find_cancel_from_pynetdicom(node, paused_matcher):
    sop_class = FIND["patient"]
    query = identifier("IMAGE", PatientID="PAT-001", SOPInstanceUID="")
    assoc = qr_association(node, [sop_class], ext_neg=[_relational(
        sop_class)])
    try:
        responses = assoc.send_c_find(query, sop_class, msg_id=7)
        first, _ = next(responses)
        assoc.send_c_cancel(7, query_model=sop_class)
        paused_matcher.set()
        rest = [status.Status for status, _ in responses]
    finally:
        assoc.release()
    assert first.Status == 0xFF00
    assert rest[-1] == 0xFE00
    assert len(rest) - 1 < 6  # PAT-001 has 7 instances; not all came


@pytest.mark.skipif(not dcmtk_available(), reason="no DCMTK")
def test_net_find_cancel_from_findscu(node, tmp_path, paused_matcher):
    threading.Timer(1.0, paused_matcher.set).start()
    result = subprocess.run(
        [dcmtk_tool("findscu"), "-P", "-aec", NODE_AE, "--cancel", "1",
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT-001",
         "-k", "StudyInstanceUID", "-v", "127.0.0.1", str(node.port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Sending Cancel Request" in result.stderr
    assert "Received Final Find Response (Cancel" in result.stderr


def _relational(sop_class):
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = sop_class
    item.service_class_application_information = b"\x01"
    return item


@pytest.mark.skipif(not dcmtk_available(), reason="no DCMTK")
def test_net_find_overlong_key_from_findscu_is_refused(node, tmp_path):
    # findscu sends a PatientName of 65,536 bytes as UN (its explicit VR
    # has a 16-bit length): refused, not matched as universal.
    out = tmp_path / "responses"
    out.mkdir()
    result = subprocess.run(
        [dcmtk_tool("findscu"), "-S", "-aec", NODE_AE, "-v",
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=" + "A" * 65536,
         "-k", "StudyInstanceUID", "127.0.0.1", str(node.port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Find Response: 1 (Pending)" not in result.stderr
    assert "Received Final Find Response (Failed" in result.stderr
