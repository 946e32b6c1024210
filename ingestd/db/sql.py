"""Every SQL statement ingestd sends. Names go in only through quote_ident; values never do."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from ingestd.identifiers import quote_ident, quote_qualified, validate_identifier, validate_pg_type

# File-order row number carried through the stage table. Its name lies outside the
# identifier grammar every file column must match, so no column a file brings can clash.
ORDINAL = "ingestd row"
_ORDINAL = '"ingestd row"'


@dataclass(frozen=True)
class Target:
    """A validated target table and the columns a file brings to it.

    The last three fields come from the catalog (stage.follow_target) before each staged
    batch; their defaults are the cautious reading, used until the catalog has been read.
    """

    schema: str | None
    table: str
    columns: tuple[str, ...]
    pk: tuple[str, ...]
    # Columns whose type has no equality (json, xml, point...): compared by text form.
    as_text: frozenset[str] = frozenset()
    # Key columns that may hold NULL, where a NULL equals no other NULL (PostgreSQL's rule
    # for a unique key); None: not read yet, every key column counts.
    distinct_nulls: tuple[str, ...] | None = None
    # Key columns that may hold NULL under a NULLS NOT DISTINCT unique index: NULL = NULL.
    equal_nulls: tuple[str, ...] = ()
    # Key columns GENERATED ALWAYS AS IDENTITY: an UPDATE may not set them.
    identity_key: frozenset[str] = frozenset()
    # Every unique index on the key compares as ORDER BY the key does (default operator
    # class, the column's collation): rows it takes as one key are adjacent once sorted.
    plain_key: bool = False
    # A row trigger on the target or a partition of it: a BEFORE INSERT trigger sees every
    # proposed row, also an earlier occurrence of a key that DISTINCT ON would drop.
    row_triggers: bool = True
    # From topology.describe_target, once per file: a Citus table (distributed or
    # reference) refuses MERGE from a coordinator temp table, so merge mode writes INSERT
    # ... ON CONFLICT there; a distributed table takes at most `write_slots` loads at once
    # (0: no cap).
    citus: bool = False
    write_slots: int = 0

    @property
    def qualified(self) -> str:
        return quote_qualified(self.schema, self.table)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


def _cols(columns: Sequence[str], prefix: str = "") -> str:
    return ", ".join(prefix + quote_ident(c) for c in columns)


# --- target table -------------------------------------------------------------------------


def create_table(target: Target, types: Sequence[str]) -> str:
    """CREATE TABLE IF NOT EXISTS with the given column types and primary key."""
    defs = [
        f"{quote_ident(c)} {validate_pg_type(t)}"
        for c, t in zip(target.columns, types, strict=True)
    ]
    if target.pk:
        defs.append(f"PRIMARY KEY ({_cols(target.pk)})")
    return f"CREATE TABLE IF NOT EXISTS {target.qualified} ({', '.join(defs)})"


# Serialises creation of one table across workers and instances ($1: the table's label).
LOCK_TABLE_CREATION = "SELECT pg_advisory_xact_lock(hashtext('ingestd.create:' || $1))"

# $1 schema (NULL: first on search_path), $2 table -> column name and type, in table order.
TABLE_COLUMNS = """
SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a
WHERE a.attrelid = (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = $2 AND c.relkind IN ('r', 'p')
      AND (n.nspname = $1 OR ($1 IS NULL AND n.oid = ANY (current_schemas(false)::regnamespace[])))
    ORDER BY array_position(current_schemas(false)::regnamespace[], n.oid)
    LIMIT 1)
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# $1 target (quoted name), $2 the file's columns -> those PostgreSQL computes itself.
GENERATED_COLUMNS = """
SELECT a.attname::text AS name FROM pg_attribute a
WHERE a.attrelid = $1::regclass AND a.attname = ANY ($2::text[]) AND a.attgenerated <> ''
  AND NOT a.attisdropped
ORDER BY a.attnum
"""

# Columns of the unique indexes on the table: ON CONFLICT needs one matching the key.
UNIQUE_KEYS = """
SELECT array_agg(a.attname::text ORDER BY a.attname) AS cols
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred IS NULL
GROUP BY i.indexrelid
"""


# A type has a true equality when a default btree or hash operator class takes it (or a
# type it is binary-coercible to), as PostgreSQL's own type cache decides; domains are
# read as their base type and arrays as their element type. A composite counts as
# having none: its = needs every field's. `leaf` is the type so resolved.
_EQUALITY_CLASS = """
    SELECT FROM pg_opclass c JOIN pg_am am ON am.oid = c.opcmethod
    WHERE c.opcdefault AND am.amname IN ('btree', 'hash') AND c.opcintype = """
_HAS_EQUALITY = f"""
    leaf.typtype IN ('e', 'r', 'm') OR (leaf.typtype = 'b' AND (
        EXISTS ({_EQUALITY_CLASS}leaf.typ)
        OR EXISTS (SELECT FROM pg_cast k WHERE k.castsource = leaf.typ AND k.castmethod = 'b'
                   AND k.castcontext = 'i' AND EXISTS ({_EQUALITY_CLASS}k.casttarget))))"""


def _held(target: Target) -> str:
    # Citus plans a query naming a distributed table as a distributed one, and refuses this
    # recursive CTE there: its shell table's definition is guarded by Citus' own DDL locks.
    return "" if target.citus else f" LEFT JOIN {target.qualified} AS held ON false"


def follow_target(target: Target) -> str:
    """What the staged merge needs to know of the target, read afresh before each batch.

    $1 target (quoted name), $2 the file's columns, $3 the key, $4 the stage
    (pg_temp.name). Returns whether the stage's column types still are the target's
    (`current`), the columns to compare by text (`as_text`), the key columns that may hold
    NULL (`nullable_key`) and whether a NULLS NOT DISTINCT unique index covers the key.
    Naming the target in FROM holds a lock on it to the end of the batch, so its
    definition cannot change between this read and the merge.
    """
    return f"""
WITH RECURSIVE file_col AS (
    SELECT a.attname::text AS col, a.atttypid, a.atttypmod, a.attcollation, a.attnotnull,
           a.attidentity
    FROM pg_attribute a
    WHERE a.attrelid = $1::regclass AND a.attname = ANY ($2::text[])
      AND a.attnum > 0 AND NOT a.attisdropped
), walk (col, typ, typtype, depth) AS (
    SELECT f.col, t.oid, t.typtype, 0 FROM file_col f JOIN pg_type t ON t.oid = f.atttypid
  UNION ALL
    SELECT w.col, t.oid, t.typtype, w.depth + 1
    FROM walk w JOIN pg_type p ON p.oid = w.typ
    JOIN pg_type t ON t.oid = CASE WHEN p.typtype = 'd' THEN p.typbasetype ELSE p.typelem END
    WHERE w.depth < 8 AND (p.typtype = 'd' OR (p.typelem <> 0 AND p.typlen = -1))
), leaf AS (
    SELECT DISTINCT ON (col) col, typ, typtype FROM walk ORDER BY col, depth DESC
), key_index AS (
    -- indnullsnotdistinct is PostgreSQL 15+; read through jsonb, older servers lack it.
    SELECT coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false) AS nnd,
           (SELECT bool_and(o.opcdefault AND k.coll = a.attcollation)
            FROM unnest(i.indkey::int2[], i.indclass::oid[], i.indcollation::oid[])
                 AS k(attnum, opc, coll)
            JOIN pg_opclass o ON o.oid = k.opc
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS plain
    FROM pg_index i
    WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred IS NULL
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))
          = (SELECT array_agg(k ORDER BY k) FROM unnest($3::text[]) AS k)
)
SELECT
    coalesce((SELECT count(*) = cardinality($2::text[]) AND bool_and(
                  (s.atttypid, s.atttypmod, s.attcollation)
                  = (f.atttypid, f.atttypmod, f.attcollation))
              FROM file_col f JOIN pg_attribute s ON s.attrelid = to_regclass($4)
                   AND s.attname = f.col AND NOT s.attisdropped), false) AS current,
    ARRAY(SELECT col FROM leaf WHERE NOT ({_HAS_EQUALITY})) AS as_text,
    ARRAY(SELECT col FROM file_col WHERE NOT attnotnull AND col = ANY ($3::text[]))
        AS nullable_key,
    ARRAY(SELECT col FROM file_col WHERE attidentity = 'a' AND col = ANY ($3::text[]))
        AS identity_key,
    coalesce((SELECT bool_or(nnd) FROM key_index), false) AS nulls_not_distinct,
    coalesce((SELECT bool_and(plain) FROM key_index), false) AS plain_key,
    EXISTS (SELECT FROM pg_trigger g
            WHERE (g.tgrelid = $1::regclass  -- the tree is empty for a plain table
                   OR g.tgrelid IN (SELECT relid FROM pg_partition_tree($1::regclass)))
              AND NOT g.tgisinternal AND (g.tgtype & 1) = 1) AS row_triggers
FROM (SELECT) AS one{_held(target)}
"""


# Whether a staged row equal to its target row may skip ON CONFLICT (upsert's
# skip_unchanged): not where row security or a NOT VALID check or not-null constraint on
# the target ($1, quoted name) or a partition could refuse it for an old row's fault.
# Asked only before a skipping batch: follow_target runs for every batch of every file.
UNCHANGED_SKIPPABLE = """
SELECT NOT EXISTS (
    SELECT FROM pg_class r
    WHERE (r.oid = $1::regclass OR r.oid IN (SELECT relid FROM pg_partition_tree($1::regclass)))
      AND (r.relrowsecurity OR EXISTS (
          SELECT FROM pg_constraint k
          WHERE k.conrelid = r.oid AND NOT k.convalidated AND k.contype IN ('c', 'n'))))
"""


# A transaction of this session takes a snapshot per statement (relay.Relay needs it).
READS_COMMITTED = "SELECT current_setting('transaction_isolation') = 'read committed'"
# A statement that does nothing: an open transaction waiting on the client is not idle.
KEEP_ALIVE = "SELECT"


# --- stage table (one per worker connection per layout) ------------------------------------


def stage_name(target: Target) -> str:
    """Deterministic temp table name for a target layout (safe: hex digest)."""
    key = "\x1f".join((target.label, *target.columns)).encode()
    return "ingestd_stage_" + hashlib.sha256(key).hexdigest()[:16]


_STAGE_SEQUENCE_CACHE = 1_000_000


def create_stage(target: Target, stage: str) -> list[str]:
    """A temp table shaped like the file's columns of the target, plus the row ordinal.

    Its columns take the target's types, so COPY itself casts each value and reports
    the line and column of a value that does not fit. The ordinal comes with ingestd's
    own payloads; for a file's raw bytes a sequence numbers the rows in file order.
    """
    sequence = quote_ident(stage + "_seq")
    return [
        f"CREATE TEMP TABLE IF NOT EXISTS {quote_ident(stage)} ON COMMIT DELETE ROWS AS "
        f"SELECT {_cols(target.columns)}, 0::bigint AS {_ORDINAL} "
        f"FROM {target.qualified} WITH NO DATA",
        # Cached: nextval then hands out the session's reserved values without touching
        # the sequence's page for each row (measured: 11-15 ms less server CPU per 50,000
        # rows, of the ~29 ms nextval costs). Only this session uses a temp sequence, so
        # the values still rise in the order rows arrive; gaps mean nothing to DISTINCT ON.
        f"CREATE TEMP SEQUENCE IF NOT EXISTS {sequence} CACHE {_STAGE_SEQUENCE_CACHE}",
        f"ALTER TABLE {quote_ident(stage)} ALTER COLUMN {_ORDINAL} "
        f"SET DEFAULT nextval('pg_temp.{sequence}')",
    ]


# The types of a table's columns, in the order named ($2), without typmods; NULL for a
# column the table lacks. $1: the table's quoted name.
COLUMN_TYPES = """
SELECT array_agg(format_type(a.atttypid, NULL) ORDER BY c.ord)
FROM unnest($2::text[]) WITH ORDINALITY AS c(name, ord)
LEFT JOIN pg_attribute AS a
    ON a.attrelid = to_regclass($1) AND a.attname = c.name AND a.attnum > 0
    AND NOT a.attisdropped
"""


def stage_columns(target: Target) -> list[str]:
    """Column list the COPY payload is laid out in."""
    return [*target.columns, ORDINAL]


# --- merge from stage into target ----------------------------------------------------------


def _key(target: Target, column: str, prefix: str = "") -> str:
    # A key without equality can still be matched on its text form (MERGE needs no index).
    name = prefix + quote_ident(column)
    return f"{name}::text" if column in target.as_text else name


def _last_per_key(target: Target, stage: str) -> str:
    # The last occurrence in file order wins; ordering by key also gives every
    # writer the same lock order, which keeps concurrent upserts from deadlocking.
    # DISTINCT ON takes NULLs as equal, but in a unique key a NULL equals no other NULL:
    # a row whose key holds such a NULL is kept whatever the batch holds beside it.
    keys = [_key(target, c) for c in target.pk]
    nullable = target.pk if target.distinct_nulls is None else target.distinct_nulls
    if nullable:
        test = " OR ".join(f"{quote_ident(c)} IS NULL" for c in nullable)
        keys.append(f"CASE WHEN {test} THEN {_ORDINAL} END")
    pk = ", ".join(keys)
    return (
        f"SELECT DISTINCT ON ({pk}) {_cols(target.columns)} FROM {quote_ident(stage)} "
        f"ORDER BY {pk}, {_ORDINAL} DESC"
    )


def _in_key_order(target: Target, stage: str) -> str:
    keys = ", ".join(_key(target, c) for c in target.pk)
    return f"SELECT {_cols(target.columns)} FROM {quote_ident(stage)} ORDER BY {keys}, {_ORDINAL}"


def optimistic_upsert(target: Target) -> bool:
    """Whether an upsert may first go without DISTINCT ON (upsert(dedupe=False)).

    Under DO UPDATE, PostgreSQL refuses a key met a second time once this statement has
    written its row (cardinality_violation, "cannot affect row a second time"). With each
    key's rows in file order, an earlier occurrence can only have left the row as it was
    (the IS DISTINCT FROM guard), so a statement that is not refused wrote what the last
    occurrence says. That needs the arbiter index to group keys as the sort does
    (plain_key). DO NOTHING skips a duplicate silently and Citus keeps its statement
    shape: both always dedupe. A row trigger would see the rows DISTINCT ON drops.
    """
    return (
        target.plain_key and not target.row_triggers and not target.citus and bool(_updated(target))
    )


def _changed(target: Target, left: str, right: str) -> str:
    # Rows whose values did not change are not rewritten: no dead tuples, no WAL. A type
    # without equality (json, xml, point) is compared by its text form, which is exact;
    # so is one whose = is not identity (box and circle compare areas). Key columns are
    # compared by text too: an equal key written otherwise (citext 'Bob' and 'bob', numeric
    # 1.0 and 1) is rewritten as the last occurrence has it, whatever the chunk size.
    # Not on Citus, which takes only IMMUTABLE functions in ON CONFLICT's WHERE (a date's
    # or timestamp's text depends on DateStyle): there such a key keeps its first spelling.
    def side(prefix: str) -> str:
        return ", ".join(
            f"{prefix}{quote_ident(c)}::text"
            if c in target.as_text or (c in target.pk and not target.citus)
            else prefix + quote_ident(c)
            for c in _updated(target)
        )

    return f"({side(left)}) IS DISTINCT FROM ({side(right)})"


# COPY (append) takes a file's values for a GENERATED ALWAYS identity column as they are;
# so do upsert and merge, or the same file would load in one mode and fail in another.
_OVERRIDING = "OVERRIDING SYSTEM VALUE"


def _updated(target: Target) -> list[str]:
    return [c for c in target.columns if c not in target.identity_key]


def upsert(target: Target, stage: str, *, dedupe: bool = True, skip_unchanged: bool = False) -> str:
    """INSERT ... ON CONFLICT (pk) DO UPDATE, skipping rows that did not change.

    Without `dedupe` the staged rows go in key order, each key's in file order, with no
    DISTINCT ON: right only while the batch holds each key once, which PostgreSQL checks
    (see optimistic_upsert). With `skip_unchanged` (deduplicated, and only where
    optimistic_upsert holds) the last occurrence of a key that equals its row in the
    target never reaches ON CONFLICT, which would lock that row (a WAL record and a
    dirtied page each) only for the guard to write nothing; the probe costs a batch of
    new or changed rows about a quarter more, so merge_batch asks for it after a batch
    that wrote little.
    """
    rows = (
        _last_per_key(target, stage) if dedupe or skip_unchanged else _in_key_order(target, stage)
    )
    if skip_unchanged and _updated(target):
        rows = _unchanged_dropped(target, rows)
    head = (
        f"INSERT INTO {target.qualified} AS t ({_cols(target.columns)}) {_OVERRIDING} "
        f"{rows} ON CONFLICT ({_cols(target.pk)}) "
    )
    sets = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in _updated(target))
    if not sets:
        return head + "DO NOTHING"
    return head + f"DO UPDATE SET {sets} WHERE {_changed(target, 't.', 'EXCLUDED.')}"


def _unchanged_dropped(target: Target, rows: str) -> str:
    # The key matched with = as the arbiter index does (plain_key), the values compared as
    # ON CONFLICT's guard compares them: a row kept here is one the guard would let write.
    # A NULL in the key matches nothing, so that row goes to ON CONFLICT as before. A
    # scalar subquery, not NOT EXISTS: it stays one index probe a row and keeps the rows'
    # key order (the lock order), where an anti join might hash the whole target.
    keys = " AND ".join(f"held.{quote_ident(c)} = s.{quote_ident(c)}" for c in target.pk)
    return (
        f"SELECT * FROM ({rows}) AS s WHERE (SELECT true FROM {target.qualified} AS held "
        f"WHERE {keys} AND NOT {_changed(target, 'held.', 's.')} LIMIT 1) IS NOT TRUE"
    )


def _matches(target: Target) -> str:
    def one(c: str) -> str:
        same = f"{_key(target, c, 't.')} = {_key(target, c, 's.')}"
        if c in target.equal_nulls:  # a NULLS NOT DISTINCT index: NULL matches NULL
            same = f"({same} OR (t.{quote_ident(c)} IS NULL AND s.{quote_ident(c)} IS NULL))"
        return same

    return " AND ".join(one(c) for c in target.pk)


def merge(target: Target, stage: str) -> str:
    """MERGE (PostgreSQL 15+): works without a unique index on the key."""
    sets = ", ".join(f"{quote_ident(c)} = s.{quote_ident(c)}" for c in _updated(target))
    sql = (
        f"MERGE INTO {target.qualified} AS t USING ({_last_per_key(target, stage)}) AS s "
        f"ON {_matches(target)} "
    )
    if sets:
        sql += f"WHEN MATCHED AND {_changed(target, 't.', 's.')} THEN UPDATE SET {sets} "
    values = _cols(target.columns, "s.")
    return (
        sql + f"WHEN NOT MATCHED THEN INSERT ({_cols(target.columns)}) {_OVERRIDING} "
        f"VALUES ({values})"
    )


# --- manifest ------------------------------------------------------------------------------


# Every status a manifest row can have. 'retrying': the last attempt failed on something
# transient and the file stays in the inbox for another; 'skipped': the same bytes were
# loaded under another name (notes name it); 'superseded': set by an operator once the rows
# of a version are removed, so that a new version of the file may load (on_new_version).
class ManifestStatus(StrEnum):
    """A manifest row's status: the values the table's check allows (MANIFEST_STATUSES)."""

    PENDING = "pending"  # claimed, loading, interrupted, or met a bug: resumes on a next run
    SUCCESS = "success"  # loaded in full; the file moved to done/
    FAILED = "failed"  # a permanent problem with the file; it moved to failed/
    RETRYING = "retrying"  # transient trouble outlasted the retries; the file is in the inbox
    SKIPPED = "skipped"  # a copy of bytes loaded under another name (on_duplicate_content)
    SUPERSEDED = "superseded"  # set by an operator: an earlier version given up on purpose


MANIFEST_STATUSES = tuple(ManifestStatus)

# The per-process token in application_name: "ingestd TOKEN INSTANCE" (TOKEN: 16 hex digits).
# A claim whose token has no session left in the database belongs to a dead process.
APP_NAME_PREFIX = "ingestd "


def _alive(token: str) -> str:
    """SQL true while a process with claim token `token` (an SQL expression) is connected."""
    return (
        "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() "
        f"AND starts_with(a.application_name, '{APP_NAME_PREFIX}' || {token} || ' '))"
    )


def _suffixed(table: str, suffix: str) -> str:
    # Truncated so that any valid table name gives a valid index or constraint name.
    return quote_ident(table[:40] + suffix)


def create_manifest(schema: str | None, table: str) -> list[str]:
    """The manifest table and its indexes, created if missing (and manifests of older
    versions brought up to date; see manifest_migrate for their old constraints)."""
    name = quote_qualified(schema, table)
    check = quote_ident(manifest_status_check_name(table))
    statuses = ", ".join(f"'{s}'" for s in MANIFEST_STATUSES)
    return [
        f"""CREATE TABLE IF NOT EXISTS {name} (
            id           bigserial PRIMARY KEY,
            filename     text        NOT NULL,
            checksum     bytea       NOT NULL,
            filesize     bigint      NOT NULL,
            table_name   text        NOT NULL,
            status       text        NOT NULL CONSTRAINT {check} CHECK (status IN ({statuses})),
            rows         bigint      NOT NULL DEFAULT 0,
            batches      bigint      NOT NULL DEFAULT 0,
            attempts     integer     NOT NULL DEFAULT 0,
            run_id       text        NOT NULL,
            started_at   timestamptz NOT NULL DEFAULT now(),
            processed_at timestamptz,
            notes        text,
            rows_rejected bigint     NOT NULL DEFAULT 0,
            owner        text,
            lease_until  timestamptz,
            segment_ends bigint[],
            segment_done bigint[],
            owner_token  text)""",
        # Manifests made by 0.1.0 lack these columns.
        f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS rows_rejected bigint NOT NULL DEFAULT 0",
        f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS owner text",
        f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS lease_until timestamptz",
        # ... and 0.1.0's first manifests these.
        f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS segment_ends bigint[]",
        f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS segment_done bigint[]",
        f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS owner_token text",
        # Truncated so that any valid table name gives a valid index name.
        f"CREATE INDEX IF NOT EXISTS {quote_ident(table[:48] + '_status_idx')} "
        f"ON {name} (status, processed_at)",
        # A version of a file is its name and bytes *for one table*: the same file routed to
        # another table is another load.
        f"CREATE UNIQUE INDEX IF NOT EXISTS {_suffixed(table, '_version_key')} "
        f"ON {name} (filename, checksum, table_name)",
        f"CREATE INDEX IF NOT EXISTS {_suffixed(table, '_checksum_idx')} ON {name} (checksum)",
    ]


def manifest_status_check_name(table: str) -> str:
    """The name of the manifest's status check (its constraint of this version)."""
    return table[:40] + "_status_values"


def manifest_add_status_check(schema: str | None, table: str) -> str:
    """The check on the status values of this version."""
    values = ", ".join(f"'{s}'" for s in MANIFEST_STATUSES)
    return (
        f"ALTER TABLE {quote_qualified(schema, table)} ADD CONSTRAINT "
        f"{quote_ident(manifest_status_check_name(table))} CHECK (status IN ({values}))"
    )


# $1 manifest (quoted name), $2 the current status check's name: the constraints of older
# manifests to drop (the UNIQUE (filename, checksum) key, the three-status check), and
# whether the current check exists.
MANIFEST_OLD_CONSTRAINTS = """
SELECT conname::text AS name FROM pg_constraint
WHERE conrelid = to_regclass($1) AND conname <> $2
  AND ((contype = 'u' AND cardinality(conkey) = 2)
       OR (contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%'))
"""
MANIFEST_HAS_CONSTRAINT = (
    "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2)"
)


def drop_constraint(name: str, constraint: str) -> str:
    """ALTER TABLE ... DROP CONSTRAINT (name: the quoted table name)."""
    return f"ALTER TABLE {name} DROP CONSTRAINT {quote_ident(constraint)}"


# $1 manifest, $2 rejects table, $3 the version index (quoted names), $4 the status check's
# name: both tables exist, the manifest with its newest columns, its status check and its
# (filename, checksum, table_name) key, and without 0.1.0's (filename, checksum) key.
MANIFEST_READY = """
SELECT to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL AND (
    SELECT count(*) FROM pg_attribute
    WHERE attrelid = to_regclass($1) AND NOT attisdropped
      AND attname IN ('rows_rejected', 'owner', 'lease_until', 'segment_ends', 'segment_done',
                      'owner_token')) = 6
  AND EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $4)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1)
                  AND contype = 'u' AND cardinality(conkey) = 2)
"""


def manifest_version_index(schema: str | None, table: str) -> str:
    """The quoted name of the (filename, checksum, table_name) index."""
    return quote_qualified(schema, table[:40] + "_version_key")


# $1 the database-side application_name of this process: how many other processes of
# ingestd in this database use the same instance id (the part after the token).
INSTANCE_TWINS = f"""
SELECT count(DISTINCT application_name) FROM pg_stat_activity
WHERE datname = current_database() AND application_name <> $1
  AND left(application_name, 8) = '{APP_NAME_PREFIX}'
  AND substr(application_name, 26) = substr($1, 26)
"""

CURRENT_APPLICATION_NAME = "SELECT current_setting('application_name')"
TABLE_EXISTS = "SELECT to_regclass($1) IS NOT NULL"  # $1 a quoted table name


def manifest_lookup(name: str) -> str:
    """A file version's row ($1 filename, $2 checksum, $3 table): status, rows, owner, and
    whether another live process (token other than $4) holds a lease on it."""
    return (
        "SELECT id, status, rows, owner, owner_token, "
        f"(owner_token IS DISTINCT FROM $4 AND lease_until > now() "
        f"AND (owner_token IS NULL OR {_alive('m.owner_token')})) AS leased "
        f"FROM {name} AS m WHERE filename = $1 AND checksum = $2 AND table_name = $3"
    )


def manifest_claim(name: str) -> str:
    """Claim a file version for instance $7, process token $9, with a lease of $8 seconds,
    in one statement.

    Nothing comes back if another live process holds a lease on it, or (with $6, resume)
    if it has loaded (or was skipped as a duplicate) meanwhile. A lease whose process has
    no session left (killed, crashed) is taken over at once. $6 false restarts its progress
    from row 0.
    """
    return (
        f"INSERT INTO {name} AS m (filename, checksum, filesize, table_name, status, run_id, "
        "owner, owner_token, lease_until, attempts) VALUES ($1, $2, $3, $4, 'pending', $5, $7, "
        "$9, now() + make_interval(secs => $8), 1) "
        "ON CONFLICT (filename, checksum, table_name) DO UPDATE SET status = 'pending', "
        "run_id = EXCLUDED.run_id, started_at = now(), "
        "processed_at = NULL, notes = NULL, owner = EXCLUDED.owner, "
        "owner_token = EXCLUDED.owner_token, attempts = m.attempts + 1, "
        "lease_until = EXCLUDED.lease_until, "
        "rows = CASE WHEN $6 THEN m.rows ELSE 0 END, "
        "batches = CASE WHEN $6 THEN m.batches ELSE 0 END, "
        "rows_rejected = CASE WHEN $6 THEN m.rows_rejected ELSE 0 END, "
        "segment_ends = CASE WHEN $6 THEN m.segment_ends END, "
        "segment_done = CASE WHEN $6 THEN m.segment_done END "
        "WHERE (m.owner_token IS NOT DISTINCT FROM EXCLUDED.owner_token "
        "OR m.lease_until IS NULL OR m.lease_until < now() "
        # A row of 0.1.0 (no token): its own instance id takes it back, as then.
        "OR (m.owner_token IS NULL AND m.owner IS NOT DISTINCT FROM EXCLUDED.owner) "
        f"OR (m.owner_token IS NOT NULL AND NOT {_alive('m.owner_token')})) "
        "AND (m.status NOT IN ('success', 'skipped') OR NOT $6) "
        "RETURNING id, rows, rows_rejected, batches, segment_ends, segment_done"
    )


def manifest_checkpoint(name: str) -> str:
    """Advance a file's progress inside the batch's transaction, and renew the lease.

    $1 id, $2 rows before, $3 rows after, $4 rows of the batch set aside as rejects,
    $5 this process's token, $6 lease seconds. Matching the old count and the token means
    a batch is counted once, by the process holding the file.
    """
    return (
        f"UPDATE {name} SET rows = $3, batches = batches + 1, rows_rejected = rows_rejected + $4, "
        "lease_until = now() + make_interval(secs => $6) "
        "WHERE id = $1 AND rows = $2 AND status = 'pending' AND owner_token = $5"
    )


def manifest_checkpoint_last(name: str) -> str:
    """manifest_checkpoint for a file's last batch, which also marks the file success (the
    same parameters): one statement, not a checkpoint and then manifest_finish. The clock's
    time, as manifest_finish's: the transaction began before the batch was sent."""
    return (
        f"UPDATE {name} SET rows = $3, batches = batches + 1, rows_rejected = rows_rejected + $4, "
        "lease_until = now() + make_interval(secs => $6), status = 'success', notes = NULL, "
        "processed_at = clock_timestamp() "
        "WHERE id = $1 AND rows = $2 AND status = 'pending' AND owner_token = $5"
    )


def manifest_plan_segments(name: str) -> str:
    """Record how a file is split ($2 segment end offsets, $3 segment start offsets) on a
    row ($1 id) of token $4 that has no plan and no progress yet."""
    return (
        f"UPDATE {name} SET segment_ends = $2, segment_done = $3 "
        "WHERE id = $1 AND owner_token = $4 AND status = 'pending' AND rows = 0 "
        "AND segment_ends IS NULL"
    )


def manifest_segment_checkpoint(name: str) -> str:
    """Advance one segment of a split file inside the batch's transaction, and renew the
    lease: $1 id, $2 segment (1-based), $3 its byte offset before, $4 after, $5 rows,
    $6 this process's token, $7 lease seconds. Matching the segment's old offset means a
    batch is counted once, whichever worker loads it."""
    return (
        f"UPDATE {name} SET segment_done[$2] = $4, rows = rows + $5, batches = batches + 1, "
        "lease_until = now() + make_interval(secs => $7) "
        "WHERE id = $1 AND segment_done[$2] = $3 AND status = 'pending' AND owner_token = $6"
    )


def manifest_renew(name: str) -> str:
    """Renew the leases of process token $1 on the files $2 (ids) for $3 seconds; the ids
    renewed come back (a missing one: its row was deleted, or taken over)."""
    return (
        f"UPDATE {name} SET lease_until = now() + make_interval(secs => $3) "
        "WHERE owner_token = $1 AND id = ANY($2::bigint[]) AND status = 'pending' RETURNING id"
    )


def manifest_progress(name: str) -> str:
    """Rows committed so far and rows set aside, for a manifest row ($1 id)."""
    return (
        f"SELECT rows, rows_rejected, batches, segment_ends, segment_done FROM {name} WHERE id = $1"
    )


def manifest_row_state(name: str) -> str:
    """Who holds a manifest row ($1 id) and how it stands: nothing if it was deleted."""
    return f"SELECT status, rows, owner, owner_token FROM {name} WHERE id = $1"


def manifest_attempt(name: str) -> str:
    """Count one more attempt at a file ($1 id) by its token $2, renewing the lease ($3 s).
    Updates nothing if another process has taken the file over."""
    return (
        f"UPDATE {name} SET attempts = attempts + 1, "
        "lease_until = now() + make_interval(secs => $3) WHERE id = $1 AND owner_token = $2"
    )


def manifest_finish(name: str) -> str:
    """Mark a file's outcome by its token: $1 id, $2 status, $3 notes, $4 token; returns the
    rows the version committed. The clock's time, not the transaction's: in the last
    batch's transaction (load.BatchLoader) that began before the batch was sent."""
    return (
        f"UPDATE {name} SET status = $2, notes = $3, processed_at = clock_timestamp() "
        "WHERE id = $1 AND owner_token = $4 RETURNING rows"
    )


def manifest_earlier_versions(name: str) -> str:
    """Other versions of file $1 for table $2 (checksum other than $3) left incomplete with
    committed rows (not loaded in full, not superseded): id, status, rows, oldest first.
    A version loaded in full is an earlier delivery: a new one under its name loads."""
    return (
        f"SELECT id, status, rows FROM {name} WHERE filename = $1 AND table_name = $2 "
        "AND checksum <> $3 AND rows > 0 AND status NOT IN ('success', 'superseded') "
        "ORDER BY id"
    )


def manifest_same_content(name: str) -> str:
    """An earlier row ($4: ids below) with the same bytes ($1) for table $2 under another
    name than $3, loaded or loading: the original of a duplicate."""
    return (
        f"SELECT id, filename, status, rows FROM {name} WHERE checksum = $1 AND table_name = $2 "
        "AND filename <> $3 AND id < $4 AND status NOT IN ('skipped', 'superseded') "
        "AND (status <> 'failed' OR rows > 0) ORDER BY id LIMIT 1"
    )


def manifest_record_failure(name: str) -> str:
    """A file that failed before it could be claimed (no contract, unreadable)."""
    return (
        f"INSERT INTO {name} AS m (filename, checksum, filesize, table_name, status, run_id, "
        "processed_at, notes, attempts) VALUES ($1, $2, $3, $4, 'failed', $5, now(), $6, 1) "
        "ON CONFLICT (filename, checksum, table_name) DO UPDATE SET status = 'failed', "
        "run_id = EXCLUDED.run_id, processed_at = now(), notes = EXCLUDED.notes, "
        "attempts = m.attempts + 1"
    )


def manifest_record_again(name: str, status: str = "failed") -> str:
    """A deleted row of a file in hand, inserted again ($1 filename, $2 checksum, $3 size,
    $4 table, $5 run, $6 notes, $7 rows committed), unless someone put it back meanwhile.
    `status` is one of ingestd's own (never user input): failed, success or skipped."""
    if status not in ("failed", "success", "skipped"):
        raise ValueError(f"not a final status: {status!r}")
    return (
        f"INSERT INTO {name} (filename, checksum, filesize, table_name, status, run_id, "
        f"processed_at, notes, attempts, rows) VALUES ($1, $2, $3, $4, '{status}', $5, now(), "
        "$6, 1, $7) ON CONFLICT (filename, checksum, table_name) DO NOTHING"
    )


def manifest_status_counts(name: str) -> str:
    """Counts, rows and rejected rows by status, for `ingestd status`."""
    return (
        f"SELECT status, count(*) AS files, coalesce(sum(rows), 0)::bigint AS rows, "
        f"coalesce(sum(rows_rejected), 0)::bigint AS rejected FROM {name} "
        "GROUP BY status ORDER BY status"
    )


def manifest_recent(name: str) -> str:
    """The most recent rows of a status ($1), newest first, at most $2."""
    return (
        f"SELECT filename, table_name, rows, rows_rejected, attempts, run_id, started_at, "
        "processed_at, notes "
        f"FROM {name} WHERE status = $1 ORDER BY coalesce(processed_at, started_at) DESC LIMIT $2"
    )


def manifest_supersede_hint(name: str, ids: Sequence[int]) -> str:
    """The statement an operator runs (in a message) once a version's rows are removed."""
    listed = ", ".join(str(int(i)) for i in ids)
    return f"UPDATE {name} SET status = 'superseded' WHERE id IN ({listed})"


# --- locks ---------------------------------------------------------------------------------


def drop_table_hint(name: str) -> str:
    """The statement an operator runs (in a message) to drop a table (name: quoted)."""
    return f"DROP TABLE {name}"


def session_hint(pid: int) -> str:
    """The query an operator runs (in a message) to see a session."""
    return f"SELECT * FROM pg_stat_activity WHERE pid = {int(pid)}"


# $1 a table (quoted name): the oldest session other than this one holding a lock on it
# that blocks writing rows (pid, lock mode, since when its transaction runs).
LOCK_HOLDER = """
SELECT l.pid, l.mode, a.xact_start FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = to_regclass($1) AND l.granted
  AND l.pid <> pg_backend_pid()
  AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
ORDER BY a.xact_start NULLS LAST LIMIT 1
"""


# --- rejected rows ---------------------------------------------------------------------------


REJECTS_TABLE = "ingestion_rejects"


def create_rejects(schema: str | None) -> str:
    """The table of rows set aside by --max-bad-rows, created beside the manifest."""
    return f"""CREATE TABLE IF NOT EXISTS {quote_qualified(schema, REJECTS_TABLE)} (
        id           bigserial   PRIMARY KEY,
        manifest_id  bigint      NOT NULL,
        filename     text        NOT NULL,
        checksum     bytea       NOT NULL,
        row_number   bigint      NOT NULL,
        raw          text        NOT NULL,
        reason       text        NOT NULL,
        sqlstate     text,
        run_id       text        NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        UNIQUE (manifest_id, row_number))"""


# The rejects table's comment lists the manifests made with it (names are plain identifiers,
# so a comma separates them): a manifest missing at start was dropped only if it is listed.
# One rejects table serves every manifest of a schema; 0.1.0 wrote no comment, and made the
# table with the default manifest.
REJECTS_COMMENT_PREFIX = "ingestd manifests: "
REJECTS_COMMENT = "SELECT obj_description(to_regclass($1), 'pg_class')"  # $1 quoted name
# Serialises the read-modify-write of the comment between manifests starting at once.
LOCK_REJECTS_COMMENT = "SELECT pg_advisory_xact_lock(hashtext('ingestd.rejects:' || $1))"


def parse_rejects_comment(comment: str | None, default: str) -> list[str]:
    """The manifest names a rejects table's comment lists (`default` if it has none)."""
    if comment is None or not comment.startswith(REJECTS_COMMENT_PREFIX):
        return [default]
    names = comment[len(REJECTS_COMMENT_PREFIX) :].split(",")
    return [n.strip() for n in names if n.strip()]


def comment_rejects(schema: str | None, manifests: list[str]) -> str:
    """COMMENT ON the rejects table listing `manifests` (validated identifiers: no quote can
    occur in the literal)."""
    listed = ",".join(validate_identifier(m) for m in manifests)
    return (
        f"COMMENT ON TABLE {quote_qualified(schema, REJECTS_TABLE)} "
        f"IS '{REJECTS_COMMENT_PREFIX}{listed}'"
    )


def insert_rejects(schema: str | None) -> str:
    """Record rejected rows: $1 manifest id, $2 filename, $3 checksum, $4 run_id, then arrays
    $5 row numbers, $6 raw text, $7 reasons, $8 SQLSTATEs. A row already recorded (a batch
    retried after a lost commit reply) is not recorded twice."""
    return (
        f"INSERT INTO {quote_qualified(schema, REJECTS_TABLE)} "
        "(manifest_id, filename, checksum, run_id, row_number, raw, reason, sqlstate) "
        "SELECT $1, $2, $3, $4, r.n, r.raw, r.reason, r.state "
        "FROM unnest($5::bigint[], $6::text[], $7::text[], $8::text[]) AS r(n, raw, reason, state) "
        "ON CONFLICT (manifest_id, row_number) DO NOTHING"
    )


def drop_stage(stage: str) -> str:
    """Drop a stage whose column types no longer are the target's (it is made again)."""
    return f"DROP TABLE IF EXISTS pg_temp.{quote_ident(stage)}"


def truncate_stage(stage: str) -> str:
    """Empty the stage inside a transaction (ON COMMIT DELETE ROWS only acts at commit)."""
    return f"TRUNCATE {quote_ident(stage)}"


SERVER_VERSION = "SELECT current_setting('server_version_num')::int"


# --- partitioned and distributed targets (db/topology.py, db/partitions.py) ---------

# $1 the target (quoted name, resolved on search_path like any statement of a load).
TARGET_SHAPE = """
SELECT c.relkind::text AS relkind,
       ARRAY(SELECT a.attname::text
             FROM unnest(p.partattrs::int2[]) WITH ORDINALITY AS k(attnum, i)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             ORDER BY k.i) AS partition_key,
       p.partstrat::text AS strategy,
       coalesce(0 = ANY (p.partattrs::int2[]), false) AS by_expression,
       coalesce(p.partdefid <> 0, false) AS has_default,
       ARRAY(SELECT format_type(a.atttypid, a.atttypmod)
             FROM unnest(p.partattrs::int2[]) WITH ORDINALITY AS k(attnum, i)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             ORDER BY k.i) AS partition_types,
       to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL AS citus
FROM pg_class c LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid
WHERE c.oid = to_regclass($1)
"""

# Only sent when pg_dist_partition exists. partmethod 'n' with repmodel 't' is a reference
# table; 'n' otherwise a Citus local table (one shard on the coordinator: a plain table).
CITUS_PLACEMENT = """
SELECT p.partmethod::text AS method, p.repmodel::text AS repmodel, p.colocationid,
       CASE WHEN p.partmethod <> 'n'
            THEN pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) END AS column
FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = to_regclass($1)
"""

# Two keys: the target's, and a slot number below the cap. Transaction-scoped, so a pooled
# connection never keeps one (STYLE: session locks die with a release).
TRY_WRITE_SLOT = """
SELECT s FROM generate_series(0, $2::int - 1) AS s
WHERE pg_try_advisory_xact_lock(hashtext('ingestd.write:' || $1), s) LIMIT 1
"""
WAIT_WRITE_SLOT = "SELECT pg_advisory_xact_lock(hashtext('ingestd.write:' || $1), $2::int)"
BACKEND_PID = "SELECT pg_backend_pid()"


def typed_text(target: Target, column: str, text: str = "x") -> str:
    """The text value `text` (x) of column $1 cast to the column's own type."""
    # A text value cast to the column's own type through the table's row type: the cast
    # COPY makes, without spelling a type name in SQL.
    return (
        f"(json_populate_record(NULL::{target.qualified}, json_build_object($1::text, {text})))"
        f".{quote_ident(column)}"
    )


def unrouted_row(target: Target, column: str) -> str:
    """The first (1-based) of the text values $2 of column $1 whose typed text is $3,
    PostgreSQL's printing of a refused partition key ('null': a NULL)."""
    return (
        f"SELECT i FROM unnest($2::text[]) WITH ORDINALITY AS u(x, i) "
        f"WHERE {typed_text(target, column)}::text IS NOT DISTINCT FROM $3 "
        f"OR ($3 = 'null' AND x IS NULL) ORDER BY i LIMIT 1"
    )


def partition_buckets(target: Target, column: str, *, zoned: bool) -> str:
    """Day or month buckets of values: $1 column, $2 the values (text), $3 day|month, $4 the
    to_char format of the name suffix -> suffix, lo and hi (the bounds as text). Buckets of
    a timestamptz column (`zoned`) are UTC days or months whatever the session's TimeZone:
    sessions in other zones must make the same bounds, never overlapping ones."""
    # Values are read in the session's zone (as COPY read them), then bucketed on their UTC
    # wall time; the bounds carry +00 so that any session reads them as the same instant.
    wall, zone = ("x AT TIME ZONE 'UTC'", " || '+00'") if zoned else ("x::timestamp", "")
    iso = "'YYYY-MM-DD HH24:MI:SS'"
    return f"""
WITH v AS (SELECT {typed_text(target, column)} AS x FROM unnest($2::text[]) AS u(x)),
b AS (SELECT DISTINCT date_trunc($3::text, {wall}) AS lo FROM v
      WHERE x IS NOT NULL AND isfinite(x))
SELECT to_char(lo, $4::text) AS suffix, to_char(lo, {iso}){zone} AS lo,
       to_char(lo + ('1 ' || $3::text)::interval, {iso}){zone} AS hi
FROM b ORDER BY b.lo
"""


def _bound_side(target: Target, column: str, n: int) -> str:
    # One side of FOR VALUES FROM (lit) TO (lit) as pg_get_expr prints it: a quoted
    # literal (typed here), or MINVALUE / MAXVALUE (NULL here; the caller tests m[n]).
    lit = f"replace(substr(m[{n}], 2, length(m[{n}]) - 2), '''''', '''')"
    return typed_text(target, column, f"CASE WHEN left(m[{n}], 1) = '''' THEN {lit} END")


def partitions_against(target: Target, column: str) -> str:
    """The range partitions of the target ($2) beside a value and a bucket: $1 column, $3
    the value (text), $4 and $5 the bucket's bounds (text) -> name, bound (as PostgreSQL
    prints it), covers (a leaf holding the value) and overlaps (the bucket)."""
    value, lo, hi = (typed_text(target, column, t) for t in ("$3::text", "$4::text", "$5::text"))
    return f"""
WITH p AS (
  SELECT c.oid::regclass::text AS name, c.relkind::text <> 'p' AS leaf,
         pg_get_expr(c.relpartbound, c.oid) AS bound,
         regexp_match(pg_get_expr(c.relpartbound, c.oid),
                      '^FOR VALUES FROM \\((.*)\\) TO \\((.*)\\)$') AS m
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  WHERE i.inhparent = to_regclass($2::text)
), r AS (
  SELECT name, leaf, bound, m[1] = 'MINVALUE' AS lo_open, m[2] = 'MAXVALUE' AS hi_open,
         {_bound_side(target, column, 1)} AS lo, {_bound_side(target, column, 2)} AS hi
  FROM p WHERE m IS NOT NULL
)
SELECT name, bound,
       coalesce(leaf AND (lo_open OR lo <= {value}) AND (hi_open OR {value} < hi), false)
         AS covers,
       coalesce((lo_open OR lo < {hi}) AND (hi_open OR {lo} < hi), false) AS overlaps
FROM r ORDER BY name
"""


PARENT_SCHEMA = (
    "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.oid = to_regclass($1)"
)
PARTITION_OF = (
    "SELECT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = to_regclass($1) "
    "AND inhparent = to_regclass($2))"
)
CREATE_PARTITION = (
    "SELECT format('CREATE TABLE %s PARTITION OF %s FOR VALUES FROM (%L) TO (%L)', "
    "$1::text, $2::text, $3::text, $4::text)"
)


# --- schema evolution (db/schema.py) --------------------------------------------------------


SCHEMA_CHANGES_TABLE = "ingestion_schema_changes"
PG_INPUT_IS_VALID_VERSION = 160000  # pg_input_is_valid(text, type) arrived in PostgreSQL 16


def create_schema_changes(schema: str | None) -> str:
    """The table of the schema changes ingestd made, created beside the manifest."""
    return f"""CREATE TABLE IF NOT EXISTS {quote_qualified(schema, SCHEMA_CHANGES_TABLE)} (
        id           bigserial   PRIMARY KEY,
        table_name   text        NOT NULL,
        column_name  text        NOT NULL,
        column_type  text        NOT NULL,
        change       text        NOT NULL,
        filename     text        NOT NULL,
        manifest_id  bigint,
        run_id       text        NOT NULL,
        changed_at   timestamptz NOT NULL DEFAULT now())"""


def insert_schema_changes(schema: str | None) -> str:
    """Record columns added: $1 table, $2 file, $3 manifest id, $4 run, then arrays
    $5 columns and $6 their types."""
    return (
        f"INSERT INTO {quote_qualified(schema, SCHEMA_CHANGES_TABLE)} "
        "(table_name, column_name, column_type, change, filename, manifest_id, run_id) "
        "SELECT $1, c.name, c.type, 'add_column', $2, $3, $4 "
        "FROM unnest($5::text[], $6::text[]) AS c(name, type)"
    )


def add_column(target: Target, column: str, pg_type: str) -> str:
    """ALTER TABLE ... ADD COLUMN IF NOT EXISTS: another instance may have added it since
    we looked (ingestd's lock serialises ingestd; an operator's ALTER does not take it).
    Also the statement a message offers an operator."""
    return (
        f"ALTER TABLE {target.qualified} ADD COLUMN IF NOT EXISTS {quote_ident(column)} "
        f"{validate_pg_type(pg_type)}"
    )


def cast_function(server_version: int) -> str:
    """pg_temp.ingestd_cast(value, sample, type): `value` read as the type of `sample` (a
    NULL of the column's own type, so no type name is spelled in SQL text), or NULL if it
    does not cast. In pg_temp: one per session, nothing to own, no CREATE on any schema."""
    head = (
        "CREATE FUNCTION pg_temp.ingestd_cast(value text, INOUT sample anyelement, "
        "typname text) LANGUAGE plpgsql AS $body$ BEGIN "
    )
    if server_version >= PG_INPUT_IS_VALID_VERSION:
        # No subtransaction per value: the input function's soft errors, typmod included.
        return head + (
            "IF value IS NULL OR NOT pg_input_is_valid(value, typname) THEN sample := NULL; "
            "ELSE sample := value; END IF; END $body$"
        )
    # PostgreSQL 15: the cast tried in an exception block. A type with a modifier is cast
    # by its name; varchar(n), char(n) and bit(n) casts cut what COPY refuses: compared.
    return head + (
        "IF value IS NULL THEN sample := NULL; RETURN; END IF; "
        "BEGIN "
        "IF typname = format_type(pg_typeof(sample), NULL) THEN sample := value; "
        "ELSE EXECUTE 'SELECT $1::' || typname INTO sample USING value; "
        "IF pg_typeof(sample) IN ('character varying'::regtype, 'character'::regtype, "
        "'bit'::regtype, 'bit varying'::regtype) "
        "AND rtrim(sample::text) IS DISTINCT FROM rtrim(value) THEN sample := NULL; END IF; "
        "END IF; "
        "EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN sample := NULL; "
        "END; END $body$"
    )


HAS_CAST_FUNCTION = "SELECT to_regprocedure('pg_temp.' || $1 || '(text,anyelement,text)')"
CAST_FUNCTION = "ingestd_cast"


def typed_cast_function(typname: str) -> tuple[str, str]:
    """PostgreSQL 15: a cast helper for one type with a modifier (numeric(12,2), varchar(3)),
    its cast spelled in its body so that PL/pgSQL plans it once, not per value as EXECUTE
    does: (its name, its CREATE). Same signature as cast_function's (typname unused)."""
    name = "ingestd_cast_" + hashlib.sha256(typname.encode()).hexdigest()[:12]
    cast = validate_pg_type(typname)
    return name, (
        f"CREATE FUNCTION pg_temp.{quote_ident(name)}(value text, INOUT sample anyelement, "
        "typname text) LANGUAGE plpgsql AS $body$ BEGIN "
        "IF value IS NULL THEN sample := NULL; RETURN; END IF; "
        f"BEGIN sample := value::{cast}; "
        "IF pg_typeof(sample) IN ('character varying'::regtype, 'character'::regtype) "
        "AND rtrim(sample::text) IS DISTINCT FROM rtrim(value) THEN sample := NULL; END IF; "
        "EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN sample := NULL; "
        "END; END $body$"
    )


def text_stage_name(target: Target, columns: Sequence[str]) -> str:
    """Deterministic name of the all-text stage rescue COPYs into (safe: hex digest)."""
    key = "\x1f".join(("rescue", target.label, *columns)).encode()
    return "ingestd_rescue_" + hashlib.sha256(key).hexdigest()[:16]


def create_text_stage(stage: str, columns: Sequence[str]) -> str:
    """A temp table of the file's columns, all text, plus the row ordinal."""
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {quote_ident(stage)} "
        f"({', '.join(f'{quote_ident(c)} text' for c in columns)}, {_ORDINAL} bigint) "
        "ON COMMIT DELETE ROWS"
    )


def rescue_select(
    target: Target,
    stage: str,
    rescued: Sequence[str],
    typed: Sequence[tuple[str, str | None]],
    ordinal: bool,
) -> str:
    """SELECT of the target's columns from the text stage `stage`: `typed` (column, the
    pg_temp function that casts it, None for text) in order, each cast one NULL when it
    does not cast;
    then the rescue column: the `rescued` columns and the text of values that did not
    cast, as one jsonb object (NULL when empty); then the ordinal if `ordinal`.
    Parameters: $1 the rescue keys (`rescued`, then the cast columns, in order), then one
    type name per cast column."""
    casts: list[str] = []
    values: list[str] = []
    texts = [f"c.{quote_ident(c)}" for c in rescued]
    for i, (column, cast) in enumerate(typed):
        name = quote_ident(column)
        if cast is None:
            values.append(f"c.{name}")
            continue
        alias = f'"ingestd c{i}"'  # outside the identifier grammar: no file column clashes
        fn = f"pg_temp.{quote_ident(cast)}"
        casts.append(f"{fn}(s.{name}, d.{name}, ${len(casts) + 2}) AS {alias}")
        values.append(f"c.{alias}")
        texts.append(f"CASE WHEN c.{name} IS NOT NULL AND c.{alias} IS NULL THEN c.{name} END")
    if texts:
        values.append(
            f"NULLIF(jsonb_strip_nulls(jsonb_object($1::text[], ARRAY[{', '.join(texts)}]"
            "::text[])), '{}'::jsonb)"
        )
    else:
        values.append("NULL::jsonb")
    if ordinal:
        values.append(f"c.{_ORDINAL}")
    inner = ", ".join([*casts, "s.*"])
    # OFFSET 0 keeps the subquery whole: each value is cast once, not once per mention.
    return (
        f"SELECT {', '.join(values)} FROM (SELECT {inner} FROM {quote_ident(stage)} AS s "
        f"LEFT JOIN {target.qualified} AS d ON false OFFSET 0) AS c"
    )


def rescue_insert(into: str, columns: Sequence[str], select: str, rescue: str) -> str:
    """INSERT the rescue SELECT into `into` (a quoted table): rows, and of them rescued."""
    cols = ", ".join(_ORDINAL if c == ORDINAL else quote_ident(c) for c in columns)
    return (
        f"WITH moved AS (INSERT INTO {into} ({cols}) {select} "
        f"RETURNING {quote_ident(rescue)} IS NOT NULL AS rescued) "
        "SELECT count(*) AS rows, count(*) FILTER (WHERE rescued) AS rescued FROM moved"
    )


def keep_rescued(target: Target, stage: str, rescue: str) -> str:
    """UPDATE of the stage's rescue column before an upsert or merge: a key the table's row
    holds is kept unless the file brings that column ($1, the file's columns), as a column
    the file lacks keeps its value (NULL when nothing is left). The rows are locked first:
    two files rescuing into one row keep both their keys."""
    r = quote_ident(rescue)
    stage = f"pg_temp.{quote_ident(stage)}"
    on = " AND ".join(f"t.{quote_ident(c)} = s.{quote_ident(c)}" for c in target.pk)
    pk = ", ".join(quote_ident(c) for c in target.pk)
    return (
        f"UPDATE {stage} AS s SET {r} = NULLIF((COALESCE(t.{r}, '{{}}'::jsonb) - $1::text[]) "
        f"|| COALESCE(s.{r}, '{{}}'::jsonb), '{{}}'::jsonb) "
        f"FROM (SELECT {pk}, {r} FROM {target.qualified} WHERE ({pk}) IN "
        f"(SELECT {pk} FROM {stage}) AND {r} IS NOT NULL FOR UPDATE) AS t WHERE {on}"
    )


# $1 the quoted target, $2 a column -> whether it is NOT NULL.
COLUMN_NOT_NULL = """
SELECT a.attnotnull FROM pg_attribute a
WHERE a.attrelid = $1::regclass AND a.attname = $2 AND NOT a.attisdropped
"""


# --- backfill: secondary indexes dropped and rebuilt (db.indexes), table statistics -----

# $1 the quoted target: its schema and name, whether the current role may act as its owner
# (member of the owning role, or superuser), and its kind.
INDEX_TARGET = """
SELECT n.nspname::text AS schema, c.relname::text AS table, c.relkind::text AS kind,
       pg_has_role(current_user, c.relowner, 'USAGE') AS owner,
       pg_get_userbyid(c.relowner)::text AS owned_by
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)
"""

# $1 the quoted target: each index with what decides whether a backfill may drop it.
# conindid: the index backs a constraint, the target's own (primary key, unique,
# exclusion) or another table's foreign key referencing this one.
TARGET_INDEXES = """
SELECT i.relname::text AS name, pg_get_indexdef(x.indexrelid) AS definition,
       t.spcname::text AS tablespace, obj_description(x.indexrelid, 'pg_class') AS comment,
       x.indisprimary AS is_primary, x.indisunique AS is_unique,
       x.indisexclusion AS is_exclusion, x.indisreplident AS is_replident,
       x.indisclustered AS is_clustered, x.indisvalid AND x.indisready AS is_valid,
       i.relkind::text AS kind, i.relispartition AS is_attached,
       x.indrelid::bigint AS table_oid,
       (SELECT string_agg(a.attnum || ':' || a.attstattarget, ',' ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = x.indexrelid AND a.attstattarget >= 0)
           AS statistics,
       (SELECT string_agg(k.conname || ' on ' || k.conrelid::regclass::text, ', ')
        FROM pg_constraint k WHERE k.conindid = x.indexrelid) AS constraints
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
LEFT JOIN pg_tablespace t ON t.oid = i.reltablespace
WHERE x.indrelid = to_regclass($1)
ORDER BY i.relname
"""

# $1 quoted index: it exists, valid or not, and its definition.
INDEX_STATE = """
SELECT x.indisvalid AND x.indisready AS is_valid, pg_get_indexdef(x.indexrelid) AS definition
FROM pg_index x WHERE x.indexrelid = to_regclass($1)
"""

# $1 index name, $2 schema, $3 table: how pg_get_indexdef starts a definition of that index.
INDEX_DEFINITION_PREFIX = """
SELECT 'INDEX ' || quote_ident($1) || ' ON ' || quote_ident($2) || '.' || quote_ident($3)
       || ' USING '
"""

COMMENT_ON_INDEX = "SELECT format('COMMENT ON INDEX %s IS %L', $1::text, $2::text)"
# This session's counts of rows it changed reach pg_stat_user_tables only when it is idle
# (or later): flushed before counting dead tuples, and before an ANALYZE, which subtracts
# the session's unflushed changes from what it reports. PostgreSQL 15+.
FLUSH_STATS = "SELECT pg_stat_force_next_flush()"
FLUSH_STATS_MIN_VERSION = 150000
SET_LOCAL = "SELECT set_config($1, $2, true)"
DEAD_TUPLES = """
SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables WHERE relid = to_regclass($1)
"""


def create_backfill_records(records: str) -> str:
    """The table beside the manifest where dropped indexes wait to be rebuilt."""
    return f"""CREATE TABLE IF NOT EXISTS {records} (
        target_schema text NOT NULL,
        target_table  text NOT NULL,
        index_name    text NOT NULL,
        definition    text NOT NULL,
        tablespace    text,
        comment       text,
        is_constraint boolean NOT NULL DEFAULT false,
        run_id        text NOT NULL,
        owner_token   text NOT NULL,
        dropped_at    timestamptz NOT NULL DEFAULT now(),
        table_oid     oid,
        statistics    text,
        PRIMARY KEY (target_schema, index_name))"""


def backfill_records_columns(records: str) -> list[str]:
    """Columns added after the records table's first version (a table made before them)."""
    return [
        f"ALTER TABLE {records} ADD COLUMN IF NOT EXISTS table_oid oid",
        f"ALTER TABLE {records} ADD COLUMN IF NOT EXISTS statistics text",
    ]


# $1 the quoted records table: whether it has the columns backfill_records_columns adds.
BACKFILL_RECORDS_CURRENT = """
SELECT count(*) = 2 FROM pg_attribute
WHERE attrelid = to_regclass($1) AND attname IN ('table_oid', 'statistics') AND NOT attisdropped
"""

# $1 the recorded table's oid: its current schema and name (renamed or moved since).
TABLE_BY_OID = """
SELECT n.nspname::text AS schema, c.relname::text AS table
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1::bigint::oid AND c.relkind IN ('r', 'p', 'm')
"""


def set_index_statistics(qualified: str, column: int, statistics: int) -> str:
    """A per-column statistics target of an index (ALTER INDEX ... SET STATISTICS)."""
    return f"ALTER INDEX {qualified} ALTER COLUMN {int(column)} SET STATISTICS {int(statistics)}"


def insert_backfill_record(records: str) -> str:
    """Record a dropped index (a second record of one already recorded is ignored)."""
    return (
        f"INSERT INTO {records} (target_schema, target_table, index_name, definition, "
        "tablespace, comment, is_constraint, run_id, owner_token, table_oid, statistics) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::bigint::oid, $11) "
        "ON CONFLICT DO NOTHING"
    )


def backfill_pending(records: str) -> str:
    """Every recorded index; alive: recorded by another process ($1: this one's token)
    that is still connected, whose backfill is running."""
    return f"""
SELECT r.target_schema, r.target_table, r.index_name, r.definition, r.tablespace,
       r.comment, r.is_constraint, r.run_id, r.owner_token,
       (to_jsonb(r) ->> 'table_oid')::bigint AS table_oid,
       to_jsonb(r) ->> 'statistics' AS statistics,
       r.owner_token <> $1 AND EXISTS (
           SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database()
               AND starts_with(a.application_name, 'ingestd ' || r.owner_token || ' '))
           AS alive
FROM {records} r ORDER BY r.target_schema, r.target_table, r.index_name"""


def delete_backfill_record(records: str) -> str:
    """Forget a rebuilt index."""
    return f"DELETE FROM {records} WHERE target_schema = $1 AND index_name = $2"


def lock_exclusive(qualified: str) -> str:
    """Nobody reads or writes the table until the transaction ends (the drop's listing)."""
    return f"LOCK TABLE {qualified} IN ACCESS EXCLUSIVE MODE"


def drop_index(qualified: str) -> str:
    """DROP INDEX (qualified: the quoted schema.name)."""
    return f"DROP INDEX {qualified}"


def analyze(qualified: str) -> str:
    """ANALYZE a table (qualified: its quoted name)."""
    return f"ANALYZE {qualified}"


# Connection slots, for the default concurrency: max_connections and those reserved.
SERVER_LIMITS = """
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int
       + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved
"""

# The CONNECTION LIMITs that bind this session's role (-1: none; not a superuser's).
CONNECTION_LIMITS = """
SELECT current_user::text AS role, current_database()::text AS database,
       CASE WHEN r.rolsuper THEN -1 ELSE r.rolconnlimit END AS role_limit,
       CASE WHEN r.rolsuper THEN -1 ELSE d.datconnlimit END AS database_limit
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""
