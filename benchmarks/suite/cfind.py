"""C-FIND at study level on a large index: a wildcard PatientName and a
one-year StudyDate range, against Orthanc on the same data.

The population and the requests are benchmarks/cfind_population.py's
(``populate``, ``queries``, ``time_query``): small instances of an
archive-like mix, stored through ``Archive.store_many``. The rows:

- the index of 1,000,000 instances (100,000 in a quick run), queried in
  process through the node's own C-FIND path (``time_query``: matching
  and response Identifiers), against the absolute target;
- the same index over DIMSE, pacsstore's node against Orthanc holding
  the same instances (uploaded once through its REST API): DCMTK's
  findscu sends the requests in one association and each is timed from
  its log, beside echoscu's C-ECHO round trip for the floor. Each
  request's matches are compared between the two;
- the same exchange on an index of 20,000 instances, without a target:
  a small index, where Orthanc's scan is short and the fixed cost of a
  request is most of both sides' time.

Building the populations takes minutes (filling Orthanc with a million
instances, about twenty), so each is kept in the data folder, under a
key of everything that decides its content: its size and seed, the
population module, and pacsstore's engine sources (a store is built
again when the engine changed) or Orthanc's version.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks import machine
from benchmarks.data import PROJECT
from benchmarks.measure import Sample
from benchmarks.peers import Endpoint, orthanc, pacsstore_node
from benchmarks.rows import Comparison, Row, Target, duration
from benchmarks.sending import echo_latencies, find_latencies, upload_bytes
from benchmarks.suite import Context, Skipped
from pacsstore import Archive

LARGE = 1_000_000
LARGE_QUICK = 100_000
SMALL = 20_000
SEED = 1
ROUNDS = 10  # passes over the requests; each request is timed


def run(context: Context) -> Iterator[Row]:
    population = _population_module()
    large = LARGE_QUICK if context.quick else LARGE
    large_store, built = _pacsstore_population(context, population, large)
    yield _large_row(population, large, large_store, built)
    yield _dimse_row(context, population, large, Target(">=", 10))
    yield _dimse_row(context, population, SMALL, None)


def _population_module() -> ModuleType:
    try:
        return importlib.import_module("benchmarks.cfind_population")
    except ModuleNotFoundError:
        raise Skipped("benchmarks/cfind_population.py is absent") from None


def _large_row(population: ModuleType, size: int, store: Path,
               built: str) -> Row:
    timings = population.time_query(store, rounds=ROUNDS)
    matches = _matches(store, population.queries())
    return Row(
        "cfind.large", f"C-FIND at study level, wildcard PatientName + "
        f"StudyDate range, {size:,}-instance index, in process",
        duration(), Sample.of(timings), [Comparison(
            "(absolute)", None, Target("<", 0.010, absolute=True))],
        [f"per request, {len(timings)} requests "
         f"({len(matches)} requests x {ROUNDS}) matching "
         f"{', '.join(map(str, matches))} studies; matching and response "
         f"Identifiers, as the node runs them; {built}"])


def _matches(store: Path, requests: list) -> list[int]:
    # The node's C-FIND path, which the population module needs too.
    from pacsstore.store.cfind import find_identifiers

    with Archive(store, readonly=True) as archive:
        return [sum(1 for _ in find_identifiers(archive, r, model="study"))
                for r in requests]


def _dimse_row(context: Context, population: ModuleType, size: int,
               target: Target | None) -> Row:
    """pacsstore's node and Orthanc, each holding the population of
    ``size`` instances, queried over DIMSE by the same client."""
    store, _ = _pacsstore_population(context, population, size)
    root = _orthanc_population(context, population, size)
    requests = population.queries()
    files = _request_files(context, requests)
    log = context.folder("dcmtk-log.cfg")
    with pacsstore_node(store, context.folder("cfind-node.log")) \
            as endpoint:
        ours, our_matches = _find_rounds(endpoint, files, log)
        our_echo = echo_latencies(endpoint, len(ours), log)
    with orthanc(root, compression=False) as peer:
        theirs, their_matches = _find_rounds(peer.endpoint, files, log)
        their_echo = echo_latencies(peer.endpoint, len(theirs), log)
    agree = sum(a == b for a, b in zip(our_matches, their_matches))
    return Row(
        f"cfind.orthanc.{size}", f"C-FIND at study level over DIMSE, "
        f"{size:,}-instance index on both sides", duration(),
        Sample.of(ours), [
            Comparison("Orthanc C-FIND, same index and requests",
                       Sample.of(theirs), target),
            Comparison("C-ECHO round trip to the node, same client",
                       Sample.of(our_echo)),
            Comparison("C-ECHO round trip to Orthanc, same client",
                       Sample.of(their_echo)),
        ], [f"per request, timed by DCMTK's findscu (and echoscu) from "
            f"its own log, {len(ours)} requests in one association after "
            f"an untimed pass; Orthanc holds the same {size:,} "
            f"instances; the two answer the same number of matches for "
            f"{agree} of {len(requests)} requests (pacsstore "
            f"{', '.join(map(str, our_matches))}; Orthanc "
            f"{', '.join(map(str, their_matches))})"])


def _find_rounds(endpoint: Endpoint, files: list[Path],
                 log: Path) -> tuple[list[float], list[int]]:
    """A first, untimed pass (it warms the peer and counts matches),
    then ``ROUNDS`` passes over the requests in one association."""
    _, matches = find_latencies(endpoint, files, log)
    seconds, _ = find_latencies(endpoint, files * ROUNDS, log)
    return seconds, matches


def _request_files(context: Context, requests: list) -> list[Path]:
    """The requests as files, as findscu reads them."""
    folder = context.folder("cfind-requests")
    folder.mkdir(parents=True)
    paths = []
    for number, request in enumerate(requests):
        request.file_meta = FileMetaDataset()
        request.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"request-{number}.dcm"
        request.save_as(path, enforce_file_format=False)
        paths.append(path)
    return paths


# Cached populations ----------------------------------------------------------

def _pacsstore_population(context: Context, population: ModuleType,
                          size: int) -> tuple[Path, str]:
    """A store holding the population, and how it came to be."""
    key = _key(size, _sources_digest())

    def build(folder: Path) -> dict:
        return population.populate(folder / "store", size, SEED)
    folder, recipe = _cached(context, f"cfind-pacsstore-{size}", key, build)
    return folder / "store", _built(recipe)


def _orthanc_population(context: Context, population: ModuleType,
                        size: int) -> Path:
    """Orthanc's storage area and index, holding the population."""
    key = _key(size, machine.versions()["Orthanc"])

    def build(folder: Path) -> dict:
        with orthanc(folder, compression=False) as peer:
            count = upload_bytes(peer, population._instances(size, SEED))
        return {"instances": count}
    folder, _ = _cached(context, f"cfind-orthanc-{size}", key, build)
    return folder


def _key(size: int, engine: str) -> dict:
    module = PROJECT / "benchmarks" / "cfind_population.py"
    return {"instances": size, "seed": SEED, "engine": engine,
            "population": hashlib.sha256(module.read_bytes()).hexdigest()}


# Modules of store/ that only read a store: a change to them cannot
# change what populate writes, so it does not cost the rebuild of the
# million-instance store (8-12 minutes here).
READ_ONLY_MODULES = frozenset(("reader.py", "readahead.py", "scratch.py",
                               "verify.py"))


def _sources_digest() -> str:
    """What decides the bytes and the index of a store: the engine
    (store/, but for the modules that only read), the parse of a header
    and the compiled walker and filter."""
    package = PROJECT / "src" / "pacsstore"
    sources = [*sorted(path for path in (package / "store").rglob("*.py")
                       if path.name not in READ_ONLY_MODULES),
               package / "parsing.py", package / "filemeta.py",
               *sorted(package.glob("_parse*.so")),
               *sorted(package.glob("_filters*.so"))]
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cached(context: Context, name: str, key: dict,
            build: Callable[[Path], dict]) -> tuple[Path, dict]:
    folder = context.data.root / name
    stamp = folder / "key.json"
    if stamp.exists():
        kept = json.loads(stamp.read_text())
        if kept.get("key") == key:
            return folder, {**kept["built"], "cached": True}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    built = build(folder)
    stamp.write_text(json.dumps({"key": key, "built": built}))
    return folder, {**built, "cached": False}


def _built(recipe: dict) -> str:
    seconds = recipe.get("seconds")
    made = f"built by populate in {seconds:,.0f} s" if seconds else "built"
    if recipe.get("cached"):
        return f"index {made} by an earlier run, kept in the data folder"
    return f"index {made} in this run"
