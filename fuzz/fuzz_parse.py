#!/usr/bin/env python3
"""Coverage-guided fuzzing of the native walker and the header decoder.

Each input is walked as a Part 10 file (``parsing.read_header``: the walk,
then the decoding of the query attributes), and as a bare dataset in each
transfer syntax a C-STORE can claim (``pacsstore._parse.parse`` with a
syntax). Every result is held to tests/invariants.py: offsets inside the
buffer, fragments in order and in bounds, and a header/frame split that
splices back to the input exactly. Any exception other than
MalformedDicomError, a failed check, a sanitizer report or a timeout is a
finding that libFuzzer saves as a crash file.

Run it through scripts/fuzz.sh, which builds the native core with
libFuzzer's coverage instrumentation (and ASan + UBSan) in a private copy
of the tree; see fuzz/README.md.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

with atheris.instrument_imports(include=["pacsstore", "invariants"]):
    import invariants
    from pacsstore import parsing
    from pacsstore.errors import MalformedDicomError


def test_one_input(data: bytes) -> None:
    try:
        header = parsing.read_header(data)
    except MalformedDicomError as error:
        invariants.check_malformed(error, len(data))
    else:
        invariants.check_result(header.result, data)
        invariants.check_split(data, header.result)
    for syntax in invariants.BARE_SYNTAXES:
        invariants.walk(data, syntax, bounded=False)


def main() -> None:
    # pydicom warns about every odd character set it is shown; a finding
    # is an exception, and the warnings only slow the run and bury it.
    warnings.simplefilter("ignore")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
