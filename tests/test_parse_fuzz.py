"""Random mutations of small corpus files: the parser returns a result or
raises MalformedDicomError, never anything else.

HYPOTHESIS_PROFILE selects the run: "ci" (default, short) or "fuzz" (long).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import CORPUS_ROOT, corpus_available
from pacsstore._parse import EXPLICIT_VR_LITTLE_ENDIAN, parse
from pacsstore.errors import MalformedDicomError

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz", max_examples=200_000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SEEDS = (
    "pydicom/test_files/rtstruct.dcm",       # implicit, nested undefined SQ
    "pydicom/test_files/UN_sequence.dcm",    # UN sequence
    "pydicom/test_files/JPEG2000.dcm",       # encapsulated
    "pydicom/test_files/image_dfl.dcm",      # deflated
    "pydicom/test_files/ExplVR_BigEndNoMeta.dcm",
)

pytestmark = pytest.mark.skipif(not corpus_available(),
                                reason="../shared/corpus is absent")


@st.composite
def mutated(draw) -> bytes:
    data = bytearray((CORPUS_ROOT / draw(st.sampled_from(SEEDS)))
                     .read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(("byte", "length", "cut", "insert")))
        if action == "byte":
            data[at] = draw(st.integers(0, 255))
        elif action == "length" and at + 4 <= len(data):
            data[at:at + 4] = draw(st.sampled_from(
                (b"\xff\xff\xff\xff", b"\xfe\xff\xff\x7f", b"\x00\x00\x00\x00",
                 b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0")))
        elif action == "cut":
            del data[at:]
            if not data:
                data.append(0)
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _result_or_malformed(data: bytes, syntax: str | None) -> None:
    try:
        parse(data, syntax)
    except MalformedDicomError as error:
        assert error.offset is not None


@given(mutated())
def test_parse_mutated_file_gives_result_or_malformed(data: bytes) -> None:
    _result_or_malformed(data, None)


@given(mutated())
def test_parse_mutated_bare_dataset_gives_result_or_malformed(
        data: bytes) -> None:
    _result_or_malformed(data[132:], EXPLICIT_VR_LITTLE_ENDIAN)
