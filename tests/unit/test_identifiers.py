"""Identifier validation and quoting, and the PostgreSQL type grammar."""

from __future__ import annotations

import pytest

from ingestd.identifiers import (
    MAX_IDENT_BYTES,
    InvalidIdentifierError,
    quote_ident,
    quote_qualified,
    validate_identifier,
    validate_pg_type,
)


@pytest.mark.parametrize("name", ["a", "_x", "A1_b", "_", "snake_case_123", "x" * 63])
def test_valid_identifiers_are_returned_unchanged(name: str) -> None:
    assert validate_identifier(name) == name


def test_max_identifier_length_is_postgres_namedatalen_minus_one() -> None:
    assert MAX_IDENT_BYTES == 63


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "is empty"),
        ("1abc", "not allowed"),
        ("first name", "not allowed"),
        ('a"b', "not allowed"),
        ("a;b", "not allowed"),
        ("id; DROP TABLE x", "not allowed"),
        ("café", "not allowed"),
        ("a-b", "not allowed"),
        ("a.b", "not allowed"),
        ("tab\there", "not allowed"),
        ("new\nline", "not allowed"),
        ("x" * 64, "longer than 63 bytes"),
    ],
)
def test_invalid_identifiers_are_rejected_with_a_reason(name: str, fragment: str) -> None:
    with pytest.raises(InvalidIdentifierError, match=fragment):
        validate_identifier(name)


def test_length_is_counted_in_bytes_not_characters() -> None:
    # 32 two-byte characters: 32 characters but 64 bytes.
    with pytest.raises(InvalidIdentifierError, match="longer than 63 bytes"):
        validate_identifier("é" * 32)


def test_error_names_what_was_checked() -> None:
    with pytest.raises(InvalidIdentifierError, match=r"^table name 'a b' is not allowed"):
        validate_identifier("a b", what="table name")


def test_invalid_identifier_error_is_a_value_error() -> None:
    assert issubclass(InvalidIdentifierError, ValueError)


def test_quote_ident_double_quotes() -> None:
    assert quote_ident("orders") == '"orders"'
    assert quote_ident("Mixed_Case") == '"Mixed_Case"'


@pytest.mark.parametrize("name", ['a"b', "x; drop table y", "", "1a"])
def test_quote_ident_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        quote_ident(name)


def test_quote_qualified() -> None:
    assert quote_qualified(None, "orders") == '"orders"'
    assert quote_qualified("sales", "orders") == '"sales"."orders"'


@pytest.mark.parametrize(("schema", "table"), [("bad schema", "t"), ("s", 'bad"table')])
def test_quote_qualified_validates_both_parts(schema: str, table: str) -> None:
    with pytest.raises(InvalidIdentifierError):
        quote_qualified(schema, table)


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("integer", "integer"),
        ("bigint", "bigint"),
        ("numeric(12,2)", "numeric(12,2)"),
        ("numeric(12, 2)", "numeric(12, 2)"),
        ("double precision", "double precision"),
        ("Double   Precision", "double precision"),
        ("timestamptz", "timestamptz"),
        ("text[]", "text[]"),
        ("varchar(20)", "varchar(20)"),
        ("  JSONB ", "jsonb"),
        ("timestamp with time zone", "timestamp with time zone"),
        ("character varying(5)", "character varying(5)"),
    ],
)
def test_valid_pg_types_are_normalised(given: str, normal: str) -> None:
    assert validate_pg_type(given) == normal


@pytest.mark.parametrize(
    "given",
    [
        "integer; drop table x",
        "foo",
        "text)",
        "",
        "numeric(12,2,3)",
        "int) ; drop table x; --",
        "text[",
        "varchar(a)",
    ],
)
def test_invalid_pg_types_are_rejected(given: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="is not supported"):
        validate_pg_type(given)
