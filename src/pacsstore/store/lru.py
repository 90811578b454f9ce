"""The least-recently-used bound of the small caches of bases
(bases.py, record_bases.py): an OrderedDict, most recent last."""

from __future__ import annotations

import collections
from typing import Any


def recall(remembered: collections.OrderedDict[Any, Any],
           key: Any) -> Any:
    """``remembered[key]`` (None when absent), now the most recent."""
    found = remembered.get(key)
    if found is not None:
        remembered.move_to_end(key)
    return found


def keep(remembered: collections.OrderedDict[Any, Any], key: Any,
         value: Any, most: int) -> None:
    """Remember ``value`` as the most recent, forgetting the oldest
    beyond ``most``."""
    remembered[key] = value
    remembered.move_to_end(key)
    while len(remembered) > most:
        remembered.popitem(last=False)
