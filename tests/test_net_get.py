"""C-GET through the wire: DCMTK's getscu and pynetdicom retrieve
instances over their own association (SCP/SCU role selection), with the
sub-operation counts, partial failure, transcoding, C-CANCEL and
refusals."""

from __future__ import annotations

import subprocess
from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEGLSLossless,
                         MRImageStorage, SecondaryCaptureImageStorage)
from pynetdicom import AE, build_role, evt

from corpus import CORPUS_ROOT
from pacsstore import Archive
from pacsstore.net.dcmtk import dcmtk_tool
from qr_support import (DCMTK_ENV, GET, NODE_AE, PATIENTS, dataset_bytes,
                        dcmtk_available, fill, identifier, peer_table,
                        received_files, run_node, study_instance_uids,
                        study_uid)

pytestmark = pytest.mark.network

S1, S2 = PATIENTS[0].studies
(S3,) = PATIENTS[1].studies
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
JPEG_LS_FILE = (CORPUS_ROOT / "pydicom" / "test_files"
                / "MR_small_jpeg_ls_lossless.dcm")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    with Archive(tmp_path_factory.mktemp("get") / "store") as opened:
        fill(opened)
        if JPEG_LS_FILE.exists():
            opened.store(JPEG_LS_FILE)
        yield opened


@pytest.fixture(scope="module")
def node(archive):
    with run_node(archive, peer_table({})) as running:
        yield running


class Getter:
    """A pynetdicom C-GET SCU that takes the SCP role for ``storage``
    ((SOP class, syntaxes) pairs) and keeps what it receives."""

    def __init__(self, node, model: str,
                 storage: list[tuple[str, list[str]]]) -> None:
        self.received: dict[str, bytes] = {}
        self.syntaxes: dict[str, str] = {}
        self.on_first_store = None
        ae = AE(ae_title="QRSCU")
        ae.add_requested_context(GET[model])
        roles = []
        for sop_class, syntaxes in storage:
            ae.add_requested_context(sop_class, syntaxes)
            roles.append(build_role(sop_class, scp_role=True))
        self.sop_class = GET[model]
        self.assoc = ae.associate(
            "127.0.0.1", node.port, ae_title=NODE_AE, ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, self._store)])
        assert self.assoc.is_established

    def _store(self, event):
        if self.on_first_store is not None and not self.received:
            self.on_first_store()
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received[uid] = event.encoded_dataset(include_meta=False)
        self.syntaxes[uid] = str(event.context.transfer_syntax)
        return 0x0000

    def get(self, query, msg_id: int = 1):
        try:
            return list(self.assoc.send_c_get(query, self.sop_class,
                                              msg_id=msg_id))
        finally:
            self.assoc.release()


EVERY_CLASS = [(sop_class, UNCOMPRESSED) for sop_class in
               (CTImageStorage, MRImageStorage,
                SecondaryCaptureImageStorage)]


def study_query(study):
    return identifier("STUDY", StudyInstanceUID=study_uid(study))


# getscu ------------------------------------------------------------------

@pytest.mark.skipif(not dcmtk_available(), reason="no DCMTK")
def test_net_get_getscu_retrieves_a_study(node, archive, tmp_path):
    result = subprocess.run(
        [dcmtk_tool("getscu"), "-S", "-aec", NODE_AE, "+B", "-v",
         "-od", str(tmp_path), "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"StudyInstanceUID={study_uid(S3)}",
         "127.0.0.1", str(node.port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Received C-GET Response (Success)" in result.stderr
    assert "Number of Completed Suboperations : 3" in result.stderr
    received = received_files(tmp_path)
    assert set(received) == study_instance_uids(S3)
    for uid, data in received.items():
        assert dataset_bytes(data) == dataset_bytes(archive.get(uid))


# pynetdicom --------------------------------------------------------------

@pytest.mark.parametrize(("model", "query", "study"), [
    ("study", study_query(S1), S1),
    ("patient", identifier("STUDY", PatientID="PAT-001",
                           StudyInstanceUID=study_uid(S2)), S2),
], ids=["study-root", "patient-root"])
def test_net_get_retrieves_a_study_byte_exact(node, archive, model, query,
                                              study):
    getter = Getter(node, model, [(CTImageStorage, [ExplicitVRLittleEndian]),
                                  (CTImageStorage, [ImplicitVRLittleEndian]),
                                  (MRImageStorage, UNCOMPRESSED)])
    responses = getter.get(query)
    final = responses[-1][0]
    expected = study_instance_uids(study)
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(expected)
    assert set(getter.received) == expected
    for uid, data in getter.received.items():
        stored = archive.record(uid)["transfer_syntax"]
        assert getter.syntaxes[uid] == stored
        assert data == dataset_bytes(archive.get(uid))


def test_net_get_patient_level_counts(node):
    getter = Getter(node, "patient", EVERY_CLASS)
    responses = getter.get(identifier("PATIENT", PatientID="PAT-002"))
    pending = [status for status, _ in responses[:-1]]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [2, 1, 0]
    assert responses[-1][0].Status == 0x0000
    assert set(getter.received) == study_instance_uids(S3)


def test_net_get_fails_the_classes_the_peer_does_not_take(node):
    getter = Getter(node, "patient", [(CTImageStorage, UNCOMPRESSED)])
    responses = getter.get(identifier("PATIENT", PatientID="PAT-001"))
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations,
            final.NumberOfFailedSuboperations) == (5, 2)
    assert set(failed.FailedSOPInstanceUIDList) == study_instance_uids(S2)
    assert set(getter.received) == study_instance_uids(S1)


@pytest.mark.skipif(not JPEG_LS_FILE.exists(), reason="no corpus")
def test_net_get_transcodes_for_an_uncompressed_peer(node, archive):
    sent = dcmread(JPEG_LS_FILE)
    uid = str(sent.SOPInstanceUID)
    assert archive.record(uid)["transfer_syntax"] == JPEGLSLossless
    getter = Getter(node, "study",
                    [(MRImageStorage, [ExplicitVRLittleEndian])])
    responses = getter.get(identifier(
        "IMAGE", StudyInstanceUID=sent.StudyInstanceUID,
        SeriesInstanceUID=sent.SeriesInstanceUID, SOPInstanceUID=uid))
    assert responses[-1][0].Status == 0x0000
    assert getter.syntaxes[uid] == ExplicitVRLittleEndian
    got = read_dataset(BytesIO(getter.received[uid]), False, True)
    got.file_meta = FileMetaDataset()
    got.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, sent.pixel_array)


def test_net_get_cancel_after_the_first_instance(node):
    getter = Getter(node, "study", EVERY_CLASS)
    # Sent from the C-STORE handler, the C-CANCEL reaches the node before
    # the C-STORE response does: the next sub-operation is not started.
    getter.on_first_store = lambda: getter.assoc.send_c_cancel(
        5, query_model=getter.sop_class)
    responses = getter.get(study_query(S1), msg_id=5)
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations == 1
    assert final.NumberOfRemainingSuboperations == 4
    assert len(getter.received) == 1


def test_net_get_refused_identifier_sends_nothing(node):
    getter = Getter(node, "study", EVERY_CLASS)
    ((final, _),) = getter.get(identifier("IMAGE",
                                          SOPInstanceUID="1.2.3"))
    assert 0xC000 <= final.Status <= 0xCFFF
    assert final.ErrorComment
    assert (final.NumberOfCompletedSuboperations,
            final.NumberOfFailedSuboperations) == (0, 0)
    assert getter.received == {}


def test_net_get_without_a_storage_role_fails_every_instance(node):
    """A peer that proposes no storage context for the SCP role can be
    sent nothing: every sub-operation fails (0xA702), listed."""
    getter = Getter(node, "study", [])
    responses = getter.get(study_query(S2))
    final, failed = responses[-1]
    assert final.Status == 0xA702
    assert set(failed.FailedSOPInstanceUIDList) == study_instance_uids(S2)


def test_net_get_sends_nothing_back_for_no_match(node):
    getter = Getter(node, "study", EVERY_CLASS)
    ((final, _),) = getter.get(identifier("STUDY",
                                          StudyInstanceUID="1.2.3.4"))
    assert final.Status == 0x0000
    assert getter.received == {}

