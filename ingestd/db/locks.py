"""Who holds the lock a statement gave up waiting for: the message of a lock timeout."""

from __future__ import annotations

from collections.abc import Sequence

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.database import Database
from ingestd.exceptions import IngestdError
from ingestd.identifiers import quote_qualified

LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout that ran out


class ManifestLockedError(IngestdError):
    """A statement on the manifest gave up waiting for a lock another session holds: the
    database is there, the file waits; never an outage."""


async def describe_lock_wait(
    conn: Connection,
    tables: Sequence[tuple[str | None, str]],
    lock_timeout_s: float,
) -> str:
    """One line: the table, the wait, and the session holding the lock if it still does.
    `tables` (schema, name): where the statement may have waited, most likely first (a
    load writes its target and the manifest)."""
    labels = [f"{schema}.{table}" if schema else table for schema, table in tables]
    waited = f"waited {lock_timeout_s:g} s (lock_timeout_s)" if lock_timeout_s else "waited"
    for label, (schema, table) in zip(labels, tables, strict=True):
        row = await conn.fetchrow(sql.LOCK_HOLDER, quote_qualified(schema, table))
        if row is not None:
            since = row["xact_start"]
            when = f", in a transaction since {since:%Y-%m-%d %H:%M:%S %Z}" if since else ""
            return (
                f"{waited} for a lock on table {label} held by another session "
                f"(pid {row['pid']}, {row['mode']}{when}); see it with "
                f"{sql.session_hint(row['pid'])}"
            )
    return (
        f"{waited} for a lock on table {' or '.join(labels)} held by another session, "
        "which no longer holds it"
    )


async def manifest_locked(
    db: Database, manifest: tuple[str | None, str], lock_timeout_s: float
) -> ManifestLockedError:
    """The error of a statement on the manifest whose lock_timeout ran out, naming the
    session in the way (the plain wait if that cannot be looked up)."""
    try:
        async with db.connection() as conn:
            text = await describe_lock_wait(conn, [manifest], lock_timeout_s)
    except IngestdError:  # the lock is the news; who holds it is a courtesy
        schema, table = manifest
        text = f"waited for a lock on the manifest table {schema + '.' if schema else ''}{table}"
    return ManifestLockedError(text)
