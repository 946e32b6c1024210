"""Move a staged batch into the target: upsert, append or MERGE."""

from __future__ import annotations

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.sql import Target
from ingestd.exceptions import FileError
from ingestd.settings import Mode

MERGE_MIN_VERSION = 150000


async def merge_batch(conn: Connection, target: Target, stage: str, mode: Mode) -> int:
    """Apply the staged rows to the target; returns how many target rows were written."""
    if mode == "append":
        statement = sql.insert_append(target, stage)
    elif mode == "upsert":
        statement = sql.upsert(target, stage)
    else:
        statement = sql.merge(target, stage)
    status = await conn.execute(statement)
    return int(status.rsplit(" ", 1)[-1])


def check_mode_supported(mode: Mode, server_version: int) -> None:
    """MERGE arrived in PostgreSQL 15; say so plainly on older servers."""
    if mode == "merge" and server_version < MERGE_MIN_VERSION:
        major = server_version // 10000
        raise FileError(
            f"--mode merge needs PostgreSQL 15 or newer and this server is {major}: "
            "use --mode upsert (same result when the key has a unique index)"
        )
