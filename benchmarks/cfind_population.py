"""A large index for the C-FIND benchmark, and the query it times.

``populate(store_path, instances, seed)`` fills a store through the real
store path (``Archive.store_many``) with small generated instances: Part
10 files in Explicit VR Little Endian with the header a modality writes
(patient, study, series, equipment and image attributes) and an 8 x 8
pixel matrix, which every instance shares (one deduplicated frame block),
so the cost measured is the header's: parse, digest, compress, index.
The files are encoded here directly from their elements (about 40 µs a
file), a small part of what storing one costs.

The population looks like an archive: patients with 1 to 4 studies
spread over 2015-2024, each study with 1 to 6 series of CT, MR, CR, DX,
US or SR, of 1 to 40 instances (a million instances make 5,614 patients
and 14,021 studies with seed 1).
Names come from 200 surnames (some with non-ASCII letters) and 100
given names, so that ``DOE*`` names about one patient in 200.

``time_query(store_path)`` runs study-level C-FIND requests through
``pacsstore.store.cfind.find_identifiers`` (the node's path, response
Identifiers built) with a wildcard PatientName and a one-year StudyDate
range, for surnames in turn, and returns the seconds each took.

    python -m benchmarks.cfind_population STORE --instances 1000000
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import Dataset

from pacsstore import Archive, UID_ROOT
from pacsstore.store.cfind import find_identifiers

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1", "SR": "1.2.840.10008.5.1.4.1.1.88.22",
}
BODY_PARTS = ("HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE", "SPINE")
SURNAMES = (
    "DOE", "SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA",
    "MILLER", "DAVIS", "RODRIGUEZ", "MARTINEZ", "HERNANDEZ", "LOPEZ",
    "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR", "MOORE",
    "JACKSON", "MARTIN", "LEE", "PEREZ", "THOMPSON", "WHITE", "HARRIS",
    "SANCHEZ", "CLARK", "RAMIREZ", "LEWIS", "ROBINSON", "WALKER", "YOUNG",
    "ALLEN", "KING", "WRIGHT", "SCOTT", "TORRES", "NGUYEN", "HILL",
    "FLORES", "GREEN", "ADAMS", "NELSON", "BAKER", "HALL", "RIVERA",
    "CAMPBELL", "MITCHELL", "CARTER", "ROBERTS", "MÜLLER", "SCHMIDT",
    "SCHNEIDER", "FISCHER", "WEBER", "MEYER", "WAGNER", "BECKER", "SCHULZ",
    "HOFFMANN", "KOCH", "RICHTER", "KLEIN", "WOLF", "SCHRÖDER", "NEUMANN",
    "SCHWARZ", "ZIMMERMANN", "BRAUN", "KRÜGER", "HOFMANN", "HARTMANN",
    "LANGE", "WERNER", "KRAUSE", "LEHMANN", "KÖHLER", "BLANC", "BERNARD",
    "DUBOIS", "GAUTHIER", "ROBERT", "RICHARD", "PETIT", "DURAND", "LEROY",
    "MOREAU", "SIMON", "LAURENT", "LEFÈBVRE", "MICHEL", "GARCÍA", "DAVID",
    "BERTRAND", "ROUX", "VINCENT", "FOURNIER", "MOREL", "GIRARD", "ANDRÉ",
    "MERCIER", "DUPONT", "LAMBERT", "BONNET", "FRANÇOIS", "MARTÍNEZ",
    "ROSSI", "RUSSO", "FERRARI", "ESPOSITO", "BIANCHI", "ROMANO", "COLOMBO",
    "RICCI", "MARINO", "GRECO", "BRUNO", "GALLO", "CONTI", "DE LUCA",
    "MANCINI", "COSTA", "GIORDANO", "RIZZO", "LOMBARDI", "MORETTI",
    "JANSEN", "DE JONG", "DE VRIES", "VAN DEN BERG", "VAN DIJK", "BAKKER",
    "VISSER", "SMIT", "MEIJER", "DE BOER", "MULDER", "DE GROOT", "BOS",
    "VOS", "PETERS", "HENDRIKS", "VAN LEEUWEN", "DEKKER", "BROUWER",
    "NILSSON", "JOHANSSON", "KARLSSON", "ANDERSSON", "ERIKSSON", "LARSSON",
    "OLSSON", "PERSSON", "SVENSSON", "GUSTAFSSON", "PETTERSSON", "JÖNSSON",
    "JENSEN", "NIELSEN", "HANSEN", "PEDERSEN", "ANDERSEN", "CHRISTENSEN",
    "LARSEN", "SØRENSEN", "RASMUSSEN", "JØRGENSEN", "NOWAK", "KOWALSKI",
    "WIŚNIEWSKI", "WÓJCIK", "KOWALCZYK", "KAMIŃSKI", "LEWANDOWSKI",
    "ZIELIŃSKI", "SZYMAŃSKI", "WOŹNIAK", "DĄBROWSKI", "KOZŁOWSKI",
    "NOVÁK", "SVOBODA", "NOVOTNÝ", "DVOŘÁK", "ČERNÝ", "PROCHÁZKA",
    "KUČERA", "VESELÝ", "HORÁK", "NÉMETH", "SZABÓ", "KISS", "TÓTH",
    "KOVÁCS", "VARGA", "HORVÁTH", "MOLNÁR", "FARKAS", "PAPP", "TAKÁCS",
)[:200]
GIVEN_NAMES = (
    "JOHN", "JANE", "MARY", "JAMES", "ROBERT", "PATRICIA", "MICHAEL",
    "LINDA", "WILLIAM", "ELIZABETH", "DAVID", "BARBARA", "RICHARD",
    "SUSAN", "JOSEPH", "JESSICA", "THOMAS", "SARAH", "CHARLES", "KAREN",
    "ANNA", "PETER", "MARIA", "PAUL", "LAURA", "MARK", "EMMA", "LUCAS",
    "SOPHIE", "LEON", "MIA", "FELIX", "HANNAH", "JONAS", "LENA", "ELIAS",
    "CLARA", "NOAH", "LÉA", "HUGO", "CHLOÉ", "LOUIS", "INÈS", "JULES",
    "ZOÉ", "RAPHAËL", "MANON", "ARTHUR", "CAMILLE", "GABRIEL", "SOFÍA",
    "MATEO", "LUCÍA", "ÁLVARO", "PAULA", "MARTÍN", "ELENA", "DANIEL",
    "ALBA", "PABLO", "GIULIA", "MATTIA", "CHIARA", "LORENZO", "SARA",
    "ANDREA", "MARTINA", "ALESSANDRO", "GIORGIA", "FRANCESCO", "SVEN",
    "ASTRID", "BJÖRN", "INGRID", "LARS", "SIGRID", "ØYSTEIN", "SØREN",
    "MAJA", "OSKAR", "ZOFIA", "JAKUB", "ZUZANA", "TOMÁŠ", "ELIŠKA",
    "LUKÁŠ", "KLARA", "BENCE", "ESZTER", "MÁTÉ", "REKA", "ÁDÁM", "NOÉMI",
    "ERIK", "NORA", "IVAN", "OLGA", "DMITRI", "VERA", "ALEX")

# Study date range of the population, and the years the queries take.
FIRST_DAY = 735599   # 2015-01-01 as a proleptic Gregorian ordinal
DAYS = 3653          # to 2024-12-31
QUERY_YEARS = tuple(range(2015, 2025))
QUERY_SURNAMES = ("DOE", "SMITH", "MÜLLER", "GARCÍA", "NOWAK", "JENSEN",
                  "ROSSI", "DUPONT", "KOVÁCS", "VISSER")
RETURN_KEYS = ("PatientName", "PatientID", "PatientBirthDate",
               "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
               "AccessionNumber", "StudyID", "StudyDescription",
               "ReferringPhysicianName", "ModalitiesInStudy",
               "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")


# Encoding of the files ------------------------------------------------------

_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")
_LONG_VRS = frozenset((b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC"))


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in _LONG_VRS:
        return _LONG.pack(tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return _SHORT.pack(tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _text(value: str) -> bytes:
    return value.encode("utf-8")


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _file(elements: list[tuple[int, bytes, bytes]], sop_class: str,
          sop_instance: str) -> bytes:
    meta_elements = (
        _element(0x00020001, b"OB", b"\0\1")
        + _element(0x00020002, b"UI", _text(sop_class))
        + _element(0x00020003, b"UI", _text(sop_instance))
        + _element(0x00020010, b"UI", _text(EXPLICIT_VR_LITTLE_ENDIAN))
        + _element(0x00020012, b"UI", _text(f"{UID_ROOT}.1")))
    meta = _element(0x00020000, b"UL",
                    struct.pack("<I", len(meta_elements))) + meta_elements
    body = b"".join(_element(*e) for e in sorted(elements))
    return b"\0" * 128 + b"DICM" + meta + body


# The population -------------------------------------------------------------

def _date(ordinal: int) -> str:
    return datetime.date.fromordinal(ordinal).strftime("%Y%m%d")


def _instances(total: int, seed: int) -> Iterator[bytes]:
    """The Part 10 files of the population, study after study."""
    rng = random.Random(seed)
    made = patient = study = series = 0
    pixels = bytes(64)
    while made < total:
        patient += 1
        name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN_NAMES)}"
        patient_keys = [
            (0x00080005, b"CS", b"ISO_IR 192"),
            (0x00100010, b"PN", _text(name)),
            (0x00100020, b"LO", _text(f"PID{seed:02d}{patient:07d}")),
            (0x00100030, b"DA", _text(_date(
                rng.randrange(693596, 738000)))),   # 1900-2021
            (0x00100040, b"CS", rng.choice((b"F", b"M", b"O"))),
        ]
        for _ in range(rng.randint(1, 4)):
            study += 1
            study_uid = f"{UID_ROOT}.5.{seed}.{study}"
            day = _date(FIRST_DAY + rng.randrange(DAYS))
            study_keys = patient_keys + [
                (0x00080020, b"DA", _text(day)),
                (0x00080030, b"TM", _text(f"{rng.randrange(7, 20):02d}"
                                          f"{rng.randrange(60):02d}00")),
                (0x00080050, b"SH", _text(f"ACC{seed:02d}{study:08d}")),
                (0x00080090, b"PN", _text("REFERRING^DOCTOR")),
                (0x00081030, b"LO", _text("Routine examination")),
                (0x0020000D, b"UI", _text(study_uid)),
                (0x00200010, b"SH", _text(f"S{study}")),
            ]
            for number in range(1, rng.randint(1, 6) + 1):
                series += 1
                modality = rng.choice(tuple(SOP_CLASSES))
                series_keys = study_keys + [
                    (0x00080060, b"CS", _text(modality)),
                    (0x00080070, b"LO", _text("pacsstore generator")),
                    (0x00180015, b"CS", _text(rng.choice(BODY_PARTS))),
                    (0x0008103E, b"LO", _text(f"{modality} series")),
                    (0x0020000E, b"UI",
                     _text(f"{UID_ROOT}.6.{seed}.{series}")),
                    (0x00200011, b"IS", _text(str(number))),
                ]
                for index in range(1, rng.randint(1, 40) + 1):
                    if made == total:
                        return
                    made += 1
                    yield _image(series_keys, modality, seed, made, index,
                                 pixels)


def _image(series_keys: list[tuple[int, bytes, bytes]], modality: str,
           seed: int, made: int, index: int, pixels: bytes) -> bytes:
    sop_class = SOP_CLASSES[modality]
    sop_instance = f"{UID_ROOT}.7.{seed}.{made}"
    elements = series_keys + [
        (0x00080016, b"UI", _text(sop_class)),
        (0x00080018, b"UI", _text(sop_instance)),
        (0x00200013, b"IS", _text(str(index))),
        (0x00280002, b"US", _us(1)),
        (0x00280004, b"CS", b"MONOCHROME2"),
        (0x00280010, b"US", _us(8)),
        (0x00280011, b"US", _us(8)),
        (0x00280100, b"US", _us(8)),
        (0x00280101, b"US", _us(8)),
        (0x00280102, b"US", _us(7)),
        (0x00280103, b"US", _us(0)),
        (0x7FE00010, b"OB", pixels),
    ]
    return _file(elements, sop_class, sop_instance)


def populate(store_path: str | Path, instances: int,
             seed: int) -> dict[str, float]:
    """Store ``instances`` generated instances into the store at
    ``store_path`` (created when absent); returns what it took."""
    started = time.perf_counter()
    with Archive(store_path) as archive:
        results = archive.store_many(_instances(instances, seed))
        stats = archive.stats()
    seconds = time.perf_counter() - started
    return {"instances": len(results), "seconds": seconds,
            "instances_per_second": len(results) / seconds,
            "patients": stats.patients, "studies": stats.studies}


def queries() -> list[Dataset]:
    """The C-FIND requests time_query runs, one per surname and year."""
    found = []
    for i, surname in enumerate(QUERY_SURNAMES):
        year = QUERY_YEARS[i % len(QUERY_YEARS)]
        request = Dataset()
        request.QueryRetrieveLevel = "STUDY"
        request.SpecificCharacterSet = "ISO_IR 100"
        for keyword in RETURN_KEYS:
            setattr(request, keyword, "")
        request.PatientName = f"{surname}*"
        request.StudyDate = f"{year}0101-{year}1231"
        found.append(request)
    return found


def time_query(store_path: str | Path, rounds: int = 10) -> list[float]:
    """Seconds per study-level C-FIND (responses built), each request of
    :func:`queries` ``rounds`` times."""
    requests = queries()
    timings = []
    with Archive(store_path, readonly=True) as archive:
        for request in requests:      # first touch of the pages
            list(find_identifiers(archive, request, model="study"))
        for _ in range(rounds):
            for request in requests:
                started = time.perf_counter()
                list(find_identifiers(archive, request, model="study"))
                timings.append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--query-only", action="store_true")
    options = parser.parse_args()
    if not options.query_only:
        print(populate(options.store, options.instances, options.seed))
    timings = time_query(options.store)
    print(f"C-FIND study level, {len(timings)} requests: median "
          f"{statistics.median(timings) * 1e3:.2f} ms, max "
          f"{max(timings) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
