"""The data sets of the benchmark, generated once and cached on disk.

- a CT study: 400 slices of 512 x 512 signed 16-bit pixels with the
  noise texture of a reconstructed slice (about 210 MB);
- multi-frame objects of 256 MiB and 1 GiB, written frame by frame;
- 1,000 structured reports of 2 KB to 40 KB, and 1,000 of 4 KB;
- the real files of ../shared/corpus that pydicom reads.

Generation is deterministic (pacsstore.synthetic), so a cached set is
reused for as long as its recipe is the same: each set lives in a folder
of its own with the recipe beside it, and a set whose recipe changed is
generated again. Nothing here is timed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pacsstore import synthetic

log = logging.getLogger(__name__)

# Bump when a generator changes its output for the same arguments.
DATA_VERSION = 1

CT_SLICES = 400
REPORTS = 1000
REPORT_BYTES = (2048, 40960)
SMALL_INSTANCES = 1000
SMALL_BYTES = 4096
FRAME_BYTES = 512 * 512 * 2
LARGE_FRAMES = 2048   # 1 GiB of pixel data
SMALLER_FRAMES = 512  # 256 MiB: the second size that shows flatness

PROJECT = Path(__file__).resolve().parents[1]
CORPUS = PROJECT.parent / "shared" / "corpus"
DEFAULT_CACHE = Path(os.environ.get(
    "PACSSTORE_BENCH_DATA", Path.home() / ".cache" / "pacsstore-bench"))


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    needs_force: bool  # pydicom reads it only with force=True


class Datasets:
    """The data sets under one cache folder, made on first use."""

    def __init__(self, root: Path = DEFAULT_CACHE) -> None:
        self.root = root

    def ct_study(self) -> list[Path]:
        return self._files("ct", {"slices": CT_SLICES}, lambda folder:
                           synthetic.write_ct_series(
                               folder, CT_SLICES, seed=11,
                               noise=synthetic.SCANNER_NOISE))

    def reports(self) -> list[Path]:
        low, high = REPORT_BYTES
        return self._files("reports", {"count": REPORTS, "bytes": [low, high]},
                           lambda folder: synthetic.write_structured_reports(
                               folder, REPORTS, seed=12, min_bytes=low,
                               max_bytes=high))

    def small_instances(self) -> list[Path]:
        return self._files("small", {"count": SMALL_INSTANCES,
                                     "bytes": SMALL_BYTES},
                           lambda folder: synthetic.write_structured_reports(
                               folder, SMALL_INSTANCES, seed=13,
                               min_bytes=SMALL_BYTES,
                               max_bytes=SMALL_BYTES))

    def multiframe(self, frames: int) -> Path:
        name = f"multiframe-{frames}"
        return self._files(name, {"frames": frames}, lambda folder: [
            synthetic.write_multiframe(folder / f"{name}.dcm", frames,
                                       seed=14)])[0]

    def multiframe_uid(self, frames: int) -> str:
        return synthetic.multiframe_uid(frames, seed=14)

    def _files(self, name: str, recipe: dict[str, Any],
               make: Callable[[Path], list[Path]]) -> list[Path]:
        folder = self.root / name
        recipe = {"version": DATA_VERSION, **recipe}
        stamp = folder / "recipe.json"
        if stamp.exists() and json.loads(stamp.read_text()) == recipe:
            return sorted(folder.glob("*.dcm"))
        log.info("generating the %s data set in %s", name, folder)
        fresh = folder.with_name(f"{name}.partial")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        make(fresh)
        (fresh / "recipe.json").write_text(json.dumps(recipe))
        shutil.rmtree(folder, ignore_errors=True)
        fresh.rename(folder)
        return sorted(folder.glob("*.dcm"))


def corpus_files() -> list[CorpusFile]:
    """The corpus files pydicom 3 reads (MANIFEST.tsv says which), in
    manifest order; empty where the corpus is absent."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [CorpusFile(CORPUS / row["path"],
                       row["pydicom_status"] == "ok_force")
            for row in rows if row["pydicom_status"] in ("ok", "ok_force")]


def total_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)
