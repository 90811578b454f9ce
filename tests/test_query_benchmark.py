"""The C-FIND benchmark's population and query (benchmarks/
cfind_population.py) on a small store, so that they cannot rot: the
generated files are instances pydicom reads, they land in the index as
generated, and every timed request answers."""

from __future__ import annotations

import copy
import importlib.util
import io

import pydicom

from corpus import PROJECT_ROOT
from pacsstore import Archive
from pacsstore.store.cfind import find_identifiers


def _population():
    path = PROJECT_ROOT / "benchmarks" / "cfind_population.py"
    spec = importlib.util.spec_from_file_location("cfind_population", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _found(archive: Archive, request) -> set[str]:
    return {r.StudyInstanceUID for r in
            find_identifiers(archive, request, model="study")}


def _expected(studies: list[dict], request) -> set[str]:
    surname = str(request.PatientName)[:-1].casefold()
    year = request.StudyDate[:4]
    return {s["StudyInstanceUID"] for s in studies
            if s["PatientName"].casefold().startswith(surname)
            and s["StudyDate"].startswith(year)}


def test_query_benchmark_population_and_timing(tmp_path):
    population = _population()
    first = next(population._instances(1, seed=3))
    ds = pydicom.dcmread(io.BytesIO(first))
    assert ds.PatientName and ds.StudyDate and ds.Rows == 8
    store = tmp_path / "store"
    made = population.populate(store, 400, seed=3)
    assert made["instances"] == 400
    with Archive(store, readonly=True) as archive:
        assert len(archive.find("instance")) == 400
        studies = archive.find("study")
        assert sum(s["NumberOfStudyRelatedInstances"] for s in studies) \
            == 400
        # Each timed request (and one for a study that is there) is
        # answered as a scan of the studies would answer it.
        requests = population.queries()
        there = copy.deepcopy(requests[0])
        there.PatientName = studies[0]["PatientName"].split("^")[0] + "*"
        year = studies[0]["StudyDate"][:4]
        there.StudyDate = f"{year}0101-{year}1231"
        for request in [there, *requests]:
            assert _found(archive, request) == _expected(studies, request)
        assert studies[0]["StudyInstanceUID"] in _found(archive, there)
    timings = population.time_query(store, rounds=1)
    assert len(timings) == len(population.queries())
    assert all(t > 0 for t in timings)
