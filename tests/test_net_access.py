"""Access control of the node: unknown AEs refused at association, each
peer offered only the services it is permitted, the C-STORE refusal for
a retrieve-only peer, move destinations only from the table; and the
peer table itself."""

from __future__ import annotations

import subprocess

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import Verification

from pacsstore import Archive
from pacsstore.net.access import ALL_SERVICES, Peer, PeerTable, Service
from pacsstore.net.dcmtk import dcmtk_tool
from qr_support import (DCMTK_ENV, FIND, GET, MOVE, NODE_AE, PATIENTS, fill,
                        identifier, run_node, series_uid, study_uid)

pytestmark = pytest.mark.network

S1 = PATIENTS[0].studies[0]
QUERY_ONLY, STORE_ONLY, RETRIEVE_ONLY, NOTHING = (
    "QUERYONLY", "STOREONLY", "RETRIEVEONLY", "NOTHING")


def table(**options) -> PeerTable:
    peers = [
        Peer(QUERY_ONLY, frozenset({Service.QUERY})),
        Peer(STORE_ONLY, frozenset({Service.STORE})),
        Peer(RETRIEVE_ONLY, frozenset({Service.RETRIEVE})),
        Peer(NOTHING),
        # A peer without an address is no move destination.
        Peer("VIEWER", ALL_SERVICES),
    ]
    return PeerTable(peers, **options)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    with Archive(tmp_path_factory.mktemp("access") / "store") as opened:
        fill(opened)
        yield opened


@pytest.fixture(scope="module")
def node(archive):
    with run_node(archive, table(refuse_unknown=True)) as running:
        yield running


def associate(node, title: str, sop_classes, roles=()):
    ae = AE(ae_title=title)
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class)
    return ae.associate("127.0.0.1", node.port, ae_title=NODE_AE,
                        ext_neg=list(roles))


def accepted(assoc) -> set[str]:
    return {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}


Q_R = [Verification, FIND["study"], MOVE["study"], GET["study"],
       CTImageStorage]


# Unknown AEs --------------------------------------------------------------

def test_net_access_unknown_ae_is_rejected_at_association(node):
    assoc = associate(node, "STRANGER", [Verification])
    assert assoc.is_rejected
    reply = assoc.acceptor.primitive
    # Rejected permanent, by the service user, calling AE not recognized.
    assert (reply.result, reply.result_source, reply.diagnostic) == (
        0x01, 0x01, 0x03)


@pytest.mark.skipif(dcmtk_tool("echoscu") is None, reason="no DCMTK")
def test_net_access_echoscu_with_unknown_ae_is_told_why(node):
    result = subprocess.run(
        [dcmtk_tool("echoscu"), "-aet", "STRANGER", "-aec", NODE_AE,
         "127.0.0.1", str(node.port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr


def test_net_access_known_ae_without_permissions_may_echo(node):
    assoc = associate(node, NOTHING, Q_R)
    try:
        assert accepted(assoc) == {str(Verification)}
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_net_access_ae_titles_ignore_surrounding_spaces(node):
    assoc = associate(node, f" {QUERY_ONLY}  ", [FIND["study"]])
    try:
        assert accepted(assoc) == {str(FIND["study"])}
    finally:
        assoc.release()


# Services by permission ----------------------------------------------------

@pytest.mark.parametrize(("title", "offered"), [
    (QUERY_ONLY, {Verification, FIND["study"]}),
    (STORE_ONLY, {Verification, CTImageStorage}),
    (RETRIEVE_ONLY, {Verification, MOVE["study"], GET["study"],
                     CTImageStorage}),
    ("VIEWER", set(Q_R)),
], ids=["query", "store", "retrieve", "all"])
def test_net_access_peer_is_offered_its_services(node, title, offered):
    assoc = associate(node, title, Q_R)
    try:
        assert accepted(assoc) == {str(uid) for uid in offered}
    finally:
        assoc.release()


def test_net_access_peer_without_retrieve_permission_cannot_move(node):
    assoc = associate(node, QUERY_ONLY, [FIND["study"], MOVE["study"]])
    try:
        with pytest.raises(ValueError, match="No presentation context"):
            next(assoc.send_c_move(identifier(
                "STUDY", StudyInstanceUID=study_uid(S1)), "VIEWER",
                MOVE["study"]))
    finally:
        assoc.release()


def test_net_access_retrieve_only_peer_is_refused_as_storage_scu(
        node, archive):
    """Its storage contexts are there for the C-GET role; a C-STORE it
    sends anyway (no role selection) is refused, and nothing stored."""
    uid = "1.2.826.0.1.3680043.10.1.999.7"
    before = archive.stats().instances
    assoc = associate(node, RETRIEVE_ONLY, [CTImageStorage])
    try:
        status = assoc.send_c_store(_ct(uid))
    finally:
        assoc.release()
    assert status.Status == 0x0124
    assert "not permitted to store" in status.ErrorComment
    assert uid not in archive
    assert archive.stats().instances == before


def test_net_access_retrieve_only_peer_may_get(node):
    received = []

    def store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title=RETRIEVE_ONLY)
    ae.add_requested_context(GET["study"])
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, store)])
    try:
        responses = list(assoc.send_c_get(
            identifier("SERIES", StudyInstanceUID=study_uid(S1),
                       SeriesInstanceUID=_series_of(S1, 1)), GET["study"]))
    finally:
        assoc.release()
    assert responses[-1][0].Status == 0x0000
    assert len(received) == 3


def test_net_access_store_only_peer_may_store(node, archive):
    uid = "1.2.826.0.1.3680043.10.1.999.8"
    assoc = associate(node, STORE_ONLY, [CTImageStorage])
    try:
        assert assoc.send_c_store(_ct(uid)).Status == 0x0000
    finally:
        assoc.release()
    assert uid in archive


# Move destinations ---------------------------------------------------------

def test_net_access_destination_without_address_is_unknown(node):
    assoc = associate(node, "VIEWER", [MOVE["study"]])
    try:
        responses = list(assoc.send_c_move(
            identifier("STUDY", StudyInstanceUID=study_uid(S1)),
            "VIEWER", MOVE["study"]))
    finally:
        assoc.release()
    assert responses[-1][0].Status == 0xA801


def test_net_access_open_node_has_no_move_destination(tmp_path):
    with Archive(tmp_path / "store") as archive, \
            run_node(archive, None) as node:
        assoc = associate(node, "ANYONE", [FIND["study"], MOVE["study"]])
        try:
            assert accepted(assoc) == {str(FIND["study"]),
                                       str(MOVE["study"])}
            responses = list(assoc.send_c_move(
                identifier("STUDY", StudyInstanceUID="1.2.3"), "ANYONE",
                MOVE["study"]))
        finally:
            assoc.release()
    assert responses[-1][0].Status == 0xA801


def test_net_access_unknown_peers_get_the_unknown_permissions(tmp_path):
    peers = table(unknown_permissions=frozenset({Service.STORE}))
    with Archive(tmp_path / "store") as archive, \
            run_node(archive, peers) as node:
        assoc = associate(node, "STRANGER", Q_R)
        try:
            assert accepted(assoc) == {str(Verification),
                                       str(CTImageStorage)}
        finally:
            assoc.release()


# The table -----------------------------------------------------------------

def test_net_access_table_answers_by_title():
    peers = PeerTable([Peer("A", frozenset({Service.QUERY}), "h", 104)],
                      refuse_unknown=True)
    assert peers.permits(" A ", Service.QUERY)
    assert not peers.permits("A", Service.STORE)
    assert peers.destination("A") == ("h", 104)
    assert peers.destination("B") is None
    assert not peers.admits("B")
    assert peers.permissions("B") == frozenset()


def test_net_access_open_table_permits_everything():
    peers = PeerTable.open()
    assert peers.admits("ANY")
    assert peers.permissions("ANY") == ALL_SERVICES
    assert peers.destination("ANY") is None


def test_net_access_table_refuses_a_title_twice():
    with pytest.raises(ValueError, match="twice"):
        PeerTable([Peer("A"), Peer("A  ")])


def test_net_access_refusing_table_needs_a_peer():
    with pytest.raises(ValueError, match="at least one peer"):
        PeerTable([], refuse_unknown=True)


# Helpers ------------------------------------------------------------------

def _ct(uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
    ds.PatientID, ds.StudyInstanceUID = "PAT-9", uid + ".1"
    ds.SeriesInstanceUID, ds.Modality = uid + ".2", "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _series_of(study, number: int) -> str:
    series = next(s for s in study.series if s.number == number)
    return series_uid(study, series)

