"""Clients of the benchmark: DCMTK's storescu, findscu and echoscu over
DIMSE (findscu and echoscu timing each request from their own
timestamped log), and Orthanc's REST API (POST /instances) over HTTP
keep-alive connections.

Each raises when the peer did not do what it was asked (a file not
stored, a C-FIND that failed), so that a row never times a run in which
the peer refused work.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.peers import DCMTK_MAX_PDU, Endpoint, Orthanc
from benchmarks.processes import NODELAY_ENV

STORESCU = "/usr/bin/storescu"
FINDSCU = "/usr/bin/findscu"
ECHOSCU = "/usr/bin/echoscu"

# Concurrent REST uploads: Orthanc's HTTP server serves requests on a
# pool of threads, and four connections beat one, two or eight on this
# kind of two-core machine.
REST_CONNECTIONS = 4


class SendFailed(RuntimeError):
    """A peer did not store everything it was sent."""


def storescu_command(endpoint: Endpoint, paths: Sequence[Path]) -> list[str]:
    return [STORESCU, "--aetitle", "STORESCU", "--call", endpoint.ae_title,
            "--max-pdu", str(DCMTK_MAX_PDU), endpoint.host,
            str(endpoint.port), *map(str, paths)]


def send(endpoint: Endpoint, paths: Sequence[Path]) -> None:
    """Send ``paths`` with storescu in one association."""
    send_parallel(endpoint, [paths])


def send_parallel(endpoint: Endpoint,
                  groups: Sequence[Sequence[Path]]) -> None:
    """One storescu process, so one association, per group, all at once."""
    env = dict(os.environ, **NODELAY_ENV)
    processes = [subprocess.Popen(storescu_command(endpoint, group),
                                  stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env)
                 for group in groups]
    failures = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0 or b"E: " in output:
            failures.append(output.decode(errors="replace")[-400:])
    if failures:
        raise SendFailed(f"storescu to {endpoint.ae_title}: {failures[0]}")


def split(paths: Sequence[Path], parts: int) -> list[list[Path]]:
    """``paths`` dealt into ``parts`` groups of (nearly) equal size."""
    return [list(paths[i::parts]) for i in range(parts)]


class RestPoster:
    """POSTs files to Orthanc's /instances on one keep-alive connection,
    opening a new one when Orthanc closed it (it does after an error)."""

    def __init__(self, peer: Orthanc) -> None:
        self.peer = peer
        self.connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> str:
        """Orthanc's Status for the file ("Success" when newly stored),
        or the HTTP status when it refused it."""
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = self.peer.connection()
            try:
                return self._exchange(body)
            except (http.client.HTTPException, ConnectionError):
                # A keep-alive connection the server had closed.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _exchange(self, body: bytes) -> str:
        assert self.connection is not None
        self.connection.request("POST", "/instances", body,
                                {"Content-Type": "application/dicom"})
        response = self.connection.getresponse()
        answer = response.read()
        if response.will_close:
            self.close()
        if response.status != 200:
            return f"HTTP {response.status}"
        return str(json.loads(answer).get("Status"))

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def upload(peer: Orthanc, paths: Sequence[Path],
           connections: int = REST_CONNECTIONS) -> None:
    """POST every file to Orthanc's /instances over ``connections``
    connections at once; raise unless each one is newly stored."""
    upload_bytes(peer, (p.read_bytes() for p in paths), connections)


def upload_bytes(peer: Orthanc, files: Iterable[bytes],
                 connections: int = REST_CONNECTIONS) -> int:
    """POST each Part 10 file to Orthanc's /instances over
    ``connections`` connections at once; raise unless each one is newly
    stored. Returns how many there were."""
    posters: list[RestPoster] = []
    local = threading.local()

    def post(body: bytes) -> str:
        poster = getattr(local, "poster", None)
        if poster is None:
            poster = local.poster = RestPoster(peer)
            posters.append(poster)
        return poster.post(body)

    try:
        with ThreadPoolExecutor(connections) as pool:
            statuses = list(pool.map(post, files))
    finally:
        for poster in posters:
            poster.close()
    refused = [s for s in statuses if s != "Success"]
    if refused:
        raise SendFailed(f"Orthanc refused {len(refused)} of "
                         f"{len(statuses)} files, the first with "
                         f"{refused[0]}")
    return len(statuses)


def upload_accepted(peer: Orthanc, paths: Sequence[Path]) -> list[Path]:
    """POST each file; the ones Orthanc stored (it refuses some real
    files), for comparisons on what both sides keep."""
    poster = RestPoster(peer)
    try:
        return [p for p in paths if poster.post(p.read_bytes()) == "Success"]
    finally:
        poster.close()


# DCMTK's log with a timestamp in microseconds on every line, so that
# each request of a run can be timed from the client's own log.
TIMESTAMPED_LOG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%Q} %m%n
"""


def find_latencies(endpoint: Endpoint, requests: Sequence[Path],
                   log_config: Path) -> tuple[list[float], list[int]]:
    """DCMTK's findscu, Study Root, all ``requests`` (files) one after
    the other in one association: the seconds of each, from sending the
    request to the final response, and the matches of each."""
    lines = _dcmtk_log([FINDSCU, "--study", *_dcmtk_peer(endpoint),
                        *map(str, requests)], endpoint, log_config)
    seconds, matches, started = [], [], None
    for stamp, message in lines:
        if message.startswith("Sending Find Request"):
            started = stamp
            matches.append(0)
        elif "(Pending)" in message and message.startswith("Find Response"):
            matches[-1] += 1
        elif message.startswith("Received Final Find Response"):
            if started is None or "(Success)" not in message:
                raise SendFailed(f"findscu to {endpoint.ae_title}: "
                                 f"{message}")
            seconds.append(stamp - started)
            started = None
    if len(seconds) != len(requests):
        raise SendFailed(f"findscu to {endpoint.ae_title} completed "
                         f"{len(seconds)} of {len(requests)} requests")
    return seconds, matches


def echo_latencies(endpoint: Endpoint, count: int,
                   log_config: Path) -> list[float]:
    """DCMTK's echoscu, ``count`` C-ECHOs in one association: the seconds
    of each round trip, the floor under any C-FIND."""
    lines = _dcmtk_log([ECHOSCU, "--repeat", str(count),
                        *_dcmtk_peer(endpoint)], endpoint, log_config)
    seconds, started = [], None
    for stamp, message in lines:
        if message.startswith("Sending Echo Request"):
            started = stamp
        elif message.startswith("Received Echo Response (Success)") \
                and started is not None:
            seconds.append(stamp - started)
    if len(seconds) != count:
        raise SendFailed(f"echoscu to {endpoint.ae_title} completed "
                         f"{len(seconds)} of {count} C-ECHOs")
    return seconds


def _dcmtk_peer(endpoint: Endpoint) -> list[str]:
    return ["--aetitle", "BENCHSCU", "--call", endpoint.ae_title,
            endpoint.host, str(endpoint.port)]


def _dcmtk_log(command: list[str], endpoint: Endpoint,
               log_config: Path) -> list[tuple[float, str]]:
    """Run a DCMTK client with the timestamped log; its lines as
    (seconds, message)."""
    log_config.write_text(TIMESTAMPED_LOG)
    finished = subprocess.run(
        [command[0], "--log-config", str(log_config), *command[1:]],
        env=dict(os.environ, **NODELAY_ENV), capture_output=True,
        check=False)
    if finished.returncode != 0:
        raise SendFailed(f"{Path(command[0]).name} to {endpoint.ae_title}: "
                         f"{finished.stderr[-400:]!r}")
    lines = []
    for line in finished.stdout.decode("utf-8", "replace").splitlines():
        stamp, _, message = line.partition(" ")
        seconds, _, fraction = stamp.partition(".")
        if seconds.isdigit() and fraction:
            # %Q prints milliseconds, a dot, then microseconds.
            milli, _, micro = fraction.partition(".")
            lines.append((int(seconds) + int(milli) / 1e3
                          + int(micro or 0) / 1e6, message))
    return lines
