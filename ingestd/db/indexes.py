"""Secondary indexes of a target: which a backfill may drop, their recorded definitions, and
rebuilding exactly those, once each (the SQL of ingestd.backfill)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.exceptions import FileError, InternalError, UsageError
from ingestd.identifiers import (
    InvalidIdentifierError,
    quote_qualified,
    validate_identifier,
)

log = logging.getLogger(__name__)

BACKFILL_TABLE = "ingestion_backfill_indexes"
_INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class Target:
    """A target table as the catalog names it, and whether this role may act as its owner."""

    schema: str
    table: str
    kind: str  # pg_class.relkind: r table, p partitioned
    owner: bool
    owned_by: str

    @property
    def qualified(self) -> str:
        return quote_qualified(self.schema, self.table)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class Index:
    """A secondary index: as recorded before its drop, enough to build it again identically."""

    schema: str
    table: str
    name: str
    definition: str  # pg_get_indexdef
    tablespace: str | None = None
    comment: str | None = None
    is_constraint: bool = False
    run_id: str = ""
    owner_token: str = ""
    alive: bool = False  # recorded by a process still connected (its backfill is running)
    table_oid: int | None = None  # the table found again if renamed or moved since
    statistics: str | None = None  # per-column statistics targets: "1:500,3:100"

    @property
    def qualified(self) -> str:
        return quote_qualified(self.schema, self.name)

    @property
    def target_label(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class Plan:
    """One target's indexes: those a backfill drops, and those it keeps with the reason."""

    target: Target
    drop: tuple[Index, ...]
    keep: tuple[tuple[str, str], ...]


async def find_target(conn: Connection, schema: str | None, table: str) -> Target | None:
    """The target as the catalog has it (schema resolved by search_path); None if missing."""
    row = await conn.fetchrow(sql.INDEX_TARGET, quote_qualified(schema, table))
    if row is None:
        return None
    return Target(row["schema"], row["table"], row["kind"], row["owner"], row["owned_by"])


def _kept_because(row: dict[str, object], name_ok: bool) -> str | None:
    """Why an index must stay through the load, or None if dropping it is safe."""
    reasons = (
        (row["is_primary"], "the primary key"),
        (row["constraints"], f"backs constraint {row['constraints']}"),
        # A unique index is an upsert's or merge's key, or promises what a rebuild would
        # otherwise find broken after the load (duplicates): it enforces correctness.
        (row["is_unique"], "unique: keys must be checked as rows arrive"),
        (row["is_exclusion"], "an exclusion constraint"),
        (row["is_replident"], "the replica identity"),
        (row["is_clustered"], "the table is clustered on it"),
        (not row["is_valid"], "not valid (an unfinished build): left to its owner"),
        # The partitioned index requires it: the drop would be refused.
        (row["is_attached"], "attached to a partitioned index"),
        (row["kind"] != "i", "a partitioned index"),
        (not name_ok, "its name is outside ingestd's identifier rule"),
    )
    return next((why for cond, why in reasons if cond), None)


async def plan(conn: Connection, target: Target, run_id: str = "", token: str = "") -> Plan:
    """Which of the target's indexes a backfill drops, and which stay and why."""
    drop, keep = [], []
    for row in await conn.fetch(sql.TARGET_INDEXES, target.qualified):
        try:
            validate_identifier(row["name"])
            name_ok = True
        except InvalidIdentifierError:
            name_ok = False
        why = _kept_because(dict(row), name_ok)
        if why is not None:
            keep.append((str(row["name"]), why))
            continue
        drop.append(
            Index(
                target.schema,
                target.table,
                row["name"],
                row["definition"],
                row["tablespace"],
                row["comment"],
                False,
                run_id,
                token,
                table_oid=row["table_oid"],
                statistics=row["statistics"],
            )
        )
    return Plan(target, tuple(drop), tuple(keep))


async def ensure_records(conn: Connection, records: str) -> None:
    """Create the records table if missing (CREATE IF NOT EXISTS still needs CREATE on the
    schema, so an existing one is used as it is)."""
    if await conn.fetchval(sql.BACKFILL_RECORDS_CURRENT, records):
        return
    try:
        # Under the lock ingestd takes to create tables: two first backfills at once would
        # both create the table's row type, and one would fail on the catalog's unique key.
        async with conn.atomic():
            await conn.execute(sql.LOCK_TABLE_CREATION, records)
            await conn.execute(sql.create_backfill_records(records))
            for statement in sql.backfill_records_columns(records):
                await conn.execute(statement)
    except FileError as exc:
        if exc.sqlstate != _INSUFFICIENT_PRIVILEGE:
            raise
        raise UsageError(
            f"cannot create {records} (where a backfill records the indexes it drops): "
            f"{exc}; grant CREATE on its schema, or create it once as its owner"
        ) from None


async def drop_recorded(
    conn: Connection, records: str, target: Target, run_id: str, token: str
) -> Plan:
    """Record and drop the target's droppable indexes in one transaction: a crash leaves
    either both or neither. Listed under the table's lock, so the records are exact."""
    async with conn.atomic():
        await conn.execute(sql.lock_exclusive(target.qualified))
        found = await plan(conn, target, run_id, token)
        for ix in found.drop:
            await conn.execute(
                sql.insert_backfill_record(records), ix.schema, ix.table, ix.name, ix.definition,
                ix.tablespace, ix.comment, ix.is_constraint, run_id, token, ix.table_oid,
                ix.statistics,
            )  # fmt: skip
            await conn.execute(sql.drop_index(ix.qualified))
    return found


async def pending(conn: Connection, records: str, token: str = "") -> list[Index]:
    """Every index recorded as dropped and not yet rebuilt (none if there is no table);
    `token`: this process's, whose own records are not another's running backfill."""
    if not await conn.fetchval(sql.TABLE_EXISTS, records):
        return []
    return [
        Index(
            r["target_schema"],
            r["target_table"],
            r["index_name"],
            r["definition"],
            r["tablespace"],
            r["comment"],
            r["is_constraint"],
            r["run_id"],
            r["owner_token"],
            r["alive"],
            r["table_oid"],
            r["statistics"],
        )
        for r in await conn.fetch(sql.backfill_pending(records), token)
    ]


async def rebuild(conn: Connection, records: str, ix: Index, maintenance_work_mem_mb: int) -> str:
    """Build one recorded index and forget its record, in one transaction (a kill rolls
    both back: no half-built index, the record stays). One already there and valid is not
    built again; an invalid one (a killed concurrent build) is dropped and built.
    Returns what was done: built, rebuilt_invalid, existed, or table_gone (the table was
    dropped since: its indexes went with it, the record is cleared)."""
    recorded = ix
    now = await _where_now(conn, ix)
    if now is None:
        await conn.execute(sql.delete_backfill_record(records), ix.schema, ix.name)
        # The definition goes to the log: the record was the last place it was kept.
        log.warning(
            "backfill_table_gone",
            extra={"index": ix.name, "table": ix.target_label, "definition": ix.definition},
        )
        return "table_gone"
    ix = now
    statement = ix.definition
    async with conn.atomic():
        await conn.fetchval(sql.SET_LOCAL, "maintenance_work_mem", f"{maintenance_work_mem_mb}MB")
        await conn.fetchval(sql.SET_LOCAL, "statement_timeout", "0")  # a build may take hours
        state = await conn.fetchrow(sql.INDEX_STATE, ix.qualified)
        done = "built"
        if state is not None and state["is_valid"]:
            if state["definition"] != ix.definition:
                log.warning(
                    "backfill_index_differs",
                    extra={"index": ix.name, "table": ix.target_label,
                           "definition": state["definition"], "recorded": ix.definition},
                )  # fmt: skip
            done = "existed"
        else:
            if state is not None:
                await conn.execute(sql.drop_index(ix.qualified))
                done = "rebuilt_invalid"
            started = time.monotonic()
            try:
                # pg_get_indexdef leaves the tablespace out, and a TABLESPACE clause would
                # have to go before a partial index's WHERE: the session default puts it
                # there instead.
                await conn.fetchval(sql.SET_LOCAL, "default_tablespace", ix.tablespace or "")
            except (FileError, InternalError) as exc:  # dropped since the record was made
                raise UsageError(
                    f"index {ix.name} on {ix.target_label} cannot be rebuilt from its "
                    f"recorded definition: tablespace {ix.tablespace} ({exc}); create it, "
                    f"or set tablespace to NULL in its row in {records}"
                ) from None
            try:
                # fetch, not execute: one statement only, whatever the stored text holds.
                await conn.fetch(statement)
            except InternalError as exc:  # the recorded text refused, not ingestd's own SQL
                why = str(exc).split("(a bug in ingestd): ", 1)[-1]
                raise UsageError(
                    f"index {ix.name} on {ix.target_label} cannot be rebuilt from its "
                    f"recorded definition ({why}): fix its row in {records}, or create "
                    "the index by hand and delete that row"
                ) from None
            await _restore_statistics(conn, ix)
            log.info(
                "backfill_index_built",
                extra={"index": ix.name, "table": ix.target_label,
                       "seconds": round(time.monotonic() - started, 2)},
            )  # fmt: skip
            if ix.comment:
                # The comment travels as a parameter; the server quotes it (%L).
                text = await conn.fetchval(sql.COMMENT_ON_INDEX, ix.qualified, ix.comment)
                await conn.fetch(text)
        await conn.execute(sql.delete_backfill_record(records), recorded.schema, recorded.name)
    return done


async def _where_now(conn: Connection, ix: Index) -> Index | None:
    """The recorded index with its table's current schema and name (found by oid, so a
    table renamed or moved since keeps its index), its definition checked and spelled for
    that name; None if the table is gone."""
    found = None
    if ix.table_oid is not None:
        row = await conn.fetchrow(sql.TABLE_BY_OID, ix.table_oid)
        found = None if row is None else (str(row["schema"]), str(row["table"]))
    elif await conn.fetchval(sql.TABLE_EXISTS, quote_qualified(ix.schema, ix.table)):
        found = (ix.schema, ix.table)  # a record made before oids were kept
    if found is None:
        return None
    prefix = await conn.fetchval(sql.INDEX_DEFINITION_PREFIX, ix.name, ix.schema, ix.table)
    head = "CREATE UNIQUE " if ix.definition.startswith("CREATE UNIQUE ") else "CREATE "
    body = ix.definition.removeprefix(head)
    if not body.startswith(prefix) or not _one_statement(ix.definition):
        # Executed as SQL: only text pg_get_indexdef could have written for this index.
        raise UsageError(
            f"the recorded definition of index {ix.name} on {ix.target_label} "
            f"is not an index definition of that table: {ix.definition[:200]!r}; fix or "
            "delete its row in the backfill records table"
        )
    if found == (ix.schema, ix.table):
        return ix
    try:
        for name in found:
            validate_identifier(name)
    except InvalidIdentifierError:
        raise UsageError(
            f"table {ix.target_label} of index {ix.name} is now {found[0]}.{found[1]}, a name "
            "outside ingestd's identifier rule: rename it back (or to letters, digits and _) "
            f"and run ingestd backfill --finish again, or build it by hand: {ix.definition}"
        ) from None
    now = await conn.fetchval(sql.INDEX_DEFINITION_PREFIX, ix.name, *found)
    log.info(
        "backfill_table_moved",
        extra={"index": ix.name, "table": ix.target_label, "now": f"{found[0]}.{found[1]}"},
    )
    return dataclasses.replace(
        ix, schema=found[0], table=found[1], definition=head + now + body[len(prefix) :]
    )


async def _restore_statistics(conn: Connection, ix: Index) -> None:
    """Per-column statistics targets the index had (ALTER INDEX ... SET STATISTICS)."""
    for item in (ix.statistics or "").split(","):
        column, _, target = item.partition(":")
        if column.isdigit() and target.isdigit():
            await conn.execute(sql.set_index_statistics(ix.qualified, int(column), int(target)))


def _one_statement(text: str) -> bool:
    """True if no `;` ends a statement: pg_get_indexdef writes one only inside a quoted
    literal or identifier (quotes inside those are doubled)."""
    quote = ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote  # a doubled quote reopens at the next char
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            return False
    return True


async def flush_stats(conn: Connection, server_version: int) -> None:
    """Have this session's table counts reach the statistics before its next statement."""
    if server_version >= sql.FLUSH_STATS_MIN_VERSION:
        await conn.fetchval(sql.FLUSH_STATS)


async def analyze(
    conn: Connection, qualified: str, server_version: int = 0
) -> tuple[int, int] | None:
    """ANALYZE a table; its (dead, live) tuples as ANALYZE counted them (None: no stats)."""
    await flush_stats(conn, server_version)
    async with conn.atomic():
        await conn.fetchval(sql.SET_LOCAL, "statement_timeout", "0")
        await conn.execute(sql.analyze(qualified))
    return await dead_tuples(conn, qualified)


async def dead_tuples(
    conn: Connection, qualified: str, server_version: int = 0
) -> tuple[int, int] | None:
    """(n_dead_tup, n_live_tup) of a table from pg_stat_user_tables (None: not there)."""
    await flush_stats(conn, server_version)
    row = await conn.fetchrow(sql.DEAD_TUPLES, qualified)
    return None if row is None else (int(row["n_dead_tup"]), int(row["n_live_tup"]))
