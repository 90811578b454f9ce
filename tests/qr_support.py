"""Shared pieces of the query/retrieve tests: a small archive of known
patients, studies and series, a running node with a peer table, storage
SCPs to move to (DCMTK's storescp and an in-process pynetdicom one), and
pynetdicom clients."""

from __future__ import annotations

import gc
import io
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, MRImageStorage,
                         SecondaryCaptureImageStorage)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove, Verification)

from pacsstore import Archive
from pacsstore._parse import parse
from pacsstore.net import Node
from pacsstore.net.access import ALL_SERVICES, Peer, PeerTable
from pacsstore.net.dcmtk import dcmtk_tool
from pacsstore.synthetic import synthetic_uid

NODE_AE = "PACSSTORE"
# The calling AE titles DCMTK's tools use by default, and the tests' own.
CLIENT_AES = ("FINDSCU", "MOVESCU", "GETSCU", "QRSCU", "ECHOSCU")
DCMTK_DESTINATION = "STORESCP"
PYNETDICOM_DESTINATION = "PYDEST"

FIND = {"patient": PatientRootQueryRetrieveInformationModelFind,
        "study": StudyRootQueryRetrieveInformationModelFind}
MOVE = {"patient": PatientRootQueryRetrieveInformationModelMove,
        "study": StudyRootQueryRetrieveInformationModelMove}
GET = {"patient": PatientRootQueryRetrieveInformationModelGet,
       "study": StudyRootQueryRetrieveInformationModelGet}

DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")


# The archive -------------------------------------------------------------

@dataclass(frozen=True)
class Series:
    modality: str
    sop_class: str
    instances: int
    number: int
    syntax: str = ExplicitVRLittleEndian


@dataclass(frozen=True)
class Study:
    key: str
    date: str
    description: str
    accession: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    studies: tuple[Study, ...]


PATIENTS = (
    Patient("PAT-001", "Doe^John", "19700101", "M", (
        Study("s1", "20200115", "CT ABDOMEN", "ACC-1", (
            Series("CT", CTImageStorage, 3, 1),
            Series("CT", CTImageStorage, 2, 2, ImplicitVRLittleEndian),
        )),
        Study("s2", "20220601", "MR KNEE", "ACC-2", (
            Series("MR", MRImageStorage, 2, 1),
        )),
    )),
    Patient("PAT-002", "Roe^Jane", "19851224", "F", (
        Study("s3", "20210301", "MR HEAD", "ACC-3", (
            Series("MR", MRImageStorage, 2, 1),
            Series("OT", SecondaryCaptureImageStorage, 1, 2),
        )),
    )),
    Patient("PAT-003", "Smith^Anna", "19600505", "F", (
        Study("s4", "20190505", "CT CHEST", "ACC-4", (
            Series("CT", CTImageStorage, 2, 1),
        )),
    )),
)


def study_uid(study: Study) -> str:
    return synthetic_uid("qr-study", study.key)


def series_uid(study: Study, series: Series) -> str:
    return synthetic_uid("qr-series", study.key, series.number)


def instance_uid(study: Study, series: Series, number: int) -> str:
    return synthetic_uid("qr-instance", study.key, series.number, number)


def _instance(patient: Patient, study: Study, series: Series,
              number: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = series.sop_class
    ds.SOPInstanceUID = instance_uid(study, series, number)
    ds.PatientID, ds.PatientName = patient.patient_id, patient.name
    ds.PatientBirthDate, ds.PatientSex = patient.birth_date, patient.sex
    ds.StudyInstanceUID = study_uid(study)
    ds.StudyDate, ds.StudyTime = study.date, "101500"
    ds.StudyDescription = study.description
    ds.AccessionNumber = study.accession
    ds.StudyID = study.key.upper()
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid(study, series)
    ds.SeriesNumber, ds.Modality = series.number, series.modality
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    pixels = np.arange(16, dtype="<u2") * (number + series.number)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = series.syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=series.syntax == ImplicitVRLittleEndian,
               little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def all_instances() -> Iterator[tuple[Patient, Study, Series, int]]:
    for patient in PATIENTS:
        for study in patient.studies:
            for series in study.series:
                for number in range(1, series.instances + 1):
                    yield patient, study, series, number


def fill(archive: Archive) -> None:
    archive.store_many(_instance(*entry) for entry in all_instances())


def study_instance_uids(study: Study) -> set[str]:
    return {instance_uid(study, series, number)
            for series in study.series
            for number in range(1, series.instances + 1)}


def dataset_bytes(part10: bytes) -> bytes:
    """The dataset of a Part 10 file, after its meta group."""
    return bytes(part10[parse(part10).dataset_offset:])


# Ports and peers ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peer_table(destinations: dict[str, int], *,
               extra: tuple[Peer, ...] = (),
               refuse_unknown: bool = True) -> PeerTable:
    """Every client AE with every permission, plus the destinations."""
    clients = [Peer(title, ALL_SERVICES) for title in CLIENT_AES]
    targets = [Peer(title, frozenset(), "127.0.0.1", port)
               for title, port in destinations.items()]
    return PeerTable([*clients, *targets, *extra],
                     refuse_unknown=refuse_unknown)


# Destinations ------------------------------------------------------------

@dataclass
class Received:
    """What an in-process storage SCP was sent."""

    datasets: dict[str, bytes] = field(default_factory=dict)
    syntaxes: dict[str, str] = field(default_factory=dict)
    originators: list[str] = field(default_factory=list)
    # TCP_NODELAY of the sender's end of each C-STORE's socket, when the
    # sender is in this process (the node under test): None if not.
    sender_no_delay: list[int | None] = field(default_factory=list)
    associations: int = 0
    first_store: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _sender_no_delay(accepted: socket.socket) -> int | None:
    """TCP_NODELAY of the socket at the other end of ``accepted``, found
    among this process's sockets by its address."""
    peer = accepted.getpeername()
    for candidate in gc.get_objects():
        if isinstance(candidate, socket.socket) and \
                candidate is not accepted and candidate.fileno() != -1:
            try:
                if candidate.getsockname() == peer:
                    return candidate.getsockopt(socket.IPPROTO_TCP,
                                                socket.TCP_NODELAY)
            except OSError:
                continue
    return None


@contextmanager
def pynetdicom_destination(port: int, contexts: list[tuple[str, list[str]]],
                           *, ae_title: str = PYNETDICOM_DESTINATION,
                           refuse: frozenset[str] = frozenset(),
                           gate: threading.Event | None = None,
                           ) -> Iterator[Received]:
    """A storage SCP on ``port`` supporting ``contexts``; it answers
    0xA700 for SOP Instance UIDs in ``refuse``, and holds each C-STORE
    until ``gate`` (when given) is set."""
    received = Received()

    def on_store(event):
        received.first_store.set()
        if gate is not None:
            gate.wait(10)
        uid = str(event.request.AffectedSOPInstanceUID)
        sender = _sender_no_delay(event.assoc.dul.socket.socket)
        with received.lock:
            received.sender_no_delay.append(sender)
            received.originators.append(
                event.request.MoveOriginatorApplicationEntityTitle or "")
            if uid in refuse:
                return 0xA700
            received.datasets[uid] = event.encoded_dataset(
                include_meta=False)
            received.syntaxes[uid] = str(event.context.transfer_syntax)
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(Verification)
    for sop_class, syntaxes in contexts:
        ae.add_supported_context(sop_class, syntaxes)
    def on_accepted(event):
        with received.lock:
            received.associations += 1

    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store),
                                           (evt.EVT_ACCEPTED, on_accepted)])
    try:
        yield received
    finally:
        server.shutdown()


@contextmanager
def storescp(folder: Path, port: int,
             ae_title: str = DCMTK_DESTINATION) -> Iterator[None]:
    """DCMTK's storescp writing what it receives, bit-preserving, to
    ``folder``; every storage SOP class and syntax it knows."""
    process = subprocess.Popen(
        [dcmtk_tool("storescp"), "--aetitle", ae_title,
         "--bit-preserving", "--accept-all", "--output-directory",
         str(folder), str(port)],
        env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, process)
        yield
    finally:
        process.terminate()
        process.wait(10)


def _wait_listening(port: int, process: subprocess.Popen,
                    timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"storescp exited: "
                               f"{process.stderr.read().decode()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def received_files(folder: Path) -> dict[str, bytes]:
    """SOP Instance UID -> Part 10 bytes of the files in ``folder``."""
    found = {}
    for path in folder.iterdir():
        data = path.read_bytes()
        found[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] \
            = data
    return found


# Clients -----------------------------------------------------------------

def qr_association(node: Node, requested: list, *, ae_title: str = "QRSCU",
                   ext_neg: list | None = None, roles: list | None = None):
    """An established pynetdicom association with the node proposing the
    ``requested`` SOP classes (default transfer syntaxes)."""
    ae = AE(ae_title=ae_title)
    for sop_class in requested:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE,
                         ext_neg=(ext_neg or []) + (roles or []))
    assert assoc.is_established, "the node refused the association"
    return assoc


def identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def run_node(archive: Archive, peers: PeerTable | None) -> Node:
    return Node(archive, ae_title=NODE_AE, port=0, peers=peers)


def dcmtk_available() -> bool:
    return all(dcmtk_tool(name) for name in
               ("findscu", "movescu", "getscu", "storescp"))


