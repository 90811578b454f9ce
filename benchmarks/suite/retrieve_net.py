"""Retrieving over the network: a CT study stored in pacsstore's node and
in Orthanc, fetched by DCMTK's getscu (C-GET, the instances coming back
on getscu's own association) and sent by C-MOVE to DCMTK's storescp.
The time is the client's, from its start until it exits with the final
response; every repetition checks that the destination received every
instance of the study.

This is how a viewing workstation pulls a study from the archive. These
rows have no target: they say how far retrieval is from the peer that
serves the same files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pydicom

from benchmarks.data import total_bytes
from benchmarks.measure import Sample, Stopwatch, measure
from benchmarks.peers import (DCMTK_MAX_PDU, Endpoint, orthanc,
                              pacsstore_node, storescp)
from benchmarks.processes import NODELAY_ENV
from benchmarks.rows import Comparison, Row, rate
from benchmarks.sending import SendFailed, upload
from benchmarks.suite import Context
from pacsstore import Archive

GETSCU = "/usr/bin/getscu"
MOVESCU = "/usr/bin/movescu"
CLIENT_AE = "RETRIEVESCU"
DESTINATION_AE = "STORESCP"


def run(context: Context) -> list[Row]:
    ct = context.data.ct_study()
    study = str(pydicom.dcmread(ct[0], stop_before_pixels=True)
                .StudyInstanceUID)
    received = context.folder("retrieve-net-received")
    with storescp(received) as destination:
        destinations = {DESTINATION_AE: destination}
        with _pacsstore(context, ct, destinations) as ours, \
                _orthanc(context, ct, destinations) as theirs:
            rows = []
            for key, name, client in (
                    ("get", "C-GET by getscu", _getscu),
                    ("move", "C-MOVE to storescp", _movescu)):
                def time(peer: Endpoint) -> Sample:
                    return measure(_trial(client, peer, study, received,
                                          len(ct)), context.repeat)
                rows.append(Row(
                    f"retrieve_net.{key}", f"{name}, a stored CT study "
                    f"({len(ct)} slices, {total_bytes(ct) / 1e6:,.0f} MB)",
                    rate("MB/s", total_bytes(ct) / 1e6), time(ours),
                    [Comparison("Orthanc", time(theirs))],
                    ["Study Root, study level, one association; "
                     f"maximum PDU {DCMTK_MAX_PDU:,} on every side; "
                     "no target set"]))
    shutil.rmtree(received, ignore_errors=True)
    return rows


def _trial(client: Callable[[Endpoint, str, Path], None], peer: Endpoint,
           study: str, received: Path, expected: int
           ) -> Callable[[Stopwatch], None]:
    def trial(watch: Stopwatch) -> None:
        _empty(received)
        with watch:
            client(peer, study, received)
        count = sum(1 for p in received.iterdir() if p.is_file())
        if count != expected:
            raise SendFailed(f"{peer.ae_title} sent {count} of the "
                             f"{expected} instances of the study")
    return trial


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()


def _getscu(peer: Endpoint, study: str, received: Path) -> None:
    _run([GETSCU, "--study", "--max-pdu", str(DCMTK_MAX_PDU),
          "--output-directory", str(received), *_query(peer, study)], peer)


def _movescu(peer: Endpoint, study: str, received: Path) -> None:
    _run([MOVESCU, "--study", "--move", DESTINATION_AE,
          *_query(peer, study)], peer)


def _query(peer: Endpoint, study: str) -> list[str]:
    return ["--aetitle", CLIENT_AE, "--call", peer.ae_title,
            "--key", "QueryRetrieveLevel=STUDY",
            "--key", f"StudyInstanceUID={study}", peer.host, str(peer.port)]


def _run(command: Sequence[str], peer: Endpoint) -> None:
    finished = subprocess.run(command, env=dict(os.environ, **NODELAY_ENV),
                              capture_output=True, check=False)
    if finished.returncode != 0:
        raise SendFailed(f"{Path(command[0]).name} from {peer.ae_title}: "
                         f"{finished.stderr[-400:]!r}")


@contextlib.contextmanager
def _pacsstore(context: Context, ct: Sequence[Path],
               destinations: dict[str, Endpoint]) -> Iterator[Endpoint]:
    store = context.folder("retrieve-net-pacsstore") / "store"
    store.parent.mkdir(parents=True)
    try:
        with Archive(store) as archive:
            archive.store_many(ct)
        with pacsstore_node(store, move_destinations=destinations) as node:
            yield node
    finally:
        shutil.rmtree(store.parent, ignore_errors=True)


@contextlib.contextmanager
def _orthanc(context: Context, ct: Sequence[Path],
             destinations: dict[str, Endpoint]) -> Iterator[Endpoint]:
    root = context.folder("retrieve-net-orthanc")
    try:
        with orthanc(root, compression=False,
                     move_destinations=destinations) as peer:
            upload(peer, ct)
            yield peer.endpoint
    finally:
        shutil.rmtree(root, ignore_errors=True)
