"""Counts in the messages people read: "1 peer", "2 peers"."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """``number`` and ``noun``, made plural with an "s" unless the
    number is one (every noun counted so far takes an "s")."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
