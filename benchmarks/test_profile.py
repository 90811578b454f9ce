"""The profile command: the py-spy it starts and the summary it prints.

py-spy itself is not run here (it needs ptrace and the bench extra);
Popen is replaced by a recorder of the command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks import profile

# Two busy stacks and one waiting one, in py-spy's raw (collapsed) form.
RAW = (
    "Thread.run (threading.py:982);Committer._run (pacsstore/store/"
    "commit.py:278);Index._write_once (pacsstore/store/index.py:474) 3\n"
    "Thread.run (threading.py:982);_compress (pacsstore/store/"
    "blocks.py:282) 1\n"
    "Thread.run (threading.py:982);_Pipeline._settle_oldest (pacsstore/"
    "store/archive.py:957);Future.result (concurrent/futures/_base.py:451)"
    " 2\n"
)


def _recorded_py_spy(monkeypatch: pytest.MonkeyPatch,
                     output: str | None) -> list[list[str]]:
    """The command lines the profile command starts py-spy with; the
    in-process scenario is replaced by an attach to a made-up pid, and
    py-spy by a recorder that leaves ``output`` as its profile (none
    when None)."""
    calls: list[list[str]] = []

    class RecordedPopen:
        def __init__(self, args: list[str], **_: object) -> None:
            calls.append(args)
            if output is not None:
                Path(args[args.index("--output") + 1]).write_text(output)

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    def attach_only(scenario: str, seconds: float, raw: Path) -> None:
        with profile._py_spy_attached(4321, raw):
            pass

    monkeypatch.setattr(profile.subprocess, "Popen", RecordedPopen)
    monkeypatch.setattr(profile.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(profile, "_in_process", attach_only)
    return calls


@pytest.fixture
def py_spy_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    return _recorded_py_spy(monkeypatch, RAW)


@pytest.mark.parametrize("flags, expected", [([], False), (["--gil"], True)])
def test_gil_flag_reaches_py_spy(py_spy_calls: list[list[str]],
                                 flags: list[str], expected: bool) -> None:
    result = CliRunner().invoke(profile.main, ["parse", *flags])
    assert result.exit_code == 0, result.output
    (command,) = py_spy_calls
    assert command[:2] == [str(profile.PY_SPY), "record"]
    assert command[command.index("--pid") + 1] == "4321"
    assert ("--gil" in command) is expected


def test_summary_splits_busy_from_waiting(
        py_spy_calls: list[list[str]]) -> None:
    result = CliRunner().invoke(profile.main, ["parse", "--gil"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "4 busy samples, 2 waiting"
    assert any(line.split() == ["75.0%", "Index._write_once",
                                "(pacsstore/store/index.py:474)"]
               for line in lines)
    waited = lines[lines.index("waiting, by the call that waited:") + 1]
    assert waited.split()[:2] == ["100.0%", "_Pipeline._settle_oldest"]


@pytest.mark.parametrize("seconds", ["0", "-1"])
def test_seconds_must_be_positive(py_spy_calls: list[list[str]],
                                  seconds: str) -> None:
    result = CliRunner().invoke(profile.main,
                                ["parse", "--seconds", seconds])
    assert result.exit_code == 2
    assert "--seconds" in result.output
    assert py_spy_calls == []


def test_raw_in_a_missing_folder_is_refused_before_running(
        py_spy_calls: list[list[str]], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "raw.txt"
    result = CliRunner().invoke(profile.main,
                                ["parse", "--raw", str(missing)])
    assert result.exit_code == 2
    assert f"{missing.parent} is not a folder" in result.output
    assert py_spy_calls == []


def test_raw_is_kept_where_asked(py_spy_calls: list[list[str]],
                                 tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    result = CliRunner().invoke(profile.main, ["parse", "--raw", str(raw)])
    assert result.exit_code == 0, result.output
    assert raw.read_text() == RAW


def test_py_spy_that_writes_nothing_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recorded_py_spy(monkeypatch, None)
    result = CliRunner().invoke(profile.main, ["parse"])
    assert result.exit_code == 1
    assert "py-spy wrote no profile" in result.output
    assert len(calls) == 1
