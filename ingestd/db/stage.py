"""COPY one encoded batch: into the worker's own temp stage table, or (append) the target."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.sql import Target
from ingestd.identifiers import quote_ident


@dataclass(frozen=True)
class CopyFormat:
    """How a payload is spelled: ingestd's own CSV (with the row ordinal as a last column
    when it goes to a stage), or a file's raw bytes in the file's own dialect."""

    ordinal: bool = True
    delimiter: str = ","
    quote: str = '"'
    encoding: str | None = None  # PostgreSQL's name; None: UTF8, what ingestd writes
    # Binary COPY, encoded for columns of these types (column_types'); () for CSV.
    binary_types: tuple[str | None, ...] = ()


class TypesMovedError(Exception):
    """A binary payload met column types other than those it was encoded for: the COPY is
    rolled back and the batch goes again as CSV text (never garbage in a column)."""


async def column_types(conn: Connection, target: Target) -> tuple[str | None, ...]:
    """The target's types of the file's columns, as binary COPY must match them."""
    return await _types(conn, target.qualified, list(target.columns))


async def _types(conn: Connection, table: str, columns: list[str]) -> tuple[str | None, ...]:
    types = await conn.fetchval(sql.COLUMN_TYPES, table, columns)
    return tuple(types or ())


async def copy_batch(
    conn: Connection, target: Target, stage: str, payload: memoryview, fmt: CopyFormat
) -> int:
    """COPY a payload into the stage table (columns in target order; the row ordinal comes
    from the payload, or from the stage's sequence in file order). Returns the rows."""
    columns = sql.stage_columns(target) if fmt.ordinal else list(target.columns)
    rows = await _copy(conn, stage, None, columns, payload, fmt)
    await _check_types(conn, f"pg_temp.{quote_ident(stage)}", target, fmt)
    return rows


async def copy_into_target(
    conn: Connection, target: Target, payload: memoryview, fmt: CopyFormat
) -> int:
    """COPY a payload straight into the target: append needs no stage, and the rows are
    written once. Returns the rows written."""
    rows = await _copy(conn, target.table, target.schema, list(target.columns), payload, fmt)
    await _check_types(conn, target.qualified, target, fmt)
    return rows


async def _check_types(conn: Connection, table: str, target: Target, fmt: CopyFormat) -> None:
    # Read after the COPY, under the lock it holds until commit: the types it met were
    # these (an ALTER TABLE waits for the lock), so a match proves every value landed
    # as encoded.
    if fmt.binary_types and await _types(conn, table, list(target.columns)) != fmt.binary_types:
        raise TypesMovedError(f"the column types of {target.label} changed")


async def _copy(
    conn: Connection,
    table: str,
    schema: str | None,
    columns: list[str],
    payload: memoryview,
    fmt: CopyFormat,
) -> int:
    status = await conn.copy_in(
        table,
        schema=schema,
        columns=columns,
        payload=payload,
        delimiter=fmt.delimiter,
        quote=fmt.quote,
        encoding=fmt.encoding,
        binary=bool(fmt.binary_types),
    )
    return int(status.rsplit(" ", 1)[-1])


async def create_stage(conn: Connection, target: Target, stage: str) -> None:
    """Make the stage table for a target layout on this connection, if it is missing."""
    for statement in sql.create_stage(target, stage):
        await conn.execute(statement)


async def follow_target(conn: Connection, target: Target, stage: str) -> Target:
    """Read the target's definition (inside the batch's transaction) and remake the stage if
    the target's column types moved since it was made; returns the target with what the
    merge must know (columns compared by text, how NULLs in the key compare).

    A stage keeps the types it was made with; one left behind after ALTER TABLE would make
    every later batch fail.
    """
    row = await conn.fetchrow(
        sql.follow_target(target),
        target.qualified,
        list(target.columns),
        list(target.pk),
        f"pg_temp.{quote_ident(stage)}",
    )
    assert row is not None  # noqa: S101 - the query always returns one row
    if not row["current"]:
        await conn.execute(sql.drop_stage(stage))
        await create_stage(conn, target, stage)
    nullable = tuple(c for c in target.pk if c in row["nullable_key"])
    equal = bool(row["nulls_not_distinct"])
    return replace(
        target,
        as_text=frozenset(row["as_text"]),
        distinct_nulls=() if equal else nullable,
        equal_nulls=nullable if equal else (),
        identity_key=frozenset(row["identity_key"]),
        plain_key=bool(row["plain_key"]),
        row_triggers=bool(row["row_triggers"]),
    )


async def truncate_stage(conn: Connection, stage: str) -> None:
    """Empty the stage inside a transaction, before staging a piece of a batch again."""
    await conn.execute(sql.truncate_stage(stage))
