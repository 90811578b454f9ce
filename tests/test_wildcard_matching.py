"""Wildcard matching of text keys (PS3.4 C.2.2.2.4: ``?`` one
character, ``*`` any run). The matcher finds each piece between two
``*`` where it first occurs; it must agree with a regular expression of
the pattern, which is the definition, while taking time that grows with
the value's length times the pattern's: a query pattern such as
``*?*?*?...#`` once made the regular expression backtrack for seconds,
holding the GIL and stalling every association of the node."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pacsstore.store.matching import _text_matches

SRC = Path(__file__).resolve().parents[1] / "src"


def _definition(stored: str, wanted: str) -> bool:
    expression = "".join(".*" if c == "*" else "." if c == "?"
                         else re.escape(c) for c in wanted)
    return re.fullmatch(expression, stored, re.DOTALL) is not None


@settings(max_examples=3000)
@given(st.text("ab?*", max_size=8), st.text("ab?*", max_size=10))
def test_the_matcher_agrees_with_the_definition(wanted, stored):
    # "?" and "*" in a stored value are ordinary characters.
    assert _text_matches(stored, wanted) == _definition(stored, wanted)


@given(st.text(min_size=0, max_size=12), st.data())
def test_a_value_matches_patterns_cut_from_it(stored, data):
    cut = data.draw(st.integers(0, len(stored)))
    for wanted in (stored[:cut] + "*", "*" + stored[cut:],
                   stored[:cut] + "*" + stored[cut:],
                   "*" * 3 + stored + "*"):
        assert _text_matches(stored, wanted)


def test_a_backtracking_pattern_is_answered_at_once():
    """In a child process with a deadline: before, this one pattern
    against one value of 64 characters would not have ended in hours."""
    code = textwrap.dedent("""
        from pacsstore.store.matching import _text_matches
        assert not _text_matches("x" * 64, "*?" * 30 + "#")
        assert _text_matches("x" * 64 + "#", "*?" * 30 + "#")
        assert not _text_matches("a" * 64, "*a" * 20 + "b")
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={"PYTHONPATH": str(SRC)})
