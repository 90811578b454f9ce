"""The DICOM node of pacsstore: a storage, query/retrieve and storage
commitment SCP on pynetdicom that keeps datasets as received and sends
them back the same.

``node`` sets up the application entity, ``contexts`` says which
presentation contexts it accepts, ``handlers`` holds the event handlers of
verification, storage and access control, ``qr`` those of C-FIND, C-MOVE
and C-GET, ``retrieve`` sends their sub-operations, ``commitment`` serves
storage commitment, ``access`` is the peer table and ``config`` reads it
from a file, and ``status`` maps pacsstore errors to DIMSE statuses;
``peers`` sends files as a peer would and ``dcmtk`` finds DCMTK's tools
for it.
"""

from pacsstore.net.node import (DEFAULT_AE_TITLE, DEFAULT_HOST, DEFAULT_PORT,
                                Node)

__all__ = ["DEFAULT_AE_TITLE", "DEFAULT_HOST", "DEFAULT_PORT", "Node"]
