"""The DICOM node of pacsstore: a storage SCP (C-ECHO, C-STORE) on
pynetdicom that keeps datasets as received.

``node`` sets up the application entity, ``contexts`` says which
presentation contexts it accepts, ``handlers`` holds the event handlers and
``status`` maps pacsstore errors to DIMSE statuses; ``peers`` sends files
as a peer would and ``dcmtk`` finds DCMTK's tools for it.
"""

from pacsstore.net.node import (DEFAULT_AE_TITLE, DEFAULT_HOST, DEFAULT_PORT,
                                Node)

__all__ = ["DEFAULT_AE_TITLE", "DEFAULT_HOST", "DEFAULT_PORT", "Node"]
