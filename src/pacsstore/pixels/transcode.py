"""Transcoding on retrieve: an instance re-encoded for a peer that does
not accept the transfer syntax it was stored in.

The archive keeps what it received, byte for byte. A C-MOVE or C-GET
destination, however, accepts only the syntaxes it negotiated, so the
retrieving side picks one with :func:`choose_syntax` and encodes with
:func:`transcode`. The rules, in order:

- The stored syntax when the peer accepts it: the stored dataset bytes
  go out unchanged, nothing is decoded.
- Otherwise Explicit VR Little Endian, then Implicit VR Little Endian,
  then the lossless compressed syntaxes pydicom has an encoder for here
  (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless), in that order.
- Never a lossy syntax. Pixels of a lossy stored syntax (baseline JPEG,
  JPEG-LS near-lossless, JPEG 2000 that may be irreversible) are decoded
  to an uncompressed syntax and not re-encoded: decoding adds no loss,
  and Implicit VR Little Endian, the default every AE supports (PS3.5
  10.1), leaves a peer that takes neither rare.
- A syntax pydicom cannot decode here (MPEG, HEVC, the retired JPEG
  processes, JPEG XL, ...) goes out as stored or not at all.

Decoding goes through pydicom's pixel decoders (the pylibjpeg plugins and
pyjpegls), the same ones ``pixel_array`` uses; encoding through pydicom's
encoders. The SOP Instance UID stays: no step adds loss, so the pixels
sent are those of the stored instance, in another encoding.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import get_decoder, get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from pacsstore._parse import ParseResult, parse
from pacsstore.errors import TranscodeError
from pacsstore.pixels.failures import is_codec_failure

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"

# Syntaxes pydicom reads and writes without a pixel codec.
_NATIVE = frozenset((IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
                     DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
                     EXPLICIT_VR_BIG_ENDIAN))

# The uncompressed syntaxes produced, in order of preference: explicit VR
# first, since implicit VR loses the VR of private elements.
UNCOMPRESSED_TARGETS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

# Lossless compressed syntaxes, in order of preference, of which those
# with an available pydicom encoder are produced. RLE comes first because
# its encoder takes the widest range of pixel data (32-bit samples, any
# signedness); JPEG-LS then JPEG 2000 compress better but refuse more.
# High-Throughput JPEG 2000 and JPEG Lossless SV1 have no encoder in
# pydicom 3.0; they are listed so that a pydicom that has one is used.
_LOSSLESS_CANDIDATES = (RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS,
                        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
                        "1.2.840.10008.1.2.4.70")   # JPEG lossless SV1

# Syntaxes whose pixel data are exactly what the sender had. Any syntax
# not listed is treated as possibly lossy: JPEG 2000 (4.91) and HTJ2K
# (4.203) may be reversible or not, and JPEG-LS near-lossless (4.81) may
# have NEAR = 0, but the syntax alone does not promise it.
LOSSLESS_SYNTAXES = frozenset((
    *_NATIVE,
    RLE_LOSSLESS,
    "1.2.840.10008.1.2.4.57",   # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70",   # JPEG lossless, process 14, SV1
    JPEG_LS_LOSSLESS,
    JPEG_2000_LOSSLESS,
    "1.2.840.10008.1.2.4.92",   # JPEG 2000 multi-component, lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless, RPCL
    "1.2.840.10008.1.2.4.110",  # JPEG XL lossless
    "1.2.840.10008.1.2.8.1",    # Deflated Image Frame Compression
))

# Syntaxes that are lossy whatever the stream holds, with the Lossy
# Image Compression Method (0028,2114) term of their codec (PS3.3
# C.7.6.1.1.5.1): JPEG baseline and extended.
_ALWAYS_LOSSY = {"1.2.840.10008.1.2.4.50": "ISO_10918_1",
                 "1.2.840.10008.1.2.4.51": "ISO_10918_1"}

# Value representations whose values pydicom keeps as bytes in the
# stored byte order, with the size of one value: what a big endian
# dataset needs swapped to become little endian.
_SWAPPED_VRS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

PIXEL_DATA = 0x7FE00010
_OFFSET_TABLES = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")
_FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")


# Choosing ---------------------------------------------------------------

def choose_syntax(stored_syntax: str, accepted: Sequence[str]) -> str | None:
    """The transfer syntax to send an instance stored in
    ``stored_syntax`` to a peer that accepts ``accepted``: the stored one
    if accepted, else the first of :func:`lossless_targets` the peer
    accepts, else ``None``."""
    offered = {_clean(uid) for uid in accepted}
    stored = _clean(stored_syntax)
    if stored in offered:
        return stored
    for target in lossless_targets(stored):
        if target in offered:
            return target
    return None


def lossless_targets(stored_syntax: str) -> tuple[str, ...]:
    """The syntaxes :func:`transcode` can produce from ``stored_syntax``
    without loss, in order of preference (the stored one not included)."""
    stored = _clean(stored_syntax)
    if not decodable(stored):
        return ()
    targets = UNCOMPRESSED_TARGETS
    if stored in LOSSLESS_SYNTAXES:
        targets += available_lossless_encoders()
    return tuple(t for t in targets if t != stored)


def decodable(syntax: str) -> bool:
    """Whether pixel data in ``syntax`` can be decoded here."""
    if syntax in _NATIVE:
        return True
    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


@cache
def available_lossless_encoders() -> tuple[str, ...]:
    """The lossless compressed syntaxes pydicom can encode here."""
    found = []
    for syntax in _LOSSLESS_CANDIDATES:
        try:
            if get_encoder(syntax).is_available:
                found.append(syntax)
        except NotImplementedError:
            continue
    return tuple(found)


def _clean(uid: str) -> str:
    # A UID read from the wire may keep its NUL or space padding.
    return str(uid).rstrip("\0 ")


# Transcoding ------------------------------------------------------------

def transcode(part10: bytes, target_syntax: str) -> bytes:
    """The dataset of ``part10`` (a Part 10 file, as the archive returns
    it) encoded in ``target_syntax``, without its file meta group: the
    bytes a C-STORE sends. When the target is the stored syntax these are
    the stored dataset bytes, unchanged (but for the NUL an odd deflated
    dataset lacks, PS3.5 A.5)."""
    return bytes(transcoded_view(part10, target_syntax))


def transcoded_view(part10: bytes, target_syntax: str) -> memoryview | bytes:
    """:func:`transcode`, but when the target is the stored syntax a
    view of the dataset in ``part10`` rather than a copy of it."""
    walk = parse(part10)
    stored, target = walk.transfer_syntax, _clean(target_syntax)
    if target == stored:
        dataset = memoryview(part10)[walk.dataset_offset:]
        if stored == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and len(dataset) % 2:
            # PS3.5 A.5: an odd deflate stream takes one trailing NUL,
            # which changes nothing inflated; files that lack it are
            # stored as they came, but DCMTK aborts an association over
            # an odd dataset, and with it the rest of a C-MOVE.
            return bytes(dataset) + b"\0"
        return dataset
    uid = _sop_instance_uid(walk)
    _check_target(stored, target, uid)
    ds = _read(part10, stored, uid)
    _check_read_whole(ds, walk, uid)
    try:
        _decode(ds, stored)
        if target not in UNCOMPRESSED_TARGETS:
            _encode(ds, target)
        return _write(ds, implicit=target == IMPLICIT_VR_LITTLE_ENDIAN)
    except BaseException as exc:
        # The checks here raise TranscodeError, given the instance and
        # syntaxes here; what pydicom and its codecs raise means that
        # this instance does not transcode (failures.py).
        if not is_codec_failure(exc):
            raise
        raise TranscodeError(
            f"instance {uid} (stored as {_name(stored)}) does not "
            f"transcode to {_name(target)}: {_summary(exc)}") from None


def _check_target(stored: str, target: str, uid: str) -> None:
    if target in lossless_targets(stored):
        return
    if not decodable(stored):
        reason = (f"pixel data in {_name(stored)} cannot be decoded here; "
                  f"it can only be sent as stored")
    elif target in UNCOMPRESSED_TARGETS + available_lossless_encoders():
        reason = (f"{_name(stored)} may be lossy; its decoded pixels go "
                  f"out uncompressed only")
    else:
        reason = (f"{_name(target)} is not a syntax pacsstore encodes "
                  f"(it encodes "
                  f"{', '.join(map(_name, lossless_targets(stored)))})")
    raise TranscodeError(f"instance {uid} cannot be sent in "
                         f"{_name(target)}: {reason}")


def _read(part10: bytes, stored: str, uid: str) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(part10), force=True)
    except BaseException as exc:
        if not is_codec_failure(exc):
            raise
        raise TranscodeError(f"instance {uid} does not read with pydicom: "
                             f"{_summary(exc)}") from None
    # The walker's syntax rules: it also knows a file without a meta.
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(stored)
    return ds


def _check_read_whole(ds: Dataset, walk: ParseResult, uid: str) -> None:
    """pydicom reads a file that ends inside an element as far as it
    can, with no error: one that ends inside its encapsulated Pixel Data
    (which pacsstore stores, as received) read as an empty dataset, and
    went out as a C-STORE of no bytes, counted as sent."""
    missing = []
    if "SOPInstanceUID" not in ds:
        missing.append("its SOP Instance UID")
    if walk.pixel is not None and PIXEL_DATA not in ds:
        missing.append("its Pixel Data")
    if missing:
        raise TranscodeError(
            f"instance {uid} does not read whole with pydicom (it lacks "
            f"{' and '.join(missing)}; does the file end inside an "
            f"element?); it can only be sent as stored")


# Decoding ---------------------------------------------------------------

def _decode(ds: Dataset, stored: str) -> None:
    """Turn ``ds`` into an uncompressed little endian dataset."""
    if stored == EXPLICIT_VR_BIG_ENDIAN:
        _swap_to_little_endian(ds)
    elif stored not in _NATIVE:
        if PIXEL_DATA in ds:
            _decode_pixel_data(ds, stored, as_rgb=stored in _ALWAYS_LOSSY)
            _mark_lossy(ds, stored)
        for nested in _datasets(ds)[1:]:
            if _is_encapsulated(nested):
                # An icon image may be encapsulated in the stored syntax
                # (PS3.5 A.4); in a native dataset it must be native too.
                _decode_pixel_data(nested, stored,
                                   as_rgb=stored in _ALWAYS_LOSSY)
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)


def _decode_pixel_data(ds: Dataset, syntax: str, *, as_rgb: bool) -> None:
    """Replace the Pixel Data of ``ds``, in ``syntax``, by its decoded
    frames, as ``Dataset.decompress`` does, with the Image Pixel
    attributes the decoder reports: planar configuration 0, and with
    ``as_rgb`` YBR colour made RGB.

    ``as_rgb`` only for baseline and extended JPEG, whose YBR is a
    colour transform of the codec (and lossy anyway): made RGB by the
    decoder, as every viewer shows it. YBR in a lossless syntax (RLE,
    JPEG-LS, lossless JPEG) is the samples themselves, and turning
    8-bit YBR into RGB cannot be undone (clipping, rounding)."""
    frames: list[np.ndarray] = []
    properties: dict[str, Any] = {}
    decoder = get_decoder(syntax)
    for array, properties in decoder.iter_array(ds, as_rgb=as_rgb):
        frames.append(array)
    if not frames:
        raise TranscodeError("the pixel data holds no frame")
    stated = _stated_frames(ds)
    if len(frames) != stated:
        # A lying offset table, or frames in several fragments without
        # one: pydicom's decoder then gives other frames than there are.
        raise TranscodeError(
            f"its pixel data decodes to {len(frames)} frames, but (0028,"
            f"0008) Number of Frames is {stated}")
    element = ds[PIXEL_DATA]
    element.value = _native_pixels(frames, ds.BitsAllocated)
    element.is_undefined_length = False
    ds.PhotometricInterpretation = properties["photometric_interpretation"]
    if properties["samples_per_pixel"] > 1:
        ds.PlanarConfiguration = properties["planar_configuration"]
    if "NumberOfFrames" in ds or len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    # The offset tables index fragments; native data has none.
    for keyword in _OFFSET_TABLES:
        if keyword in ds:
            delattr(ds, keyword)
    # PS3.5 8.2: native data of more than 8 bits is OW; OB is kept for
    # 8 bits and less, as pydicom writes it.
    element.VR = "OB" if ds.BitsAllocated <= 8 else "OW"


def _stated_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TranscodeError(f"(0028,0008) Number of Frames is "
                             f"{value!r}") from None


def _native_pixels(frames: list[np.ndarray], bits_allocated: int) -> bytes:
    """Frames as a native Pixel Data value, padded to an even length."""
    if bits_allocated == 1:
        # Decoders give one byte a pixel; 1-bit native data is packed,
        # frame after frame with no padding between (PS3.5 8.1.1).
        value = pack_bits(np.concatenate([f.ravel() for f in frames]),
                          pad=False)
    else:
        if frames[0].dtype.itemsize * 8 != bits_allocated:
            raise TranscodeError(
                f"the decoder gave {frames[0].dtype.itemsize * 8}-bit "
                f"samples; (0028,0100) Bits Allocated is {bits_allocated}")
        value = b"".join(
            f.astype(f.dtype.newbyteorder("<"), copy=False).tobytes()
            for f in frames)
    return value + b"\0" if len(value) % 2 else value


def _mark_lossy(ds: Dataset, stored: str) -> None:
    """Record that pixels decoded from an always-lossy syntax were lossy
    compressed, where the dataset does not say so itself: once decoded,
    the transfer syntax no longer tells (PS3.3 C.7.6.1.1.5)."""
    method = _ALWAYS_LOSSY.get(stored)
    if method is None or "LossyImageCompression" in ds:
        return
    ds.LossyImageCompression = "01"
    if "LossyImageCompressionMethod" not in ds:
        ds.LossyImageCompressionMethod = method


def _is_encapsulated(ds: Dataset) -> bool:
    element = ds.get(PIXEL_DATA)
    return element is not None and bool(element.is_undefined_length)


def _datasets(ds: Dataset) -> list[Dataset]:
    """``ds`` and every item dataset under it, depth first, tidied for
    writing on the way (:func:`_elements`)."""
    found = [ds]
    for element in _elements(ds):
        if element.VR == "SQ":
            for item in element.value:
                found.extend(_datasets(item))
    return found


def _elements(ds: Dataset) -> Iterator[DataElement | RawDataElement]:
    """The elements of ``ds``, sequences converted from their raw form so
    that their items can be visited; other elements stay raw, so that
    pydicom writes their bytes back unchanged where the encoding allows.

    Two kinds of element cannot be written as they are. A file whose
    dataset is implicit VR under an explicit transfer syntax gives raw
    elements without a VR: converted, they get theirs from the
    dictionary. Item and delimiter tags (group FFFE) that damaged files
    leave at dataset level are no attributes and have no VR: they go.
    """
    for tag in list(ds.keys()):
        if tag.group == 0xFFFE:
            del ds[tag]
            continue
        element = ds.get_item(tag)
        if element.VR is None or element.VR == "SQ":
            element = ds[tag]
        yield element


def _swap_to_little_endian(ds: Dataset) -> None:
    """Byte-swap the values pydicom leaves in big endian order, in ``ds``
    and every item under it; pydicom re-encodes numbers and text itself
    (its writer does not swap these: see ``pydicom.dcmwrite``)."""
    for dataset in _datasets(ds):
        for tag in list(dataset.keys()):
            element = dataset[tag]
            if element.VR == "UN" and element.value:
                raise TranscodeError(
                    f"element {element.tag} has VR UN in a big endian "
                    f"dataset: its byte order cannot be known")
            size = _swap_size(dataset, element)
            if size > 1 and element.value:
                element.value = _swapped(element.value, size)


def _swap_size(ds: Dataset, element: DataElement) -> int:
    """Bytes per value to swap; native Pixel Data follows pydicom's
    reading of big endian data: OW words of 8-bit pixels swap in pairs,
    wider pixels by their own size, 1-bit pixels and OB not at all."""
    if element.tag == PIXEL_DATA and element.VR == "OW":
        bits = int(ds.get("BitsAllocated", 16))
        return 2 if bits == 8 else bits // 8
    return _SWAPPED_VRS.get(element.VR, 1)


def _swapped(value: bytes, size: int) -> bytes:
    usable = len(value) - len(value) % size
    words = np.frombuffer(value, dtype=f">u{size}", count=usable // size)
    return words.astype(f"<u{size}").tobytes() + value[usable:]


# Encoding ---------------------------------------------------------------

def _encode(ds: Dataset, target: str) -> None:
    """Compress the native Pixel Data of ``ds`` into ``target``. A
    dataset without pixel data needs nothing: outside Pixel Data, every
    compressed syntax is explicit VR little endian."""
    for keyword in _FLOAT_PIXELS:
        if keyword in ds:
            raise TranscodeError(
                f"{keyword} cannot be encoded in {_name(target)}")
    if PIXEL_DATA not in ds:
        return
    if ds.get("SamplesPerPixel", 1) > 1:
        # pydicom's encoders take colour-by-pixel, full-resolution data:
        # given planar configuration 1 RLE encodes pixels that decode
        # wrong, and YBR_FULL_422 they refuse. The native decoder lays
        # the samples out that way, and keeps the colour space.
        _decode_pixel_data(ds, EXPLICIT_VR_LITTLE_ENDIAN, as_rgb=False)
    options: dict[str, Any] = {}
    if target == JPEG_2000_LOSSLESS:
        # Without the colour transform an RGB image stays "RGB"; with it
        # the Photometric Interpretation would have to become YBR_RCT.
        options["use_mct"] = False
    ds.compress(target, generate_instance_uid=False, **options)


def _write(ds: Dataset, *, implicit: bool) -> bytes:
    """The dataset bytes, without file meta, in little endian."""
    datasets = _datasets(ds)  # tidied on the way: see _elements
    if not implicit:
        for dataset in datasets:
            _resolve_ob_or_ow(dataset)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _resolve_ob_or_ow(ds: Dataset) -> None:
    """Give the elements read from implicit VR with the dictionary VR
    "OB or OW" (Curve Data, for one) the VR OW, which implicit VR data
    has by definition (PS3.5 A.1); pydicom settles Pixel Data and the
    US/SS cases itself, and cannot write the rest."""
    for tag in ds.keys():
        element = ds.get_item(tag)
        if element.VR == "OB or OW" and tag != PIXEL_DATA and \
                not isinstance(element, RawDataElement):
            element.VR = "OW"


# Messages ---------------------------------------------------------------

def _sop_instance_uid(walk: ParseResult) -> str:
    raw = walk.attributes.get("SOPInstanceUID")
    if isinstance(raw, bytes):
        return raw.decode("ascii", "replace").rstrip("\0 ") or "?"
    return "?"


def _name(syntax: str) -> str:
    name = UID(syntax).name
    return f"{name} ({syntax})" if name != syntax else syntax


def _summary(exc: BaseException) -> str:
    """One line of an exception: pydicom's messages span several."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines)[:300]
    return text if isinstance(exc, TranscodeError) else \
        f"{type(exc).__name__}: {text}"
