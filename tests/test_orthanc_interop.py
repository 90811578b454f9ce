"""Orthanc as a peer of the node, over real associations.

Orthanc 1.10 (the peer of benchmarks/peers.py, started the same way) is
both a move destination of the node and a query/retrieve SCU of it:

- a C-MOVE from a pynetdicom SCU sends stored instances to Orthanc:
  those in a syntax Orthanc accepts arrive with the stored dataset bytes,
  those in one it does not (JPEG 2000, refused through Orthanc's accepted
  syntaxes; HTJ2K, which Orthanc 1.10 does not know) arrive transcoded,
  with the pixels of the stored instance;
- Orthanc, with the node as a modality, queries it at study, series and
  image level and retrieves what it found to itself, with C-MOVE;
- patient names outside ASCII come back through Orthanc as stored.

Orthanc is configured through its REST API once it runs (the modality of
the node, the accepted transfer syntaxes, the default encoding), so that
the launcher it shares with the benchmarks stays as it is. Orthanc stores
what it receives re-encoded by DCMTK, which writes explicit lengths for
sequences (the instances compared byte for byte have none) and gives
encapsulated Pixel Data the VR OB that PS3.5 A.4 asks for (the one
corpus file moved here that says OW is compared with that allowed for).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from benchmarks.peers import ORTHANC, ORTHANC_AE, Orthanc, orthanc
from corpus import CORPUS_ROOT, corpus_available
from pacsstore import Archive
from pacsstore._parse import parse
from pacsstore.net import Node
from pacsstore.net.access import ALL_SERVICES, Peer, PeerTable, Service
from qr_support import (MOVE, NODE_AE, PATIENTS, dataset_bytes, fill,
                        identifier, qr_association, study_instance_uids,
                        study_uid)

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(not Path(ORTHANC).is_file(),
                       reason=f"Orthanc is not installed at {ORTHANC} "
                              f"(scripts/setup.sh installs it)"),
]

MOVE_SCU = "MOVESCU"
# The node as Orthanc's modality table names it.
MODALITY = "pacsstore"

S1, S2 = PATIENTS[0].studies
(S3,) = PATIENTS[1].studies
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
             "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93")

CORPUS = {
    # JPEG-LS lossless, which Orthanc accepts: sent as stored.
    "jpeg-ls": "pydicom/test_files/MR_small_jpeg_ls_lossless.dcm",
    # JPEG 2000 lossless, 10 frames: Orthanc is told to refuse JPEG 2000.
    "jpeg-2000": "pydicom-data/emri_small_jpeg_2k_lossless.dcm",
    # HTJ2K lossless (RPCL), a syntax Orthanc 1.10 does not know.
    "htj2k": "DICOMHTJ2K/htj2k/CT1_JPH",
    # ISO_IR 100: Äneas^Rüdiger.
    "latin-1": "pydicom/charset_files/chrGerm.dcm",
    # ISO_IR 192: Wang^XiaoDong=王^小東.
    "utf-8": "pydicom/charset_files/chrX1.dcm",
}


# Orthanc's REST API ------------------------------------------------------

def rest(peer: Orthanc, method: str, path: str, body: Any = None) -> bytes:
    """One REST call; its body, or an error naming the call."""
    payload = None
    if body is not None:
        payload = body if isinstance(body, (str, bytes)) \
            else json.dumps(body)
    connection = peer.connection()
    try:
        connection.request(method, path, body=payload)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise AssertionError(f"Orthanc {method} {path}: {response.status} "
                             f"{data[:300]!r}")
    return data


def rest_json(peer: Orthanc, method: str, path: str,
              body: Any = None) -> Any:
    return json.loads(rest(peer, method, path, body))


def orthanc_id(peer: Orthanc, sop_instance_uid: str) -> str | None:
    """Orthanc's identifier of the instance, if Orthanc holds it."""
    found = rest_json(peer, "POST", "/tools/lookup", sop_instance_uid)
    ids = [entry["ID"] for entry in found if entry["Type"] == "Instance"]
    return ids[0] if ids else None


def orthanc_file(peer: Orthanc, sop_instance_uid: str) -> bytes:
    instance = orthanc_id(peer, sop_instance_uid)
    assert instance is not None, f"Orthanc has no {sop_instance_uid}"
    return rest(peer, "GET", f"/instances/{instance}/file")


def forget(peer: Orthanc, uids: set[str]) -> None:
    """Delete the instances from Orthanc, so that a test that finds them
    there found what it sent."""
    for uid in uids:
        instance = orthanc_id(peer, uid)
        if instance is not None:
            rest(peer, "DELETE", f"/instances/{instance}")
    assert not any(orthanc_id(peer, uid) for uid in uids)


def query(peer: Orthanc, level: str, keys: dict[str, str]) -> str:
    """C-FIND from Orthanc to the node; the query's identifier."""
    return rest_json(peer, "POST", f"/modalities/{MODALITY}/query",
                     {"Level": level, "Query": keys})["ID"]


def answers(peer: Orthanc, query_id: str) -> list[dict[str, Any]]:
    return rest_json(peer, "GET",
                     f"/queries/{query_id}/answers?expand&simplify")


def child_query(peer: Orthanc, query_id: str, index: int, level: str,
                keys: dict[str, str]) -> str:
    """A query one level down from an answer, which names its parent."""
    return rest_json(peer, "POST",
                     f"/queries/{query_id}/answers/{index}/query-{level}",
                     {"Query": keys})["ID"]


@contextlib.contextmanager
def default_encoding(peer: Orthanc, encoding: str) -> Iterator[None]:
    """Orthanc's DefaultEncoding for the block: it writes its queries in
    it, and converts the answers it keeps to it."""
    before = rest(peer, "GET", "/tools/default-encoding").decode()
    rest(peer, "PUT", "/tools/default-encoding", encoding)
    try:
        yield
    finally:
        rest(peer, "PUT", "/tools/default-encoding", before)


# Fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus() -> dict[str, Path]:
    if not corpus_available():
        pytest.skip("../shared/corpus is absent")
    return {name: CORPUS_ROOT / relpath for name, relpath in CORPUS.items()}


@pytest.fixture(scope="module")
def peer(tmp_path_factory) -> Iterator[Orthanc]:
    with orthanc(tmp_path_factory.mktemp("orthanc"),
                 compression=False) as running:
        accepted = rest_json(running, "GET",
                             "/tools/accepted-transfer-syntaxes")
        narrowed = [uid for uid in accepted if uid not in JPEG_2000]
        rest(running, "PUT", "/tools/accepted-transfer-syntaxes", narrowed)
        yield running


@pytest.fixture(scope="module")
def archive(tmp_path_factory, corpus) -> Iterator[Archive]:
    with Archive(tmp_path_factory.mktemp("interop") / "store") as opened:
        fill(opened)
        for path in corpus.values():
            assert opened.store(path).status == "stored", path
        yield opened


@pytest.fixture(scope="module")
def node(archive, peer) -> Iterator[Node]:
    peers = PeerTable([
        Peer(MOVE_SCU, ALL_SERVICES),
        Peer(ORTHANC_AE, frozenset({Service.QUERY, Service.RETRIEVE}),
             peer.endpoint.host, peer.endpoint.port),
    ], refuse_unknown=True)
    with Node(archive, ae_title=NODE_AE, port=0, peers=peers) as running:
        rest(peer, "PUT", f"/modalities/{MODALITY}",
             {"AET": NODE_AE, "Host": running.host, "Port": running.port})
        yield running


def sop_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def as_dcmtk_writes(part10: bytes) -> bytes:
    """The dataset of ``part10`` with encapsulated Pixel Data given the
    VR OB, as DCMTK writes it whatever the VR it read."""
    dataset = bytearray(dataset_bytes(part10))
    walk = parse(part10)
    if walk.pixel is not None and walk.pixel.encapsulated:
        vr = walk.pixel.element_offset + 4 - walk.dataset_offset
        assert dataset[vr:vr + 2] in (b"OB", b"OW")
        dataset[vr:vr + 2] = b"OB"
    return bytes(dataset)


def move_to_orthanc(node: Node, query) -> list:
    """Every (status, identifier) response of a Study Root C-MOVE from
    the SCU to the node, with Orthanc as the destination."""
    assoc = qr_association(node, [MOVE["study"]], ae_title=MOVE_SCU)
    try:
        return list(assoc.send_c_move(query, ORTHANC_AE, MOVE["study"]))
    finally:
        assoc.release()


def instance_query(archive: Archive, uid: str):
    record = archive.record(uid)
    return identifier("IMAGE", StudyInstanceUID=record["study"],
                      SeriesInstanceUID=record["series"],
                      SOPInstanceUID=uid)


def assert_moved(responses: list, count: int) -> None:
    final, _ = responses[-1]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == count
    assert final.NumberOfFailedSuboperations == 0
    assert final.NumberOfWarningSuboperations == 0


# Orthanc as a move destination -------------------------------------------

def test_orthanc_interop_move_study_arrives_with_stored_dataset_bytes(
        node, archive, peer):
    """A synthetic study of an explicit and an implicit VR series."""
    uids = study_instance_uids(S1)
    forget(peer, uids)
    responses = move_to_orthanc(
        node, identifier("STUDY", StudyInstanceUID=study_uid(S1)))
    assert_moved(responses, len(uids))
    for uid in uids:
        stored = archive.get(uid)
        received = orthanc_file(peer, uid)
        assert dataset_bytes(received) == dataset_bytes(stored), uid
        assert (dcmread(io.BytesIO(received)).file_meta.TransferSyntaxUID
                == archive.record(uid)["transfer_syntax"])


def test_orthanc_interop_move_accepted_compressed_syntax_sent_as_stored(
        node, archive, peer, corpus):
    uid = sop_instance_uid(corpus["jpeg-ls"])
    forget(peer, {uid})
    assert_moved(move_to_orthanc(node, instance_query(archive, uid)), 1)
    received = orthanc_file(peer, uid)
    assert (dcmread(io.BytesIO(received)).file_meta.TransferSyntaxUID
            == "1.2.840.10008.1.2.4.80")
    stored = archive.get(uid)
    # The corpus file gives its encapsulated Pixel Data the VR OW, which
    # DCMTK writes as OB; all else arrives as stored.
    assert dcmread(io.BytesIO(stored))["PixelData"].VR == "OW"
    assert dataset_bytes(received) == as_dcmtk_writes(stored)


@pytest.mark.parametrize("name", ["jpeg-2000", "htj2k"])
def test_orthanc_interop_move_transcodes_a_syntax_orthanc_refuses(
        node, archive, peer, corpus, name):
    path = corpus[name]
    uid = sop_instance_uid(path)
    stored_syntax = archive.record(uid)["transfer_syntax"]
    accepted = rest_json(peer, "GET", "/tools/accepted-transfer-syntaxes")
    assert stored_syntax not in accepted
    forget(peer, {uid})
    assert_moved(move_to_orthanc(node, instance_query(archive, uid)), 1)
    received = dcmread(io.BytesIO(orthanc_file(peer, uid)))
    assert received.file_meta.TransferSyntaxUID in UNCOMPRESSED
    original = dcmread(path)
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(received.pixel_array, original.pixel_array)


# Orthanc as a query/retrieve SCU of the node -----------------------------

# The keys Orthanc is asked to send at study level, beyond the ones it
# always sends (PatientID, AccessionNumber, StudyInstanceUID).
STUDY_KEYS = {"StudyDescription": "", "ModalitiesInStudy": "",
              "NumberOfStudyRelatedInstances": "", "PatientBirthDate": ""}
# Orthanc's own: the character set of its copy of an answer, and the
# meta group it gives that copy.
NOT_COMPARED = ("QueryRetrieveLevel", "SpecificCharacterSet",
                "MediaStorageSOPInstanceUID")


def shown(value: Any) -> str:
    """A value of Archive.find as Orthanc's simplified JSON shows it."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def assert_same_answers(got: list[dict[str, Any]],
                        expected: list[dict[str, Any]], unique: str) -> None:
    """Orthanc's answers hold the entities of ``expected`` (by the
    ``unique`` key), each key with the archive's value."""
    by_uid = {answer[unique]: answer for answer in expected}
    assert sorted(answer[unique] for answer in got) == sorted(by_uid)
    for answer in got:
        want = by_uid[answer[unique]]
        for keyword, value in answer.items():
            if keyword not in NOT_COMPARED:
                assert value == shown(want.get(keyword)), keyword


def study_uids(found: list[dict[str, Any]]) -> set[str]:
    return {answer["StudyInstanceUID"] for answer in found}


def test_orthanc_interop_study_query_matches_archive_find(node, archive,
                                                          peer):
    keys = {"PatientName": "Doe*", "StudyDate": "20200101-20211231"}
    # The node's C-FIND lets an empty required key match (PS3.4
    # C.2.2.1.2), which the API does only when asked.
    expected = archive.find("study", match_unknown=True, **keys)
    assert study_uids(expected) == {study_uid(S1)}
    # Each condition rules out a study the other one keeps.
    by_name, by_date = (study_uids(archive.find(
        "study", match_unknown=True, **{keyword: keys[keyword]}))
        for keyword in ("PatientName", "StudyDate"))
    assert study_uid(S2) in by_name - by_date
    assert study_uid(S3) in by_date - by_name
    got = answers(peer, query(peer, "Study", {**keys, **STUDY_KEYS}))
    assert_same_answers(got, expected, "StudyInstanceUID")
    assert set(got[0]) >= set(keys) | set(STUDY_KEYS)


def test_orthanc_interop_series_and_image_queries_below_a_study(
        node, archive, peer):
    study = query(peer, "Study", {"PatientName": "Doe*",
                                  "StudyDate": "20200101-20211231"})
    series = child_query(peer, study, 0, "series",
                         {"Modality": "", "SeriesNumber": ""})
    got_series = answers(peer, series)
    expected_series = archive.find("series", match_unknown=True,
                                   StudyInstanceUID=study_uid(S1))
    assert len(expected_series) == len(S1.series)
    assert_same_answers(got_series, expected_series, "SeriesInstanceUID")
    assert all({"Modality", "SeriesNumber"} <= set(a) for a in got_series)

    for index, answer in enumerate(got_series):
        images = child_query(peer, series, index, "instances",
                             {"InstanceNumber": ""})
        expected = archive.find(
            "instance", match_unknown=True, StudyInstanceUID=study_uid(S1),
            SeriesInstanceUID=answer["SeriesInstanceUID"])
        got = answers(peer, images)
        assert expected
        assert_same_answers(got, expected, "SOPInstanceUID")
        assert all("InstanceNumber" in image for image in got)


def test_orthanc_interop_retrieve_of_a_study_answer_moves_it_to_orthanc(
        node, archive, peer):
    uids = study_instance_uids(S2)
    forget(peer, uids)
    study = query(peer, "Study", {"StudyInstanceUID": study_uid(S2)})
    assert len(answers(peer, study)) == 1
    rest_json(peer, "POST", f"/queries/{study}/retrieve",
              {"TargetAet": ORTHANC_AE, "Synchronous": True})
    for uid in uids:
        assert dataset_bytes(orthanc_file(peer, uid)) \
            == dataset_bytes(archive.get(uid))


def test_orthanc_interop_retrieve_of_an_image_answer_moves_that_one(
        node, archive, peer):
    study = query(peer, "Study", {"StudyInstanceUID": study_uid(S2)})
    series = child_query(peer, study, 0, "series", {})
    images = child_query(peer, series, 0, "instances", {})
    first = answers(peer, images)[0]["SOPInstanceUID"]
    uids = study_instance_uids(S2)
    forget(peer, uids)
    rest_json(peer, "POST", f"/queries/{images}/answers/0/retrieve",
              {"TargetAet": ORTHANC_AE, "Synchronous": True})
    assert {uid for uid in uids if orthanc_id(peer, uid)} == {first}


# Character sets through Orthanc -------------------------------------------

def test_orthanc_interop_latin1_name_queried_and_answered(node, archive,
                                                          peer):
    """Orthanc writes its query in ISO_IR 100 (its default encoding):
    the node matches the decoded value and answers in it."""
    keys = {"PatientName": "Äneas*"}
    got = answers(peer, query(peer, "Study", keys))
    assert_same_answers(got, archive.find("study", match_unknown=True,
                                          **keys), "StudyInstanceUID")
    names = {answer["PatientID"]: answer["PatientName"] for answer in got}
    assert names["SCSGERM"] == "Äneas^Rüdiger"


def test_orthanc_interop_utf8_name_comes_back_whole(node, archive, peer):
    """The node answers a name Latin-1 cannot write in UTF-8; Orthanc
    keeps it whole where its own default encoding is UTF-8 too (in
    Latin-1 it drops the ideographs from its copy of the answer)."""
    with default_encoding(peer, "Utf8"):
        for name in ("Wang*", "*=王^小東"):
            got = answers(peer, query(peer, "Study", {"PatientName": name}))
            assert_same_answers(
                got, archive.find("study", match_unknown=True,
                                  PatientName=name), "StudyInstanceUID")
            names = {a["PatientID"]: a["PatientName"] for a in got}
            assert names["X1EXAMPLE"] == "Wang^XiaoDong=王^小東", name
