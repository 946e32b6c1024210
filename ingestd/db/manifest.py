"""The manifest: one row per version of a file, its progress, and how it ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.exceptions import HandedOver, RetryableError
from ingestd.identifiers import quote_qualified


@dataclass(frozen=True)
class Segments:
    """How a split file is cut (each segment's end offset) and how far each has got (the
    byte offset its next batch starts at)."""

    ends: tuple[int, ...]
    done: tuple[int, ...]


@dataclass(frozen=True)
class Committed:
    """How far a file version has got: rows consumed, of them set aside, batches committed,
    and for a file split into segments, how far each segment has got."""

    rows: int
    rejected: int
    batches: int
    segments: Segments | None = None


@dataclass(frozen=True)
class Claim:
    """A file version this run owns: its manifest id and what is already committed."""

    manifest_id: int
    rows_done: int
    rejected: int = 0
    batches: int = 0
    segments: Segments | None = None

    @property
    def committed(self) -> Committed:
        return Committed(self.rows_done, self.rejected, self.batches, self.segments)


def _segments(row: Any) -> Segments | None:
    ends, done = row["segment_ends"], row["segment_done"]
    return None if ends is None or done is None else Segments(tuple(ends), tuple(done))


@dataclass(frozen=True)
class FileVersion:
    """What identifies a version of a file in the manifest."""

    filename: str
    checksum: bytes
    filesize: int


@dataclass(frozen=True)
class Seen:
    """A file version the manifest already has."""

    status: str
    rows: int
    leased: bool  # another instance holds a live lease on it


@dataclass(frozen=True)
class Reject:
    """A row set aside: its position in the file, its text and why PostgreSQL refused it."""

    row: int
    raw: str
    reason: str
    sqlstate: str | None


class ProgressConflictError(RetryableError):
    """The manifest moved under us (a crashed run's last commit landed late, or another
    writer): this batch must not commit; a retry re-reads the progress and goes on."""


class Manifest:
    """Statements on the manifest table; every method takes the caller's connection."""

    def __init__(
        self, schema: str | None, table: str, instance_id: str = "ingestd", lease_s: float = 30.0
    ):
        self.name = quote_qualified(schema, table)
        self._schema = schema
        self._table = table
        self._rejects = quote_qualified(schema, sql.REJECTS_TABLE)
        self.instance_id = instance_id
        self.lease_s = lease_s

    async def ensure(self, conn: Connection) -> None:
        """Create the manifest and rejects tables if missing (serialised across starts)."""
        # Existing, up-to-date tables are used as they are: CREATE ... IF NOT EXISTS still
        # needs CREATE on the schema, which a least-privilege role does not have.
        if await conn.fetchval(sql.MANIFEST_READY, self.name, self._rejects):
            return
        async with conn.transaction():
            await conn.execute(sql.LOCK_TABLE_CREATION, self.name)
            for statement in sql.create_manifest(self._schema, self._table):
                await conn.execute(statement)
            await conn.execute(sql.create_rejects(self._schema))

    async def lookup(self, conn: Connection, version: FileVersion) -> Seen | None:
        """What the manifest knows of a file version, or None if it was never seen."""
        row = await conn.fetchrow(
            sql.manifest_lookup(self.name), version.filename, version.checksum, self.instance_id
        )
        return None if row is None else Seen(row["status"], row["rows"], bool(row["leased"]))

    async def claim(
        self,
        conn: Connection,
        version: FileVersion,
        table: str,
        run_id: str,
        *,
        resume: bool,
    ) -> Claim | None:
        """Take a version for this instance (pending, leased), keeping its committed progress
        if resuming; None if another instance holds it or it has loaded meanwhile."""
        row = await conn.fetchrow(
            sql.manifest_claim(self.name),
            version.filename,
            version.checksum,
            version.filesize,
            table,
            run_id,
            resume,
            self.instance_id,
            self.lease_s,
        )
        if row is None:
            return None
        return Claim(row["id"], row["rows"], row["rows_rejected"], row["batches"], _segments(row))

    async def checkpoint(
        self, conn: Connection, claim_id: int, before: int, after: int, rejected: int = 0
    ) -> None:
        """Record progress; call inside the batch's transaction."""
        status = await conn.execute(
            sql.manifest_checkpoint(self.name),
            claim_id,
            before,
            after,
            rejected,
            self.instance_id,
            self.lease_s,
        )
        if status != "UPDATE 1":
            raise ProgressConflictError(
                f"manifest row {claim_id} no longer shows {before} rows committed: "
                "another ingestd process is loading the same file"
            )

    async def progress(self, conn: Connection, claim_id: int) -> Committed:
        """What this version has committed so far: the truth after a lost commit reply."""
        row = await conn.fetchrow(sql.manifest_progress(self.name), claim_id)
        if row is None:
            return Committed(0, 0, 0)
        return Committed(
            int(row["rows"]), int(row["rows_rejected"]), int(row["batches"]), _segments(row)
        )

    async def plan_segments(self, conn: Connection, claim_id: int, plan: Segments) -> Committed:
        """Record how a file is split, unless it already has a plan or progress; returns what
        the manifest then holds (the plan to follow, or the progress of a linear load)."""
        await conn.execute(
            sql.manifest_plan_segments(self.name),
            claim_id,
            list(plan.ends),
            list(plan.done),
            self.instance_id,
        )
        return await self.progress(conn, claim_id)

    async def checkpoint_segment(
        self, conn: Connection, claim_id: int, segment: int, before: int, after: int, rows: int
    ) -> None:
        """Record one segment's progress (byte offsets); call inside the batch's transaction."""
        status = await conn.execute(
            sql.manifest_segment_checkpoint(self.name),
            claim_id,
            segment + 1,
            before,
            after,
            rows,
            self.instance_id,
            self.lease_s,
        )
        if status != "UPDATE 1":
            raise ProgressConflictError(
                f"segment {segment + 1} of manifest row {claim_id} is no longer at byte "
                f"{before}: another ingestd process is loading the same file"
            )

    async def record_rejects(
        self,
        conn: Connection,
        claim_id: int,
        version: FileVersion,
        run_id: str,
        rejects: list[Reject],
    ) -> None:
        """Store rejected rows, in the transaction of the batch they came from."""
        await conn.execute(
            sql.insert_rejects(self._schema),
            claim_id,
            version.filename,
            version.checksum,
            run_id,
            [r.row for r in rejects],
            [r.raw for r in rejects],
            [r.reason for r in rejects],
            [r.sqlstate for r in rejects],
        )

    async def add_attempt(self, conn: Connection, claim_id: int) -> None:
        """Count one attempt and renew the lease; HandedOver if another instance has it now."""
        status = await conn.execute(
            sql.manifest_attempt(self.name), claim_id, self.instance_id, self.lease_s
        )
        if status != "UPDATE 1":
            raise HandedOver(f"another instance took over manifest row {claim_id}")

    async def renew(self, conn: Connection, claim_ids: list[int]) -> None:
        """Renew this instance's leases on the files it is loading."""
        await conn.execute(sql.manifest_renew(self.name), self.instance_id, claim_ids, self.lease_s)

    async def finish(self, conn: Connection, claim_id: int, status: str, notes: str | None) -> None:
        """Mark the outcome: success or failed, with the reason in notes."""
        done = await conn.execute(
            sql.manifest_finish(self.name), claim_id, status, notes, self.instance_id
        )
        if done != "UPDATE 1":
            raise HandedOver(f"another instance took over manifest row {claim_id}")

    async def record_failure(
        self, conn: Connection, version: FileVersion, table: str, run_id: str, notes: str
    ) -> None:
        """Record a file that failed before it could be claimed."""
        await conn.execute(
            sql.manifest_record_failure(self.name),
            version.filename,
            version.checksum,
            version.filesize,
            table,
            run_id,
            notes,
        )

    async def summary(self, conn: Connection, recent: int) -> dict[str, Any]:
        """Counts by status and the most recent failures and files in progress."""
        counts = await conn.fetch(sql.manifest_status_counts(self.name))
        failed = await conn.fetch(sql.manifest_recent(self.name), "failed", recent)
        pending = await conn.fetch(sql.manifest_recent(self.name), "pending", recent)
        return {
            "counts": {
                r["status"]: {"files": r["files"], "rows": r["rows"], "rejected": r["rejected"]}
                for r in counts
            },
            "failed": [dict(r) for r in failed],
            "pending": [dict(r) for r in pending],
        }
