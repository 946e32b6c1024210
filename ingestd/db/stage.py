"""COPY one encoded batch into the worker's own temp stage table."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.sql import Target

_COPY_PIECE_BYTES = 1 << 20


async def _pieces(payload: bytes) -> AsyncIterator[bytes]:
    view = memoryview(payload)
    for start in range(0, len(view), _COPY_PIECE_BYTES):
        yield bytes(view[start : start + _COPY_PIECE_BYTES])


async def copy_batch(conn: Connection, target: Target, stage: str, payload: bytes) -> None:
    """COPY CSV bytes (columns in target order, then the row ordinal) into the stage table."""
    await conn.copy_to_table(
        stage, source=_pieces(payload), columns=sql.stage_columns(target), format="csv"
    )


async def truncate_stage(conn: Connection, stage: str) -> None:
    """Empty the stage inside a transaction, before staging a piece of a batch again."""
    await conn.execute(sql.truncate_stage(stage))
