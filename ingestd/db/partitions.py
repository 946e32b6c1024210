"""Rows a partitioned target has no partition for: name the row, or create day or month partitions.

PostgreSQL refuses such a row with SQLSTATE 23514 and the key in the DETAIL ("Partition
key of the failing row contains (day) = (2024-01-05)."). COPY names its line; the staged
modes' INSERT ... SELECT does not, so the row is found again in the batch by the value.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.errors import BatchError
from ingestd.db.sql import Target
from ingestd.db.topology import describe_target
from ingestd.exceptions import FileError
from ingestd.identifiers import quote_qualified

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


async def create_partitions(
    conn: Connection,
    target: Target,
    unit: Unit,
    error: FileError,
    batch: pa.RecordBatch | None,
) -> int:
    """After a batch refused for a row without a partition: create the day or month
    partitions its rows need (every bucket of the batch's partition column, at least the
    refused row's), in a transaction of their own under the table-creation lock. Returns
    how many were created (0: nothing more can be done; the error stands).

    A bucket already covered by a partition named otherwise is left to it (PostgreSQL
    refuses the overlap); a partition is named TABLE_pYYYYMMDD or TABLE_pYYYYMM in the
    parent's schema, its bounds in the session's TimeZone for timestamptz.
    """
    found = unrouted(error)
    if found is None:
        return 0
    column, value = found
    texts: list[str | None] = [value]
    if batch is not None:
        texts += _texts(batch, column) or []
    topology = await describe_target(conn, target)
    if topology.partition_key != (column,):
        return 0
    created = 0
    async with conn.atomic():
        await conn.execute(sql.LOCK_TABLE_CREATION, target.label)
        schema = await conn.fetchval(sql.PARENT_SCHEMA, target.qualified)
        query = sql.partition_buckets(target, column)
        refused = {
            r["suffix"] for r in await conn.fetch(query, column, [value], unit, _SUFFIX[unit])
        }
        for bucket in await conn.fetch(query, column, texts, unit, _SUFFIX[unit]):
            created += await _create_one(conn, target, schema, bucket, bucket["suffix"] in refused)
    if created:
        log.info(
            "partitions_created",
            extra={"table": target.label, "partitions": created, "unit": unit},
        )
    return created


async def _create_one(
    conn: Connection, target: Target, schema: str, bucket: asyncpg.Record, refused: bool
) -> int:
    suffix = str(bucket["suffix"])
    if not suffix.isdigit():
        return 0
    name = quote_qualified(schema, f"{target.table[:50]}_p{suffix}")
    if await conn.fetchval(sql.TABLE_EXISTS, name):
        # The refused row's partition, made by another worker while this batch waited for
        # the lock: the batch may go again. Any other table of that name is left alone
        # (the row's error stands).
        return int(refused and bool(await conn.fetchval(sql.PARTITION_OF, name, target.qualified)))
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
        return 0
    return 1
