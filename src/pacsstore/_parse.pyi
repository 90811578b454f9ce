"""Type stubs of the native DICOM walker (src/_native/parse.pyx).

``parse`` reads a DICOM Part 10 file, or a bare dataset when the transfer
syntax is given (as a C-STORE delivers it), from any bytes-like object
without copying it. It walks the top-level dataset element by element,
skipping sequence contents by their lengths (walking only undefined-length
items), and reports what the store and the index need: where the dataset
starts, its transfer syntax, the query attributes, and where the pixel data
and its frames lie. Every offset is a byte offset into the buffer that was
passed in, except for deflated datasets, whose offsets refer to
``ParseResult.inflated``.

Malformed input raises :class:`pacsstore.errors.MalformedDicomError`
(a ``ValueError``) naming the tag and byte offset.
"""

from collections.abc import Callable
from mmap import mmap

Buffer = bytes | bytearray | memoryview | mmap

IMPLICIT_VR_LITTLE_ENDIAN: str
EXPLICIT_VR_LITTLE_ENDIAN: str
EXPLICIT_VR_BIG_ENDIAN: str
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: str

# A deflated dataset that inflates past this many bytes (1 GiB) is
# refused with MalformedDicomError before more is allocated.
MAX_INFLATED_SIZE: int

class PixelLayout:
    """Where the Pixel Data (7FE0,0010) value lies and how it splits into
    frames."""

    # Offset of the (7FE0,0010) tag, of its value, and of the first byte
    # after the element (after the sequence delimiter when encapsulated).
    element_offset: int
    value_offset: int
    end_offset: int
    # Value length as encoded; -1 when undefined (encapsulated).
    value_length: int
    encapsulated: bool
    # Frames found in the value. frames_announced is NumberOfFrames (1 when
    # absent or not a positive integer). frame_count is 0 when the value
    # cannot be split: native data without Rows/Columns/BitsAllocated, or
    # encapsulated data without a complete item.
    frame_count: int
    frames_announced: int
    # The data ends inside the value: a native value shorter than its
    # length (only complete frames count), or encapsulated data without its
    # sequence delimiter (only complete fragments are listed); end_offset
    # is then the end of the buffer.
    truncated: bool

    # Native pixel data: frame i is bits [i * frame_bits, (i+1) * frame_bits)
    # of the value. frame_size is frame_bits // 8 rounded up; frames are
    # byte aligned exactly when frame_bits % 8 == 0. Trailing bytes past
    # frame_count * frame_bits (padding) belong to no frame.
    frame_bits: int
    frame_size: int

    # Encapsulated pixel data. Offsets are absolute offsets of item values
    # in the buffer; lengths are item value lengths.
    basic_offset_table: list[int]
    extended_offset_table: list[int] | None
    extended_lengths: list[int] | None
    fragment_offsets: list[int]
    fragment_lengths: list[int]
    # Frame i is fragments [frame_first_fragment[i],
    # frame_first_fragment[i] + frame_fragment_count[i]), mapped as
    # pydicom.encaps.generate_fragmented_frames does: by the extended
    # offset table when it names fragment starts and lengths, else by the
    # basic offset table, else one fragment when there is one, one frame
    # per fragment when the counts match, all fragments for one frame, and
    # a fragment ending in FFD9 (JPEG EOI, J2K EOC) closing a frame when
    # there are more fragments than frames. With fewer fragments than
    # announced frames, each fragment is a frame.
    frame_first_fragment: list[int]
    frame_fragment_count: list[int]

class ParseResult:
    # True when the 128-byte preamble and "DICM" are present.
    has_preamble: bool
    # Offset of the first byte after the file meta group (0 for a bare
    # dataset); the dataset starts here.
    dataset_offset: int
    # File meta elements, tag -> raw value bytes (group 0002 only).
    meta: dict[int, bytes]
    # Transfer syntax the dataset was read with, and whether it had to be
    # inferred (no meta, or a meta without (0002,0010)).
    transfer_syntax: str
    transfer_syntax_inferred: bool
    # Query attributes of the top-level dataset by keyword. US values
    # (Rows, Columns, BitsAllocated, SamplesPerPixel, ...) are ints; text
    # values are the raw value bytes, padding included, undecoded (decode
    # them with the dataset's SpecificCharacterSet). Built on first access
    # from a copy of the values taken during the walk, so it stays valid
    # after the buffer changes or closes.
    attributes: dict[str, bytes | int]
    # Deflated transfer syntax only: the inflated dataset, to which the
    # pixel layout offsets refer.
    inflated: bytes | None
    pixel: PixelLayout | None
    # Where the walk of the dataset stopped: the end of the data, or an
    # item delimiter (FFFE,E00D) at dataset level, which ends the dataset
    # as it does in pydicom (ended_by_delimiter).
    end_offset: int
    ended_by_delimiter: bool
    # The data ends inside the last element (its value is kept clipped to
    # what is there, as pydicom does) or inside encapsulated pixel data.
    truncated: bool

def parse(buffer: Buffer, transfer_syntax: str | None = None) -> ParseResult: ...

# The value representation of each recorded attribute but the US ones, and
# the attributes that are a tuple even with one value.
VALUE_REPRESENTATIONS: dict[str, str]
ALWAYS_TUPLE: frozenset[str]

# How text of the character-set VRs (SH, LO, PN, ST, LT, UC, UT) may decode
# natively, by the dataset's first character set: not at all, ASCII only,
# any ISO 8859-1 text, valid UTF-8. Text with code extensions (ESC) never
# decodes natively.
CHARSET_PYTHON: int
CHARSET_ASCII: int
CHARSET_LATIN1: int
CHARSET_UTF8: int

def parse_decoded(
    buffer: Buffer, transfer_syntax: str | None,
    classify: Callable[[bytes | None], int],
) -> tuple[ParseResult, dict[str, str | int | tuple | None],
           list[str] | None]:
    """``parse``, and the recorded attributes decoded exactly as
    ``pacsstore.parsing.decode_value`` decodes them: (result, attributes,
    pending). Values the walker cannot decode with certainty (code
    extensions, bytes outside ASCII in a character set other than ISO
    8859-1 and UTF-8, invalid UTF-8) hold None and their keywords are in
    pending (None when there are none), for the Python decoder to finish.
    ``classify`` maps a raw Specific Character Set value (None when
    absent) to a CHARSET_ mode; its answers are cached by value."""

def integer_string(raw: bytes | None) -> int | None:
    """An IS value as pydicom reads it ("12", " 3 ", "1.0"); None when it
    is empty or not an integer ("1A", "1.5", "inf")."""
