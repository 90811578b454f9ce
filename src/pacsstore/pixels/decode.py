"""Decoding one stored frame to a numpy array.

The store keeps frames as they arrived: native pixel bytes, or the
compressed bitstream of one frame. To decode a frame, pydicom's pixel
handlers (with the pylibjpeg plugins and pyjpegls installed, the same
set pydicom itself would use) are given a dataset holding only what they
need: the attributes that precede the pixel data in the stored instance
(read from its header block, so nothing is re-derived) and that one frame
as a single-frame image. Decoding a frame of a 500-frame object costs the
decode of one frame, not of the object.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from pacsstore.errors import FrameDecodeError, MalformedDicomError
from pacsstore.pixels.failures import is_codec_failure

log = logging.getLogger(__name__)


# Attributes that describe a whole multi-frame object rather than the one
# frame handed to the decoder.
_MULTI_FRAME_ONLY = ("NumberOfFrames", "ExtendedOffsetTable",
                     "ExtendedOffsetTableLengths", "FloatPixelData",
                     "DoubleFloatPixelData")


def _attributes(prefix: bytes) -> Dataset:
    """The dataset that precedes the pixel data, read by pydicom."""
    try:
        return pydicom.dcmread(io.BytesIO(prefix), force=True,
                               stop_before_pixels=True)
    except BaseException as exc:
        if not is_codec_failure(exc):
            raise
        # pydicom raises what its code meets: ValueError, EOFError,
        # NotImplementedError for a VR it does not know, ...
        raise MalformedDicomError(
            f"the attributes before the pixel data do not read: "
            f"{type(exc).__name__}: {exc}") from None


def decode_frame(prefix: bytes, frame: bytes, transfer_syntax: str,
                 *, native: bool, pixel_vr: str | None = None,
                 sop_instance_uid: str = "?",
                 index: int = 0) -> np.ndarray:
    """Decode ``frame`` (stored bytes of one frame) given ``prefix``, the
    instance's bytes up to its (7FE0,0010) element. ``pixel_vr`` is the
    VR that element was stored with (it matters for Big Endian native
    data); ``sop_instance_uid`` and ``index`` name the frame in errors."""
    source = _attributes(prefix)
    try:
        return _single_frame(source, frame, transfer_syntax, native,
                             pixel_vr).pixel_array
    except BaseException as exc:
        if not is_codec_failure(exc):
            raise
        raise FrameDecodeError(
            f"frame {index} of instance {sop_instance_uid} (transfer "
            f"syntax {transfer_syntax}) does not decode: "
            f"{type(exc).__name__}: {exc}") from None


def _single_frame(source: Dataset, frame: bytes, transfer_syntax: str,
                  native: bool, pixel_vr: str | None) -> Dataset:
    """A one-frame dataset: the instance's attributes and ``frame``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    for tag in source.keys():
        # Item and delimiter tags (group FFFE) are not attributes: one
        # stray at dataset level has no VR that pydicom can convert.
        if tag.group <= 0x0002 or tag.group == 0xFFFE or \
                keyword_for_tag(tag) in _MULTI_FRAME_ONLY:
            continue
        ds.add(source[tag])
    ds.NumberOfFrames = 1
    if native:
        ds.PixelData = frame
    else:
        ds.PixelData = encapsulate([frame])
    if pixel_vr in ("OB", "OW"):
        ds["PixelData"].VR = pixel_vr
    else:
        ds["PixelData"].VR = "OB" if not native or \
            ds.get("BitsAllocated", 8) <= 8 else "OW"
    return ds
