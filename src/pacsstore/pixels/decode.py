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
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from pacsstore.errors import FrameDecodeError, MalformedDicomError

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
    except (ValueError, EOFError, OSError) as exc:
        raise MalformedDicomError(
            f"the attributes before the pixel data do not read: {exc}"
        ) from None


def decode_frame(prefix: bytes, frame: bytes, transfer_syntax: str,
                 *, native: bool) -> np.ndarray:
    """Decode ``frame`` (stored bytes of one frame) given ``prefix``, the
    instance's bytes up to its (7FE0,0010) element."""
    source = _attributes(prefix)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    for element in source:
        if element.tag.group > 0x0002 and \
                element.keyword not in _MULTI_FRAME_ONLY:
            ds.add(element)
    ds.NumberOfFrames = 1
    if native:
        ds.PixelData = frame
    else:
        ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB" if not native or \
        ds.get("BitsAllocated", 8) <= 8 else "OW"
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError,
            AttributeError) as exc:
        raise FrameDecodeError(
            f"frame of transfer syntax {transfer_syntax} does not decode: "
            f"{exc}") from None
