# Decoding of the recorded query attributes into Python values, straight
# from the walked buffer (included by parse.pyx).
#
# The contract is pacsstore.parsing.decode_value, which follows pydicom:
# this is its fast path for the text that makes up nearly every header
# (the default repertoire, ISO_IR 100, UTF-8, or plain ASCII in any other
# character set), producing exactly the values it produces. Whatever is
# not certainly the same here (code extensions, bytes outside ASCII in a
# multi-byte character set, text that does not decode, an IS that is no
# plain integer) is left to the Python decoder: the value is PENDING and
# parsing.py finishes it.

from cpython.unicode cimport PyUnicode_DecodeLatin1, PyUnicode_DecodeUTF8


cdef extern from "Python.h":
    # A dict with room for this many items: no resizing while it fills.
    dict _PyDict_NewPresized(Py_ssize_t minused)

# The value representation of each recorded attribute but the US ones; it
# decides how the raw bytes decode.
VALUE_REPRESENTATIONS = {
    "SpecificCharacterSet": "CS", "ImageType": "CS",
    "SOPClassUID": "UI", "SOPInstanceUID": "UI",
    "StudyInstanceUID": "UI", "SeriesInstanceUID": "UI",
    "StudyDate": "DA", "SeriesDate": "DA", "ContentDate": "DA",
    "PatientBirthDate": "DA", "PerformedProcedureStepStartDate": "DA",
    "StudyTime": "TM", "SeriesTime": "TM", "ContentTime": "TM",
    "PerformedProcedureStepStartTime": "TM",
    "AcquisitionDateTime": "DT",
    "AccessionNumber": "SH", "StudyID": "SH",
    "Modality": "CS", "PatientSex": "CS", "BodyPartExamined": "CS",
    "PhotometricInterpretation": "CS",
    "Manufacturer": "LO", "InstitutionName": "LO", "PatientID": "LO",
    "IssuerOfPatientID": "LO", "StudyDescription": "LO",
    "SeriesDescription": "LO",
    "PatientName": "PN", "ReferringPhysicianName": "PN",
    "PatientAge": "AS",
    "SeriesNumber": "IS", "InstanceNumber": "IS", "NumberOfFrames": "IS",
    "AcquisitionNumber": "IS",
    "AcquisitionDate": "DA", "AcquisitionTime": "TM",
    "PatientBirthTime": "TM",
    "StationName": "SH", "EthnicGroup": "SH", "Occupation": "SH",
    "InstitutionalDepartmentName": "LO", "ManufacturerModelName": "LO",
    "AdmittingDiagnosesDescription": "LO", "OtherPatientIDs": "LO",
    "ProtocolName": "LO", "PerformedProcedureStepDescription": "LO",
    "PerformingPhysicianName": "PN", "NameOfPhysiciansReadingStudy": "PN",
    "OperatorsName": "PN", "OtherPatientNames": "PN",
    "AdditionalPatientHistory": "LT", "PatientComments": "LT",
    "Laterality": "CS",
}
# Attributes given as a tuple even with one value.
ALWAYS_TUPLE = frozenset(("ImageType", "SpecificCharacterSet"))

# How a Specific Character Set lets text of the charset VRs (SH, LO, PN,
# ST, LT, UC, UT) decode here; parsing.py says which applies to a value.
# Text without code extensions decodes in the first character set alone
# (pydicom's decode_bytes), so that one decides.
CHARSET_PYTHON = 0   # none of it: the Python decoder does all
CHARSET_ASCII = 1    # ASCII text decodes as ASCII; other bytes: Python
CHARSET_LATIN1 = 2   # ISO 8859-1 (the default repertoire, ISO_IR 100)
CHARSET_UTF8 = 3     # ISO_IR 192; text that is no valid UTF-8: Python

# How each kind of value splits and strips, after pydicom's converters.
cdef enum Decoding:
    DECODE_NOTHING        # pixel-only tables, not attributes
    DECODE_US             # first US value, an int
    DECODE_IS             # an int, or None
    DECODE_DEFAULT_TEXT   # multi_string: default repertoire, whole value
                          # stripped, then split at backslashes
    DECODE_CHARSET_TEXT   # convert_text: split, each value stripped
    DECODE_SINGLE_TEXT    # convert_single_string: one value, stripped
    DECODE_PERSON_NAME    # convert_PN: stripped, split, trailing "=" off

# The character set of the other text VRs (CS, UI, DA, TM, DT, AS), which
# is the default repertoire whatever the dataset's: pydicom reads it as
# ISO 8859-1. Not one of the CHARSET_ modes, which are for the others.
cdef enum:
    DEFAULT_REPERTOIRE = -1

_DECODING_OF_VR = {
    "IS": DECODE_IS, "PN": DECODE_PERSON_NAME,
    "SH": DECODE_CHARSET_TEXT, "LO": DECODE_CHARSET_TEXT,
    "UC": DECODE_CHARSET_TEXT,
    "ST": DECODE_SINGLE_TEXT, "LT": DECODE_SINGLE_TEXT,
    "UT": DECODE_SINGLE_TEXT,
}

cdef unsigned char WANTED_DECODING[N_WANTED]
cdef bint WANTED_TUPLE[N_WANTED]
for _i in range(N_WANTED):
    _keyword = _WANTED[_i][1]
    if _keyword in _PIXEL_ONLY:
        WANTED_DECODING[_i] = DECODE_NOTHING
    elif WANTED_KINDS[_i] == KIND_US:
        WANTED_DECODING[_i] = DECODE_US
    else:
        WANTED_DECODING[_i] = _DECODING_OF_VR.get(
            VALUE_REPRESENTATIONS[_keyword], DECODE_DEFAULT_TEXT)
    WANTED_TUPLE[_i] = _keyword in ALWAYS_TUPLE

# A value the fast path leaves to the Python decoder.
cdef object PENDING = object()

# Character set handling by raw Specific Character Set value (None when
# absent), as the classifier parse_decoded is given answered it; an
# archive sees few distinct values, so the bound is only for hostile data.
cdef dict _charset_cache = {}
cdef enum:
    MAX_CACHED_CHARSETS = 256


cdef int charset_of(object raw, object classify) except? -2:
    cached = _charset_cache.get(raw)
    if cached is not None:
        return cached
    mode = classify(raw)
    if len(_charset_cache) >= MAX_CACHED_CHARSETS:
        _charset_cache.clear()
    _charset_cache[raw] = mode
    return mode


cdef inline bint is_padding(unsigned char c) noexcept nogil:
    return c == 0x20 or c == 0x00


cdef inline Py_ssize_t strip_end(const unsigned char* p,
                                 Py_ssize_t n) noexcept nogil:
    while n > 0 and is_padding(p[n - 1]):
        n -= 1
    return n


cdef object decode_text(const unsigned char* p, Py_ssize_t n, int charset):
    """One value's text, or PENDING where only the Python decoder can say
    what it is."""
    cdef Py_ssize_t i
    cdef unsigned char seen = 0
    if charset == DEFAULT_REPERTOIRE:
        # pydicom's default_encoding, "iso8859": ISO 8859-1, any byte.
        return PyUnicode_DecodeLatin1(<const char*>p, n, NULL)
    if charset == CHARSET_PYTHON:
        return PENDING
    for i in range(n):
        if p[i] == 0x1B:
            # ESC starts a code extension: pydicom's decode_bytes switches
            # character sets at each one.
            return PENDING
        seen |= p[i]
    if seen < 0x80 or charset == CHARSET_LATIN1:
        return PyUnicode_DecodeLatin1(<const char*>p, n, NULL)
    if charset == CHARSET_UTF8:
        try:
            return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
        except UnicodeDecodeError:
            # pydicom decodes it with replacement characters and a warning.
            return PENDING
    return PENDING


cdef object integer_value(const unsigned char* p, Py_ssize_t n):
    """An IS: a plain integer here, anything else by integer_string."""
    cdef Py_ssize_t start = 0, end = strip_end(p, n), i
    cdef long long value = 0
    cdef bint negative = False
    while start < end and is_padding(p[start]):
        start += 1
    i = start
    if i < end and (p[i] == 0x2B or p[i] == 0x2D):   # + -
        negative = p[i] == 0x2D
        i += 1
    # 18 digits always fit a long long.
    if i == end or end - i > 18:
        return integer_string(PyBytes_FromStringAndSize(<const char*>p, n))
    while i < end:
        if p[i] < 0x30 or p[i] > 0x39:
            return integer_string(
                PyBytes_FromStringAndSize(<const char*>p, n))
        value = value * 10 + (p[i] - 0x30)
        i += 1
    return -value if negative else value


cdef object decode_values(const unsigned char* p, Py_ssize_t n,
                          int decoding, int charset, bint always_tuple):
    """The value of one text attribute as parsing.decode_value gives it:
    a str, a tuple of str for several values, or PENDING."""
    cdef Py_ssize_t start, end, part_end
    cdef bint strip_each = decoding == DECODE_CHARSET_TEXT
    cdef bint person = decoding == DECODE_PERSON_NAME
    if decoding == DECODE_DEFAULT_TEXT:
        charset = DEFAULT_REPERTOIRE
    if not strip_each:
        n = strip_end(p, n)
    if decoding == DECODE_SINGLE_TEXT or (
            not always_tuple and memchr(p, 0x5C, n) == NULL):
        # One value: ST, LT and UT (where a backslash is text), or a value
        # without a backslash.
        if strip_each:
            n = strip_end(p, n)
        elif person:
            while n > 0 and p[n - 1] == 0x3D:   # =
                n -= 1
        return decode_text(p, n, charset)
    values = []
    start = 0
    while True:
        end = start
        while end < n and p[end] != 0x5C:   # backslash
            end += 1
        part_end = end
        if strip_each:
            part_end = start + strip_end(p + start, end - start)
        elif person:
            # PersonName drops empty trailing groups: "Doe^J==" is "Doe^J".
            while part_end > start and p[part_end - 1] == 0x3D:   # =
                part_end -= 1
        value = decode_text(p + start, part_end - start, charset)
        if value is PENDING:
            return PENDING
        values.append(value)
        if end >= n:
            break
        start = end + 1
    if always_tuple:
        if len(values) == 1 and not values[0]:
            return ()
        return tuple(values)
    if len(values) == 1:
        return values[0]
    return tuple(values)


cdef tuple decoded_attributes(Walk* w, bint little, object classify):
    """(attributes, pending): every recorded attribute decoded, in tag
    order; those left to the Python decoder hold None and are listed in
    pending (None when there are none)."""
    cdef int i, decoding, charset
    cdef Span s
    cdef const unsigned char* p
    cdef Py_ssize_t count = 0
    pending = None
    for i in range(N_WANTED):
        count += w.wanted[i].length >= 0
    attributes = _PyDict_NewPresized(count)
    s = w.wanted[0]   # SpecificCharacterSet
    charset = charset_of(
        PyBytes_FromStringAndSize(<const char*>w.buf + s.offset, s.length)
        if s.length >= 0 else None, classify)
    for i in range(N_WANTED):
        s = w.wanted[i]
        decoding = WANTED_DECODING[i]
        if s.length < 0 or decoding == DECODE_NOTHING:
            continue
        keyword = WANTED_KEYWORDS[i]
        p = w.buf + s.offset
        if decoding == DECODE_US:
            if s.length >= 2:
                attributes[keyword] = rd16(p, little)
            continue
        if decoding == DECODE_IS:
            attributes[keyword] = integer_value(p, s.length)
            continue
        value = decode_values(p, s.length, decoding, charset,
                              WANTED_TUPLE[i])
        if value is PENDING:
            if pending is None:
                pending = []
            pending.append(keyword)
            value = None
        attributes[keyword] = value
    return attributes, pending
