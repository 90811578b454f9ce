"""Access to the shared corpus of real DICOM files.

The corpus lives beside the project checkout, at ``../shared/corpus``
relative to the project root, with one row per file in MANIFEST.tsv. Tests
that need it skip cleanly where it is absent.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORPUS_ROOT = PROJECT_ROOT.parent / "shared" / "corpus"
MANIFEST = CORPUS_ROOT / "MANIFEST.tsv"


@dataclass(frozen=True)
class CorpusFile:
    """One row of MANIFEST.tsv."""

    relpath: str
    transfer_syntax: str
    sop_class: str
    modality: str
    frames: str
    pydicom_status: str
    flags: frozenset[str]
    sha256: str

    @property
    def path(self) -> Path:
        return CORPUS_ROOT / self.relpath

    @property
    def pydicom_reads(self) -> bool:
        """pydicom 3 reads it, with force=True where it has no meta."""
        return self.pydicom_status in ("ok", "ok_force")

    @property
    def needs_force(self) -> bool:
        return self.pydicom_status == "ok_force"


def corpus_available() -> bool:
    return MANIFEST.is_file()


@lru_cache(maxsize=1)
def corpus_files() -> tuple[CorpusFile, ...]:
    """Every file of the manifest, or none where the corpus is absent."""
    if not corpus_available():
        return ()
    with MANIFEST.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return tuple(
        CorpusFile(
            relpath=row["path"],
            transfer_syntax=row["transfer_syntax_uid"],
            sop_class=row["sop_class_uid"],
            modality=row["modality"],
            frames=row["frames"],
            pydicom_status=row["pydicom_status"],
            flags=frozenset(f for f in row["flags"].split(";") if f),
            sha256=row["sha256"],
        )
        for row in rows
    )


def corpus_ids() -> list[str]:
    return [entry.relpath for entry in corpus_files()]
