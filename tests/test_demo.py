"""The demonstration end to end, on a temporary store, twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.network

SRC = Path(__file__).resolve().parents[1] / "src"


def run_demo(store: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(SRC), os.environ.get("PYTHONPATH", "")]), COLUMNS="120")
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

    second = run_demo(store)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "byte-for-byte check passed: 4 of 4" in second.stdout
    assert "already stored" in second.stdout
    assert "newly stored" not in second.stdout
