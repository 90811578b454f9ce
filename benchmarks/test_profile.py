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


@pytest.fixture
def py_spy_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command lines the profile command starts py-spy with; the
    in-process scenario is replaced by an attach to a made-up pid that
    leaves RAW as py-spy's output."""
    calls: list[list[str]] = []

    class RecordedPopen:
        def __init__(self, args: list[str], **_: object) -> None:
            calls.append(args)
            Path(args[args.index("--output") + 1]).write_text(RAW)

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
