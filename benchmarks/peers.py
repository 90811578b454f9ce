"""The peers as servers on 127.0.0.1, each a context manager that starts
it on a free port, waits until it listens and stops it on the way out.

- DCMTK storescp writes each received dataset to a plain file and keeps
  no index: the bar for raw network speed. It never fsyncs.
- Orthanc keeps a SQLite index beside its storage area; with
  ``compression`` it zlib-compresses what it stores. Orthanc 1.10
  fdatasyncs every file it writes (SyncStorageArea, on by default) and
  runs SQLite in WAL mode with synchronous=NORMAL, which does not sync
  at commit: a power loss keeps the files but may lose the last index
  transactions.
- pynetdicom in the pattern of its storescp example: the handler writes
  the encoded dataset to a file (or, with ``output=None``, does nothing).
- pacsstore itself, as ``pacsstore serve``, which answers only once an
  instance is durable.
- The durable floor: the node's network path in front of nothing but a
  write of each dataset into space zeroed beforehand and an fdatasync
  (benchmarks.durable_floor), or in front of nothing at all: what a
  durable answer costs beside the network path.

DCMTK's tools and Orthanc (which receives through DCMTK) get
TCP_NODELAY=1 in their environment; pacsstore and the pynetdicom peer
set it on every accepted socket themselves.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.processes import (LOOPBACK, NODELAY_ENV, free_port,
                                  listening, server)

STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_AE = "ORTHANC"
PACSSTORE_AE = "PACSSTORE"
PYNETDICOM_AE = "PYNETDICOM"

# The most a DCMTK tool accepts (its --max-pdu range ends here).
DCMTK_MAX_PDU = 131072


@dataclass(frozen=True)
class Endpoint:
    """Where an SCP listens, and the process serving it."""

    port: int
    ae_title: str
    pid: int
    host: str = LOOPBACK


@contextlib.contextmanager
def storescp(output: Path, *, fork: bool = False,
             bit_preserving: bool = False,
             ignore: bool = False) -> Iterator[Endpoint]:
    """DCMTK's storescp writing into ``output``; ``fork`` serves each
    association in a child process, as a busy storescp would run;
    ``ignore`` receives every instance and answers, writing nothing
    (DCMTK's network path and its decode of each dataset)."""
    output.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [STORESCP, "--output-directory", str(output),
               "--max-pdu", str(DCMTK_MAX_PDU)]
    if fork:
        command.append("--fork")
    if bit_preserving:
        command.append("--bit-preserving")
    if ignore:
        command.append("--ignore")
    with server([*command, str(port)], ready=lambda: listening(port),
                log=output.parent / f"{output.name}.log",
                env=NODELAY_ENV) as process:
        yield Endpoint(port, "STORESCP", process.pid)


@contextlib.contextmanager
def pacsstore_node(store: Path, log: Path | None = None, *,
                   move_destinations: dict[str, Endpoint] | None = None
                   ) -> Iterator[Endpoint]:
    """``pacsstore serve`` on ``store``, in a process of its own; its
    output goes to ``log`` (beside the store by default). Each of
    ``move_destinations`` (by AE title) is a peer it may send to."""
    port = free_port()
    command = [sys.executable, "-m", "pacsstore.cli", "--store", str(store),
               "serve", "--port", str(port), "--ae-title", PACSSTORE_AE]
    if move_destinations:
        config = store.parent / f"{store.name}-node.toml"
        config.write_text("".join(
            f'[peers.{title}]\nhost = "{peer.host}"\nport = {peer.port}\n'
            for title, peer in move_destinations.items()))
        command += ["--config", str(config)]
    with server(command, ready=lambda: listening(port),
                log=log or store.parent / f"{store.name}.log") as process:
        yield Endpoint(port, PACSSTORE_AE, process.pid)


@contextlib.contextmanager
def durable_floor(log: Path | None, size: int, output: Path
                  ) -> Iterator[Endpoint]:
    """The node's network path in front of a durable write to ``log``
    and nothing else, or in front of nothing when ``log`` is None
    (:mod:`benchmarks.durable_floor`); ``size`` bytes of the log are
    written with zeros beforehand. The process's output goes to
    ``output``."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.durable_floor",
               str(port), str(log) if log else "-", str(size)]
    with server(command, ready=lambda: listening(port),
                log=output) as process:
        yield Endpoint(port, PACSSTORE_AE, process.pid)


@contextlib.contextmanager
def pynetdicom_scp(output: Path | None, log: Path) -> Iterator[Endpoint]:
    """pynetdicom's storescp pattern: raw dataset bytes to a file in
    ``output``, or a handler that does nothing when it is None."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.pynetdicom_scp",
               str(port), str(output) if output else "-"]
    with server(command, ready=lambda: listening(port),
                log=log) as process:
        yield Endpoint(port, PYNETDICOM_AE, process.pid)


class Orthanc:
    """A running Orthanc: its DICOM endpoint and a small REST client."""

    def __init__(self, root: Path, dicom_port: int,
                 http_port: int) -> None:
        self.root = root
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.pid = 0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.dicom_port, ORTHANC_AE, self.pid)

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def index(self) -> Path:
        return self.root / "index"

    def connection(self) -> http.client.HTTPConnection:
        """A keep-alive connection to the REST API."""
        return http.client.HTTPConnection(LOOPBACK, self.http_port,
                                          timeout=120)

    def get(self, path: str) -> Any:
        connection = self.connection()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"Orthanc GET {path}: {response.status}")
        return json.loads(body)

    def statistics(self) -> dict[str, Any]:
        return self.get("/statistics")

    def answers(self) -> bool:
        try:
            self.get("/system")
        except (OSError, RuntimeError):
            return False
        return True


def orthanc_config(root: Path, *, compression: bool, http_port: int,
                   dicom_port: int,
                   move_destinations: dict[str, Endpoint] | None = None
                   ) -> dict[str, Any]:
    """Orthanc's own defaults but for what the benchmark needs: its
    folders, ports, no remote access, no plugins, C-FIND, C-GET and
    C-MOVE from any AE (as it takes C-STORE from any by default), and
    the C-MOVE destinations. SyncStorageArea stays at its default
    (on)."""
    modalities = {title.lower(): [title, peer.host, peer.port]
                  for title, peer in (move_destinations or {}).items()}
    return {
        "Name": "pacsstore-benchmark",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "StorageCompression": compression,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "SaveJobs": False,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": modalities,
    }


@contextlib.contextmanager
def orthanc(root: Path, *, compression: bool,
            move_destinations: dict[str, Endpoint] | None = None
            ) -> Iterator[Orthanc]:
    """Orthanc with its storage area and index under ``root`` (new ones
    when ``root`` holds none)."""
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = root / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(
        root, compression=compression, http_port=http_port,
        dicom_port=dicom_port, move_destinations=move_destinations),
        indent=2))
    peer = Orthanc(root, dicom_port, http_port)
    with server([ORTHANC, str(config)],
                ready=lambda: peer.answers() and listening(dicom_port),
                log=root / "orthanc.log", env=NODELAY_ENV) as process:
        peer.pid = process.pid
        yield peer
