"""Profiles of pacsstore's side of the benchmark rows, with py-spy (the
``bench`` extra), for explaining a missed target.

    python -m benchmarks.profile SCENARIO [--seconds N] [--raw FILE]

runs the scenario with py-spy attached (``py-spy record --format raw``)
and prints where the busy samples fell: by line (a line that calls into
C, such as hashlib or zstd, carries the time of that call) and by
function including its callees; samples of threads that were waiting
(on a lock, a queue, a socket) are counted apart, by where they waited.

Scenarios: ``parse`` (the corpus), ``store_many`` (the CT study),
``store_many_small`` (the 2-40 KB reports), ``get`` (the CT study),
``frame`` (frames of the 256 MiB object), ``store_large`` (the 256 MiB
object by path), ``node`` (the node receiving the CT study from
storescu), ``node4`` (the same in four associations at once),
``node_small`` (1,000 small instances) and ``node_find``
(C-FIND over DIMSE on the 20,000-instance index of the cfind rows,
which a run of that family must have built).

``--gil`` records only the thread holding the GIL (py-spy's own
``--gil``): where a row that leaves a core idle waits on Python.

The in-process scenarios prepare (a store to read from, data loaded)
before py-spy attaches, then loop for ``--seconds``; the node scenarios
record ``pacsstore serve`` for as long as one client run takes.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks import data
from benchmarks.data import SMALLER_FRAMES, Datasets
from benchmarks.peers import pacsstore_node
from benchmarks.run import quiet_pydicom
from benchmarks.sending import find_latencies, send, send_parallel, split

PY_SPY = Path(sys.executable).with_name("py-spy")
RATE = 250  # samples per second
# py-spy's own options for every recording; --gil adds "--gil" (only the
# samples of the thread holding the GIL), which shows where a row whose
# cores are not all busy waits on Python.
_py_spy_options: tuple[str, ...] = ()
TOP = 16

# Leaves of a stack whose thread is waiting, not working: functions of
# these names, and methods whose own name is one of WAITING_METHODS.
WAITING = frozenset(("_worker", "SimpleQueue.get", "Queue.get",
                     "Future.result"))
WAITING_METHODS = frozenset(("wait", "join", "select", "poll", "sleep",
                             "accept", "recv", "recv_into",
                             "_wait_for_work"))

Work = Callable[[], None]


# In-process scenarios: prepare, then return the work to loop over -----------

def parse(scratch: Path) -> Work:
    from pacsstore.errors import MalformedDicomError
    from pacsstore.parsing import read_header
    contents = [f.path.read_bytes() for f in data.corpus_files()]

    def work() -> None:
        for content in contents:
            with contextlib.suppress(MalformedDicomError):
                read_header(content)
    return work


def _storing(scratch: Path, store: Callable[[object], None]) -> Work:
    from pacsstore import Archive
    runs = iter(range(1 << 30))

    def work() -> None:
        folder = scratch / f"store-{next(runs)}"
        with Archive(folder) as archive:
            store(archive)
        shutil.rmtree(folder)
    return work


def store_many(scratch: Path) -> Work:
    paths = Datasets().ct_study()
    return _storing(scratch, lambda archive: archive.store_many(paths))


def store_many_small(scratch: Path) -> Work:
    paths = Datasets().reports()
    return _storing(scratch, lambda archive: archive.store_many(paths))


def store_large(scratch: Path) -> Work:
    path = Datasets().multiframe(SMALLER_FRAMES)
    return _storing(scratch, lambda archive: archive.store(path))


def get(scratch: Path) -> Work:
    from pacsstore import Archive
    with Archive(scratch / "store") as archive:
        results = archive.store_many(Datasets().ct_study())
    uids = [r.sop_instance_uid for r in results]
    reader = Archive(scratch / "store", readonly=True)

    def work() -> None:
        for uid in uids:
            reader.get(uid)
    return work


def frame(scratch: Path) -> Work:
    from pacsstore import Archive
    datasets = Datasets()
    uid = datasets.multiframe_uid(SMALLER_FRAMES)
    with Archive(scratch / "store") as archive:
        archive.store(datasets.multiframe(SMALLER_FRAMES))
    reader = Archive(scratch / "store", readonly=True)

    def work() -> None:
        for index in range(0, SMALLER_FRAMES, 32):
            reader.frame(uid, index)
    return work


IN_PROCESS = {f.__name__: f for f in (parse, store_many, store_many_small,
                                      store_large, get, frame)}


def _child(scenario: str, seconds: float, scratch: Path) -> None:
    """Prepare, say so, wait for py-spy to attach, then work."""
    work = IN_PROCESS[scenario](scratch)
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        work()


def _in_process(scenario: str, seconds: float, raw: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.profile", scenario,
         "--seconds", str(seconds), "--run"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":
            raise click.ClickException(f"the {scenario} scenario failed")
        with _py_spy_attached(child.pid, raw):
            child.stdin.write("go\n")
            child.stdin.flush()
            child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# Node scenarios: py-spy attached to pacsstore serve --------------------------

def node(scratch: Path, raw: Path) -> None:
    _node_receiving(Datasets().ct_study(), scratch, raw)


def node4(scratch: Path, raw: Path) -> None:
    ct = Datasets().ct_study()
    with pacsstore_node(scratch / "store") as endpoint:
        with _py_spy_attached(endpoint.pid, raw):
            send_parallel(endpoint, split(ct, 4))


def node_small(scratch: Path, raw: Path) -> None:
    _node_receiving(Datasets().small_instances(), scratch, raw)


def node_find(scratch: Path, raw: Path) -> None:
    from benchmarks import cfind_population
    from benchmarks.suite.cfind import SMALL
    store = Datasets().root / f"cfind-pacsstore-{SMALL}" / "store"
    if not store.exists():
        raise click.ClickException("run the cfind family once first; it "
                                   "builds the index")
    requests = []
    for number, request in enumerate(cfind_population.queries()):
        request.file_meta = FileMetaDataset()
        request.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        requests.append(scratch / f"request-{number}.dcm")
        request.save_as(requests[-1], enforce_file_format=False)
    with pacsstore_node(store, scratch / "node.log") as endpoint:
        with _py_spy_attached(endpoint.pid, raw):
            find_latencies(endpoint, requests * 100, scratch / "log.cfg")


ATTACHED = {f.__name__: f for f in (node, node4, node_small, node_find)}


def _node_receiving(paths: list[Path], scratch: Path, raw: Path) -> None:
    with pacsstore_node(scratch / "store") as endpoint:
        with _py_spy_attached(endpoint.pid, raw):
            send(endpoint, paths)


@contextlib.contextmanager
def _py_spy_attached(pid: int, raw: Path) -> Iterator[None]:
    """py-spy recording process ``pid`` while the block runs."""
    process = subprocess.Popen(
        [str(PY_SPY), "record", "--format", "raw", "--rate", str(RATE),
         "--output", str(raw), "--pid", str(pid), *_py_spy_options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached before the work starts
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # writes what it has
        process.wait(60)


# Summary ---------------------------------------------------------------------

def summary(raw: Path) -> list[str]:
    """Where the busy samples fell, by line and by function; where the
    waiting ones waited."""
    by_line: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    waiting: collections.Counter[str] = collections.Counter()
    for frames, samples in _stacks(raw):
        leaf = frames[-1]
        if _waiting(leaf):
            waiting[_caller(frames)] += samples
            continue
        by_line[leaf] += samples
        for function in {_function(f) for f in frames
                         if not _launcher(f)}:
            by_function[function] += samples
    busy = sum(by_line.values())
    lines = [f"{busy} busy samples, {sum(waiting.values())} waiting", "",
             "busy, by line (C calls made on the line included):"]
    lines += _shares(by_line, busy)
    lines += ["", "busy, by function (callees included):"]
    lines += _shares(by_function, busy)
    lines += ["", "waiting, by the call that waited:"]
    lines += _shares(waiting, sum(waiting.values()) or 1)
    return lines


def _stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack.split(";"), int(count)


def _shares(counter: collections.Counter, total: int) -> list[str]:
    return [f"  {100 * n / total:5.1f}%  {name}"
            for name, n in counter.most_common(TOP)]


def _name(frame: str) -> str:
    return frame.partition(" (")[0]


def _waiting(frame: str) -> bool:
    name = _name(frame)
    return name in WAITING or name.rpartition(".")[2] in WAITING_METHODS


def _function(frame: str) -> str:
    """``name (file:line)`` without the line: one entry per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def _launcher(frame: str) -> bool:
    """Frames of this module, runpy and click, in every stack alike."""
    return any(part in frame for part in
               ("(<frozen ", "(click/", "(benchmarks/profile.py", "(<string>"))


def _caller(frames: list[str]) -> str:
    """The frame below the waits: who waited."""
    for frame in reversed(frames):
        if not _waiting(frame):
            return frame
    return frames[0]


@click.command()
@click.argument("scenario", type=click.Choice(
    sorted(IN_PROCESS) + sorted(ATTACHED)))
@click.option("--seconds", type=click.FloatRange(0, min_open=True),
              default=20, show_default=True,
              help="How long an in-process scenario loops; a node "
                   "scenario records one client run, however long.")
@click.option("--raw", type=click.Path(path_type=Path, dir_okay=False),
              default=None,
              help="Keep py-spy's raw (collapsed stacks) output here.")
@click.option("--gil", is_flag=True,
              help="Only samples of the thread holding the GIL.")
@click.option("--run", "child", is_flag=True, hidden=True)
def main(scenario: str, seconds: float, raw: Path | None, gil: bool,
         child: bool) -> None:
    """Profile pacsstore's side of a benchmark row with py-spy."""
    global _py_spy_options
    if raw is not None and not raw.parent.is_dir():
        # Found before the scenario runs, not after it.
        raise click.BadParameter(f"{raw.parent} is not a folder",
                                 param_hint="--raw")
    quiet_pydicom()
    _py_spy_options = ("--gil",) if gil else ()
    with tempfile.TemporaryDirectory(prefix="pacsstore-profile-") as tmp:
        scratch = Path(tmp)
        if child:
            _child(scenario, seconds, scratch)
            return
        raw = raw or scratch / "profile.txt"
        if scenario in ATTACHED:
            ATTACHED[scenario](scratch, raw)
        else:
            _in_process(scenario, seconds, raw)
        if not raw.exists():
            raise click.ClickException(
                f"py-spy wrote no profile to {raw}: is it installed "
                f"({PY_SPY}), and may it attach to a process here?")
        for line in summary(raw):
            click.echo(line)


if __name__ == "__main__":
    main()
