"""What the crash, full-disk and multi-process tests share.

Test instances are a pure function of their SOP Instance UID, so the
process that checks a store after a crash knows the exact bytes every
instance it finds must have, whether or not the writer lived to
acknowledge it. A UID reads ``<ROOT>.<series>.<kind>.<number>``; the
kind says how the instance entered the store:

- ``FILE``: a Part 10 file through ``store`` or ``store_many``;
- ``RECEIVED``: its dataset through ``store_received``, the API path of
  the node;
- ``NETWORK``: a Part 10 file sent by DCMTK's storescu to the node.

For the last two the stored file is the meta group the store builds
(deterministic: UIDs, transfer syntax and the sender's AE title) plus the
dataset bytes as sent, which storescu sends unchanged for these files.

:func:`check_store` is the verdict after a crash: the store opens without
repair, every acknowledged instance is present and byte-identical, and
every instance any API shows is whole.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacsstore import Archive, UID_ROOT, synthetic
from pacsstore.filemeta import build_file_meta
from pacsstore.net.dcmtk import dcmtk_tool

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
CHILD = TESTS / "reliability_child.py"
PACSSTORE_CLI = Path(sys.executable).parent / "pacsstore"

ROOT = f"{UID_ROOT}.77"
FILE, RECEIVED, NETWORK = 1, 2, 3
# The calling AE title of every sender, so the node's meta is known.
SENDER_AE = "RELIABILITY"

# Small segments, so that rotations (and crashes around them) are
# frequent: a few dozen instances fill one.
SMALL_SEGMENT = 96 * 1024

# Rows of the generated images: about 0.5, 8 and 18 KiB of pixels.
_ROWS = (16, 64, 96)


def instance_uid(series: int, kind: int, number: int) -> str:
    return f"{ROOT}.{series}.{kind}.{number}"


def parse_uid(uid: str) -> tuple[int, int, int]:
    """(series, kind, number) of a test UID; ValueError for any other."""
    if not uid.startswith(ROOT + "."):
        raise ValueError(f"{uid} is not a reliability test UID")
    series, kind, number = map(int, uid[len(ROOT) + 1:].split("."))
    return series, kind, number


@lru_cache(maxsize=1)
def _template() -> pydicom.Dataset:
    return next(synthetic.ct_series(1, seed=77, rows=16, columns=16))


def _pixels(series: int, number: int, rows: int) -> bytes:
    """Noise; every fourth instance shares one of three images with
    other instances of its size, so dedup is exercised too."""
    seed = [0, number // 4 % 3, rows] if number % 4 == 0 else \
        [series, number, rows]
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1000, rows * rows, dtype=np.int16).tobytes()


def dataset_of(uid: str) -> pydicom.Dataset:
    series, kind, number = parse_uid(uid)
    ds = copy.deepcopy(_template())
    rows = _ROWS[number % len(_ROWS)]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID = f"{ROOT}.{series}.0"
    ds.SeriesInstanceUID = f"{ROOT}.{series}.0.{kind}"
    ds.PatientID = f"RELIABILITY-{series % 3}"
    ds.InstanceNumber = number + 1
    ds.Rows = ds.Columns = rows
    ds.PixelData = _pixels(series, number, rows)
    return ds


def file_bytes(uid: str) -> bytes:
    """The instance as a Part 10 file."""
    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset_of(uid), enforce_file_format=True)
    return out.getvalue()


def meta_end(part10: bytes) -> int:
    """Where the dataset starts: after preamble, DICM and the group
    (0002,0000) says the meta group is long."""
    length = int.from_bytes(part10[140:144], "little")
    return 144 + length


def received_parts(uid: str) -> tuple[bytes, str, str]:
    """(dataset bytes, transfer syntax, SOP class) as a C-STORE brings
    them."""
    data = file_bytes(uid)
    ds = _template()
    return (data[meta_end(data):], str(ds.file_meta.TransferSyntaxUID),
            str(ds.SOPClassUID))


def expected_bytes(uid: str) -> bytes:
    """What the store must give back for ``uid``, byte for byte."""
    _, kind, _ = parse_uid(uid)
    if kind == FILE:
        return file_bytes(uid)
    dataset, syntax, sop_class = received_parts(uid)
    meta = build_file_meta(sop_class_uid=sop_class, sop_instance_uid=uid,
                           transfer_syntax=syntax, source_ae=SENDER_AE)
    return meta + dataset


@lru_cache(maxsize=None)
def expected_digest(uid: str) -> str:
    return hashlib.sha256(expected_bytes(uid)).hexdigest()


def write_files(folder: Path, uids: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid in uids:
        path = folder / f"{uid.rsplit('.', 3)[1]}-{uid.rsplit('.', 1)[1]}.dcm"
        if not path.exists():
            path.write_bytes(file_bytes(uid))
        paths.append(path)
    return paths


# Children ----------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC),
                                                       str(TESTS)]))
    env.pop("PACSSTORE_CRASH_AT", None)
    env.update(extra)
    return env


# Every process the tests start, so that a failing test leaves none.
_started: list[subprocess.Popen] = []


def started(process: subprocess.Popen) -> subprocess.Popen:
    _started.append(process)
    return process


def reap() -> None:
    """Kill whatever the tests started and left running."""
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    """:func:`reap` after each test (import this into a test module to
    make it apply there)."""
    yield
    reap()


def spawn_child(*args: str, **env: str) -> subprocess.Popen[bytes]:
    return started(subprocess.Popen(
        [sys.executable, str(CHILD), *args], env=child_env(**env),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))


def wait_for_line(log: Path, line: str, child: subprocess.Popen,
                  timeout: float = 30.0) -> bool:
    """Wait until ``log`` has a whole line that is ``line`` or starts
    with it and a space; False when the child ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        whole = log.read_text().split("\n")[:-1] if log.exists() else []
        if any(text == line or text.startswith(line + " ")
               for text in whole):
            return True
        if child.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError(f"no {line!r} in {log} after {timeout} s")


def kill(child: subprocess.Popen) -> bytes:
    """SIGKILL ``child``, reap it; its standard error."""
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate()
    return stderr or b""


@dataclass
class ChildLog:
    """What a writer wrote to its log: acknowledgements and errors. Only
    whole lines count: a kill may cut the last one."""

    acknowledged: dict[str, str]
    errors: list[str]
    finished: bool


def read_log(log: Path) -> ChildLog:
    acknowledged: dict[str, str] = {}
    errors: list[str] = []
    finished = False
    text = log.read_text() if log.exists() else ""
    for line in text.split("\n")[:-1]:
        word, _, rest = line.partition(" ")
        if word == "ack":
            uid, status = rest.split()
            acknowledged[uid] = status
        elif word == "error":
            errors.append(rest)
        elif word == "done":
            finished = True
    return ChildLog(acknowledged, errors, finished)


# The node and DCMTK's storescu ----------------------------------------------

def storescu_or_skip() -> str:
    tool = dcmtk_tool("storescu")
    if tool is None:
        pytest.skip("DCMTK's storescu is not installed")
    return tool


def start_serve(store: Path, errors: Path,
                **env: str) -> tuple[subprocess.Popen, int]:
    """Start ``pacsstore serve`` on a free port of 127.0.0.1."""
    with open(errors, "ab") as sink:
        server = started(subprocess.Popen(
            [str(PACSSTORE_CLI), "--store", str(store), "serve",
             "--port", "0"], env=child_env(**env), stdout=subprocess.PIPE,
            stderr=sink))
    line = server.stdout.readline().decode()
    if "listening on" not in line:
        kill(server)
        raise AssertionError(f"serve did not start: {line!r} "
                             f"{errors.read_text()[-500:]}")
    port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":")[1])
    return server, port


class StorescuRun:
    """storescu sending files, its log read as it is written: the files
    it saw succeed, in order."""

    def __init__(self, storescu: str, port: int,
                 files: list[Path]) -> None:
        self.succeeded: list[Path] = []
        self._changed = threading.Condition()
        self.process = started(subprocess.Popen(
            [storescu, "--verbose", "-aet", SENDER_AE, "-aec", "PACSSTORE",
             "127.0.0.1", str(port), *map(str, files)],
            env=dict(os.environ, TCP_NODELAY="1"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        current: Path | None = None
        for line in self.process.stderr:
            if "Sending file:" in line:
                current = Path(line.split("Sending file:", 1)[1].strip())
            elif "Received Store Response (Success)" in line:
                with self._changed:
                    self.succeeded.append(current)
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_successes(self, count: int, timeout: float = 60) -> None:
        with self._changed:
            self._changed.wait_for(
                lambda: len(self.succeeded) >= count
                or not self._reader.is_alive(), timeout)

    def finish(self) -> list[Path]:
        self.process.wait(60)
        self._reader.join(60)
        return self.succeeded


# The verdict ---------------------------------------------------------------

@dataclass
class StoreCheck:
    """What one check found: instances visible (each read whole and
    compared), of them acknowledged, files set aside by recovery."""

    instances: int
    acknowledged: int
    recovered_files: int


def _visible(archive: Archive) -> set[str]:
    return {a["SOPInstanceUID"] for a in archive.find("instance")}


def check_contents(archive: Archive, acknowledged: set[str]) -> set[str]:
    """Every acknowledged instance is there; every instance find shows
    has its record and reads back whole, as its generator made it; the
    counters agree with the records."""
    found = _visible(archive)
    missing = acknowledged - found
    assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
    stats = archive.stats()
    assert stats.instances == len(found)
    logical = 0
    for uid in found:
        record = archive.record(uid)
        digest = hashlib.sha256(archive.get(uid)).hexdigest()
        assert digest == record["sha256"] == expected_digest(uid), uid
        logical += record["size"]
    assert stats.logical_bytes == logical
    _check_levels(archive, found)
    return found


def check_store(path: Path, acknowledged: set[str], *, recover: bool = True,
                **options: object) -> StoreCheck:
    """The verdict after a crash, first as a reader sees the store before
    any recovery, then (``recover``) opened for writing as the next
    ingest opens it, which cuts off what no commit covers. Recovery must
    not change what any API shows."""
    with Archive(path, readonly=True) as reader:
        found = check_contents(reader, acknowledged)
        before = reader.stats()
    if recover:
        with Archive(path, **options) as archive:
            assert _visible(archive) == found, "recovery changed the store"
            stats = archive.stats()
            if before.segments == 0:
                # Killed before the store registered its first segment:
                # this open registers it.
                before = dataclasses.replace(
                    before, segments=1, stored_bytes=stats.stored_bytes)
            assert stats == before
            segments = sorted((path / "segments").glob("*.seg"))
            assert stats.segments == len(segments)
            assert stats.stored_bytes == sum(s.stat().st_size
                                             for s in segments)
    recovered = path / "recovered"
    return StoreCheck(len(found), len(acknowledged & found),
                      len(list(recovered.iterdir()))
                      if recovered.exists() else 0)


def _check_levels(archive: Archive, found: set[str]) -> None:
    """Series and study answers count what the instance level shows."""
    series = archive.find("series")
    assert sum(int(s["NumberOfSeriesRelatedInstances"])
               for s in series) == len(found)
    studies = archive.find("study")
    assert sum(int(s["NumberOfStudyRelatedInstances"])
               for s in studies) == len(found)
    expected_series = {f"{ROOT}.{s}.0.{k}" for s, k, _ in
                       map(parse_uid, found)}
    assert {s["SeriesInstanceUID"] for s in series} == expected_series


# Figures for docs/reliability.md -------------------------------------------

REPORT_ENV = "PACSSTORE_RELIABILITY_REPORT"


def report(test: str, **figures: object) -> None:
    """Append the figures of a test to the file scripts/reliability.sh
    names in $PACSSTORE_RELIABILITY_REPORT (nothing without it)."""
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"test": test, **figures}) + "\n")
