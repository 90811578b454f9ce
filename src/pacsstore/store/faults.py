"""Crash points: named places where a test may kill the writer.

The claim that a store survives a crash anywhere is only as good as the
crashes it was tested with. Random kills find most windows but hit the
narrow ones (between a segment fdatasync and the LMDB commit, between
creating a segment and registering it) rarely, so the writer names those
places with :func:`crash_point`, and a test process started with
``PACSSTORE_CRASH_AT=<name>`` (or ``<name>:<n>``, the n-th time the
point is reached; several separated by commas) dies there by SIGKILL,
exactly as ``kill -9`` would end it: no ``finally``, no ``atexit``, no
flush of anything still buffered in the process.

The variable is read once, at import. Unset, a crash point costs one
dict lookup.

The points, in the order a batch reaches them (docs/reliability.md says
what each one proves):

``segment.created``
    a new segment file has its header, and no index transaction knows
    it yet (the first segment of a store, then every rotation);
``segment.written``
    a batch's blocks are written to a segment, not yet fdatasynced;
``commit.synced``
    the segments are fdatasynced and the index transaction that records
    them is complete, but not committed;
``commit.committed``
    the index transaction has committed, no caller has been told;
``commit.resend``
    a re-send of a stored instance was recognised as a duplicate;
``recovery.set_aside``
    reopening after a crash, uncommitted bytes are copied aside, not
    yet cut off their segment;
``store.creating``
    a new store has its folders and its marker written under a
    temporary name, not yet in place.
"""

from __future__ import annotations

import os
import signal
import threading

ENVIRONMENT_VARIABLE = "PACSSTORE_CRASH_AT"

POINTS = frozenset({
    "segment.created", "segment.written", "commit.synced",
    "commit.committed", "commit.resend", "recovery.set_aside",
    "store.creating",
})


def parse(spec: str) -> dict[str, int]:
    """``"a,b:3"`` -> {"a": 1, "b": 3}: the hit on which each dies."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        if name not in POINTS:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: unknown crash point {name!r}; "
                f"the points are {', '.join(sorted(POINTS))}")
        if nth and not (nth.isdigit() and int(nth) >= 1):
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: {item!r} must be name or "
                f"name:N with N >= 1")
        armed[name] = int(nth or 1)
    return armed


# Hits left before each armed point fires; empty in production.
_remaining = parse(os.environ.get(ENVIRONMENT_VARIABLE, ""))
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Die here by SIGKILL if ``PACSSTORE_CRASH_AT`` arms ``name``."""
    if name not in _remaining:
        return
    with _lock:
        _remaining[name] -= 1
        if _remaining[name]:
            return
    # One write, straight to the descriptor: what the test reads to know
    # the process died here and not somewhere else.
    os.write(2, f"pacsstore: crash point {name}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
