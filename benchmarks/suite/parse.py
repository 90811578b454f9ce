"""Header parse: pacsstore's walker against pydicom, from bytes in memory.

pacsstore reads the file meta, the query attributes (decoded to Python
values) and the pixel layout (``pacsstore.parsing.read_header``).
pydicom's fastest comparable read is ``dcmread(stop_before_pixels=True)``,
which decodes no value until one is asked for, so it does less than
pacsstore; the second peer is a full ``dcmread`` that then asks for the
attributes pacsstore decoded. Both sides read the same files, the ones
each of them reads, already in memory, so no disk is timed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pydicom

from benchmarks import data
from benchmarks.measure import Stopwatch, measure
from benchmarks.rows import Comparison, Row, Target, rate
from benchmarks.suite import Context
from pacsstore.errors import MalformedDicomError
from pacsstore.parsing import read_header

TARGET = Target(">=", 30)


@dataclass(frozen=True)
class Parsed:
    content: bytes
    force: bool
    keywords: tuple[str, ...]  # what pacsstore decoded
    uid: str | None


def run(context: Context) -> list[Row]:
    corpus = [(f.path.read_bytes(), f.needs_force)
              for f in data.corpus_files()]
    ct = [(p.read_bytes(), False) for p in context.data.ct_study()]
    rows = [_row("parse.ct", "CT study", ct, context.repeat)]
    if corpus:
        rows.insert(0, _row("parse.corpus", "corpus", corpus,
                            context.repeat))
    return rows


def _row(key: str, name: str, files: list[tuple[bytes, bool]],
         repeat: int) -> Row:
    parsed = [p for p in map(_first_parse, files) if p is not None]
    disagree = _uid_disagreements(parsed)
    ours = measure(_trial(_pacsstore, parsed), repeat)
    lazy = measure(_trial(_pydicom_header, parsed), repeat)
    full = measure(_trial(_pydicom_full, parsed), repeat)
    megabytes = sum(len(p.content) for p in parsed) / 1e6
    row = Row(key, f"header parse, {name} ({len(parsed):,} files, "
                   f"{megabytes:,.0f} MB)",
              rate("files/s", len(parsed)), ours, [
                  Comparison("pydicom dcmread(stop_before_pixels)", lazy,
                             TARGET),
                  Comparison("pydicom dcmread, then the same attributes",
                             full)])
    skipped = len(files) - len(parsed)
    if skipped:
        row.notes.append(f"{skipped} file(s) pydicom reads but pacsstore "
                         f"refuses as malformed are left out of both sides")
    row.notes.append(f"SOP Instance UIDs read by both agree on "
                     f"{len(parsed) - disagree} of {len(parsed)} files")
    return row


def _first_parse(item: tuple[bytes, bool]) -> Parsed | None:
    content, force = item
    try:
        header = read_header(content)
    except MalformedDicomError:
        return None
    return Parsed(content, force, tuple(header.attributes),
                  header.sop_instance_uid)


def _trial(parse, parsed: list[Parsed]):
    def trial(watch: Stopwatch) -> None:
        with watch:
            for item in parsed:
                parse(item)
    trial.__name__ = parse.__name__
    return trial


def _pacsstore(item: Parsed) -> None:
    read_header(item.content)


def _pydicom_header(item: Parsed) -> None:
    pydicom.dcmread(io.BytesIO(item.content), stop_before_pixels=True,
                    force=item.force)


def _pydicom_full(item: Parsed) -> None:
    ds = pydicom.dcmread(io.BytesIO(item.content), force=item.force)
    for keyword in item.keywords:
        ds.get(keyword)


def _uid_disagreements(parsed: list[Parsed]) -> int:
    count = 0
    for item in parsed:
        ds = pydicom.dcmread(io.BytesIO(item.content),
                             stop_before_pixels=True, force=item.force)
        theirs = ds.get("SOPInstanceUID")
        if (str(theirs) if theirs else None) != item.uid:
            count += 1
    return count
