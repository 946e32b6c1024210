"""Who holds the lock a statement gave up waiting for: the message of a lock timeout."""

from __future__ import annotations

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.identifiers import quote_qualified

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout that ran out


async def describe_lock_wait(
    conn: Connection, schema: str | None, table: str, lock_timeout_s: float
) -> str:
    """One line: the table, the wait, and the session holding the lock if it still does."""
    label = f"{schema}.{table}" if schema else table
    waited = f"waited {lock_timeout_s:g} s (lock_timeout_s)" if lock_timeout_s else "waited"
    row = await conn.fetchrow(sql.LOCK_HOLDER, quote_qualified(schema, table))
    if row is None:
        return (
            f"{waited} for a lock on table {label} (or on the manifest) held by another "
            "session, which no longer holds it"
        )
    since = row["xact_start"]
    when = f", in a transaction since {since:%Y-%m-%d %H:%M:%S %Z}" if since else ""
    return (
        f"{waited} for a lock on table {label} held by another session (pid {row['pid']}, "
        f"{row['mode']}{when}); see it with {sql.session_hint(row['pid'])}"
    )
