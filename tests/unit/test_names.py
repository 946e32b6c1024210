"""File names are bytes: the manifest form is exact, reversible and one-to-one."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from ingestd.names import from_manifest, manifest_name, shown, shown_name


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def test_valid_names_are_stored_as_they_are() -> None:
    for raw in (b"sales.csv", "café.csv".encode(), b"a b'c\".csv", b"line\nbreak.csv"):
        assert manifest_name(_name(raw)) == raw.decode()


def test_bytes_that_are_not_utf8_are_written_as_hex_escapes() -> None:
    assert manifest_name(_name(b"caf\xe9.csv")) == "caf\\xe9.csv"
    assert manifest_name(_name(b"\xff\xfe.csv")) == "\\xff\\xfe.csv"
    # An encoded surrogate is not valid UTF-8 either.
    assert manifest_name(_name(b"\xed\xa0\x80.csv")) == "\\xed\\xa0\\x80.csv"


def test_a_literal_backslash_is_doubled_so_no_two_names_share_a_form() -> None:
    literal = _name(b"caf\\xe9.csv")  # a valid name spelling the escape out
    assert manifest_name(literal) == "caf\\\\xe9.csv"
    assert manifest_name(literal) != manifest_name(_name(b"caf\xe9.csv"))


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
def test_round_trip_is_exact_for_any_bytes(raw: bytes) -> None:
    name = _name(raw)
    text = manifest_name(name)
    text.encode("utf-8")  # a PostgreSQL text column (and a JSON line) can hold it
    assert os.fsencode(from_manifest(text)) == raw


@given(st.binary(max_size=20), st.binary(max_size=20))
def test_different_names_have_different_forms(a: bytes, b: bytes) -> None:
    if a != b:
        assert manifest_name(_name(a)) != manifest_name(_name(b))


def test_shown_makes_any_text_printable_as_utf8() -> None:
    assert shown(_name(b"caf\xe9.csv")) == "caf\\xe9.csv"
    assert shown("plain \\ text") == "plain \\ text"
    shown("\ud800 lone").encode("utf-8")


def test_shown_name_cannot_break_or_forge_a_line() -> None:
    assert shown_name("a\nb.csv") == "a\\x0ab.csv"
    assert shown_name("\x1b[31mred.csv") == "\\x1b[31mred.csv"
    assert shown_name(_name(b"caf\xe9 x.csv")) == "caf\\xe9 x.csv"
    assert shown_name("line\u2028sep.csv") == "line\\u2028sep.csv"
    assert shown_name("café.csv") == "café.csv"
