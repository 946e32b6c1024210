"""Schema drift: how a file's columns meet its table under the contract's schema_evolution,
the columns ingestd adds (each recorded in ingestion_schema_changes), and rescue."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from prometheus_client import Counter

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.merge import merge_batch
from ingestd.db.sql import ORDINAL, Target
from ingestd.db.stage import CopyFormat, TypesMovedError, follow_target
from ingestd.exceptions import FileError
from ingestd.identifiers import (
    InvalidIdentifierError,
    quote_ident,
    quote_qualified,
    validate_identifier,
)
from ingestd.settings import Contract, Mode

log = logging.getLogger(__name__)

INSUFFICIENT_PRIVILEGE = "42501"
RESCUE_TYPE = "jsonb"


# --- the plan: pure, from the file's layout and the table's columns -------------------------


@dataclass(frozen=True)
class Plan:
    """What a file loads under its contract's schema_evolution, given the table as it is.

    `file_columns` are the columns the batches carry (COPY's payload); `columns` those the
    target gets (the Target's). They differ under ignore (dropped columns) and rescue
    (the file's extra columns go into the rescue column, which the target gets)."""

    file_columns: tuple[str, ...]
    columns: tuple[str, ...]
    types: tuple[str, ...]  # of `columns`: what a column is created or added with
    adds: tuple[str, ...] = ()  # columns the table lacks, added in the first batch
    dropped: tuple[str, ...] = ()  # ignore
    rescued: tuple[str, ...] = ()  # rescue: file columns the table lacks
    rescue: str | None = None  # the rescue column, under rescue

    @property
    def changes_nothing(self) -> bool:
        """True when the file loads exactly as without schema evolution."""
        return self.rescue is None and not self.adds and not self.dropped


def plan(
    contract: Contract,
    file_columns: tuple[str, ...],
    file_types: tuple[str, ...],
    table: dict[str, str],
    typed: bool = False,
) -> Plan:
    """How the file's columns meet the table's (`table`: name -> type; empty when the table
    is missing and will be created). `typed`: the file's types are its own (Parquet or
    NDJSON with preserve_types), so a column whose type the table narrows is a type
    change, which ingestd never makes."""
    types = dict(zip(file_columns, file_types, strict=True))
    mode = contract.schema_evolution
    rescue = contract.rescue_column if mode == "rescue" else None
    if rescue is not None and rescue in file_columns:
        raise FileError(
            f"the file brings a column named {rescue}, the rescue column of "
            f"schema_evolution = rescue: name another with --rescue-column"
        )
    extra = tuple(c for c in file_columns if table and c not in table)
    if mode == "add" and typed:
        _refuse_type_change(contract, file_columns, types, table)
    if mode == "ignore" and extra:
        kept = tuple(c for c in file_columns if c not in extra)
        if not kept:
            raise FileError(
                f"the table has none of the file's columns ({', '.join(file_columns[:30])}) "
                "and schema_evolution = ignore drops them all: check the contract's table"
            )
        return Plan(kept, kept, tuple(types[c] for c in kept), dropped=extra)
    if rescue is not None:
        kept = tuple(c for c in file_columns if c not in extra)
        columns = (*kept, rescue)
        rescue_add: tuple[str, ...] = (rescue,) if table and rescue not in table else ()
        return Plan(
            file_columns,
            columns,
            (*(types[c] for c in kept), RESCUE_TYPE),
            adds=rescue_add,
            rescued=extra,
            rescue=rescue,
        )
    adds = extra if mode == "add" else ()
    return Plan(file_columns, file_columns, tuple(file_types), adds=adds)


# Types whose wider member holds every value of a narrower one, narrowest first.
_WIDENING = (
    ("smallint", "integer", "bigint", "numeric"),
    ("real", "double precision"),
    ("date", "timestamp without time zone"),
)


def _rank(pg_type: str) -> tuple[int, int] | None:
    base = pg_type.lower().split("(")[0].strip()
    for family, members in enumerate(_WIDENING):
        if base in members:
            return family, members.index(base)
    return None


def _refuse_type_change(
    contract: Contract, columns: tuple[str, ...], types: dict[str, str], table: dict[str, str]
) -> None:
    label = f"{contract.schema}.{contract.table}" if contract.schema else contract.table
    for column in columns:
        if column not in table:
            continue
        have, brings = _rank(table[column]), _rank(types[column])
        if have is not None and brings is not None and have[0] == brings[0]:
            if brings[1] > have[1]:
                raise FileError(
                    f"column {column} of table {label} is {table[column]} and the file "
                    f"brings {types[column]}: ingestd adds columns but never changes a "
                    f"column's type; to load this file run ALTER TABLE "
                    f"{quote_qualified(contract.schema, contract.table)} ALTER COLUMN "
                    f"{quote_ident(column)} TYPE {types[column]}"
                )


@dataclass(frozen=True)
class Change:
    """One column ingestd added to a table."""

    table: str
    column: str
    type: str


@dataclass(frozen=True)
class Audit:
    """Where and for whom a schema change is recorded."""

    schema: str | None  # the manifest's schema
    filename: str
    manifest_id: int
    run_id: str


# --- one file's evolution, batch by batch ---------------------------------------------------


@dataclass
class Evolution:
    """A file's schema drift while it loads: the columns to add in the first batch's
    transaction (with their audit rows) and, under rescue, how each batch is written."""

    target: Target
    plan: Plan
    audit: Audit
    server_version: int
    _pending: bool = field(init=False, default=True)
    _in_flight: list[Change] = field(init=False, default_factory=list)
    _rescued: int = field(init=False, default=0)

    @property
    def shape(self) -> tuple[Target, tuple[str, ...]]:
        """The target as the file loads it, and the types its columns are created with."""
        return self.target, self.plan.types

    @property
    def sortable(self) -> bool:
        """Whether a batch refused on bad data may sort its rows out (--max-bad-rows): not
        under rescue (nothing is refused for a value) nor before the columns are added."""
        return self.plan.rescue is None and not self.adds

    @property
    def adds(self) -> tuple[str, ...]:
        """Columns still to add (the stage waits for them)."""
        return self.plan.adds if self._pending else ()

    async def apply(
        self,
        conn: Connection,
        target: Target,
        stage: str | None,
        mode: Mode,
        payload: memoryview,
        fmt: CopyFormat,
    ) -> tuple[int, int]:
        """Write one payload (inside the batch's transaction), adding the columns the file
        brings first: (rows read from the payload, target rows written)."""
        from ingestd.db.merge import apply_batch

        self._in_flight, self._rescued = [], 0
        if self.adds:
            await self._add_columns(conn)
        if self.plan.rescue is None:
            return await apply_batch(conn, target, stage, mode, payload, fmt)
        if fmt.binary_types:
            raise TypesMovedError("rescue reads every value as text")  # load re-encodes
        return await self._rescue_batch(conn, target, stage, mode, payload, fmt)

    def settle(self, schema_changes: Counter, rows_rescued: Counter) -> None:
        """After the batch committed: log and count (ingest_schema_changes_total,
        ingest_rows_rescued_total) what it changed and rescued."""
        label = self.target.label
        for change in self._in_flight:
            log.info(
                "schema_changed",
                extra={
                    "table": change.table,
                    "column": change.column,
                    "type": change.type,
                    "change": "add_column",
                },
            )
            schema_changes.labels(label).inc()
        if self._rescued:
            rows_rescued.labels(label).inc(self._rescued)
        self._in_flight, self._rescued = [], 0
        self._pending = False

    async def _add_columns(self, conn: Connection) -> None:
        target = self.target
        # The lock ingestd takes to create a table: one session at a time changes its
        # columns, and every other one then finds them there.
        await conn.execute(sql.LOCK_TABLE_CREATION, target.label)
        have = await _table_columns(conn, target)
        wanted = dict(zip(self.plan.columns, self.plan.types, strict=True))
        missing = [c for c in self.plan.columns if c not in have and c in wanted]
        for column in missing:
            try:
                await conn.execute(sql.add_column(target, column, wanted[column]))
            except FileError as exc:
                if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
                    raise
                raise FileError(_no_alter(target, column, wanted[column])) from None
        if not missing:
            return
        now = await _table_columns(conn, target)  # what the table has now, as it has it
        changes = [Change(target.label, c, now.get(c, wanted[c])) for c in missing]
        await self._record(conn, changes)
        self._in_flight = changes

    async def _record(self, conn: Connection, changes: list[Change]) -> None:
        a = self.audit
        table = quote_qualified(a.schema, sql.SCHEMA_CHANGES_TABLE)
        if not await conn.fetchval(sql.TABLE_EXISTS, table):
            # A manifest made before schema evolution: its audit table comes now.
            try:
                async with conn.atomic():
                    await conn.execute(sql.create_schema_changes(a.schema))
            except FileError as exc:
                if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
                    raise
                raise FileError(
                    f"ingestd cannot record the schema change: the table {table} is missing "
                    "and this role may not create it in that schema; create it as "
                    "ingestd/db/sql.py create_schema_changes writes it, or grant CREATE"
                ) from None
        await conn.execute(
            sql.insert_schema_changes(a.schema),
            self.target.label,
            a.filename,
            a.manifest_id,
            a.run_id,
            [c.column for c in changes],
            [c.type for c in changes],
        )

    async def _rescue_batch(
        self,
        conn: Connection,
        target: Target,
        stage: str | None,
        mode: Mode,
        payload: memoryview,
        fmt: CopyFormat,
    ) -> tuple[int, int]:
        plan = self.plan
        assert plan.rescue is not None  # noqa: S101 - only rescue plans come here
        text_stage = sql.text_stage_name(target, plan.file_columns)
        await conn.execute(sql.create_text_stage(text_stage, plan.file_columns))
        columns = [*plan.file_columns, ORDINAL] if fmt.ordinal else list(plan.file_columns)
        status = await conn.copy_in(
            text_stage,
            schema=None,
            columns=columns,
            payload=payload,
            delimiter=fmt.delimiter,
            quote=fmt.quote,
            encoding=fmt.encoding,
        )
        rows = int(status.rsplit(" ", 1)[-1])
        # The table's types as they are now, inside the batch's transaction.
        have = await _table_columns(conn, target)
        kept = [c for c in plan.columns if c != plan.rescue]
        typed = [(c, await self._cast_for(conn, have.get(c, "text"))) for c in kept]
        casts = [c for c, cast in typed if cast is not None]
        select = sql.rescue_select(target, text_stage, plan.rescued, typed, stage is not None)
        keys = [*plan.rescued, *casts]
        params: list[object] = [keys, *(have[c] for c in casts)] if keys else []
        if mode == "append":
            statement = sql.rescue_insert(target.qualified, plan.columns, select, plan.rescue)
            row = await conn.fetchrow(statement, *params)
            assert row is not None  # noqa: S101 - an aggregate returns one row
            self._rescued = int(row["rescued"])
            return rows, int(row["rows"])
        assert stage is not None  # noqa: S101 - upsert and merge always have a stage
        followed = await follow_target(conn, target, stage)
        into = f"pg_temp.{quote_ident(stage)}"
        statement = sql.rescue_insert(into, [*plan.columns, ORDINAL], select, plan.rescue)
        row = await conn.fetchrow(statement, *params)
        assert row is not None  # noqa: S101 - an aggregate returns one row
        self._rescued = int(row["rescued"])
        await conn.execute(sql.truncate_stage(text_stage))
        await conn.execute(sql.keep_rescued(target, stage, plan.rescue), list(plan.file_columns))
        return rows, await merge_batch(conn, followed, stage, mode, rows)

    async def _cast_for(self, conn: Connection, typname: str) -> str | None:
        """The pg_temp function that casts text to `typname` (made on first use in this
        session), or None for text, which needs no cast."""
        if typname == "text":
            return None
        name, create = sql.CAST_FUNCTION, sql.cast_function(self.server_version)
        if self.server_version < sql.PG_INPUT_IS_VALID_VERSION and "(" in typname:
            # A type modifier on 15: the generic helper would EXECUTE a cast per value.
            with contextlib.suppress(InvalidIdentifierError):  # not ours to spell: generic
                name, create = sql.typed_cast_function(typname)
        if await conn.fetchval(sql.HAS_CAST_FUNCTION, name) is None:
            await conn.execute(create)
        return name


def _no_alter(target: Target, column: str, pg_type: str) -> str:
    return (
        f"schema_evolution needs to add column {column} to table {target.label}, and this "
        "role may not: ADD COLUMN needs the table's ownership. Add it yourself "
        f"({sql.add_column(target, column, pg_type)}), make ingestd's role the table's "
        "owner, or use schema_evolution = ignore"
    )


async def _table_columns(conn: Connection, target: Target) -> dict[str, str]:
    rows = await conn.fetch(sql.TABLE_COLUMNS, target.schema, target.table)
    return {r["name"]: r["type"] for r in rows}


async def _check_rescue_column(conn: Connection, target: Target, rescue: str, pg_type: str) -> None:
    """Refuse, before any row is written, a rescue column that already exists and is not a
    nullable jsonb: rescue writes a jsonb object or NULL into every row it loads, so an
    ordinary column would lose its values and a NOT NULL one would fail each row."""
    column = quote_ident(rescue)
    if pg_type != RESCUE_TYPE:
        raise FileError(
            f"the rescue column {rescue} of table {target.label} is {pg_type}, not jsonb: "
            "schema_evolution = rescue would write JSON over its values; name a jsonb column "
            "or a new one with --rescue-column"
        )
    # A GENERATED column takes no value from a row (an identity one cannot be jsonb, so the
    # type rule above already refuses it): each file would fail with a false "the file
    # brings a value" instead.
    if await conn.fetch(sql.GENERATED_COLUMNS, target.qualified, [rescue]):
        raise FileError(
            f"the rescue column {rescue} of table {target.label} is a GENERATED column, "
            "which PostgreSQL computes itself and rescue cannot write: name a plain nullable "
            "jsonb column or a new one with --rescue-column"
        )
    if await conn.fetchval(sql.COLUMN_NOT_NULL, target.qualified, rescue):
        raise FileError(
            f"the rescue column {rescue} of table {target.label} is NOT NULL, and rescue "
            "writes NULL in every row with nothing to rescue: run ALTER TABLE "
            f"{target.qualified} ALTER COLUMN {column} DROP NOT NULL, or name another "
            "column with --rescue-column"
        )


async def evolution_for(
    conn: Connection,
    contract: Contract,
    target: Target,
    file_types: tuple[str, ...],
    audit: Audit,
    server_version: int,
    typed: bool = False,
) -> Evolution | None:
    """The file's schema drift, or None when it loads as without schema evolution (the
    contract's default, fail, or nothing drifted). Logs the columns ignore drops."""
    if contract.schema_evolution == "fail":
        return None
    table = await _table_columns(conn, target)
    drift = plan(contract, target.columns, file_types, table, typed)
    if drift.rescue is not None and drift.rescue in table:
        await _check_rescue_column(conn, target, drift.rescue, table[drift.rescue])
    if drift.dropped:
        log.info(
            "columns_ignored",
            extra={"table": target.label, "columns": list(drift.dropped)},
        )
    if drift.changes_nothing:
        return None
    for column in drift.columns:
        validate_identifier(column)
    shaped = Target(target.schema, target.table, drift.columns, target.pk)
    return Evolution(shaped, drift, audit, server_version)
