"""What the server allows: connection slots, for the default concurrency (ingestd.defaults)."""

from __future__ import annotations

from ingestd.db import sql
from ingestd.db.connection import Connection


async def server_limits(conn: Connection) -> tuple[int, int]:
    """(max_connections, slots reserved for superusers and pg_use_reserved_connections)."""
    row = await conn.fetchrow(sql.SERVER_LIMITS)
    assert row is not None  # noqa: S101 - settings read without a table: always one row
    return int(row["max_connections"]), int(row["reserved"])


async def connection_limit(conn: Connection) -> tuple[int | None, str]:
    """The tighter of the role's and the database's CONNECTION LIMIT (None: no limit binds
    this role; a superuser's are not enforced), and which one it is, for the message."""
    row = await conn.fetchrow(sql.CONNECTION_LIMITS)
    if row is None:
        return None, ""
    limits = [
        (int(row["role_limit"]), f"role {row['role']}"),
        (int(row["database_limit"]), f"database {row['database']}"),
    ]
    bound = [(n, who) for n, who in limits if n >= 0]
    return min(bound) if bound else (None, "")
