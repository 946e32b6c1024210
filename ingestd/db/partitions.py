"""Rows a partitioned target has no partition for: name the row, or create day or month partitions.

PostgreSQL refuses such a row with SQLSTATE 23514 and the key in the DETAIL ("Partition
key of the failing row contains (day) = (2024-01-05)."). COPY names its line; the staged
modes' INSERT ... SELECT does not, so the row is found again in the batch by the value.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import asyncpg
import pyarrow as pa

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.errors import BatchError
from ingestd.db.sql import Target
from ingestd.db.topology import describe_target
from ingestd.exceptions import FileError
from ingestd.identifiers import quote_qualified
from ingestd.lazy import pyarrow_compute as pc  # imported at first use (lazy.py)

log = logging.getLogger(__name__)

Unit = Literal["day", "month"]
NO_PARTITION_STATE = "23514"  # check_violation: also what a row without a partition raises
_NO_PARTITION = re.compile(
    r"no partition of relation .* found for row .*Partition key of the failing row "
    r"contains \((?P<cols>[^()]*)\) = \((?P<value>.*)\)\.?\)"
)
_SUFFIX = {"day": "YYYYMMDD", "month": "YYYYMM"}


def unrouted(error: FileError) -> tuple[str, str] | None:
    """(column, value as PostgreSQL prints it) of a row refused for having no partition,
    when the table is partitioned by one column; None for any other error."""
    if error.sqlstate != NO_PARTITION_STATE:
        return None
    match = _NO_PARTITION.search(str(error))
    if match is None or "," in match.group("cols"):
        return None
    return match.group("cols").strip().strip('"'), match.group("value")


def _texts(batch: pa.RecordBatch, column: str) -> list[str | None] | None:
    index = batch.schema.get_field_index(column)
    if index < 0:
        return None
    try:
        values = pc.cast(batch.column(index), pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # a type Arrow cannot print: the row stays unnamed
    return list(values.to_pylist())


async def name_unrouted_row(
    conn: Connection, target: Target, batch: pa.RecordBatch | None, error: FileError
) -> FileError:
    """The error of a staged batch refused for a row without a partition, with the row
    (counted from the batch's first) found by its key value; any other error as it is.
    Runs after the batch's transaction was rolled back."""
    found = unrouted(error)
    if found is None or batch is None or not isinstance(error, BatchError):
        return error
    if error.record is not None:
        return error
    column, value = found
    texts = _texts(batch, column) if column in target.columns else None
    if texts is None:
        return error
    query = sql.unrouted_row(target, column)
    try:
        record = await conn.fetchval(query, column, texts, value)
    except FileError:  # the row is a courtesy; the refusal is the news
        return error
    return error if record is None else error.with_record(int(record))


@dataclass(frozen=True)
class Made:
    """What create_partitions did: `again` when the batch may go again (the partition its
    refused row needs exists now), `names` the partitions it created."""

    again: bool
    names: tuple[str, ...] = ()


async def _buckets(
    conn: Connection, query: str, column: str, texts: list[str | None], unit: Unit
) -> list[asyncpg.Record] | None:
    """The buckets of `texts`; None when the cast to the column's type refuses one of them
    (that row's own error, raised by the batch, names it)."""
    try:
        async with conn.atomic():  # a savepoint: the refusal must not end the transaction
            return list(await conn.fetch(query, column, texts, unit, _SUFFIX[unit]))
    except FileError as exc:
        if (exc.sqlstate or "").startswith("22"):  # data_exception: a value, not ingestd
            return None
        raise


async def create_partitions(
    conn: Connection,
    target: Target,
    unit: Unit,
    error: FileError,
    batch: pa.RecordBatch | None,
) -> Made:
    """After a batch refused for a row without a partition: create the day or month
    partitions its rows need (every bucket of the batch's partition column, at least the
    refused row's), in a transaction of their own under the table-creation lock.

    Buckets are UTC days and months for timestamptz (the same bounds from sessions in any
    TimeZone). A partition is named TABLE_pYYYYMMDD or TABLE_pYYYYMM in the parent's
    schema. A bucket overlapping a partition made otherwise is left to it; when that
    leaves the refused row without a partition, the file fails naming the bounds in
    conflict. Nothing is made when no bucket can hold the refused row (NULL, infinity, a
    value the column refuses): the batch's error stands and names the row.
    """
    found = unrouted(error)
    if found is None:
        return Made(again=False)
    column, value = found
    if value == "null":
        # PostgreSQL prints a NULL key as null (no date or timestamp is spelled so): no
        # partition can hold it, and it must never be passed on as a value.
        return Made(again=False)
    topology = await describe_target(conn, target)
    if topology.partition_key != (column,) or not topology.partition_types:
        return Made(again=False)
    zoned = "with time zone" in topology.partition_types[0]
    texts = (_texts(batch, column) or []) if batch is not None else []
    names: list[str] = []
    again = False
    async with conn.atomic():
        await conn.execute(sql.LOCK_TABLE_CREATION, target.label)
        schema = await conn.fetchval(sql.PARENT_SCHEMA, target.qualified)
        query = sql.partition_buckets(target, column, zoned=zoned)
        refused = await _buckets(conn, query, column, [value], unit)
        if not refused:
            return Made(again=False)
        others = (await _buckets(conn, query, column, texts, unit) or []) if texts else []
        suffixes = {r["suffix"] for r in refused}
        for bucket in [*refused, *(b for b in others if b["suffix"] not in suffixes)]:
            holds = bucket["suffix"] in suffixes
            made, ready = await _create_one(
                conn, target, schema, bucket, (column, value) if holds else None
            )
            if made is not None:
                names.append(made)
            again = again or ready
    if names:
        log.info(
            "partitions_created",
            extra={"table": target.label, "partitions": len(names), "names": names, "unit": unit},
        )
    return Made(again=again, names=tuple(names))


async def _create_one(
    conn: Connection,
    target: Target,
    schema: str,
    bucket: asyncpg.Record,
    refused: tuple[str, str] | None,
) -> tuple[str | None, bool]:
    """(the partition created, or None; whether the batch may go again). `refused` is
    (column, value) when this bucket is the refused row's."""
    suffix = str(bucket["suffix"])
    if not suffix.isdigit():
        return None, False
    name = quote_qualified(schema, f"{target.table[:50]}_p{suffix}")
    if await conn.fetchval(sql.TABLE_EXISTS, name):
        # The refused row's partition, made by another worker while this batch waited for
        # the lock: the batch may go again. Any other table of that name is left alone
        # (the row's error stands).
        ours = bool(await conn.fetchval(sql.PARTITION_OF, name, target.qualified))
        return None, refused is not None and ours
    statement = await conn.fetchval(
        sql.CREATE_PARTITION, name, target.qualified, bucket["lo"], bucket["hi"]
    )
    try:
        async with conn.atomic():  # a savepoint: an overlap leaves the bucket to its owner
            await conn.execute(statement)
    except FileError as exc:
        if exc.sqlstate == "42501":  # insufficient_privilege: only the table's owner may
            raise FileError(
                f"create_partitions could not create partition {name} of {target.label}: "
                f"{str(exc).split('. Hint:', 1)[0]}; run ingestd as the table's owner, or "
                "create the partitions yourself",
                sqlstate=exc.sqlstate,
                error_class=exc.error_class,
            ) from exc
        if exc.sqlstate != "42P17":  # invalid_object_definition: would overlap
            raise
        if refused is None:
            # Another row's bucket: if no partition holds that row, it comes back as the
            # refused one of the next attempt.
            return None, False
        return None, await _overlap(conn, target, name, bucket, refused, exc)
    return name, True


async def _overlap(
    conn: Connection,
    target: Target,
    name: str,
    bucket: asyncpg.Record,
    refused: tuple[str, str],
    exc: FileError,
) -> bool:
    """The refused row's bucket overlaps a partition made otherwise (by hand, or by
    someone else): True when a partition holds the row now (the batch goes again), else
    the file fails naming the bounds in conflict."""
    column, value = refused
    rows = await conn.fetch(
        sql.partitions_against(target, column),
        column,
        target.qualified,
        value,
        bucket["lo"],
        bucket["hi"],
    )
    if any(r["covers"] for r in rows):
        return True
    conflicts = ", ".join(f"{r['name']} {r['bound']}" for r in rows if r["overlaps"])
    raise FileError(
        f"create_partitions could not create partition {name} of {target.label} FOR VALUES "
        f"FROM ('{bucket['lo']}') TO ('{bucket['hi']}') for the row with {column} = {value}: "
        f"it would overlap {conflicts or str(exc)}, made with other bounds, and no partition "
        "holds that row; create a partition for it beside the existing ones (or change "
        "their bounds), then ingestd retry FILE",
        sqlstate=exc.sqlstate,
        error_class=exc.error_class,
    ) from exc
