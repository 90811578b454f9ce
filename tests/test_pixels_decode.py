"""frame(uid, i, decode=True) gives what pydicom's own decoders give, for
every transfer syntax of the corpus that pydicom (with the pylibjpeg
plugins and pyjpegls) decodes: pydicom is the oracle."""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import pydicom
import pytest

from corpus import CorpusFile, corpus_available, corpus_files
from pacsstore import Archive

FILES_PER_SYNTAX = 4
# pydicom's pixel_array failures that mean "no oracle for this file"
# (an unsupported process, a broken codestream), not a pacsstore fault.
DECODER_ERRORS = (RuntimeError, NotImplementedError, ValueError,
                  AttributeError, TypeError)


def _by_syntax() -> dict[str, list[CorpusFile]]:
    chosen: dict[str, list[CorpusFile]] = defaultdict(list)
    for entry in corpus_files():
        if entry.pydicom_status != "ok" or "dicomdir" in entry.flags:
            continue
        picked = chosen[entry.transfer_syntax]
        if len(picked) < FILES_PER_SYNTAX and (
                entry.frames not in ("", "0")):
            picked.append(entry)
    return dict(chosen)


def _oracle(entry: CorpusFile) -> tuple[str, np.ndarray] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(entry.path)
        if "PixelData" not in ds or "SOPInstanceUID" not in ds:
            return None
        try:
            pixels = ds.pixel_array
        except DECODER_ERRORS:
            return None
    if int(ds.get("NumberOfFrames") or 1) > 1:
        pixels = pixels[0]
    return str(ds.SOPInstanceUID), pixels


SYNTAXES = _by_syntax() if corpus_available() else {}


@pytest.mark.skipif(not corpus_available(), reason="no corpus")
@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_pixels_decoded_frame_equals_pydicom_for_each_syntax(tmp_path,
                                                             syntax):
    checked = 0
    with Archive(tmp_path / "store", on_conflict="replace") as archive:
        for entry in SYNTAXES[syntax]:
            oracle = _oracle(entry)
            if oracle is None:
                continue
            uid, expected = oracle
            archive.store(entry.path)
            got = archive.frame(uid, 0, decode=True)
            np.testing.assert_array_equal(got, expected,
                                          err_msg=entry.relpath)
            checked += 1
    if checked == 0:
        pytest.skip(f"pydicom decodes none of the sampled {syntax} files "
                    f"here, so there is no oracle")
