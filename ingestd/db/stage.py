"""COPY one encoded batch: into the worker's own temp stage table, or (append) the target."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import cast

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.sql import Target

_COPY_PIECE_BYTES = 1 << 20


def _pieces(payload: memoryview) -> AsyncIterable[bytes]:
    async def pieces() -> AsyncIterator[memoryview]:
        for start in range(0, len(payload), _COPY_PIECE_BYTES):
            yield payload[start : start + _COPY_PIECE_BYTES]

    # asyncpg sends any buffer; its stubs only name bytes. Slices of the view copy nothing.
    return cast("AsyncIterable[bytes]", pieces())


async def copy_batch(conn: Connection, target: Target, stage: str, payload: memoryview) -> None:
    """COPY CSV bytes (columns in target order, then the row ordinal) into the stage table."""
    await conn.copy_to_table(
        stage, source=_pieces(payload), columns=sql.stage_columns(target), format="csv"
    )


async def copy_into_target(conn: Connection, target: Target, payload: memoryview) -> int:
    """COPY CSV bytes (no ordinal) straight into the target: append needs no stage, and the
    rows are written once. Returns the rows written."""
    status = await conn.copy_to_table(
        target.table,
        schema_name=target.schema,
        source=_pieces(payload),
        columns=list(target.columns),
        format="csv",
    )
    return int(status.rsplit(" ", 1)[-1])


async def truncate_stage(conn: Connection, stage: str) -> None:
    """Empty the stage inside a transaction, before staging a piece of a batch again."""
    await conn.execute(sql.truncate_stage(stage))
