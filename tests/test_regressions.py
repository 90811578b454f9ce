"""Every input that once broke the walker, the header decoder or the store,
replayed.

The inputs are the files of tests/data/regressions/, each described in
that folder's README.md (what it broke, where it came from). Each one is
walked as a Part 10 file and as a bare dataset in every claimed syntax,
its header decoded, and it is stored; all of it is held to
tests/invariants.py. A file in the folder that the README does not
describe fails the suite, so that no input arrives without its origin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import invariants
from pacsstore import Archive
from pacsstore.errors import MalformedDicomError
from pacsstore.parsing import read_header

REGRESSIONS = Path(__file__).resolve().parent / "data" / "regressions"
INPUTS = sorted(p for p in REGRESSIONS.iterdir() if p.suffix == ".dcm")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_regressions_are_all_described_in_the_readme():
    readme = (REGRESSIONS / "README.md").read_text(encoding="utf-8")
    undescribed = [p.name for p in INPUTS if f"`{p.name}`" not in readme]
    assert INPUTS and undescribed == []


@pytest.mark.parametrize("path", INPUTS, ids=[p.name for p in INPUTS])
def test_regression_walks_decodes_and_stores_or_is_refused(path, tmp_path):
    data = path.read_bytes()
    invariants.check_walk_and_split(data)
    for syntax in invariants.BARE_SYNTAXES:
        invariants.walk(data, syntax)
    try:
        read_header(data)
    except MalformedDicomError as error:
        invariants.check_malformed(error, len(data))
    with Archive(tmp_path / "store") as archive:
        invariants.store_or_refuse(archive, data, {})
