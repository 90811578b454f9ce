# cython: language_level=3
"""The DICOM walker: Part 10 files and bare datasets, without copying.

What it guarantees. ``parse`` never reads outside the buffer it was given:
every length taken from the data is checked against what remains before it
is used, and each check that fails names what was asked, what remained, the
tag being read and its byte offset, raised as MalformedDicomError. Every
step of the walk advances by at least one element header, and nesting is
bounded by MAX_DEPTH, so no input can make it loop or exhaust the C stack.

How it is built. The walk over the elements runs without the GIL on the raw
bytes: tags are compared as integers, the few wanted values are recorded as
(offset, length) pairs in a fixed C array, and the Python result is built
once at the end. Defined-length sequences and items are skipped by their
lengths; only undefined-length ones are walked, because only they must be.
``parse_decoded`` also turns the recorded values into Python values
straight from the buffer (decode.pxi), as pacsstore.parsing defines them.

Which DICOM. The reading rules follow pydicom 3 (filereader.py), because
the archive must keep byte for byte every file that pydicom reads: the VR
of a dataset is detected from its first element (a file that says
explicit VR and is encoded implicit is read as implicit), items of a
sequence in an explicit-VR dataset may be implicit, an explicit-VR header
whose VR bytes are not letters is read as an implicit one, an item
delimiter ends the dataset it appears in, and the last top-level element of
a truncated file is kept with what remains of it (``truncated`` says so).
Where pydicom cannot read a file the walk refuses it too: an undefined
length sequence or item that the data ends inside is malformed. One
deliberate difference: a UN element of undefined length is read as
implicit VR little endian whatever the dataset's encoding, as PS3.5 6.2.2
says, where pydicom keeps the dataset's byte order.
"""

from cpython.buffer cimport (PyBUF_SIMPLE, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint16_t, uint32_t
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.string cimport memchr, memcmp, memcpy, memset

import logging
import zlib

from pacsstore.errors import MalformedDicomError

logger = logging.getLogger(__name__)

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

# The largest inflated dataset parse accepts. The inflated copy is held
# in memory for the walk, by every thread that stores one at a time, and
# a deflate stream expands up to about 1000 times: without a bound a
# small hostile file takes all the memory there is. Real deflated
# datasets (reports, presentation states, the odd small image) inflate
# to a few megabytes; 1 GiB leaves honest writers far inside the bound.
MAX_INFLATED_SIZE = 1 << 30

# Sequences nest a few levels in real data (structured reports reach 6);
# 64 leaves room for any honest writer while keeping the recursion of the
# walk far from the C stack limit.
cdef enum:
    MAX_DEPTH = 64
    # More file meta elements than any writer produces (PS3.10 defines
    # about a dozen); a bound keeps the meta table a fixed C array.
    MAX_META = 256

cdef enum:
    UNDEFINED = 0xFFFFFFFF
    TAG_ITEM = 0xFFFEE000
    TAG_ITEM_END = 0xFFFEE00D
    TAG_SEQ_END = 0xFFFEE0DD
    TAG_PIXEL_DATA = 0x7FE00010

# What a walk of one dataset is for: the file meta group (0002), a command
# group (0000) some old files carry, the top-level dataset, or an item.
cdef enum Mode:
    MODE_META
    MODE_COMMAND
    MODE_DATASET
    MODE_ITEM

# VR classes in explicit VR: unknown, 2-byte length, 4-byte length.
cdef enum VrClass:
    VR_UNKNOWN
    VR_SHORT
    VR_LONG

# How a wanted value is returned: raw bytes, or the first US value.
cdef enum Kind:
    KIND_BYTES
    KIND_US

# Wanted top-level attributes, sorted by tag for the binary search.
_WANTED = (
    (0x00080005, "SpecificCharacterSet", KIND_BYTES),
    (0x00080008, "ImageType", KIND_BYTES),
    (0x00080016, "SOPClassUID", KIND_BYTES),
    (0x00080018, "SOPInstanceUID", KIND_BYTES),
    (0x00080020, "StudyDate", KIND_BYTES),
    (0x00080021, "SeriesDate", KIND_BYTES),
    (0x00080022, "AcquisitionDate", KIND_BYTES),
    (0x00080023, "ContentDate", KIND_BYTES),
    (0x0008002A, "AcquisitionDateTime", KIND_BYTES),
    (0x00080030, "StudyTime", KIND_BYTES),
    (0x00080031, "SeriesTime", KIND_BYTES),
    (0x00080032, "AcquisitionTime", KIND_BYTES),
    (0x00080033, "ContentTime", KIND_BYTES),
    (0x00080050, "AccessionNumber", KIND_BYTES),
    (0x00080060, "Modality", KIND_BYTES),
    (0x00080070, "Manufacturer", KIND_BYTES),
    (0x00080080, "InstitutionName", KIND_BYTES),
    (0x00080090, "ReferringPhysicianName", KIND_BYTES),
    (0x00081010, "StationName", KIND_BYTES),
    (0x00081030, "StudyDescription", KIND_BYTES),
    (0x0008103E, "SeriesDescription", KIND_BYTES),
    (0x00081040, "InstitutionalDepartmentName", KIND_BYTES),
    (0x00081050, "PerformingPhysicianName", KIND_BYTES),
    (0x00081060, "NameOfPhysiciansReadingStudy", KIND_BYTES),
    (0x00081070, "OperatorsName", KIND_BYTES),
    (0x00081080, "AdmittingDiagnosesDescription", KIND_BYTES),
    (0x00081090, "ManufacturerModelName", KIND_BYTES),
    (0x00100010, "PatientName", KIND_BYTES),
    (0x00100020, "PatientID", KIND_BYTES),
    (0x00100021, "IssuerOfPatientID", KIND_BYTES),
    (0x00100030, "PatientBirthDate", KIND_BYTES),
    (0x00100032, "PatientBirthTime", KIND_BYTES),
    (0x00100040, "PatientSex", KIND_BYTES),
    (0x00101000, "OtherPatientIDs", KIND_BYTES),
    (0x00101001, "OtherPatientNames", KIND_BYTES),
    (0x00101010, "PatientAge", KIND_BYTES),
    (0x00102160, "EthnicGroup", KIND_BYTES),
    (0x00102180, "Occupation", KIND_BYTES),
    (0x001021B0, "AdditionalPatientHistory", KIND_BYTES),
    (0x00104000, "PatientComments", KIND_BYTES),
    (0x00180015, "BodyPartExamined", KIND_BYTES),
    (0x00181030, "ProtocolName", KIND_BYTES),
    (0x0020000D, "StudyInstanceUID", KIND_BYTES),
    (0x0020000E, "SeriesInstanceUID", KIND_BYTES),
    (0x00200010, "StudyID", KIND_BYTES),
    (0x00200011, "SeriesNumber", KIND_BYTES),
    (0x00200012, "AcquisitionNumber", KIND_BYTES),
    (0x00200013, "InstanceNumber", KIND_BYTES),
    (0x00200060, "Laterality", KIND_BYTES),
    (0x00280002, "SamplesPerPixel", KIND_US),
    (0x00280004, "PhotometricInterpretation", KIND_BYTES),
    (0x00280008, "NumberOfFrames", KIND_BYTES),
    (0x00280010, "Rows", KIND_US),
    (0x00280011, "Columns", KIND_US),
    (0x00280100, "BitsAllocated", KIND_US),
    (0x00280101, "BitsStored", KIND_US),
    (0x00280103, "PixelRepresentation", KIND_US),
    (0x00400244, "PerformedProcedureStepStartDate", KIND_BYTES),
    (0x00400245, "PerformedProcedureStepStartTime", KIND_BYTES),
    (0x00400254, "PerformedProcedureStepDescription", KIND_BYTES),
    (0x7FE00001, "ExtendedOffsetTable", KIND_BYTES),
    (0x7FE00002, "ExtendedOffsetTableLengths", KIND_BYTES),
)
# Keys that describe the pixel data rather than the instance; they stay out
# of ``attributes``.
_PIXEL_ONLY = frozenset(("ExtendedOffsetTable", "ExtendedOffsetTableLengths"))

cdef enum:
    N_WANTED = 62

cdef uint32_t WANTED_TAGS[N_WANTED]
cdef unsigned char WANTED_KINDS[N_WANTED]
# The keyword of each wanted attribute, by index.
cdef tuple WANTED_KEYWORDS = tuple(entry[1] for entry in _WANTED)
cdef int _i
assert len(_WANTED) == N_WANTED
assert list(_WANTED) == sorted(_WANTED)
for _i in range(N_WANTED):
    WANTED_TAGS[_i] = _WANTED[_i][0]
    WANTED_KINDS[_i] = _WANTED[_i][2]

# Indexes of the wanted attributes the pixel layout reads.
cdef int WANTED_ROWS = WANTED_KEYWORDS.index("Rows")
cdef int WANTED_COLUMNS = WANTED_KEYWORDS.index("Columns")
cdef int WANTED_SAMPLES = WANTED_KEYWORDS.index("SamplesPerPixel")
cdef int WANTED_BITS_ALLOCATED = WANTED_KEYWORDS.index("BitsAllocated")
cdef int WANTED_PHOTOMETRIC = WANTED_KEYWORDS.index(
    "PhotometricInterpretation")
cdef int WANTED_NUMBER_OF_FRAMES = WANTED_KEYWORDS.index("NumberOfFrames")
cdef int WANTED_EXTENDED_OFFSETS = WANTED_KEYWORDS.index(
    "ExtendedOffsetTable")
cdef int WANTED_EXTENDED_LENGTHS = WANTED_KEYWORDS.index(
    "ExtendedOffsetTableLengths")


cdef struct Span:
    Py_ssize_t offset
    Py_ssize_t length


cdef struct MetaElement:
    uint32_t tag
    Py_ssize_t offset
    Py_ssize_t length


cdef struct Walk:
    const unsigned char* buf
    Py_ssize_t size
    # Wanted values of the top-level dataset; length -1 when absent.
    Span wanted[N_WANTED]
    MetaElement meta[MAX_META]
    int meta_count
    # Pixel Data (7FE0,0010) of the top-level dataset.
    bint pixel_found
    Py_ssize_t pixel_element
    Py_ssize_t pixel_value
    Py_ssize_t pixel_end
    long long pixel_length
    bint pixel_truncated
    bint pixel_little
    # Whole walk.
    bint truncated
    bint ended_by_delimiter
    # First failure; the walk returns -1 once it is set.
    const char* err_what
    uint32_t err_tag
    bint err_has_tag
    Py_ssize_t err_offset
    Py_ssize_t err_need
    Py_ssize_t err_have


# --- reading primitives ---------------------------------------------------

cdef inline uint16_t rd16(const unsigned char* p, bint little) noexcept nogil:
    if little:
        return <uint16_t>(p[0] | (p[1] << 8))
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline uint32_t rd32(const unsigned char* p, bint little) noexcept nogil:
    if little:
        return (<uint32_t>p[0] | (<uint32_t>p[1] << 8)
                | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24))
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline uint32_t rd_tag(const unsigned char* p, bint little) noexcept nogil:
    return (<uint32_t>rd16(p, little) << 16) | rd16(p + 2, little)


cdef int fail(Walk* w, const char* what, Py_ssize_t offset, uint32_t tag,
              bint has_tag, Py_ssize_t need, Py_ssize_t have) noexcept nogil:
    """Record the first failure; always returns -1 for the caller to pass
    on."""
    if w.err_what == NULL:
        w.err_what = what
        w.err_offset = offset
        w.err_tag = tag
        w.err_has_tag = has_tag
        w.err_need = need
        w.err_have = have
    return -1


cdef inline bint is_upper(unsigned char c) noexcept nogil:
    return 0x40 < c < 0x5B


cdef VrClass vr_class(unsigned char a, unsigned char b) noexcept nogil:
    """The standard VRs: which have a 4-byte length in explicit VR."""
    cdef uint16_t v = (a << 8) | b
    if v in (0x4F42, 0x4F44, 0x4F46, 0x4F4C, 0x4F56, 0x4F57,   # OB OD OF OL OV OW
             0x5351, 0x5356, 0x5543, 0x554E, 0x5552, 0x5554,   # SQ SV UC UN UR UT
             0x5556):                                          # UV
        return VR_LONG
    if v in (0x4145, 0x4153, 0x4154, 0x4353, 0x4441, 0x4453,   # AE AS AT CS DA DS
             0x4454, 0x4644, 0x464C, 0x4953, 0x4C4F, 0x4C54,   # DT FD FL IS LO LT
             0x504E, 0x5348, 0x534C, 0x5353, 0x5354, 0x544D,   # PN SH SL SS ST TM
             0x5549, 0x554C, 0x5553):                          # UI UL US
        return VR_SHORT
    return VR_UNKNOWN


cdef inline bint vr_in_letter_range(unsigned char a,
                                    unsigned char b) noexcept nogil:
    # pydicom's test b"AA" <= vr <= b"ZZ": a byte-string comparison, so
    # only the first byte has to be a letter when it is not A or Z.
    if a < 0x41 or a > 0x5A:
        return False
    if a == 0x41:
        return b >= 0x41
    if a == 0x5A:
        return b <= 0x5A
    return True


# --- element headers --------------------------------------------------------

cdef struct Header:
    uint32_t tag
    uint32_t length
    int size           # bytes of tag, VR and length
    uint16_t vr        # 0 when the element is read as implicit VR
    bint implicit


cdef int read_header(Walk* w, Py_ssize_t pos, bint implicit, bint little,
                     Header* h) noexcept nogil:
    """Decode the header at pos; the caller has checked 8 bytes remain."""
    cdef const unsigned char* p = w.buf + pos
    cdef VrClass cls
    h.tag = rd_tag(p, little)
    h.vr = 0
    h.implicit = implicit
    if implicit:
        h.length = rd32(p + 4, little)
        h.size = 8
        return 0
    cls = vr_class(p[4], p[5])
    if cls == VR_LONG:
        if w.size - pos < 12:
            return fail(w, "element header cut short", pos, h.tag, True,
                        12, w.size - pos)
        h.vr = (p[4] << 8) | p[5]
        h.length = rd32(p + 8, little)
        h.size = 12
    elif cls == VR_UNKNOWN and not vr_in_letter_range(p[4], p[5]):
        # Not a VR at all: some writers switch to implicit VR mid-dataset.
        h.implicit = True
        h.length = rd32(p + 4, little)
        h.size = 8
    else:
        h.vr = (p[4] << 8) | p[5]
        h.length = rd16(p + 6, little)
        h.size = 8
    return 0


cdef bint detect_implicit(Walk* w, Py_ssize_t pos, bint assumed,
                          int mode) noexcept nogil:
    """pydicom's _is_implicit_vr: the VR bytes of the first element decide,
    except that an item of an implicit-VR sequence stays implicit."""
    if mode == MODE_ITEM and assumed:
        return True
    if w.size - pos < 6:
        return assumed
    return not (is_upper(w.buf[pos + 4]) and is_upper(w.buf[pos + 5]))


# --- undefined-length values ------------------------------------------------

cdef Py_ssize_t scan_delimiter(Walk* w, Py_ssize_t pos,
                               bint little) noexcept nogil:
    """First byte after the next sequence delimiter tag found byte by byte
    (and its 4-byte length), or -2 when the data ends first."""
    cdef unsigned char pattern[4]
    cdef Py_ssize_t i
    if little:
        pattern[0] = 0xFE; pattern[1] = 0xFF; pattern[2] = 0xDD; pattern[3] = 0xE0
    else:
        pattern[0] = 0xFF; pattern[1] = 0xFE; pattern[2] = 0xE0; pattern[3] = 0xDD
    i = pos
    while i + 4 <= w.size:
        if memcmp(w.buf + i, pattern, 4) == 0:
            return min(i + 8, w.size)
        i += 1
    return -2


cdef Py_ssize_t skip_items(Walk* w, Py_ssize_t pos,
                           bint little) noexcept nogil:
    """End of an undefined-length value made of items (encapsulated pixel
    data and the like), as pydicom reads it: walk the items; -2 when the
    data ends first, -3 on a tag that is no item."""
    cdef uint32_t tag, length
    while True:
        if w.size - pos < 8:
            return -2
        tag = rd_tag(w.buf + pos, little)
        if tag == TAG_SEQ_END:
            return pos + 8
        if tag != TAG_ITEM:
            return -3
        length = rd32(w.buf + pos + 4, little)
        if length == UNDEFINED or length > w.size - pos - 8:
            return -2
        # In 64 bits: 8 + a 32-bit length near 2**32 wraps to 0 in 32.
        pos += 8 + <Py_ssize_t>length


cdef Py_ssize_t skip_undefined_value(Walk* w, Py_ssize_t pos,
                                     bint little) noexcept nogil:
    """pydicom's read_undefined_length_value: items first, then a byte
    scan for the delimiter; -2 when the data ends first."""
    cdef Py_ssize_t end = skip_items(w, pos, little)
    if end >= 0:
        return end
    return scan_delimiter(w, pos, little)


# --- the walk ---------------------------------------------------------------

cdef int wanted_index(uint32_t tag) noexcept nogil:
    cdef int lo = 0, hi = N_WANTED - 1, mid
    cdef uint32_t group = tag >> 16
    if group != 0x0008 and group != 0x0010 and group != 0x0018 \
            and group != 0x0020 and group != 0x0028 and group != 0x0040 \
            and group != 0x7FE0:
        return -1
    while lo <= hi:
        mid = (lo + hi) >> 1
        if WANTED_TAGS[mid] == tag:
            return mid
        if WANTED_TAGS[mid] < tag:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


cdef int record(Walk* w, int mode, Header* h, Py_ssize_t pos,
                Py_ssize_t value, Py_ssize_t length) noexcept nogil:
    cdef int i
    if mode == MODE_META:
        if w.meta_count >= MAX_META:
            return fail(w, "too many file meta elements", pos, h.tag, True,
                        0, 0)
        w.meta[w.meta_count].tag = h.tag
        w.meta[w.meta_count].offset = value
        w.meta[w.meta_count].length = length
        w.meta_count += 1
    elif mode == MODE_DATASET:
        if h.tag == TAG_PIXEL_DATA:
            w.pixel_found = True
            w.pixel_element = pos
            w.pixel_value = value
            w.pixel_length = h.length
            w.pixel_end = value + length
            w.pixel_truncated = length < <Py_ssize_t>h.length
            return 0
        i = wanted_index(h.tag)
        if i >= 0:
            # Last one wins, as in pydicom's dict of elements.
            w.wanted[i].offset = value
            w.wanted[i].length = length
    return 0


cdef Py_ssize_t walk_sequence(Walk* w, Py_ssize_t pos, bint implicit,
                              bint little, int depth,
                              uint32_t seq_tag) noexcept nogil:
    """Walk an undefined-length sequence from its first item; returns the
    first byte after its delimiter."""
    cdef uint32_t tag, length
    if depth > MAX_DEPTH:
        return fail(w, "sequences nested too deeply", pos, seq_tag, True,
                    0, 0)
    while True:
        if w.size - pos < 8:
            return fail(w, "sequence not closed by (FFFE,E0DD) before the "
                        "end of the data", pos, seq_tag, True, 8,
                        w.size - pos)
        tag = rd_tag(w.buf + pos, little)
        length = rd32(w.buf + pos + 4, little)
        if tag == TAG_SEQ_END:
            return pos + 8
        # Like pydicom, any other tag opens an item.
        if length == UNDEFINED:
            pos = walk_dataset(w, pos + 8, implicit, little, depth, MODE_ITEM)
            if pos < 0:
                return -1
        elif length > w.size - pos - 8:
            return fail(w, "item value runs past the end of the data", pos,
                        tag, True, length, w.size - pos - 8)
        else:
            pos += 8 + <Py_ssize_t>length  # 64-bit: no wrap


cdef Py_ssize_t walk_undefined(Walk* w, Header* h, Py_ssize_t value,
                               bint implicit, bint little,
                               int depth) noexcept nogil:
    """End of an undefined-length element whose value starts at value;
    -2 when the data ends inside a value that is not a sequence."""
    cdef bint sequence
    if h.implicit or h.vr == 0:
        # No VR to go by: pydicom looks ahead for an item tag.
        sequence = (w.size - value >= 4
                    and rd_tag(w.buf + value, little) == TAG_ITEM)
        if sequence:
            return walk_sequence(w, value, True, little, depth + 1, h.tag)
        return skip_undefined_value(w, value, little)
    if h.vr == 0x554E:
        # UN of undefined length holds implicit VR little endian (PS3.5
        # 6.2.2).
        return walk_sequence(w, value, True, True, depth + 1, h.tag)
    if h.vr == 0x5351:
        return walk_sequence(w, value, implicit, little, depth + 1, h.tag)
    return skip_undefined_value(w, value, little)


cdef Py_ssize_t pixel_undefined(Walk* w, Py_ssize_t pos, Py_ssize_t value,
                                bint little) noexcept nogil:
    """Encapsulated pixel data of the top-level dataset: accepted even when
    the data ends before its delimiter (the fragments that are complete
    are kept); returns where the element ends."""
    cdef Py_ssize_t end = skip_undefined_value(w, value, little)
    w.pixel_found = True
    w.pixel_element = pos
    w.pixel_value = value
    w.pixel_length = -1
    w.pixel_little = little
    w.pixel_truncated = end < 0
    if end < 0:
        w.truncated = True
        end = w.size
    w.pixel_end = end
    return end


cdef Py_ssize_t walk_defined(Walk* w, Header* h, Py_ssize_t pos,
                             int mode) noexcept nogil:
    """Record a defined-length element and return where it ends. At top
    level a value that runs past the data is the last element of a
    truncated file: pydicom keeps what is there, and so do we."""
    cdef Py_ssize_t value = pos + h.size
    cdef Py_ssize_t avail = w.size - value
    cdef Py_ssize_t length = h.length
    if length > avail:
        if mode == MODE_ITEM:
            return fail(w, "value runs past the end of the data", pos,
                        h.tag, True, length, avail)
        w.truncated = True
        length = avail
    if record(w, mode, h, pos, value, length) < 0:
        return -1
    return value + length


cdef Py_ssize_t walk_dataset(Walk* w, Py_ssize_t pos, bint implicit,
                             bint little, int depth, int mode) noexcept nogil:
    """Walk elements from pos. An item ends at its delimiter; the meta and
    command groups end where their group does; the top-level dataset at the
    end of the data. Returns the position after the walk, -1 on error."""
    cdef Header h
    cdef Py_ssize_t avail, end
    cdef bint top = mode != MODE_ITEM
    implicit = detect_implicit(w, pos, implicit, mode)
    while True:
        avail = w.size - pos
        if avail < 8:
            if not top:
                return fail(w, "item not closed by (FFFE,E00D) before the "
                            "end of the data", pos, 0, False, 8, avail)
            if avail > 0 and mode == MODE_DATASET:
                w.truncated = True
            return pos
        if mode == MODE_META or mode == MODE_COMMAND:
            if (rd16(w.buf + pos, little) !=
                    (0x0002 if mode == MODE_META else 0x0000)):
                return pos
        if read_header(w, pos, implicit, little, &h) < 0:
            return -1
        if h.tag == TAG_ITEM_END:
            # pydicom ends the dataset here, at any level.
            if top:
                w.ended_by_delimiter = True
                return pos
            return pos + h.size
        if h.length != UNDEFINED:
            pos = walk_defined(w, &h, pos, mode)
            if pos < 0:
                return -1
            continue
        if mode == MODE_DATASET and h.tag == TAG_PIXEL_DATA:
            end = pixel_undefined(w, pos, pos + h.size, little)
        else:
            end = walk_undefined(w, &h, pos + h.size, implicit, little,
                                 depth)
        if end == -1:
            return -1
        if end < 0:
            if not top:
                return fail(w, "undefined-length value not closed before "
                            "the end of the data", pos, h.tag, True, 0, 0)
            # pydicom stops reading at such a value and keeps the rest.
            w.truncated = True
            return w.size
        pos = end


# --- decoded attributes ---------------------------------------------------

include "decode.pxi"


# --- results ----------------------------------------------------------------

cdef class PixelLayout:
    """Where the Pixel Data (7FE0,0010) value lies and how it splits into
    frames (see _parse.pyi for each field)."""

    cdef public Py_ssize_t element_offset, value_offset, end_offset
    cdef public long long value_length
    cdef public bint encapsulated, truncated
    cdef public Py_ssize_t frame_count, frames_announced
    # Rows x Columns x SamplesPerPixel x BitsAllocated, four US values:
    # up to 65535**4, which needs all 64 bits of an unsigned integer.
    cdef public unsigned long long frame_bits, frame_size
    cdef public object basic_offset_table, extended_offset_table
    cdef public object extended_lengths, fragment_offsets, fragment_lengths
    cdef public object frame_first_fragment, frame_fragment_count

    def __repr__(self) -> str:
        kind = "encapsulated" if self.encapsulated else "native"
        return (f"PixelLayout({kind}, value_offset={self.value_offset}, "
                f"end_offset={self.end_offset}, "
                f"frame_count={self.frame_count})")


cdef class ParseResult:
    """What one parse found (see _parse.pyi for each field)."""

    cdef public bint has_preamble, transfer_syntax_inferred, truncated
    cdef public bint ended_by_delimiter
    cdef public Py_ssize_t dataset_offset, end_offset
    cdef public object meta, transfer_syntax, inflated, pixel
    # The raw attributes, built from a copy of their bytes when first
    # asked for: the store reads the decoded ones, so most parses never
    # need them as a dict.
    cdef object raw_attributes
    cdef bytes raw_values
    cdef Span raw_spans[N_WANTED]
    cdef bint raw_little
    # parse_decoded only: the decoded attributes and the keywords left to
    # the Python decoder, handed over once the walk is done.
    cdef object decoded, pending

    @property
    def attributes(self):
        if self.raw_attributes is None:
            self.raw_attributes = self.build_attributes()
        return self.raw_attributes

    @attributes.setter
    def attributes(self, value):
        self.raw_attributes = value

    cdef dict build_attributes(self):
        cdef int i
        cdef Span s
        cdef const unsigned char* values
        attributes = {}
        if self.raw_values is None:
            # Not made by a walk: nothing was recorded.
            return attributes
        values = self.raw_values
        for i in range(N_WANTED):
            s = self.raw_spans[i]
            if s.length < 0 or WANTED_DECODING[i] == DECODE_NOTHING:
                continue
            if WANTED_KINDS[i] == KIND_US:
                if s.length >= 2:
                    attributes[WANTED_KEYWORDS[i]] = rd16(
                        values + s.offset, self.raw_little)
            else:
                attributes[WANTED_KEYWORDS[i]] = self.raw_values[
                    s.offset:s.offset + s.length]
        return attributes

    def __repr__(self) -> str:
        return (f"ParseResult(transfer_syntax={self.transfer_syntax!r}, "
                f"dataset_offset={self.dataset_offset}, "
                f"attributes={len(self.attributes)}, pixel={self.pixel!r})")


# --- from walk to result ----------------------------------------------------

cdef void init_walk(Walk* w, const unsigned char* buf,
                    Py_ssize_t size) noexcept nogil:
    cdef int i
    memset(w, 0, sizeof(Walk))
    w.buf = buf
    w.size = size
    for i in range(N_WANTED):
        w.wanted[i].length = -1


cdef raise_walk_error(Walk* w, str where):
    message = w.err_what.decode("ascii")
    if w.err_need or w.err_have:
        message += f" (needs {w.err_need} bytes, {w.err_have} remain)"
    raise MalformedDicomError(
        message + where, tag=w.err_tag if w.err_has_tag else None,
        offset=w.err_offset)


cdef Py_ssize_t run_walk(Walk* w, Py_ssize_t pos, bint implicit, bint little,
                         int mode, str where) except -1:
    cdef Py_ssize_t end
    with nogil:
        end = walk_dataset(w, pos, implicit, little, 0, mode)
    if end < 0:
        raise_walk_error(w, where)
    return end


cdef dict meta_dict(Walk* w):
    cdef int i
    meta = {}
    for i in range(w.meta_count):
        meta[w.meta[i].tag] = PyBytes_FromStringAndSize(
            <const char*>w.buf + w.meta[i].offset, w.meta[i].length)
    return meta


cdef int keep_raw_values(Walk* w, ParseResult result,
                         bint little) except -1:
    """Copy the recorded values into one bytes object for
    ParseResult.attributes: one allocation rather than one per value."""
    cdef int i
    cdef Py_ssize_t total = 0
    cdef char* out
    for i in range(N_WANTED):
        if w.wanted[i].length > 0:
            total += w.wanted[i].length
    result.raw_values = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(result.raw_values)
    total = 0
    for i in range(N_WANTED):
        result.raw_spans[i].length = w.wanted[i].length
        result.raw_spans[i].offset = total
        if w.wanted[i].length > 0:
            memcpy(out + total, w.buf + w.wanted[i].offset,
                   w.wanted[i].length)
            total += w.wanted[i].length
    result.raw_little = little
    return 0


cdef object wanted_bytes(Walk* w, int index):
    """The raw value of a wanted attribute, None when absent."""
    cdef Span s = w.wanted[index]
    if s.length < 0:
        return None
    return PyBytes_FromStringAndSize(<const char*>w.buf + s.offset, s.length)


cdef unsigned long long wanted_us(Walk* w, int index, bint little,
                                  unsigned long long absent) noexcept nogil:
    """A wanted US attribute, or absent when it is missing or short."""
    cdef Span s = w.wanted[index]
    if s.length < 2:
        return absent
    return rd16(w.buf + s.offset, little)


def _strip_uid(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()


# pydicom's test of an inferred explicit VR: the first element's VR is one
# it knows.
_VR_NAMES = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS "
    b"ST SV TM UC UI UL UN UR US UT UV".split())


cdef str infer_syntax(const unsigned char* buf, Py_ssize_t size,
                      Py_ssize_t pos):
    """pydicom's guess for a dataset without a transfer syntax: explicit VR
    when the first element carries a VR it knows, big endian when its group
    read little endian is 1024 or more."""
    if size - pos < 6:
        return IMPLICIT_VR_LITTLE_ENDIAN
    if buf[pos + 4:pos + 6] not in _VR_NAMES:
        return IMPLICIT_VR_LITTLE_ENDIAN
    if rd16(buf + pos, True) >= 1024:
        return EXPLICIT_VR_BIG_ENDIAN
    return EXPLICIT_VR_LITTLE_ENDIAN


def integer_string(raw):
    """An IS value as pydicom reads it, or None when it is empty or no
    integer (the Python layer decodes IS attributes with it too)."""
    if raw is None:
        return None
    text = raw.decode("ascii", "replace").strip(" \x00")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return int(number) if number.is_integer() else None


def _inflate(data, offset: int) -> bytes:
    if len(data) == 0:
        # Nothing after the meta: an empty dataset, as pydicom reads it.
        return b""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        # Output is bounded before it is allocated: deflate reaches about
        # 1000:1, so a few megabytes could otherwise claim gigabytes.
        inflated = inflater.decompress(data, MAX_INFLATED_SIZE + 1)
        if len(inflated) <= MAX_INFLATED_SIZE:
            tail = inflater.flush()
            inflated = inflated + tail if tail else inflated
    except zlib.error as error:
        raise MalformedDicomError(
            f"deflated dataset does not inflate ({error})",
            offset=offset) from None
    if len(inflated) > MAX_INFLATED_SIZE:
        raise MalformedDicomError(
            f"deflated dataset inflates past {MAX_INFLATED_SIZE} bytes, "
            f"the most pacsstore inflates (MAX_INFLATED_SIZE)",
            offset=offset)
    if not inflater.eof:
        raise MalformedDicomError(
            "deflated dataset ends before its deflate stream does",
            offset=offset + len(data))
    return inflated


# --- pixel data layout ------------------------------------------------------

cdef native_layout(Walk* w, PixelLayout layout, bint little):
    cdef unsigned long long frame_bits
    cdef Span photometric = w.wanted[WANTED_PHOTOMETRIC]
    cdef Py_ssize_t available_bits
    frame_bits = (wanted_us(w, WANTED_ROWS, little, 0)
                  * wanted_us(w, WANTED_COLUMNS, little, 0)
                  * wanted_us(w, WANTED_SAMPLES, little, 1)
                  * wanted_us(w, WANTED_BITS_ALLOCATED, little, 0))
    if (photometric.length >= 0
            and strip_both(w.buf + photometric.offset, photometric.length)
            == b"YBR_FULL_422"):
        # Native YBR_FULL_422 keeps one Cb and one Cr for every two Y
        # samples: two thirds of the three-sample size (PS3.3 C.7.6.3.1.2).
        frame_bits = frame_bits // 3 * 2
    layout.frame_bits = frame_bits
    layout.frame_size = (frame_bits + 7) // 8
    available_bits = (layout.end_offset - layout.value_offset) * 8
    if frame_bits == 0:
        # Without the image geometry the value cannot be split: no frames.
        layout.frame_count = 0
        return
    layout.frame_count = min(
        layout.frames_announced,
        <Py_ssize_t>(<unsigned long long>available_bits // frame_bits))


cdef bytes strip_both(const unsigned char* p, Py_ssize_t n):
    """The bytes with padding (spaces, NULs) stripped at both ends."""
    cdef Py_ssize_t start = 0
    n = strip_end(p, n)
    while start < n and is_padding(p[start]):
        start += 1
    return PyBytes_FromStringAndSize(<const char*>p + start, n - start)


cdef list item_fragments(Walk* w, Py_ssize_t pos, Py_ssize_t end,
                         bint little, list lengths):
    """Offsets (of values) and lengths of the complete items from pos up to
    the sequence delimiter, a tag that is no item, or end."""
    cdef uint32_t tag, length
    offsets = []
    while end - pos >= 8:
        tag = rd_tag(w.buf + pos, little)
        if tag != TAG_ITEM:
            break
        length = rd32(w.buf + pos + 4, little)
        if length == UNDEFINED or length > end - pos - 8:
            break
        offsets.append(pos + 8)
        lengths.append(length)
        pos += 8 + <Py_ssize_t>length  # 64-bit: no wrap
    return offsets


cdef list u_array(bytes raw, int width, bint little):
    order = "little" if little else "big"
    return [int.from_bytes(raw[i:i + width], order)
            for i in range(0, len(raw) - width + 1, width)]


cdef bint ends_with_eoi(Walk* w, Py_ssize_t offset, Py_ssize_t length):
    """pydicom's test: FFD9 among the last 10 bytes of a fragment."""
    cdef Py_ssize_t start = max(offset, offset + length - 10)
    cdef Py_ssize_t i
    for i in range(start, offset + length - 1):
        if w.buf[i] == 0xFF and w.buf[i + 1] == 0xD9:
            return True
    return False


cdef tuple map_by_bot(list bot, list lengths):
    """pydicom's generate_fragmented_frames with a Basic Offset Table: a
    fragment starts a new frame once the bytes before it reach the next
    offset."""
    firsts, counts = [0], [0]
    index, offset, final = 0, 0, len(bot) - 1
    for i, length in enumerate(lengths):
        if index == final or offset < bot[index + 1]:
            counts[len(counts) - 1] += 1
        else:
            index += 1
            firsts.append(i)
            counts.append(1)
        offset += length + 8
    return firsts, counts


cdef tuple map_by_eoi(Walk* w, list offsets, list lengths):
    """Without an offset table and with more fragments than frames, a
    fragment ending with the JPEG EOI / J2K EOC marker ends a frame."""
    firsts, counts = [], []
    first, count = 0, 0
    for i in range(len(offsets)):
        count += 1
        if ends_with_eoi(w, offsets[i], lengths[i]):
            firsts.append(first)
            counts.append(count)
            first, count = i + 1, 0
    if count:
        firsts.append(first)
        counts.append(count)
    return firsts, counts


cdef object map_by_eot(list offsets, list lengths, list eot,
                       list eot_lengths, Py_ssize_t first_item):
    """One fragment per frame when every Extended Offset Table entry is
    the start and length of a fragment, each after the one before; None
    when the table disagrees. A fragment named twice, or out of order,
    would be cut out twice: the store keeps each byte once."""
    starts = {offsets[i] - 8 - first_item: i for i in range(len(offsets))}
    firsts = []
    previous = -1
    for offset, length in zip(eot, eot_lengths):
        i = starts.get(offset)
        if i is None or i <= previous or lengths[i] != length:
            return None
        firsts.append(i)
        previous = i
    return firsts, [1] * len(firsts)


cdef tuple map_fragments(Walk* w, list bot, list offsets, list lengths,
                         Py_ssize_t announced):
    cdef Py_ssize_t n = len(offsets)
    if n == 0:
        return [], []
    if bot:
        return map_by_bot(bot, lengths)
    if n == 1 or announced == 1:
        return [0], [n]
    if n > announced:
        return map_by_eoi(w, offsets, lengths)
    # As many fragments as frames, or fewer (pydicom refuses those: the
    # header announces frames that are not there): one frame per fragment.
    return list(range(n)), [1] * n


cdef object extended_mapping(Walk* w, PixelLayout layout, bint little,
                             Py_ssize_t first_item):
    eot = wanted_bytes(w, WANTED_EXTENDED_OFFSETS)
    eot_lengths = wanted_bytes(w, WANTED_EXTENDED_LENGTHS)
    if eot is None or eot_lengths is None:
        return None
    layout.extended_offset_table = u_array(eot, 8, little)
    layout.extended_lengths = u_array(eot_lengths, 8, little)
    if len(layout.extended_offset_table) != len(layout.extended_lengths):
        return None
    return map_by_eot(layout.fragment_offsets, layout.fragment_lengths,
                      layout.extended_offset_table, layout.extended_lengths,
                      first_item)


cdef encapsulated_layout(Walk* w, PixelLayout layout):
    cdef bint little = w.pixel_little
    cdef Py_ssize_t end = layout.end_offset
    layout.basic_offset_table = []
    layout.fragment_offsets = []
    layout.fragment_lengths = []
    layout.frame_first_fragment = []
    layout.frame_fragment_count = []
    layout.frame_count = 0
    bot_lengths = []
    bot_offsets = item_fragments(w, layout.value_offset, end, little,
                                 bot_lengths)
    if not bot_offsets:
        return
    # The first item is the Basic Offset Table; one whose length is not a
    # multiple of 4 is no usable table (pydicom refuses to split by it).
    bot_raw = PyBytes_FromStringAndSize(
        <const char*>w.buf + <Py_ssize_t>bot_offsets[0], bot_lengths[0])
    bot = u_array(bot_raw, 4, little) if len(bot_raw) % 4 == 0 else []
    layout.basic_offset_table = bot
    first_item = bot_offsets[0] + bot_lengths[0]
    lengths = []
    layout.fragment_offsets = item_fragments(w, first_item, end, little,
                                             lengths)
    layout.fragment_lengths = lengths
    mapped = extended_mapping(w, layout, little, first_item)
    if mapped is None:
        mapped = map_fragments(w, bot, layout.fragment_offsets, lengths,
                               layout.frames_announced)
    layout.frame_first_fragment, layout.frame_fragment_count = mapped
    layout.frame_count = len(mapped[0])


cdef PixelLayout pixel_layout(Walk* w, bint little):
    cdef PixelLayout layout = PixelLayout()
    cdef Span number_of_frames = w.wanted[WANTED_NUMBER_OF_FRAMES]
    layout.element_offset = w.pixel_element
    layout.value_offset = w.pixel_value
    layout.end_offset = w.pixel_end
    layout.value_length = w.pixel_length
    layout.encapsulated = w.pixel_length < 0
    layout.truncated = w.pixel_truncated
    frames = (integer_value(w.buf + number_of_frames.offset,
                            number_of_frames.length)
              if number_of_frames.length >= 0 else None)
    # An IS may spell any integer ("1e300" is one); no buffer holds more
    # frames than PY_SSIZE_T_MAX, so larger counts compare the same
    # clamped to it.
    layout.frames_announced = (min(frames, PY_SSIZE_T_MAX)
                               if frames is not None and frames > 0
                               else 1)
    if layout.encapsulated:
        encapsulated_layout(w, layout)
    else:
        native_layout(w, layout, little)
    return layout


# --- parse ------------------------------------------------------------------

cdef tuple syntax_encoding(str syntax):
    """(implicit, little) of a transfer syntax; anything unknown is
    explicit VR little endian, as every encapsulated syntax is."""
    if syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True
    if syntax == EXPLICIT_VR_BIG_ENDIAN:
        return False, False
    return False, True


cdef ParseResult walk_body(Walk* w, ParseResult result, Py_ssize_t pos,
                           str where, object classify):
    cdef bint implicit, little
    implicit, little = syntax_encoding(result.transfer_syntax)
    w.pixel_little = little
    result.end_offset = run_walk(w, pos, implicit, little, MODE_DATASET,
                                 where)
    result.truncated = w.truncated
    result.ended_by_delimiter = w.ended_by_delimiter
    keep_raw_values(w, result, little)
    result.pixel = pixel_layout(w, little) if w.pixel_found else None
    if classify is not None:
        result.decoded, result.pending = decoded_attributes(w, little,
                                                            classify)
    return result


cdef ParseResult parse_inflated(ParseResult result, object deflated,
                                object classify):
    cdef Walk* w
    cdef Py_buffer view
    inflated = _inflate(deflated, result.dataset_offset)
    result.inflated = inflated
    PyObject_GetBuffer(inflated, &view, PyBUF_SIMPLE)
    w = <Walk*>PyMem_Malloc(sizeof(Walk))
    try:
        if w == NULL:
            raise MemoryError()
        init_walk(w, <const unsigned char*>view.buf, view.len)
        return walk_body(w, result, 0, " in the inflated dataset",
                         classify)
    finally:
        PyMem_Free(w)
        PyBuffer_Release(&view)


cdef ParseResult parse_view(Walk* w, object buffer, object syntax,
                            object classify):
    cdef ParseResult result = ParseResult()
    cdef Py_ssize_t pos = 0
    result.meta = {}
    result.inflated = None
    if syntax is None:
        result.has_preamble = (w.size >= 132
                               and memcmp(w.buf + 128, b"DICM", 4) == 0)
        pos = run_walk(w, 132 if result.has_preamble else 0, False, True,
                       MODE_META, "")
        result.meta = meta_dict(w)
        if 0x00020010 in result.meta:
            syntax = _strip_uid(result.meta[0x00020010])
    result.dataset_offset = pos
    result.transfer_syntax_inferred = syntax is None
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        result.transfer_syntax = syntax
        return parse_inflated(result, memoryview(buffer)[pos:], classify)
    # Command group elements (0000,eeee) are implicit VR little endian
    # wherever they appear (PS3.7 6.3); skip them as pydicom does.
    pos = run_walk(w, pos, True, True, MODE_COMMAND, "")
    result.transfer_syntax = (syntax if syntax is not None
                              else infer_syntax(w.buf, w.size, pos))
    return walk_body(w, result, pos, "", classify)


def parse(buffer, transfer_syntax=None):
    """Walk a DICOM Part 10 file, or a bare dataset when transfer_syntax is
    given, held in any contiguous bytes-like object."""
    return parse_buffer(buffer, transfer_syntax, None)


def parse_decoded(buffer, transfer_syntax, classify):
    """parse, and the recorded attributes decoded as
    pacsstore.parsing.decode_value decodes them: (result, attributes,
    pending), where pending lists the keywords (holding None) that the
    Python decoder must finish, or is None. classify(raw Specific
    Character Set value or None) gives one of the CHARSET_ modes; it must
    depend on the value alone, since its answers are cached."""
    cdef ParseResult result = parse_buffer(buffer, transfer_syntax,
                                           classify)
    decoded, pending = result.decoded, result.pending
    result.decoded = result.pending = None
    return result, decoded, pending


cdef ParseResult parse_buffer(object buffer, object transfer_syntax,
                              object classify):
    cdef Py_buffer view
    cdef Walk* w
    if transfer_syntax is not None and not isinstance(transfer_syntax, str):
        raise TypeError("transfer_syntax must be a str or None")
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    w = <Walk*>PyMem_Malloc(sizeof(Walk))
    try:
        if w == NULL:
            raise MemoryError()
        init_walk(w, <const unsigned char*>view.buf, view.len)
        return parse_view(w, buffer, transfer_syntax, classify)
    finally:
        PyMem_Free(w)
        PyBuffer_Release(&view)
