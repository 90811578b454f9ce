"""The application entity every association of pacsstore's starts from.

Peers log the implementation class UID and version name of an
association and some match on them; pacsstore names its own rather than
pynetdicom's, on the associations it accepts and on those it opens.
"""

from __future__ import annotations

from pynetdicom import AE

from pacsstore.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def pacsstore_ae(ae_title: str) -> AE:
    """An AE titled ``ae_title`` that identifies itself as pacsstore."""
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae
