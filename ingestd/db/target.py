"""The target table: create it when missing, check it fits the file, and shape the stage table."""

from __future__ import annotations

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.sql import Target
from ingestd.db.stage import create_stage
from ingestd.exceptions import FileError


async def ensure_table_from_headers(
    conn: Connection, target: Target, pg_types: tuple[str, ...], pending: tuple[str, ...] = ()
) -> dict[str, str]:
    """Create the target if missing; return its column types. Fails if the file does not fit
    (`pending`: columns schema evolution adds in the first batch, not missing)."""
    columns = await _columns(conn, target)
    if not columns:
        async with conn.atomic():
            # Two workers may meet a new table at once; the lock makes one create it.
            await conn.execute(sql.LOCK_TABLE_CREATION, target.label)
            await conn.execute(sql.create_table(target, pg_types))
        columns = await _columns(conn, target)
    extra = [c for c in target.columns if c not in columns and c not in pending]
    if extra:
        raise FileError(
            f"table {target.label} has no column(s) {', '.join(extra)} that the file brings "
            f"(table has: {', '.join(columns)}); add them with ALTER TABLE, select the "
            "file's columns with --headers, or let ingestd handle them with "
            "--schema-evolution add|ignore|rescue"
        )
    generated = await _generated(conn, target)
    if generated:
        raise FileError(
            f"the file brings a value for {', '.join(generated)}, a generated column of table "
            f"{target.label} that PostgreSQL computes itself: leave the column out of the file, "
            "or select the file's other columns with --headers"
        )
    return columns


async def has_unique_key(conn: Connection, target: Target) -> bool:
    """True if a unique index covers exactly the key columns (ON CONFLICT needs one)."""
    rows = await conn.fetch(sql.UNIQUE_KEYS, target.qualified)
    return any(sorted(r["cols"]) == sorted(target.pk) for r in rows)


async def _columns(conn: Connection, target: Target) -> dict[str, str]:
    return await table_columns(conn, target.schema, target.table)


async def table_columns(conn: Connection, schema: str | None, table: str) -> dict[str, str]:
    """A table's columns and their types, in table order (empty: no such table)."""
    rows = await conn.fetch(sql.TABLE_COLUMNS, schema, table)
    return {r["name"]: r["type"] for r in rows}


async def _generated(conn: Connection, target: Target) -> list[str]:
    rows = await conn.fetch(sql.GENERATED_COLUMNS, target.qualified, list(target.columns))
    return [r["name"] for r in rows]


class SessionState:
    """What one worker's connection has set up: its stage tables, and the targets already
    checked. Forgotten with the connection (temp tables die with their session)."""

    def __init__(self) -> None:
        self._made: set[str] = set()
        self._checked: set[tuple[str, tuple[str, ...], str]] = set()

    async def stage(self, conn: Connection, target: Target, create: bool = True) -> str:
        """Name of this connection's stage table for the target layout, created on first use.

        Each batch checks it still fits the target (stage.follow_target), and makes it if
        it is not there: `create` False leaves it to the first batch (the columns it needs
        are added in that batch's transaction).
        """
        name = sql.stage_name(target)
        if create and name not in self._made:
            await create_stage(conn, target, name)
            self._made.add(name)
        return name

    def checked(self, target: Target, mode: str) -> bool:
        """True if this target layout was already prepared and checked on this connection."""
        return (target.label, target.columns, mode) in self._checked

    def mark_checked(self, target: Target, mode: str) -> None:
        self._checked.add((target.label, target.columns, mode))

    def forget_target(self, target: Target, mode: str) -> None:
        """Check the target again on its next file (it was dropped or renamed meanwhile)."""
        self._checked.discard((target.label, target.columns, mode))

    def forget(self) -> None:
        """Call when the connection is replaced."""
        self._made.clear()
        self._checked.clear()
