"""The native batch SHA-256 (pacsstore._digests): the digests hashlib
takes, of any mix of buffers, and every buffer let go of afterwards."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacsstore._digests import sha256_many


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=9000), max_size=12))
def test_sha256_many_digests_as_hashlib_does(contents):
    assert sha256_many(contents) == \
        [hashlib.sha256(c).digest() for c in contents]


def test_sha256_many_takes_views_and_bytearrays_and_lets_them_go():
    whole = bytes(range(256)) * 40
    grown = bytearray(b"grows after")
    buffers = [memoryview(whole)[3:5000], grown, b"", memoryview(b"")]
    assert sha256_many(buffers) == \
        [hashlib.sha256(b).digest() for b in buffers]
    grown.extend(b" the call")  # refused while a buffer is still held


def test_sha256_many_of_nothing_is_nothing():
    assert sha256_many([]) == []
    assert sha256_many(iter(())) == []


def test_sha256_many_refuses_what_is_not_a_buffer():
    held = bytearray(b"before the refused one")
    with pytest.raises(TypeError):
        sha256_many([held, "text is not bytes"])
    held.extend(b"!")  # the buffer taken before the refusal was let go
    with pytest.raises(TypeError):
        sha256_many(None)
