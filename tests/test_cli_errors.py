"""The pacsstore command where things go wrong: bad paths and options,
special files, signals, a store in use, and output that is piped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus import CORPUS_ROOT, corpus_available
from pacsstore.cli import main as cli

SRC = Path(__file__).resolve().parents[1] / "src"
CT = CORPUS_ROOT / "pydicom/test_files/CT_small.dcm"
CT_UID = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
needs_corpus = pytest.mark.skipif(not corpus_available(),
                                  reason="corpus is absent")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception,
                                                  SystemExit)
    assert "Traceback" not in result.output
    return result.output


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pacsstore.cli", *args]


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(SRC), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("errors") / "store"
    if corpus_available():
        assert invoke("--store", str(path), "ingest", str(CT)).exit_code == 0
    return path


@needs_corpus
@pytest.mark.parametrize("target", ["missing/dir/x.dcm", "."])
def test_cli_get_to_an_unwritable_target_is_one_line(store, tmp_path,
                                                     target):
    output = one_line_error(invoke("--store", str(store), "get", CT_UID,
                                   "-o", str(tmp_path / target)))
    assert "cannot write" in output


@needs_corpus
def test_cli_verify_with_a_missing_scratch_folder_says_so(store, tmp_path):
    result = invoke("--store", str(store), "verify", "--scratch",
                    str(tmp_path / "missing"))
    assert "does not exist" in one_line_error(result, code=2)


@pytest.mark.parametrize("args", [["ingest", "."], ["serve", "--port",
                                                     "0"], ["stats"]])
def test_cli_store_that_is_a_file_is_one_line(tmp_path, args):
    regular = tmp_path / "file"
    regular.write_text("x")
    output = one_line_error(invoke("--store", str(regular), *args))
    assert "not a directory" in output


@pytest.mark.parametrize("title", ["", "A" * 17, "   ", "A\\B", "A\tB"])
def test_cli_serve_refuses_a_bad_ae_title_before_creating_a_store(
        tmp_path, title):
    store = tmp_path / "store"
    output = one_line_error(invoke("--store", str(store), "serve",
                                   "--port", "0", "--ae-title", title), 2)
    assert "AE title" in output
    assert not store.exists()


def test_cli_serve_on_a_port_in_use_leaves_no_store(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        store = tmp_path / "store"
        output = one_line_error(invoke("--store", str(store), "serve",
                                       "--port", str(port)))
    assert "cannot listen" in output
    assert not store.exists()


@needs_corpus
def test_cli_locked_store_names_the_other_process(store):
    from pacsstore import Archive
    with Archive(store):
        # The lock is per open file description: a child process sees it.
        result = subprocess.run(
            command("--store", str(store), "ingest", str(CT)),
            capture_output=True, text=True, env=environment(), timeout=60)
    assert result.returncode == 1
    assert "another pacsstore process" in result.stderr
    assert "get, find, stats and verify work beside it" in result.stderr
    assert "readonly=True" not in result.stderr


@needs_corpus
def test_cli_ingest_skips_a_fifo_and_counts_it(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "pipe")
    os.mkfifo(tmp_path / "argument-pipe")
    (folder / "CT.dcm").write_bytes(CT.read_bytes())
    result = subprocess.run(
        command("--store", str(tmp_path / "store"), "ingest", str(folder),
                str(tmp_path / "argument-pipe")),
        capture_output=True, text=True, env=environment(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "1 file stored, 0 duplicate, 0 rejected" in result.stdout
    assert "2 not a regular file" in result.stdout


@needs_corpus
def test_cli_ingest_summary_keeps_rejected_apart(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(CT.read_bytes())
    twin = bytearray(CT.read_bytes())
    twin[-1] ^= 0xFF  # same UID, other content: rejected
    (tmp_path / "twin.dcm").write_bytes(bytes(twin))
    store = str(tmp_path / "store")
    invoke("--store", store, "ingest", str(folder))
    result = invoke("--store", store, "ingest", str(folder),
                    str(tmp_path / "twin.dcm"))
    assert result.exit_code == 0, result.output
    size = len(twin) / 1e6
    assert result.output.startswith(
        f"0 files stored, 1 duplicate, 1 rejected; skipped 0 non-DICOM; "
        f"{size:,.1f} MB in ")


@needs_corpus
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130),
                                          (signal.SIGTERM, 143)])
def test_cli_ingest_signal_stops_with_a_summary(tmp_path, signum, code):
    # A FIFO in the arguments would block a reader; the first entry is a
    # slow directory walk instead: many small non-DICOM files.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "0.dcm").write_bytes(CT.read_bytes())
    for number in range(20000):
        (folder / f"x{number}.txt").write_bytes(b"not dicom " * 20)
    process = subprocess.Popen(
        command("-v", "--store", str(tmp_path / "store"), "ingest",
                str(folder)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environment())
    _wait_for(process, "skipped")
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err[-2000:]
    assert f"interrupted by {signal.Signals(signum).name}" in out
    assert "Aborted" not in out + err and "Traceback" not in err


def _wait_for(process: subprocess.Popen, text: str) -> None:
    """Until ``text`` appears on the process's standard error."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if text in line:
            return
    raise AssertionError(f"{text!r} never appeared")


def test_cli_pydicom_warning_is_shown_once():
    script = (
        "import warnings\n"
        "from pacsstore.cli import _configure_logging\n"
        "from pydicom.misc import warn_and_log\n"
        "_configure_logging(0, None)\n"
        "warn_and_log('odd value of (0010,0010)')\n"
        "warnings.warn('another complaint')\n")
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True,
                            env=environment(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("odd value of (0010,0010)") == 1
    assert result.stderr.count("another complaint") == 1


@needs_corpus
def test_cli_find_piped_prints_whole_values(store):
    result = subprocess.run(
        command("--store", str(store), "find", "--level", "instance"),
        capture_output=True, text=True, env=environment(), timeout=60)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split("\t")[0] == "PatientID"
    assert CT_UID in row.split("\t")
    table = subprocess.run(
        command("--store", str(store), "find", "--level", "instance",
                "--format", "table"),
        capture_output=True, text=True, env=environment(), timeout=60)
    assert "SOPInstanceUID" in table.stdout and CT_UID in table.stdout
    assert "…" not in table.stdout
