"""What the server allows: connection slots, for the default concurrency (ingestd.defaults)."""

from __future__ import annotations

from ingestd.db.connection import Connection

SERVER_LIMITS = """
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int
       + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved
"""


async def server_limits(conn: Connection) -> tuple[int, int]:
    """(max_connections, slots reserved for superusers and pg_use_reserved_connections)."""
    row = await conn.fetchrow(SERVER_LIMITS)
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return int(row["max_connections"]), int(row["reserved"])
