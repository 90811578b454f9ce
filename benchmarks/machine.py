"""The machine a run was taken on and the versions of everything in it,
for the header of the results page."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from benchmarks.peers import ORTHANC, STORESCP


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    memory_gb: float
    disk: str
    kernel: str

    def lines(self) -> list[str]:
        return [f"CPU: {self.cpu}, {self.cores} cores",
                f"memory: {self.memory_gb:.0f} GB",
                f"disk: {self.disk}",
                f"kernel: Linux {self.kernel}"]


def machine(scratch: Path) -> Machine:
    return Machine(cpu=_cpu_model(), cores=os.cpu_count() or 0,
                   memory_gb=_memory_bytes() / 2**30,
                   disk=_disk(scratch), kernel=platform.release())


def versions() -> dict[str, str]:
    found = {"pacsstore": _package("pacsstore"),
             "Python": platform.python_version()}
    for package in ("pydicom", "pynetdicom", "zstandard", "lmdb", "numpy"):
        found[package] = _package(package)
    found["DCMTK"] = _first_line([STORESCP, "--version"],
                                 r"v(\d[\w.]*)")
    found["Orthanc"] = _first_line([ORTHANC, "--version"],
                                   r"Orthanc ([\d.]+)")
    return found


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first_line(command: list[str], pattern: str) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    output = subprocess.run(command, capture_output=True, text=True,
                            check=False, timeout=30)
    found = re.search(pattern, output.stdout + output.stderr)
    return found.group(1) if found else "unknown"


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_bytes() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _disk(path: Path) -> str:
    """The device and file system of ``path``, its size, and whether the
    kernel calls it rotational."""
    device, kind = _mount_of(path)
    usage = shutil.disk_usage(path)
    name = Path(device).name
    rotational = _read(f"/sys/block/{name}/queue/rotational").strip()
    medium = {"0": "non-rotational", "1": "rotational"}.get(rotational,
                                                            "medium unknown")
    return (f"{device} ({kind}, {usage.total / 1e9:,.0f} GB, {medium} as "
            f"the kernel reports it); the stores, the peers and the data "
            f"share it")


def _mount_of(path: Path) -> tuple[str, str]:
    best = ("unknown", "unknown", "")
    target = str(path.resolve())
    for line in _read("/proc/mounts").splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, point, kind = fields[:3]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best[2]):
            best = (device, kind, point)
    return best[0], best[1]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
