"""The demonstration end to end, on a temporary store, twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.network

SRC = Path(__file__).resolve().parents[1] / "src"


def run_demo(store: Path) -> subprocess.CompletedProcess[str]:
    # As in an activated virtual environment: its bin directory, with
    # pynetdicom's own storescu script, comes first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent),
                            os.environ.get("PATH", "")])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(SRC), os.environ.get("PYTHONPATH", "")]), COLUMNS="120",
        PATH=path)
    return subprocess.run(
        [sys.executable, "-m", "pacsstore.demo", "--slices", "4",
         "--store", str(store), "--port", "0"],
        capture_output=True, text=True, env=env, timeout=300)


def test_demo_passes_its_byte_check_and_is_idempotent(tmp_path):
    store = tmp_path / "store"
    first = run_demo(store)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "byte-for-byte check passed: 4 of 4" in first.stdout
    assert "newly stored" in first.stdout
    assert "Axial 2.5 mm" in first.stdout  # the generated series is listed
    assert "instances/s" in first.stdout and "MB/s" in first.stdout
    answered = re.search(r"node answered (\d+) C-STOREs", first.stdout)
    sent = re.search(r"sent (\d+) instances", first.stdout)
    assert answered and sent and answered[1] == sent[1], first.stdout

    second = run_demo(store)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "byte-for-byte check passed: 4 of 4" in second.stdout
    assert "already stored" in second.stdout
    assert "newly stored" not in second.stdout
