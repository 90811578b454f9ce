"""C-MOVE through the wire: DCMTK's movescu to DCMTK's storescp, and
pynetdicom to in-process storage SCPs; sub-operation counts, partial and
total failure, transcoding for a destination that does not take the
stored syntax, C-CANCEL, and refusals."""

from __future__ import annotations

import logging
import subprocess
import threading
import time

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEGLSLossless,
                         MRImageStorage, SecondaryCaptureImageStorage)

from corpus import CORPUS_ROOT
from pacsstore import Archive
from pacsstore.errors import TranscodeError
from pacsstore.net import retrieve
from pacsstore.net.dcmtk import dcmtk_tool
from qr_support import (DCMTK_DESTINATION, DCMTK_ENV, MOVE, NODE_AE,
                        PATIENTS, PYNETDICOM_DESTINATION, dataset_bytes,
                        dcmtk_available, fill, free_port, identifier,
                        instance_uid, peer_table, pynetdicom_destination,
                        qr_association, received_files, run_node,
                        series_uid, storescp, study_instance_uids,
                        study_uid)

pytestmark = pytest.mark.network

S1, S2 = PATIENTS[0].studies
(S3,) = PATIENTS[1].studies
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
EVERY_CLASS = [(sop_class, UNCOMPRESSED) for sop_class in
               (CTImageStorage, MRImageStorage,
                SecondaryCaptureImageStorage)]
DOWN_DESTINATION = "NOBODY"
# Corpus files in a compressed syntax: JPEG-LS lossless (MR), JPEG
# baseline (secondary capture).
LOSSLESS_FILE = (CORPUS_ROOT / "pydicom" / "test_files"
                 / "MR_small_jpeg_ls_lossless.dcm")
LOSSY_FILE = CORPUS_ROOT / "pydicom" / "test_files" / "SC_rgb_jpeg_dcmtk.dcm"


@pytest.fixture(scope="module")
def ports():
    return {DCMTK_DESTINATION: free_port(),
            PYNETDICOM_DESTINATION: free_port(),
            DOWN_DESTINATION: free_port()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    with Archive(tmp_path_factory.mktemp("move") / "store") as opened:
        fill(opened)
        for path in (LOSSLESS_FILE, LOSSY_FILE):
            if path.exists():
                opened.store(path)
        yield opened


@pytest.fixture(scope="module")
def node(archive, ports):
    with run_node(archive, peer_table(ports)) as running:
        yield running


def move(node, model: str, query, destination: str = PYNETDICOM_DESTINATION,
         **kwargs):
    """Every (status, identifier) response of one C-MOVE."""
    sop_class = MOVE[model]
    assoc = qr_association(node, [sop_class])
    try:
        return list(assoc.send_c_move(query, destination, sop_class,
                                      **kwargs))
    finally:
        assoc.release()


def study_query(study):
    return identifier("STUDY", StudyInstanceUID=study_uid(study))


def instance_query(archive, uid: str):
    record = archive.record(uid)
    return identifier("IMAGE", StudyInstanceUID=record["study"],
                      SeriesInstanceUID=record["series"],
                      SOPInstanceUID=uid)


# DCMTK: movescu -> node -> storescp ------------------------------------

def movescu(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk_tool("movescu"), "-aec", NODE_AE, "-v", *args,
         "127.0.0.1", str(node.port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not dcmtk_available(), reason="no DCMTK")
def test_net_move_movescu_study_to_storescp_byte_exact(node, archive,
                                                      ports, tmp_path):
    with storescp(tmp_path, ports[DCMTK_DESTINATION]):
        result = movescu(node, "-S", "-aem", DCMTK_DESTINATION,
                         "-k", "QueryRetrieveLevel=STUDY",
                         "-k", f"StudyInstanceUID={study_uid(S1)}")
    assert result.returncode == 0, result.stderr
    assert "Received Final Move Response (Success)" in result.stderr
    received = received_files(tmp_path)
    assert set(received) == study_instance_uids(S1)
    for uid, data in received.items():
        # storescp --bit-preserving keeps the dataset as it came in.
        assert dataset_bytes(data) == dataset_bytes(archive.get(uid))


@pytest.mark.skipif(not dcmtk_available(), reason="no DCMTK")
def test_net_move_movescu_patient_root_series(node, ports, tmp_path):
    series = S3.series[0]
    with storescp(tmp_path, ports[DCMTK_DESTINATION]):
        result = movescu(node, "-P", "-aem", DCMTK_DESTINATION,
                         "-k", "QueryRetrieveLevel=SERIES",
                         "-k", "PatientID=PAT-002",
                         "-k", f"StudyInstanceUID={study_uid(S3)}",
                         "-k", f"SeriesInstanceUID={series_uid(S3, series)}")
    assert result.returncode == 0, result.stderr
    assert set(received_files(tmp_path)) == {
        instance_uid(S3, series, 1), instance_uid(S3, series, 2)}


@pytest.mark.skipif(not dcmtk_available(), reason="no DCMTK")
def test_net_move_to_the_node_itself_is_an_unknown_destination(node):
    result = movescu(node, "-S", "-aem", NODE_AE,
                     "-k", "QueryRetrieveLevel=STUDY",
                     "-k", f"StudyInstanceUID={study_uid(S1)}")
    assert "Refused: MoveDestinationUnknown" in result.stderr, result.stderr


# pynetdicom: counts, originator, byte-exactness --------------------------

def test_net_move_counts_each_sub_operation(node, archive, ports):
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION],
                                EVERY_CLASS) as received:
        responses = move(node, "patient", identifier(
            "STUDY", PatientID="PAT-001", StudyInstanceUID=study_uid(S1)))
    pending = [status for status, _ in responses[:-1]]
    final = responses[-1][0]
    assert [s.Status for s in pending] == [0xFF00] * 5
    assert [s.NumberOfRemainingSuboperations for s in pending] == [
        4, 3, 2, 1, 0]
    assert [s.NumberOfCompletedSuboperations for s in pending] == [
        1, 2, 3, 4, 5]
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations,
            final.NumberOfFailedSuboperations,
            final.NumberOfWarningSuboperations) == (5, 0, 0)
    assert set(received.datasets) == study_instance_uids(S1)
    assert set(received.originators) == {"QRSCU"}
    for uid, data in received.datasets.items():
        assert data == dataset_bytes(archive.get(uid))
        assert received.syntaxes[uid] == archive.record(
            uid)["transfer_syntax"]


def test_net_move_sub_association_sends_without_delay(node, ports):
    """The node's end of the association to a move destination has
    Nagle's algorithm off, as its accepted sockets do: with it on, each
    C-STORE request of the sub-operations could wait a delayed ACK."""
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION],
                                EVERY_CLASS) as received:
        responses = move(node, "study", study_query(S1))
    assert responses[-1][0].Status == 0x0000
    assert received.sender_no_delay
    assert all(flag for flag in received.sender_no_delay), \
        received.sender_no_delay


def test_net_move_with_no_match_succeeds_with_nothing_sent(node, ports):
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION],
                                EVERY_CLASS) as received:
        responses = move(node, "study", identifier(
            "STUDY", StudyInstanceUID="1.2.3.999"))
    ((final, _),) = responses
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 0
    assert received.associations == 0


# Partial and total failure ------------------------------------------------

def test_net_move_destination_without_a_sop_class_fails_those(node, ports,
                                                             caplog):
    """PAT-001 holds 5 CT and 2 MR instances; the destination takes CT
    only, so the MR sub-operations fail and are listed, and the log says
    that it is the SOP class the destination did not take."""
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION],
                                [(CTImageStorage, UNCOMPRESSED)]), \
            caplog.at_level(logging.WARNING, logger="pacsstore.net"):
        responses = move(node, "patient",
                         identifier("PATIENT", PatientID="PAT-001"))
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations,
            final.NumberOfFailedSuboperations) == (5, 2)
    assert set(failed.FailedSOPInstanceUIDList) == study_instance_uids(S2)
    assert caplog.text.count(f"accepted no presentation context for its "
                             f"SOP class {MRImageStorage}") == 2


def test_net_move_destination_refusing_instances_lists_them(node, ports):
    refused = {instance_uid(S1, S1.series[0], 2)}
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION], EVERY_CLASS,
                                refuse=frozenset(refused)):
        responses = move(node, "study", study_query(S1))
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert final.NumberOfFailedSuboperations == 1
    assert _uid_list(failed) == refused


def test_net_move_every_sub_operation_failed_is_a702(node, ports):
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION], EVERY_CLASS,
                                refuse=frozenset(study_instance_uids(S2))):
        responses = move(node, "study", study_query(S2))
    final, failed = responses[-1]
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 2
    assert _uid_list(failed) == study_instance_uids(S2)


def test_net_move_instance_that_cannot_be_encoded_fails_alone(
        node, ports, monkeypatch):
    broken = instance_uid(S1, S1.series[0], 1)
    real = retrieve.transcoded_view

    def transcoded_view(part10: bytes, syntax: str) -> memoryview | bytes:
        if broken.encode() in part10:
            raise TranscodeError(f"instance {broken} does not transcode")
        return real(part10, syntax)

    monkeypatch.setattr(retrieve, "transcoded_view", transcoded_view)
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION],
                                EVERY_CLASS) as received:
        responses = move(node, "study", study_query(S1))
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations,
            final.NumberOfFailedSuboperations) == (4, 1)
    assert _uid_list(failed) == {broken}
    assert broken not in received.datasets


def _uid_list(identifier_) -> set[str]:
    value = identifier_.FailedSOPInstanceUIDList
    return {value} if isinstance(value, str) else set(value)


# Transcoding --------------------------------------------------------------

@pytest.mark.skipif(not LOSSLESS_FILE.exists(), reason="no corpus")
def test_net_move_transcodes_for_a_destination_without_the_syntax(
        node, archive, ports):
    uid = str(dcmread(LOSSLESS_FILE).SOPInstanceUID)
    assert archive.record(uid)["transfer_syntax"] == JPEGLSLossless
    with pynetdicom_destination(
            ports[PYNETDICOM_DESTINATION],
            [(MRImageStorage, [ImplicitVRLittleEndian])]) as received:
        responses = move(node, "study", instance_query(archive, uid))
    assert responses[-1][0].Status == 0x0000
    assert received.syntaxes[uid] == ImplicitVRLittleEndian
    sent = dcmread(LOSSLESS_FILE)
    got = _as_dataset(received.datasets[uid], ImplicitVRLittleEndian)
    assert np.array_equal(got.pixel_array, sent.pixel_array)


@pytest.mark.skipif(not LOSSY_FILE.exists(), reason="no corpus")
def test_net_move_never_recompresses_lossy_pixels(node, archive, ports):
    """A JPEG baseline instance may be decoded for an uncompressed
    destination, but a destination that takes only JPEG-LS lossless
    would get lossy pixels labelled lossless: that one fails."""
    uid = str(dcmread(LOSSY_FILE).SOPInstanceUID)
    with pynetdicom_destination(
            ports[PYNETDICOM_DESTINATION],
            [(SecondaryCaptureImageStorage, [JPEGLSLossless])]) as received:
        responses = move(node, "study", instance_query(archive, uid))
    final, failed = responses[-1]
    assert final.Status == 0xA702
    assert _uid_list(failed) == {uid}
    assert received.datasets == {}


def _as_dataset(data: bytes, syntax: str):
    from pydicom.filereader import read_dataset
    from io import BytesIO

    ds = read_dataset(BytesIO(data), is_implicit_VR=syntax ==
                      ImplicitVRLittleEndian, is_little_endian=True)
    from pydicom.dataset import FileMetaDataset
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


# C-CANCEL -----------------------------------------------------------------

def test_net_move_cancel_stops_the_sub_operations(node, ports):
    gate = threading.Event()
    sop_class = MOVE["study"]
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION], EVERY_CLASS,
                                gate=gate) as received:
        assoc = qr_association(node, [sop_class])
        try:
            responses = assoc.send_c_move(study_query(S1),
                                          PYNETDICOM_DESTINATION, sop_class,
                                          msg_id=11)
            # Cancel while the first sub-operation is held at the
            # destination (pynetdicom drops a C-CANCEL that comes before
            # the service has started).
            assert received.first_store.wait(10)
            assoc.send_c_cancel(11, query_model=sop_class)
            time.sleep(0.2)  # for the C-CANCEL to reach the node's DIMSE
            gate.set()
            answers = [status for status, _ in responses]
        finally:
            assoc.release()
    final = answers[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations == 1
    assert final.NumberOfRemainingSuboperations == 4
    assert len(received.datasets) == 1


# Refusals -----------------------------------------------------------------

def test_net_move_unknown_destination_is_a801(node):
    ((final, _),) = move(node, "study", study_query(S1),
                         destination="STRANGER")
    assert final.Status == 0xA801


def test_net_move_destination_that_is_down_is_a801(node):
    ((final, _),) = move(node, "study", study_query(S1),
                         destination=DOWN_DESTINATION)
    assert final.Status == 0xA801


def test_net_move_bad_identifier_refused_before_any_association(node,
                                                                ports):
    query = identifier("SERIES", SeriesInstanceUID="1.2.3")
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION],
                                EVERY_CLASS) as received:
        ((final, _),) = move(node, "study", query)
    assert 0xC000 <= final.Status <= 0xCFFF
    assert "StudyInstanceUID" in final.ErrorComment
    # The counts are those of no sub-operation at all.
    assert (final.NumberOfCompletedSuboperations,
            final.NumberOfFailedSuboperations) == (0, 0)
    assert received.associations == 0


def test_net_move_level_outside_the_model_is_a900(node, ports):
    with pynetdicom_destination(ports[PYNETDICOM_DESTINATION], EVERY_CLASS):
        ((final, _),) = move(node, "study",
                             identifier("PATIENT", PatientID="PAT-001"))
    assert final.Status == 0xA900
    assert "QueryRetrieveLevel" in final.ErrorComment
