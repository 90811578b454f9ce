"""Who may use the node, for what, and where a C-MOVE may send.

The node knows its peers by AE title. Each peer holds a set of
permissions (store, query, retrieve), and a peer with a host and a port
is also a move destination: a C-MOVE names its destination by AE title
only (PS3.4 C.4.2), so the address has to come from here. A calling AE
title that is not in the table is either refused at association
(``refuse_unknown``) or let in with the permissions of
``unknown_permissions``.

AE titles are compared without their leading and trailing spaces, which
PS3.5 6.2 makes insignificant; case is significant.

The table is plain data, read by the node at association time and by the
handlers on each request; it never changes while the node runs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class Service(enum.Enum):
    """What a peer may be permitted to do. Verification (C-ECHO) needs no
    permission: answering it tells a peer only that the node is there."""

    STORE = "store"          # C-STORE to the node, storage commitment
    QUERY = "query"          # C-FIND
    RETRIEVE = "retrieve"    # C-MOVE and C-GET


ALL_SERVICES = frozenset(Service)


def normalized_title(ae_title: str) -> str:
    return ae_title.strip(" ")


@dataclass(frozen=True)
class Peer:
    """One known AE: its permissions and, for a move destination, where
    it listens."""

    ae_title: str
    permissions: frozenset[Service] = frozenset()
    host: str | None = None
    port: int | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) when the peer can be sent to, else None."""
        if self.host is None or self.port is None:
            return None
        return self.host, self.port


class PeerTable:
    """The peers of a node, and the rule for AE titles not among them."""

    def __init__(self, peers: Iterable[Peer] = (), *,
                 refuse_unknown: bool = False,
                 unknown_permissions: frozenset[Service] = ALL_SERVICES,
                 ) -> None:
        self._peers: dict[str, Peer] = {}
        for peer in peers:
            title = normalized_title(peer.ae_title)
            if title in self._peers:
                raise ValueError(f"peer {title!r} is listed twice")
            self._peers[title] = peer
        if refuse_unknown and not self._peers:
            # pynetdicom reads an empty list of required calling AE
            # titles as "no requirement"; such a node would admit all.
            raise ValueError("a table that refuses unknown peers needs at "
                             "least one peer")
        self.refuse_unknown = refuse_unknown
        self.unknown_permissions = frozenset(unknown_permissions)

    @classmethod
    def open(cls) -> PeerTable:
        """No peers: every AE may do everything, and no AE is a move
        destination (the node as it is without a configuration)."""
        return cls()

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def known_titles(self) -> list[str]:
        return list(self._peers)

    def peer(self, ae_title: str) -> Peer | None:
        return self._peers.get(normalized_title(ae_title))

    def admits(self, ae_title: str) -> bool:
        """Whether an association from ``ae_title`` is accepted at all."""
        return not self.refuse_unknown or self.peer(ae_title) is not None

    def permissions(self, ae_title: str) -> frozenset[Service]:
        """What ``ae_title`` may do (nothing, if it is not admitted)."""
        peer = self.peer(ae_title)
        if peer is not None:
            return peer.permissions
        return frozenset() if self.refuse_unknown \
            else self.unknown_permissions

    def permits(self, ae_title: str, service: Service) -> bool:
        return service in self.permissions(ae_title)

    def addresses(self) -> dict[str, Peer]:
        """The peers that can be sent to (move destinations, storage
        commitment reports), by AE title."""
        return {title: peer for title, peer in self._peers.items()
                if peer.address is not None}

    def destination(self, ae_title: str) -> tuple[str, int] | None:
        """Where a C-MOVE to ``ae_title`` goes, or None if it is not a
        known destination."""
        peer = self.peer(ae_title)
        return None if peer is None else peer.address
