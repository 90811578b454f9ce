"""The node configuration file (TOML), read and checked.

::

    ae_title = "PACSSTORE"
    host = "127.0.0.1"
    port = 11112
    refuse_unknown_peers = true

    [peers.CT_SCANNER]
    store = true

    [peers.VIEWER]
    host = "10.0.0.7"
    port = 11112
    query = true
    retrieve = true

Every key is optional; a missing one takes the node's default. A peer's
permissions default to false: access is granted, never assumed. A peer
with ``host`` and ``port`` is also a C-MOVE destination. With
``refuse_unknown_peers = false`` (the default), AE titles not listed get
the permissions of the ``[unknown_peers]`` table, all true when it is
absent.

A mistake is a :class:`NodeConfigError` naming the file, the line and the
key, because a node that starts with a half-understood configuration
(a misspelt ``retreive`` silently granting nothing, a port read as a
string) is worse than one that does not start.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsstore.errors import PacsstoreError
from pacsstore.net.access import ALL_SERVICES, Peer, PeerTable, Service
from pacsstore.net.node import (DEFAULT_AE_TITLE, DEFAULT_HOST, DEFAULT_PORT,
                                check_ae_title)

TOP_LEVEL_KEYS = ("ae_title", "host", "port", "refuse_unknown_peers",
                  "unknown_peers", "peers")
PERMISSION_KEYS = tuple(service.value for service in Service)
PEER_KEYS = ("host", "port", *PERMISSION_KEYS)

KeyPath = tuple[str, ...]


class NodeConfigError(PacsstoreError, ValueError):
    """The node configuration file cannot be read or has a bad value."""


@dataclass(frozen=True)
class NodeConfig:
    """What a configuration file says, with defaults filled in."""

    ae_title: str = DEFAULT_AE_TITLE
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    peers: PeerTable = field(default_factory=PeerTable.open)


def load_config(path: str | os.PathLike) -> NodeConfig:
    """Read and check the configuration file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise NodeConfigError(f"{path}: cannot read it: {error}") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> NodeConfig:
    """Check the TOML ``text``; ``source`` names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise NodeConfigError(f"{source}: not valid TOML: {error}") from None
    return _Checker(source, key_lines(text)).node(document)


class _Checker:
    """Turns the parsed document into a :class:`NodeConfig`, raising
    :class:`NodeConfigError` at the first bad key."""

    def __init__(self, source: str, lines: dict[KeyPath, int]) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: KeyPath, message: str) -> NodeConfigError:
        line = self._line(path)
        where = f"{self.source}, line {line}" if line else self.source
        return NodeConfigError(f"{where}: {dotted(path)} {message}")

    def _line(self, path: KeyPath) -> int | None:
        # A key written as part of an inline table has no line of its
        # own; the nearest enclosing key that has one is the place.
        for length in range(len(path), 0, -1):
            if path[:length] in self.lines:
                return self.lines[path[:length]]
        return None

    def node(self, document: dict[str, Any]) -> NodeConfig:
        self.known_keys(document, (), TOP_LEVEL_KEYS)
        return NodeConfig(
            ae_title=self.ae_title(document.get("ae_title",
                                                DEFAULT_AE_TITLE),
                                   ("ae_title",)),
            host=self.host(document, ("host",), DEFAULT_HOST),
            port=self.port(document, ("port",), DEFAULT_PORT, lowest=0),
            peers=self.peer_table(document))

    def peer_table(self, document: dict[str, Any]) -> PeerTable:
        refuse = self.boolean(document, ("refuse_unknown_peers",), False)
        peers = self.peers(document)
        unknown = self.unknown(document)
        if refuse and not peers:
            raise self.fail(("refuse_unknown_peers",),
                            "is true, but no [peers.<AE title>] table "
                            "lists a peer: the node would admit no one")
        if refuse and "unknown_peers" in document:
            raise self.fail(("unknown_peers",),
                            "has no effect: refuse_unknown_peers is true")
        return PeerTable(peers, refuse_unknown=refuse,
                         unknown_permissions=unknown)

    def unknown(self, document: dict[str, Any]) -> frozenset[Service]:
        table = self.table(document, ("unknown_peers",))
        if table is None:
            return ALL_SERVICES
        self.known_keys(table, ("unknown_peers",), PERMISSION_KEYS)
        return self.permissions(table, ("unknown_peers",), default=True)

    def peers(self, document: dict[str, Any]) -> list[Peer]:
        table = self.table(document, ("peers",)) or {}
        peers: dict[str, Peer] = {}
        for title, entry in table.items():
            path = ("peers", title)
            ae_title = self.ae_title(title, path).strip(" ")
            if ae_title in peers:
                raise self.fail(path, f"is the AE title {ae_title!r} "
                                      f"again (spaces around an AE title "
                                      f"do not count)")
            peers[ae_title] = self.peer(ae_title, entry, path)
        return list(peers.values())

    def peer(self, ae_title: str, entry: Any, path: KeyPath) -> Peer:
        if not isinstance(entry, dict):
            raise self.fail(path, f"must be a table ([{dotted(path)}]); "
                                  f"found {_shown(entry)}")
        self.known_keys(entry, path, PEER_KEYS)
        host = self.host(entry, path + ("host",), None)
        port = self.port(entry, path + ("port",), None, lowest=1)
        if (host is None) != (port is None):
            missing = "port" if port is None else "host"
            raise self.fail(path, f"needs both host and port to be a move "
                                  f"destination, or neither; {missing} is "
                                  f"missing")
        return Peer(ae_title, self.permissions(entry, path, default=False),
                    host, port)

    def permissions(self, table: dict[str, Any], path: KeyPath, *,
                    default: bool) -> frozenset[Service]:
        return frozenset(
            service for service in Service
            if self.boolean(table, path + (service.value,), default))

    def known_keys(self, table: dict[str, Any], path: KeyPath,
                   allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(path + (key,),
                                f"is not a known key; expected one of "
                                f"{', '.join(allowed)}")

    def table(self, document: dict[str, Any],
              path: KeyPath) -> dict[str, Any] | None:
        value = document.get(path[-1])
        if value is None or isinstance(value, dict):
            return value
        raise self.fail(path, f"must be a table; found {_shown(value)}")

    def boolean(self, table: dict[str, Any], path: KeyPath,
                default: bool) -> bool:
        value = table.get(path[-1], default)
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false; found "
                                  f"{_shown(value)}")
        return value

    def port(self, table: dict[str, Any], path: KeyPath,
             default: int | None, *, lowest: int) -> int | None:
        value = table.get(path[-1], default)
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, int)
                or not lowest <= value <= 65535):
            raise self.fail(path, f"must be an integer from {lowest} to "
                                  f"65535; found {_shown(value)}")
        return value

    def host(self, table: dict[str, Any], path: KeyPath,
             default: str | None) -> str | None:
        value = table.get(path[-1], default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be a host name or address; found "
                                  f"{_shown(value)}")
        return value.strip()

    def ae_title(self, value: Any, path: KeyPath) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string; found "
                                  f"{_shown(value)}")
        try:
            check_ae_title(value)
        except ValueError as error:
            raise self.fail(path, f"is not a valid AE title: "
                                  f"{error}") from None
        return value


def _shown(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "table"}.get(type(value), "value")
    return f"{kind} {value!r}" if kind != "table" else "a table"


def dotted(path: KeyPath) -> str:
    """A key path as TOML writes it: ``peers."CT 1".port``."""
    return ".".join(key if _BARE_KEY.fullmatch(key) else f'"{key}"'
                    for key in path)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# A bare or quoted TOML key, possibly dotted, at the start of a line.
_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_KEY_LINE = re.compile(rf"^\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=")
_TABLE_LINE = re.compile(rf"^\s*\[\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]")


def key_lines(text: str) -> dict[KeyPath, int]:
    """The line (1-based) on which each table header and each key is
    written, by its full key path; tomllib keeps no positions."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _TABLE_LINE.match(line)
        if header:
            table = _split_key(header.group(1))
            lines.setdefault(table, number)
            continue
        key = _KEY_LINE.match(line)
        if key:
            lines.setdefault(table + _split_key(key.group(1)), number)
    return lines


def _split_key(dotted: str) -> KeyPath:
    """``peers."MY AE".port`` as ("peers", "MY AE", "port"), read by
    tomllib itself so that quoting and escapes follow TOML."""
    try:
        document: Any = tomllib.loads(f"{dotted} = 0")
    except tomllib.TOMLDecodeError:
        return ()
    path: list[str] = []
    while isinstance(document, dict) and len(document) == 1:
        key, document = next(iter(document.items()))
        path.append(key)
    return tuple(path)
