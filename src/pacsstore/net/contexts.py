"""The presentation contexts the node accepts.

The node keeps every dataset as it arrives, so it needs no codec to accept
a transfer syntax: it offers every storage SOP class with every transfer
syntax whose datasets it can file, compressed or not. The list is explicit
rather than taken from pydicom alone, because pydicom leaves out syntaxes
that real modalities still send (the retired JPEG processes, Deflated Image
Frame Compression, JPIP and JPEG XL).
"""

from __future__ import annotations

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

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


def storage_sop_classes() -> list[str]:
    """The storage SOP classes pynetdicom knows (PS3.4 B.5)."""
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


def verification_sop_class() -> str:
    return str(Verification)
