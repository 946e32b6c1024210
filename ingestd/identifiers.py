"""Validation and quoting of SQL identifiers: the only way a name reaches SQL text."""

from __future__ import annotations

import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_IDENT_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL would silently truncate longer names


class InvalidIdentifierError(ValueError):
    """A name that cannot be used as a table, schema or column name."""


def validate_identifier(name: str, *, what: str = "identifier") -> str:
    """Return `name` if it is a safe identifier, else raise with a message saying why."""
    if not name:
        raise InvalidIdentifierError(f"{what} is empty")
    if len(name.encode("utf-8")) > MAX_IDENT_BYTES:
        raise InvalidIdentifierError(
            f"{what} {name[:70]!r} is longer than {MAX_IDENT_BYTES} bytes, "
            "which PostgreSQL would truncate"
        )
    if not _IDENT.fullmatch(name):
        raise InvalidIdentifierError(
            f"{what} {name!r} is not allowed: use letters, digits and _ only, "
            "starting with a letter or _"
        )
    return name


def quote_ident(name: str) -> str:
    """Double-quote a validated identifier for SQL text."""
    return '"' + validate_identifier(name) + '"'


def quote_qualified(schema: str | None, table: str) -> str:
    """Quote `schema.table` (or just `table`) for SQL text."""
    if schema is None:
        return quote_ident(table)
    return f"{quote_ident(schema)}.{quote_ident(table)}"


# Types a user may name in --types or a contract. A type cannot be quoted like an
# identifier, so it is checked against this grammar instead of spliced as given.
_TYPE_NAMES = {
    "smallint",
    "integer",
    "int",
    "int2",
    "int4",
    "int8",
    "bigint",
    "real",
    "float4",
    "float8",
    "double precision",
    "numeric",
    "decimal",
    "boolean",
    "bool",
    "text",
    "varchar",
    "character varying",
    "char",
    "character",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "timestamp with time zone",
    "timestamp without time zone",
    "time with time zone",
    "time without time zone",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "bytea",
    "inet",
    "cidr",
    "macaddr",
    "money",
    "bigserial",
    "serial",
}
_TYPE = re.compile(
    r"(?P<base>[a-z][a-z0-9 ]*?)\s*(\(\s*(?P<p>\d+)\s*(,\s*(?P<s>\d+)\s*)?\))?(?P<array>\[\])?",
    re.ASCII,
)
# The modifiers PostgreSQL accepts, by type: (what, smallest, largest, takes a scale).
# Anything else in parentheses is refused here, once at start-up, rather than by the
# server when it makes the table, which would fail every good file of the contract.
_LENGTH = ("a length", 1, 10_485_760, False)
_PRECISION = ("a precision", 0, 6, False)
_MODIFIERS: dict[str, tuple[str, int, int, bool]] = {
    "varchar": _LENGTH,
    "character varying": _LENGTH,
    "char": _LENGTH,
    "character": _LENGTH,
    "numeric": ("a precision", 1, 1000, True),
    "decimal": ("a precision", 1, 1000, True),
    "time": _PRECISION,
    "timetz": _PRECISION,
    "timestamp": _PRECISION,
    "timestamptz": _PRECISION,
    "interval": _PRECISION,
}


def validate_pg_type(type_name: str) -> str:
    """Return the normalised type if it is a known PostgreSQL type spelling, else raise."""
    normal = " ".join(type_name.strip().lower().split())
    match = _TYPE.fullmatch(normal)
    if match is None or match.group("base").strip() not in _TYPE_NAMES:
        raise InvalidIdentifierError(
            f"type {type_name!r} is not supported: use a built-in type such as "
            "integer, bigint, numeric(12,2), boolean, date, timestamptz, text, jsonb"
        )
    if match.group("p") is not None:
        _check_modifiers(type_name, match.group("base").strip(), match.group("p"), match.group("s"))
    return normal


def _check_modifiers(type_name: str, base: str, p: str, scale: str | None) -> None:
    rule = _MODIFIERS.get(base)
    if rule is None:
        raise InvalidIdentifierError(
            f"type {type_name!r} is not supported: {base} takes nothing in parentheses"
        )
    what, low, high, takes_scale = rule
    if not low <= int(p) <= high:
        raise InvalidIdentifierError(
            f"type {type_name!r} is not supported: {what} of {base} is {low} to {high:,}"
        )
    if scale is not None and not takes_scale:
        raise InvalidIdentifierError(
            f"type {type_name!r} is not supported: {base} takes one number, not two"
        )
    if scale is not None and int(scale) > int(p):
        raise InvalidIdentifierError(
            f"type {type_name!r} is not supported: the scale of {base} is 0 to its precision"
        )
