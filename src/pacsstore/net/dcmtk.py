"""Finding DCMTK's command-line tools (storescu, storescp, echoscu).

pynetdicom installs console scripts of its own under the same names into
the bin directory of the environment it is installed in. With that
environment activated, ``storescu`` on PATH is pynetdicom's, which takes
other options and sends nothing pacsstore asked for. So a tool is looked
up on PATH with the running interpreter's bin directories left out, and
kept only when its ``--version`` output names DCMTK.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

# DCMTK tools print e.g. "$dcmtk: storescu v3.6.7 2022-04-22 $".
DCMTK_MARK = "$dcmtk:"

# Seconds a --version call may take; a tool that hangs is not DCMTK.
VERSION_TIMEOUT = 10


def _interpreter_bin_dirs() -> set[Path]:
    """The directories where this Python's console scripts live."""
    places = {Path(sys.executable).parent, Path(sys.prefix) / "bin",
              Path(sysconfig.get_path("scripts"))}
    return {_resolved(place) for place in places}


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def is_dcmtk(executable: str | os.PathLike) -> bool:
    """Whether ``executable --version`` says it is a DCMTK tool."""
    try:
        result = subprocess.run([str(executable), "--version"],
                                capture_output=True, text=True,
                                timeout=VERSION_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return DCMTK_MARK in result.stdout + result.stderr


def find_tool(name: str, path: str | None = None) -> str | None:
    """The path of DCMTK's ``name`` on ``path`` (default $PATH), skipping
    the running interpreter's bin directories, or None."""
    skipped = _interpreter_bin_dirs()
    search = os.environ.get("PATH", "") if path is None else path
    for folder in search.split(os.pathsep):
        if not folder or _resolved(Path(folder)) in skipped:
            continue
        candidate = Path(folder) / name
        if (candidate.is_file() and os.access(candidate, os.X_OK)
                and is_dcmtk(candidate)):
            return str(candidate)
    return None


def dcmtk_tool(name: str) -> str | None:
    """:func:`find_tool` on $PATH, looked up once per value of $PATH (a
    send runs it for every batch)."""
    return _cached_find(name, os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=32)
def _cached_find(name: str, path: str) -> str | None:
    return find_tool(name, path)
