"""What the server allows: connection slots, for the default concurrency (ingestd.defaults)."""

from __future__ import annotations

from ingestd.db import sql
from ingestd.db.connection import Connection


async def server_limits(conn: Connection) -> tuple[int, int]:
    """(max_connections, slots reserved for superusers and pg_use_reserved_connections)."""
    row = await conn.fetchrow(sql.SERVER_LIMITS)
    assert row is not None  # noqa: S101 - settings read without a table: always one row
    return int(row["max_connections"]), int(row["reserved"])
