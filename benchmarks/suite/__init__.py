"""The rows of the benchmark, one module per family:

    parse          header parse against pydicom
    ingest_api     Archive.store_many against Orthanc's REST API and a
                   pydicom copy
    ingest_net     C-STORE into the node against storescp, Orthanc and
                   pynetdicom
    retrieve       get and frame against reading files
    retrieve_net   C-GET and C-MOVE of a study against Orthanc
    storage_ratio  bytes on disk against Orthanc with compression
    memory         peak memory of storing a 1 GB object
    cfind          study-level C-FIND on a large index against Orthanc

Each module has ``run(context)``, which returns or yields its rows, and
raises Skipped when it cannot run here.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.data import Datasets

FAMILIES = ("parse", "ingest_api", "ingest_net", "retrieve",
            "retrieve_net", "storage_ratio", "memory", "cfind")


class Skipped(Exception):
    """A family that cannot run here; the message says why."""


@dataclass
class Context:
    """What every family gets: the data, a scratch folder on the same
    file system for all sides, the repetitions per row, and whether this
    is a quick run (smaller populations where building them dominates)."""

    data: Datasets
    scratch: Path
    repeat: int
    quick: bool = False
    _names: itertools.count = field(default_factory=itertools.count)

    def folder(self, name: str) -> Path:
        """A new, empty folder path in the scratch area (not created:
        a store creates its own)."""
        path = self.scratch / f"{name}-{next(self._names)}"
        shutil.rmtree(path, ignore_errors=True)
        return path
