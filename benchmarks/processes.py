"""Starting and stopping the server processes of the peers.

Every server runs in a session of its own, so that stopping it reaches
the children it forks (storescp --fork serves each association in a
child) and nothing else: the process group that is signalled is the one
this module created. A server is stopped on every way out of its
``with`` block, a failure or a KeyboardInterrupt included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"

# Seconds a server may take to listen, and to exit once asked to.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
_POLL = 0.05

# DCMTK reads TCP_NODELAY from the environment; without it each C-STORE
# response waits out a delayed ACK (about 40 ms on Linux loopback).
NODELAY_ENV = {"TCP_NODELAY": "1"}


class ServerFailed(RuntimeError):
    """A server exited, or never listened."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def server(command: Sequence[str], *, ready: Callable[[], bool],
           log: Path, env: dict[str, str] | None = None
           ) -> Iterator[subprocess.Popen]:
    """Run ``command`` until the block ends; wait until ``ready()``."""
    environment = dict(os.environ, **(env or {}))
    with open(log, "ab") as output:
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, env=environment,
            start_new_session=True)
    try:
        _wait_ready(process, ready, log)
        yield process
    finally:
        stop(process)


def _wait_ready(process: subprocess.Popen, ready: Callable[[], bool],
                log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None:
            raise ServerFailed(f"{process.args[0]} exited with "
                               f"{process.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerFailed(f"{process.args[0]} did not get ready in "
                               f"{START_TIMEOUT:.0f} s: {_tail(log)}")
        time.sleep(_POLL)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group, SIGKILL if it lingers."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    # Children forked per association may outlive their parent.
    _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _tail(log: Path, characters: int = 600) -> str:
    try:
        return log.read_text(errors="replace")[-characters:].strip()
    except OSError:
        return "(no log)"
