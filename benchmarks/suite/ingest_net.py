"""Ingest over the network: DCMTK's storescu sends to each receiver, and
the time is storescu's, from its start until it exits with every
instance acknowledged.

Receivers: ``pacsstore serve`` (durable before it answers), DCMTK's
storescp (plain files, no index, no fsync), Orthanc (SQLite index,
files fdatasynced), pynetdicom in its storescp pattern, and three that
bound what a durable answer costs: the durable floor (the node's
network path in front of a write of each dataset into space zeroed
beforehand and an fdatasync, and nothing else; benchmarks.durable_floor
says which durable writes it was chosen against), the same node keeping
nothing, and storescp --ignore (DCMTK's network path and decode,
nothing written). Each repetition gets a new, empty receiver, and what
it holds afterwards is counted: a run in which a receiver lost an
instance fails rather than being timed.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.data import total_bytes
from benchmarks.measure import Sample, Stopwatch, measure
from benchmarks.durable_floor import count_records
from benchmarks.peers import (Endpoint, durable_floor, orthanc,
                              pacsstore_node, pynetdicom_scp, storescp)
from benchmarks.rows import Comparison, Row, Target, rate
from benchmarks.sending import send_parallel, split
from benchmarks.suite import Context
from pacsstore import Archive

ASSOCIATIONS = 4
DURABILITY = ("pacsstore answers once an instance is durable; storescp "
              "and pynetdicom write to the page cache and never sync; "
              "Orthanc fdatasyncs its files, not its index")
DURABLE_FLOOR = "durable floor: the network path, a write, fdatasync"
NETWORK_ONLY = "the node's network path alone, nothing kept"
STORESCP_IGNORE = "DCMTK storescp --ignore: its network path and decode"
STORESCP_TARGET = Target(">=", 0.8)
ORTHANC_TARGET = Target(">=", 3)


@dataclass(frozen=True)
class Received:
    """Where a receiver listens, and how many instances it holds once it
    has stopped (None for one that keeps nothing)."""

    endpoint: Endpoint
    count: Callable[[], int | None]


Receiver = Callable[[Path], contextlib.AbstractContextManager[Received]]


def run(context: Context) -> list[Row]:
    ct = context.data.ct_study()
    small = context.data.small_instances()
    return [_one_association(context, ct), _four_associations(context, ct),
            _small_instances(context, small)]


def _one_association(context: Context, ct: list[Path]) -> Row:
    time = _timer(context, [ct])
    bar, orthanc_time = time(_storescp), time(_orthanc)
    floor, network = time(_durable_floor(ct)), time(_network_only)
    dcmtk_network = time(_storescp_ignore)
    return Row("ingest_net.ct", f"C-STORE ingest, 1 association, "
               f"{len(ct)} CT slices ({total_bytes(ct) / 1e6:,.0f} MB)",
               rate("MB/s", total_bytes(ct) / 1e6), time(_pacsstore), [
                   Comparison("DCMTK storescp", bar, STORESCP_TARGET),
                   Comparison("Orthanc (C-STORE)", orthanc_time,
                              ORTHANC_TARGET),
                   Comparison("pynetdicom, dataset bytes to a file",
                              time(_pynetdicom_files)),
                   Comparison("DCMTK storescp --bit-preserving",
                              time(_storescp_bit_preserving)),
                   Comparison(DURABLE_FLOOR, floor),
                   Comparison(NETWORK_ONLY, network),
                   Comparison(STORESCP_IGNORE, dcmtk_network),
               ], [DURABILITY, _floor_note(
                   len(ct), floor, network, dcmtk_network,
                   [("storescp", bar, STORESCP_TARGET),
                    ("Orthanc", orthanc_time, ORTHANC_TARGET)])])


def _four_associations(context: Context, ct: list[Path]) -> Row:
    time = _timer(context, split(ct, ASSOCIATIONS))
    bar = time(_storescp_fork)
    floor, network = time(_durable_floor(ct)), time(_network_only)
    dcmtk_network = time(_storescp_fork_ignore)
    return Row("ingest_net.ct4", f"C-STORE ingest, {ASSOCIATIONS} "
               f"associations at once, {len(ct)} CT slices",
               rate("MB/s", total_bytes(ct) / 1e6), time(_pacsstore), [
                   Comparison(f"DCMTK storescp --fork ({ASSOCIATIONS} "
                              f"storescu)", bar, STORESCP_TARGET),
                   Comparison("Orthanc (C-STORE)", time(_orthanc)),
                   Comparison(DURABLE_FLOOR, floor),
                   Comparison(NETWORK_ONLY, network),
                   Comparison(f"{STORESCP_IGNORE}, --fork", dcmtk_network),
               ], [DURABILITY, _floor_note(
                   len(ct), floor, network, dcmtk_network,
                   [("storescp --fork", bar, STORESCP_TARGET)])])


def _small_instances(context: Context, small: list[Path]) -> Row:
    time = _timer(context, [small])
    bar = time(_storescp)
    floor, network = time(_durable_floor(small)), time(_network_only)
    dcmtk_network = time(_storescp_ignore)
    return Row("ingest_net.small", f"C-STORE ingest, 1 association, "
               f"{len(small):,} small instances "
               f"({total_bytes(small) / len(small) / 1e3:.1f} KB each)",
               rate("instances/s", len(small)), time(_pacsstore), [
                   Comparison("DCMTK storescp", bar, STORESCP_TARGET),
                   Comparison("pynetdicom, a handler that does nothing",
                              time(_pynetdicom_nothing)),
                   Comparison("Orthanc (C-STORE)", time(_orthanc)),
                   Comparison(DURABLE_FLOOR, floor),
                   Comparison(NETWORK_ONLY, network),
                   Comparison(STORESCP_IGNORE, dcmtk_network),
               ], [DURABILITY, _floor_note(
                   len(small), floor, network, dcmtk_network,
                   [("storescp", bar, STORESCP_TARGET)])])


def _floor_note(instances: int, floor: Sample, network: Sample,
                dcmtk_network: Sample,
                targets: list[tuple[str, Sample, Target]]) -> str:
    """What the durable floor says of the row's targets, from the
    medians of this run. A durable write costs what the floor takes
    more than the node's network path alone; added to DCMTK's network
    path and decode (storescp --ignore), it gives the best a receiver as
    fast as DCMTK on the network could do while it answers only once an
    instance is durable. The better of that and the floor is read
    against each target."""
    durable_write = max(0.0, floor.median - network.median)
    estimate = dcmtk_network.median + durable_write
    best = min(floor.median, estimate)
    reached = [f"{peer.median / best:.2f}x {name}"
               for name, peer, _ in targets]
    missed = [f"{target.bound:g}x {name}" for name, peer, target in targets
              if not target.met(peer.median / best)]
    verdict = (f"so in this run a receiver that answers only once an "
               f"instance is durable would not reach {' or '.join(missed)}"
               if missed else
               "so the targets were within reach of such a receiver in "
               "this run")
    return ("durable floor: the node's network path in front of an archive "
            "that only writes each dataset into a file zeroed beforehand "
            "and fdatasyncs it before answering (no parse, digest, "
            "compression or index); network path alone: the same archive "
            "keeping nothing; storescp --ignore: DCMTK's network path "
            "and its decode of each dataset, nothing written. The floor "
            "took "
            f"{durable_write / instances * 1e3:.2f} ms an instance more "
            "than the node's network path alone (wall time, all "
            "associations together); storescp --ignore's time with that "
            f"added is {estimate:.3g} s, the floor's {floor.median:.3g} s. "
            f"The better of the two would be {' and '.join(reached)}, "
            f"{verdict}")


def _timer(context: Context,
           groups: list[list[Path]]) -> Callable[[Receiver], Sample]:
    """Times sending ``groups`` (one storescu each, all at once) to a
    new receiver of the given kind, ``context.repeat`` times."""
    expected = sum(len(g) for g in groups)

    def time(receiver: Receiver) -> Sample:
        name = receiver.__name__.strip("_")

        def trial(watch: Stopwatch) -> None:
            folder = context.folder(name)
            folder.mkdir(parents=True)
            try:
                with receiver(folder) as received:
                    with watch:
                        send_parallel(received.endpoint, groups)
                count = received.count()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if count is not None and count != expected:
                raise RuntimeError(f"{name} holds {count} of the "
                                   f"{expected} instances sent")
        trial.__name__ = name
        return measure(trial, context.repeat)
    return time


def _files_in(folder: Path) -> Callable[[], int]:
    return lambda: sum(1 for p in folder.iterdir() if p.is_file())


@contextlib.contextmanager
def _pacsstore(folder: Path) -> Iterator[Received]:
    store = folder / "store"

    def count() -> int:
        with Archive(store, readonly=True) as archive:
            return archive.stats().instances
    with pacsstore_node(store) as endpoint:
        yield Received(endpoint, count)


def _storescp_receiver(name: str, **options: bool) -> Receiver:
    """A receiver that is a storescp started with ``options``
    (peers.storescp), counted by the files it wrote; with ``ignore`` it
    writes none, so there is nothing to count."""
    @contextlib.contextmanager
    def receiver(folder: Path) -> Iterator[Received]:
        received = folder / "received"
        count = ((lambda: None) if options.get("ignore")
                 else _files_in(received))
        with storescp(received, **options) as endpoint:
            yield Received(endpoint, count)
    receiver.__name__ = name
    return receiver


_storescp = _storescp_receiver("storescp")
_storescp_fork = _storescp_receiver("storescp_fork", fork=True)
_storescp_bit_preserving = _storescp_receiver("storescp_bit_preserving",
                                              bit_preserving=True)
_storescp_ignore = _storescp_receiver("storescp_ignore", ignore=True)
_storescp_fork_ignore = _storescp_receiver("storescp_fork_ignore",
                                           fork=True, ignore=True)


@contextlib.contextmanager
def _orthanc(folder: Path) -> Iterator[Received]:
    held: list[int] = []
    with orthanc(folder, compression=False) as peer:
        yield Received(peer.endpoint, lambda: held[0])
        held.append(peer.statistics()["CountInstances"])


@contextlib.contextmanager
def _pynetdicom_files(folder: Path) -> Iterator[Received]:
    output = folder / "received"
    with pynetdicom_scp(output, folder / "scp.log") as endpoint:
        yield Received(endpoint, _files_in(output))


def _durable_floor(sent: list[Path]) -> Receiver:
    """The durable floor, its log made large enough beforehand for the
    datasets of ``sent`` (each smaller than its file) and their record
    lengths."""
    size = total_bytes(sent) + 8 * len(sent)

    @contextlib.contextmanager
    def durable_floor_receiver(folder: Path) -> Iterator[Received]:
        log = folder / "received.log"
        with durable_floor(log, size, folder / "floor.log") as endpoint:
            yield Received(endpoint, lambda: count_records(log))
    return durable_floor_receiver


@contextlib.contextmanager
def _network_only(folder: Path) -> Iterator[Received]:
    with durable_floor(None, 0, folder / "network.log") as endpoint:
        yield Received(endpoint, lambda: None)


@contextlib.contextmanager
def _pynetdicom_nothing(folder: Path) -> Iterator[Received]:
    with pynetdicom_scp(None, folder / "scp.log") as endpoint:
        yield Received(endpoint, lambda: None)
