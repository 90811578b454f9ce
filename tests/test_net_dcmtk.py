"""Finding DCMTK's tools past pynetdicom's scripts of the same name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pacsstore.net import peers
from pacsstore.net.dcmtk import dcmtk_tool, find_tool, is_dcmtk

DCMTK_DIR = "/usr/bin"
pytestmark = pytest.mark.skipif(
    not is_dcmtk(Path(DCMTK_DIR) / "storescu"),
    reason="DCMTK is not installed in /usr/bin")


def fake_tool(folder: Path, name: str) -> Path:
    """An executable that answers --version like pynetdicom's script."""
    folder.mkdir(exist_ok=True)
    tool = folder / name
    tool.write_text("#!/bin/sh\necho 'storescu.py v3.0.4'\n")
    tool.chmod(0o755)
    return tool


def test_net_dcmtk_skips_the_interpreter_bin_directory():
    # An activated virtual environment puts its bin directory, where
    # pynetdicom installs its own storescu, first on PATH.
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join([venv_bin, DCMTK_DIR])
    assert find_tool("storescu", path) == f"{DCMTK_DIR}/storescu"
    assert find_tool("echoscu", path) == f"{DCMTK_DIR}/echoscu"


def test_net_dcmtk_skips_a_tool_that_is_not_dcmtk(tmp_path):
    fake_tool(tmp_path / "bin", "storescu")
    path = os.pathsep.join([str(tmp_path / "bin"), DCMTK_DIR])
    assert find_tool("storescu", path) == f"{DCMTK_DIR}/storescu"
    assert find_tool("storescu", str(tmp_path / "bin")) is None


def test_net_peers_find_dcmtk_storescu_in_an_activated_venv(monkeypatch,
                                                            tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join([venv_bin, DCMTK_DIR]))
    assert dcmtk_tool("storescu") == f"{DCMTK_DIR}/storescu"
    assert peers.storescu_available()
    monkeypatch.setenv("PATH", venv_bin)
    assert not peers.storescu_available()
