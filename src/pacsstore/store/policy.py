"""The re-send policy: what a second instance with a known UID does.

The same SOP Instance UID with the same content is always an idempotent
success that writes nothing: senders retry after timeouts, and a retry
must not cost space or change anything. "Same content" means the same
transfer syntax and the same dataset bytes; the file meta group is left
out of the comparison because it describes the transport (which node
wrote the file, which AE sent it), not the image.

The same UID with *different* content is decided by the policy:

- ``reject`` (the default) refuses it with ConflictError. An archive must
  never silently swap an image that a clinician may already have read, and
  a sender that reuses a UID for other content breaks the uniqueness the
  standard requires of UIDs: someone has to see that.
- ``replace`` stores the new content under the UID and releases the old
  blocks (their reference counts go down).
- ``keep-first`` acknowledges the new one and keeps the stored content.
"""

from __future__ import annotations

from pacsstore.errors import StoreConfigError

REJECT = "reject"
REPLACE = "replace"
KEEP_FIRST = "keep-first"
POLICIES = (REJECT, REPLACE, KEEP_FIRST)


def check_policy(value: str) -> str:
    if value not in POLICIES:
        raise StoreConfigError(
            f"on_conflict must be one of {', '.join(POLICIES)}; "
            f"found {value!r}")
    return value
