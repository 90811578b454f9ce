"""The presentation contexts the node accepts, and the service each
belongs to.

The node keeps every dataset as it arrives, so it needs no codec to accept
a transfer syntax: it offers every storage SOP class with every transfer
syntax whose datasets it can file, compressed or not. The syntax list is
explicit rather than taken from pydicom alone, because pydicom leaves out
syntaxes that real modalities still send (the retired JPEG processes,
Deflated Image Frame Compression, JPIP and JPEG XL).

The SOP classes are every storage SOP class of pydicom's UID dictionary,
current and retired, joined with pynetdicom's list: pynetdicom's list
alone leaves out classes that file ingest stores (Color Palette, Hanging
Protocol, the retired Ultrasound Image Storage, ...), and an archive
should take over the network what it takes from disk. As an acceptor the
node may support any number of them; the 128-context limit of PS3.8 9.3.2
binds what one association request proposes, not what an SCP accepts.
The node accepts either role for them (SCP/SCU role selection, PS3.7
D.3.3.4), because a C-GET peer receives its instances as the storage SCP
on its own association.

Query/retrieve comes in the Patient Root and Study Root information
models (PS3.4 C.6.1, C.6.2), each with a FIND, a MOVE and a GET SOP
class; their identifiers are small, so the uncompressed little endian
syntaxes are all they need.
"""

from __future__ import annotations

import copy
from typing import Any

# pydicom has no public list of its UIDs; UID.name and UID.type read
# this same table.
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts, register_uid
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove, Verification,
    uid_to_service_class)

from pacsstore.net.access import Service

# Transfer syntaxes pydicom 3.0 does not list (PS3.6 Table A-1).
EXTRA_TRANSFER_SYNTAXES = (
    # Retired JPEG processes still found in archives (PS3.5 A.4.1).
    "1.2.840.10008.1.2.4.52", "1.2.840.10008.1.2.4.53",
    "1.2.840.10008.1.2.4.54", "1.2.840.10008.1.2.4.55",
    "1.2.840.10008.1.2.4.56", "1.2.840.10008.1.2.4.58",
    "1.2.840.10008.1.2.4.59", "1.2.840.10008.1.2.4.60",
    "1.2.840.10008.1.2.4.61", "1.2.840.10008.1.2.4.62",
    "1.2.840.10008.1.2.4.63", "1.2.840.10008.1.2.4.64",
    "1.2.840.10008.1.2.4.65", "1.2.840.10008.1.2.4.66",
    # JPIP referenced (pixel data by URL), plain and deflated.
    "1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95",
    # JPEG XL lossless, JPEG recompression, and lossy.
    "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111",
    "1.2.840.10008.1.2.4.112",
    # Deflated Image Frame Compression (2024).
    "1.2.840.10008.1.2.8.1",
)


def storable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax the node accepts for storage.

    The order is the node's preference: where a peer proposes several
    syntaxes in one context, pynetdicom accepts the first of this list
    that the peer offers, so Explicit VR Little Endian comes first.
    """
    preferred = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    rest = [str(uid) for uid in AllTransferSyntaxes]
    rest += EXTRA_TRANSFER_SYNTAXES
    return preferred + [uid for uid in dict.fromkeys(rest)
                        if uid not in preferred]


# SOP classes with "Storage" in their name that no C-STORE carries: the
# storage commitment services (N-ACTION, N-EVENT-REPORT), and the
# DICOMDIR, which names a file-set on media (PS3.10) and which the
# archive refuses anyway.
NOT_STORAGE_PREFIXES = ("Storage Commitment",)
NOT_STORAGE_UIDS = frozenset({"1.2.840.10008.1.3.10"})


def _is_storage(uid: str, entry: tuple[str, ...]) -> bool:
    name, kind = entry[0], entry[1]
    return (kind == "SOP Class" and "Storage" in name
            and not name.startswith(NOT_STORAGE_PREFIXES)
            and uid not in NOT_STORAGE_UIDS)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pydicom or pynetdicom knows, current and
    retired (PS3.4 B.5, PS3.6 A), in pydicom's dictionary order."""
    known = [uid for uid, entry in UID_dictionary.items()
             if _is_storage(uid, entry)]
    known += [str(cx.abstract_syntax)
              for cx in AllStoragePresentationContexts]
    return list(dict.fromkeys(known))


def register_storage_classes() -> None:
    """Tell pynetdicom that the storage SOP classes it does not know are
    served by its Storage Service Class.

    Accepting a context is not enough: pynetdicom picks the service for a
    request by its SOP class, and for an unknown one it answers without
    calling the C-STORE handler. The registration is process-wide in
    pynetdicom, and doing it twice is harmless.
    """
    for uid in storage_sop_classes():
        if uid_to_service_class(uid) is ServiceClass:
            keyword = (UID_dictionary[uid][4]
                       or "Storage_" + uid.replace(".", "_"))
            register_uid(uid, keyword, StorageServiceClass)


def verification_sop_class() -> str:
    return str(Verification)


# Query/retrieve SOP class -> information model, as the matcher names it.
FIND_MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): "patient",
    str(StudyRootQueryRetrieveInformationModelFind): "study",
}
MOVE_MODELS = {
    str(PatientRootQueryRetrieveInformationModelMove): "patient",
    str(StudyRootQueryRetrieveInformationModelMove): "study",
}
GET_MODELS = {
    str(PatientRootQueryRetrieveInformationModelGet): "patient",
    str(StudyRootQueryRetrieveInformationModelGet): "study",
}


def query_retrieve_sop_classes() -> list[str]:
    return [*FIND_MODELS, *MOVE_MODELS, *GET_MODELS]


def query_retrieve_transfer_syntaxes() -> list[str]:
    """Explicit, then implicit VR little endian."""
    return storable_transfer_syntaxes()[:2]


def service_of(sop_class: str) -> Service | None:
    """The permission a context of ``sop_class`` needs; None for
    Verification, which every admitted peer may use."""
    if sop_class in FIND_MODELS:
        return Service.QUERY
    if sop_class in MOVE_MODELS or sop_class in GET_MODELS:
        return Service.RETRIEVE
    if sop_class == verification_sop_class():
        return None
    return Service.STORE


class CheaplyCopiedContexts(list):
    """The server's supported presentation contexts, as a list whose
    deep copy shares the transfer syntax UIDs instead of copying them.

    pynetdicom deep-copies the server's contexts for every association
    it accepts, so that each negotiates on its own objects. The node's
    list is every storage SOP class with every storable syntax, 12,288
    UID objects, and their deep copy took about 70 ms per association
    (an association that did one C-ECHO took 102 ms against the node and
    20 ms against DCMTK's storescp). A UID is an immutable string; what
    negotiation changes on a context is its own scalar fields and, at
    most, its list of syntaxes. So each context is copied, with a list of
    its own holding the same UIDs, which gives every association
    separate contexts for a fraction of the cost.
    """

    def __deepcopy__(self, memo: dict) -> list:
        return [_copy_context(context) for context in self]


def _copy_context(context: Any) -> Any:
    copied = copy.copy(context)
    # The one mutable field of pynetdicom 3.0's PresentationContext.
    copied._transfer_syntax = list(context._transfer_syntax)
    return copied
