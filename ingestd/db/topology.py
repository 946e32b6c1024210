"""What a target table is (plain, partitioned, distributed or reference) and whether a key fits it.

Read from the catalog: `pg_partitioned_table` for declarative partitioning and, when the
Citus extension is there, `pg_dist_partition` for distributed and reference tables. The
Citus catalog is looked up by name first, so a server without Citus never sees a query
that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.sql import Target
from ingestd.db.target import has_unique_key
from ingestd.exceptions import FileError
from ingestd.settings import Mode


class Kind(StrEnum):
    """What `ingestd check-config` reports for a contract's target."""

    MISSING = "missing"  # ingestd creates it (a plain table) on the first file
    PLAIN = "plain"
    PARTITIONED = "partitioned"
    DISTRIBUTED = "distributed"  # Citus: sharded by a distribution column
    REFERENCE = "reference"  # Citus: a copy on every node


_STRATEGIES = {"r": "range", "l": "list", "h": "hash"}
_TIME_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")


@dataclass(frozen=True)
class Topology:
    """How a target table is laid out, as the catalog says."""

    kind: Kind
    partition_key: tuple[str, ...] = ()  # columns; empty when partitioned by an expression
    partition_types: tuple[str, ...] = ()
    strategy: str | None = None  # range, list or hash
    by_expression: bool = False
    has_default_partition: bool = False
    distribution_column: str | None = None
    colocation_id: int | None = None

    @property
    def citus(self) -> bool:
        return self.kind in (Kind.DISTRIBUTED, Kind.REFERENCE)

    def describe(self) -> str:
        """One phrase: `partitioned by range (day)`, `distributed by tenant_id`."""
        if self.kind is Kind.MISSING:
            return "missing (ingestd creates it, a plain table, on the first file)"
        parts = [self.kind.value]
        if self.kind is Kind.DISTRIBUTED and self.distribution_column:
            parts.append(f"by {self.distribution_column}")
        if self.strategy is not None:
            cols = "an expression" if self.by_expression else ", ".join(self.partition_key)
            word = "partitioned" if self.kind is not Kind.PARTITIONED else ""
            parts.append(f"{word} by {self.strategy} ({cols})".strip())
        return " ".join(parts)

    def key_problem(self, label: str, pk: tuple[str, ...], mode: Mode) -> str | None:
        """Why `pk` cannot be the key of `mode` on this table, or None if it can.

        A unique index of a partitioned table must contain the partition key, and one of a
        distributed table the distribution column: a key without them cannot be unique,
        so upsert has nothing to conflict on and merge would match across partitions.
        """
        if mode == "append":
            return None
        missing = [c for c in self.partition_key if c not in pk]
        if missing:
            return (
                f"table {label} is partitioned by ({', '.join(self.partition_key)}): the key "
                f"({', '.join(pk)}) of --mode {mode} must include {', '.join(missing)}; add "
                "it to --pk (and to the table's primary key), or use --mode append"
            )
        column = self.distribution_column
        if self.kind is Kind.DISTRIBUTED and column is not None and column not in pk:
            return (
                f"table {label} is distributed by {column} (Citus): the key ({', '.join(pk)}) "
                f"of --mode {mode} must include {column}; add it to --pk (and to the "
                "table's primary key), or use --mode append"
            )
        return None

    def creation_problem(self, label: str) -> str | None:
        """Why `create_partitions` cannot work on this table, or None if it can."""
        if (
            self.strategy == "range"
            and len(self.partition_key) == 1
            and self.partition_types[0] in _TIME_TYPES
        ):
            return None
        shape = self.describe() if self.kind is not Kind.MISSING else "missing"
        return (
            "create_partitions needs a table range-partitioned on one date or timestamp "
            f"column, and {label} is {shape}: create the table (and its partitions) "
            "yourself, or leave create_partitions unset"
        )

    def shape(self, target: Target, write_slots: int) -> Target:
        """The target as the merge must treat it: a Citus table takes no MERGE from a
        coordinator temp stage (INSERT ... ON CONFLICT instead), and a distributed one
        takes at most `write_slots` loads at once."""
        if not self.citus:
            return target
        slots = write_slots if self.kind is Kind.DISTRIBUTED else 0
        return replace(target, citus=True, write_slots=slots)


async def describe_target(conn: Connection, target: Target) -> Topology:
    """The catalog's account of the target (Kind.MISSING if there is no such table)."""
    row = await conn.fetchrow(sql.TARGET_SHAPE, target.qualified)
    if row is None or row["relkind"] not in ("r", "p"):
        return Topology(Kind.MISSING)
    strategy = _STRATEGIES.get(row["strategy"]) if row["strategy"] else None
    found = Topology(
        Kind.PARTITIONED if row["relkind"] == "p" else Kind.PLAIN,
        partition_key=tuple(row["partition_key"]),
        partition_types=tuple(row["partition_types"]),
        strategy=strategy,
        by_expression=bool(row["by_expression"]),
        has_default_partition=bool(row["has_default"]),
    )
    if not row["citus"]:
        return found
    dist = await conn.fetchrow(sql.CITUS_PLACEMENT, target.qualified)
    if dist is None or (dist["method"] == "n" and dist["repmodel"] != "t"):
        return found
    kind = Kind.REFERENCE if dist["method"] == "n" else Kind.DISTRIBUTED
    return replace(
        found, kind=kind, distribution_column=dist["column"], colocation_id=dist["colocationid"]
    )


async def hold_write_slot(conn: Connection, target: Target) -> None:
    """Inside the batch's transaction: wait for one of the target's write slots, if it has a
    cap (a distributed table: Citus routes one COPY over many connections already, and
    more than a couple at once only contend; see the Citus docs on COPY)."""
    if target.write_slots <= 0:
        return
    if await conn.fetchval(sql.TRY_WRITE_SLOT, target.label, target.write_slots) is not None:
        return
    # Every slot is busy: queue on the slot of this connection's backend, so waiters spread.
    slot = int(await conn.fetchval(sql.BACKEND_PID)) % target.write_slots
    await conn.execute(sql.WAIT_WRITE_SLOT, target.label, slot)


async def place_target(
    conn: Connection,
    target: Target,
    mode: Mode,
    create_partitions: str | None,
    write_slots: int,
) -> Target:
    """Check, once per file, that the contract fits what the target is (one message that
    says what to change), and return the target shaped for it (Topology.shape).

    Read for every file, not kept for the session: a table made anew between two files (a
    plain one partitioned, a partitioned one plain) must be judged as it is now."""
    topology = await describe_target(conn, target)
    problem = await _problem(conn, topology, target, mode, create_partitions)
    if problem is not None:
        raise FileError(problem)
    return topology.shape(target, write_slots)


async def fit(
    conn: Connection, target: Target, mode: Mode, create_partitions: str | None
) -> tuple[Topology, str | None]:
    """What the target is and why the contract does not fit it (None: it fits), read only:
    for `ingestd check-config --dsn`."""
    topology = await describe_target(conn, target)
    problem = await _problem(conn, topology, target, mode, create_partitions)
    if problem is None and mode == "upsert" and topology.kind is not Kind.MISSING:
        if not await has_unique_key(conn, target):
            problem = (
                f"table {target.label} has no primary key or unique index on "
                f"({', '.join(target.pk)}), which upsert needs"
            )
    return topology, problem


async def _problem(
    conn: Connection,
    topology: Topology,
    target: Target,
    mode: Mode,
    create_partitions: str | None,
) -> str | None:
    problem = topology.key_problem(target.label, target.pk, mode)
    if problem is None and create_partitions is not None:
        problem = topology.creation_problem(target.label)
    if problem is None and topology.citus and mode == "merge":
        if not await has_unique_key(conn, target):
            problem = (
                f"table {target.label} is a Citus {topology.kind.value} table, which takes "
                "no MERGE from ingestd's stage, so --mode merge writes INSERT ... ON CONFLICT "
                f"there: it needs a primary key or unique index on ({', '.join(target.pk)})"
            )
    return problem
