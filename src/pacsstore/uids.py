"""The identity pacsstore writes into what it creates.

UID_ROOT is a UUID-derived root (PS3.5 B.2): it needs no registration and
cannot collide with an organisation's root. The Implementation Class UID
and Version Name go into every file meta group the node writes.
"""

VERSION = "0.1.0"

UID_ROOT = "2.25.221347690050281183182351243737499062089"
IMPLEMENTATION_CLASS_UID = UID_ROOT + ".1"
IMPLEMENTATION_VERSION_NAME = "PACSSTORE_" + VERSION.replace(".", "")
