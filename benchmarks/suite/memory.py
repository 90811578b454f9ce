"""Peak memory of storing one large object: ``Archive.store(path)`` of the
1 GiB multi-frame object, and of the 256 MiB one to show how the peak
grows with the size.

Each store runs in a child process of its own (``python -m
benchmarks.suite.memory STORE FILE``), which reports its peak resident
set as JSON, along with its peak before the store (the interpreter with
pacsstore, pydicom and numpy imported) and the seconds the store took.
The peak is the whole process's, the interpreter included.

The peak is the kernel's high-water mark of the process's own memory
(VmHWM in /proc/self/status). getrusage's ru_maxrss would not do: Linux
carries it across exec, so a child started by a large parent reports
at least the parent's size.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.data import LARGE_FRAMES, SMALLER_FRAMES
from benchmarks.measure import Sample, Stopwatch
from benchmarks.rows import Comparison, Row, Target, rate, size
from benchmarks.suite import Context


def run(context: Context) -> list[Row]:
    large = _children(context, LARGE_FRAMES)
    smaller = _children(context, SMALLER_FRAMES)
    large_mb = context.data.multiframe(LARGE_FRAMES).stat().st_size / 1e6
    smaller_mb = context.data.multiframe(SMALLER_FRAMES).stat().st_size / 1e6
    peak = Sample.of([r["peak_rss"] for r in large])
    baseline = Sample.of([r["baseline_rss"] for r in large]).median / 1e6
    note = (f"peak resident set of a child process that stores the file "
            f"by path; {baseline:,.0f} MB of it is the interpreter and "
            f"its imports, before the store")
    flat = Target("<=", 1.5, label="≤ 1.5x (flat: the object grows 4x)")
    return [
        Row("memory.large", f"peak memory storing a {large_mb:,.0f} MB "
            f"object, Archive.store(path)", size(), peak, [Comparison(
                "the object's size", Sample.of([large_mb * 1e6]),
                Target("<", 0.5))], [note]),
        Row("memory.flat", f"peak memory, {large_mb:,.0f} MB object "
            f"against {smaller_mb:,.0f} MB", size(), peak, [Comparison(
                "the same, smaller object",
                Sample.of([r["peak_rss"] for r in smaller]), flat)]),
        Row("memory.ingest_large", f"store(path) of the {large_mb:,.0f} MB "
            f"object, durable", rate("MB/s", large_mb),
            Sample.of([r["seconds"] for r in large]), [],
            ["no peer: the time of the same child processes"]),
    ]


def _children(context: Context, frames: int) -> list[dict]:
    path = context.data.multiframe(frames)
    return [_child(context, path) for _ in range(context.repeat)]


def _child(context: Context, path: Path) -> dict:
    store = context.folder("memory-store")
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "benchmarks.suite.memory", str(store),
             str(path)], capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    if finished.returncode != 0:
        raise RuntimeError(f"the memory child failed: "
                           f"{finished.stderr[-600:]}")
    return json.loads(finished.stdout)


def _peak_rss() -> int:
    """VmHWM of this process, in bytes (the kernel reports kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def child(store: Path, path: Path) -> dict:
    from pacsstore import Archive

    baseline = _peak_rss()
    with Archive(store) as archive, Stopwatch() as watch:
        result = archive.store(path)
    if result.status != "stored":
        raise RuntimeError(f"store({path}) gave {result.status}")
    return {"peak_rss": _peak_rss(), "baseline_rss": baseline,
            "seconds": watch.seconds}


if __name__ == "__main__":
    print(json.dumps(child(Path(sys.argv[1]), Path(sys.argv[2]))))
