"""The manifest: one row per version of a file, its progress, and how it ended."""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.sql import ManifestStatus
from ingestd.exceptions import FileError, HandedOver, IngestdError, RetryableError, UsageError
from ingestd.identifiers import quote_qualified
from ingestd.settings import DEFAULT_MANIFEST, Settings

log = logging.getLogger(__name__)
_T = TypeVar("_T")
UNDEFINED_TABLE = "42P01"
INSUFFICIENT_PRIVILEGE = "42501"


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
    leased: bool  # another live process holds a lease on it
    owner: str | None = None  # the instance id that last claimed it
    owner_token: str | None = None  # ... and the process


@dataclass(frozen=True)
class Earlier:
    """Another manifest row that bears on a new one: an earlier version of the same file
    with committed rows, or the same bytes under another name."""

    manifest_id: int
    status: str
    rows: int
    filename: str = ""


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


class ManifestGoneError(IngestdError):
    """The manifest table, or the row of a file in hand, disappeared under a running
    instance. Loading on would load files again from row 1: ingestd stops loading."""

    event = "manifest_missing"


class ManifestRowGoneError(ManifestGoneError):
    """The manifest row of a file in hand was deleted; `rows`: what it had committed, when
    known (a file loaded in order; not one split into segments)."""

    event = "manifest_row_missing"

    def __init__(self, message: str, rows: int | None):
        super().__init__(message)
        self.rows = rows


class ManifestDroppedError(UsageError):
    """At start: no manifest, but the rejects table made with it is there."""


def new_token() -> str:
    """A per-process claim token (16 hex digits): two processes with one instance id hold
    different tokens, so neither takes the other's claims for its own."""
    return secrets.token_hex(8)


def application_name(token: str, instance_id: str) -> str:
    """The application_name a process's sessions carry: its token marks it alive."""
    return f"{sql.APP_NAME_PREFIX}{token} {instance_id}"


class Manifest:
    """Statements on the manifest table; every method takes the caller's connection."""

    def __init__(
        self,
        schema: str | None,
        table: str,
        instance_id: str = "ingestd",
        lease_s: float = Settings.lease_s,  # the setting's one default
        token: str | None = None,
    ):
        self.name = quote_qualified(schema, table)
        self._schema = schema
        self._table = table
        self._rejects = quote_qualified(schema, sql.REJECTS_TABLE)
        self.instance_id = instance_id
        self.lease_s = lease_s
        self.token = token or new_token()
        # Set once the manifest or a row in hand disappeared: nothing loads any more.
        self.broken: str | None = None

    @property
    def table_ref(self) -> tuple[str | None, str]:
        """(schema, table) of the manifest, unquoted."""
        return self._schema, self._table

    def halt(self, error: ManifestGoneError) -> None:
        """Stop loading for the rest of this process's life, saying so once, loudly."""
        if self.broken is None:
            self.broken = str(error)
            log.error(error.event, extra={"error": str(error), "manifest": self.name})

    async def ensure(self, conn: Connection) -> bool:
        """Create the manifest and rejects tables if missing (serialised across starts);
        True if the manifest itself had to be created. ManifestDroppedError if the manifest
        is missing but the rejects table lists it as made with it: files would load again.
        One rejects table serves every manifest of the schema, so another deployment's
        manifest name is no sign of a drop."""
        check = sql.manifest_status_check_name(self._table)
        index = sql.manifest_version_index(self._schema, self._table)
        if not await self.exists(conn) and await conn.fetchval(sql.TABLE_EXISTS, self._rejects):
            listed = await self._listed(conn)
            if self._table in listed:
                raise self._dropped(listed)
        # Existing, up-to-date tables are used as they are: CREATE ... IF NOT EXISTS still
        # needs CREATE on the schema, which a least-privilege role does not have.
        if await conn.fetchval(sql.MANIFEST_READY, self.name, self._rejects, index, check):
            if self._table not in await self._listed(conn):
                # A manifest made before the rejects table kept the list (0.1.0, or a
                # non-owner's start): list it now, so that dropping it is noticed.
                async with conn.atomic():
                    await self._list_self(conn)
            return False
        async with conn.atomic():
            await conn.execute(sql.LOCK_TABLE_CREATION, self.name)
            existed = await conn.fetchval(sql.TABLE_EXISTS, self.name)
            for statement in sql.create_manifest(self._schema, self._table):
                await conn.execute(statement)
            for old in await conn.fetch(sql.MANIFEST_OLD_CONSTRAINTS, self.name, check):
                await conn.execute(sql.drop_constraint(self.name, old["name"]))
            if not await conn.fetchval(sql.MANIFEST_HAS_CONSTRAINT, self.name, check):
                await conn.execute(sql.manifest_add_status_check(self._schema, self._table))
            rejects_existed = await conn.fetchval(sql.TABLE_EXISTS, self._rejects)
            await conn.execute(sql.create_rejects(self._schema))
            await conn.execute(sql.create_schema_changes(self._schema))
            await self._list_self(conn, fresh=not rejects_existed)
        return not existed

    async def _listed(self, conn: Connection) -> list[str]:
        """The manifests the rejects table says were made with it."""
        comment = await conn.fetchval(sql.REJECTS_COMMENT, self._rejects)
        return sql.parse_rejects_comment(comment, DEFAULT_MANIFEST)

    async def _list_self(self, conn: Connection, *, fresh: bool = False) -> None:
        """Add this manifest to the rejects table's list (inside the caller's transaction).
        Best effort: COMMENT needs the table's owner; a role that is not keeps the start
        check as it was (a drop of a manifest not listed goes unnoticed)."""
        try:
            async with conn.atomic():  # a savepoint: a refusal must not undo the rest
                await conn.execute(sql.LOCK_REJECTS_COMMENT, self._rejects)
                listed = [] if fresh else await self._listed(conn)
                if self._table not in listed:
                    await conn.execute(sql.comment_rejects(self._schema, [*listed, self._table]))
        except FileError as exc:
            if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
                raise
            log.debug("rejects_comment_skipped", extra={"manifest": self.name})

    def _dropped(self, listed: list[str]) -> ManifestDroppedError:
        others = [name for name in listed if name != self._table]
        if others:
            # The rejects table is shared: never advise dropping another deployment's rows.
            keep = sql.comment_rejects(self._schema, others)
            afresh = (
                f"take it off the rejects table's list ({keep}; the rejects table also "
                f"serves {', '.join(others)}, whose rows it keeps)"
            )
        else:
            afresh = sql.drop_table_hint(self._rejects)
        return ManifestDroppedError(
            f"the manifest table {self.name} is missing but {self._rejects} lists it as "
            "created with it: the manifest was dropped, and starting afresh would load every "
            "file again. Restore the manifest from a backup; or, to start afresh on purpose "
            f"(targets emptied too), {afresh} and start ingestd again"
        )

    async def exists(self, conn: Connection) -> bool:
        """True if the manifest table is there."""
        return bool(await conn.fetchval(sql.TABLE_EXISTS, self.name))

    async def _guard(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one statement on the manifest; a manifest dropped under us is not a file's
        fault nor the database's weather, and says so."""
        try:
            return await call()
        except FileError as exc:
            if exc.sqlstate != UNDEFINED_TABLE:
                raise
            raise self._gone() from None

    def _gone(self) -> ManifestGoneError:
        return ManifestGoneError(
            f"the manifest table {self.name} disappeared while ingestd was running; "
            "ingestd stopped loading (not ready) so that no file loads twice: restore it "
            "from a backup and restart ingestd"
        )

    async def check(self, conn: Connection) -> None:
        """ManifestGoneError if the manifest is no longer there (an idle instance's look)."""
        if not await self.exists(conn):
            raise self._gone()

    async def _why_not(self, conn: Connection, claim_id: int, rows: int | None = None) -> None:
        """After an update of a row in hand matched nothing: ManifestRowGoneError if the
        row was deleted (else the caller's own conflict: another process has the file)."""
        row = await self._guard(lambda: conn.fetchrow(sql.manifest_row_state(self.name), claim_id))
        if row is not None:
            return
        committed = f" with {rows:,} rows of it committed" if rows is not None else ""
        raise ManifestRowGoneError(
            f"manifest row {claim_id} of a file in hand was deleted{committed}; ingestd "
            "stopped loading (not ready) so that no file loads again from row 1: check who "
            "deletes manifest rows, then restart ingestd (the file's row is recorded again "
            "where its committed rows are known, and the file resumes after them)",
            rows,
        )

    async def check_row(self, conn: Connection, claim_id: int, rows: int | None) -> None:
        """ManifestRowGoneError if the row of a file still in hand (its move out of the
        inbox waits for a retry) was deleted: a restart would load the file again."""
        await self._why_not(conn, claim_id, rows)

    async def record_again(
        self,
        conn: Connection,
        version: FileVersion,
        table: str,
        run_id: str,
        rows: int,
        status: ManifestStatus = ManifestStatus.FAILED,
    ) -> None:
        """A deleted row of a file in hand, recorded again with the rows it had committed
        (failed, with the story in notes), so that a restart resumes after them; a finished
        file's row (its move waits) is recorded again with its final `status`."""
        if status == ManifestStatus.FAILED:
            notes = (
                f"the manifest row of this file was deleted while ingestd loaded it, with "
                f"{rows:,} rows committed; recorded again so that the next run resumes after them"
            )
        else:
            notes = (
                f"the manifest row of this file was deleted while its move out of the inbox "
                f"waited, with {rows:,} rows loaded; recorded again so that it is not loaded twice"
            )
        await self._guard(
            lambda: conn.execute(
                sql.manifest_record_again(self.name, status),
                version.filename,
                version.checksum,
                version.filesize,
                table,
                run_id,
                notes,
                rows,
            )
        )

    async def twins(self, conn: Connection) -> int:
        """How many other live processes use this instance id on this database."""
        mine = await conn.fetchval(sql.CURRENT_APPLICATION_NAME)
        if not str(mine).startswith(sql.APP_NAME_PREFIX + self.token):
            return 0  # a connection without our token (a proxy rewrote it): cannot tell
        return int(await conn.fetchval(sql.INSTANCE_TWINS, mine))

    async def lookup(self, conn: Connection, version: FileVersion, table: str) -> Seen | None:
        """What the manifest knows of a file version, or None if it was never seen."""
        row = await self._guard(
            lambda: conn.fetchrow(
                sql.manifest_lookup(self.name),
                version.filename,
                version.checksum,
                table,
                self.token,
            )
        )
        if row is None:
            return None
        return Seen(
            row["status"], row["rows"], bool(row["leased"]), row["owner"], row["owner_token"]
        )

    async def claim(
        self,
        conn: Connection,
        version: FileVersion,
        table: str,
        run_id: str,
        *,
        resume: bool,
    ) -> Claim | None:
        """Take a version for this process (pending, leased), keeping its committed progress
        if resuming; None if another live process holds it or it has loaded meanwhile."""
        row = await self._guard(
            lambda: conn.fetchrow(
                sql.manifest_claim(self.name),
                version.filename,
                version.checksum,
                version.filesize,
                table,
                run_id,
                resume,
                self.instance_id,
                self.lease_s,
                self.token,
            )
        )
        if row is None:
            return None
        return Claim(row["id"], row["rows"], row["rows_rejected"], row["batches"], _segments(row))

    async def checkpoint(
        self,
        conn: Connection,
        claim_id: int,
        before: int,
        after: int,
        rejected: int = 0,
        *,
        last: bool = False,
    ) -> None:
        """Record progress; call inside the batch's transaction. `last`: the batch is the
        file's last, and the same statement marks the file success (what finish does)."""
        statement = sql.manifest_checkpoint_last if last else sql.manifest_checkpoint
        status = await self._guard(
            lambda: conn.execute(
                statement(self.name),
                claim_id,
                before,
                after,
                rejected,
                self.token,
                self.lease_s,
            )
        )
        if status != "UPDATE 1":
            await self._why_not(conn, claim_id, before)
            raise ProgressConflictError(
                f"manifest row {claim_id} no longer shows {before} rows committed: "
                "another ingestd process is loading the same file"
            )

    async def progress(self, conn: Connection, claim_id: int) -> Committed:
        """What this version has committed so far: the truth after a lost commit reply."""
        row = await self._guard(lambda: conn.fetchrow(sql.manifest_progress(self.name), claim_id))
        if row is None:
            await self._why_not(conn, claim_id)
            return Committed(0, 0, 0)  # back meanwhile: nothing to go on from
        return Committed(
            int(row["rows"]), int(row["rows_rejected"]), int(row["batches"]), _segments(row)
        )

    async def plan_segments(self, conn: Connection, claim_id: int, plan: Segments) -> Committed:
        """Record how a file is split, unless it already has a plan or progress; returns what
        the manifest then holds (the plan to follow, or the progress of a linear load)."""
        await self._guard(
            lambda: conn.execute(
                sql.manifest_plan_segments(self.name),
                claim_id,
                list(plan.ends),
                list(plan.done),
                self.token,
            )
        )
        return await self.progress(conn, claim_id)

    async def checkpoint_segment(
        self, conn: Connection, claim_id: int, segment: int, before: int, after: int, rows: int
    ) -> None:
        """Record one segment's progress (byte offsets); call inside the batch's transaction."""
        status = await self._guard(
            lambda: conn.execute(
                sql.manifest_segment_checkpoint(self.name),
                claim_id,
                segment + 1,
                before,
                after,
                rows,
                self.token,
                self.lease_s,
            )
        )
        if status != "UPDATE 1":
            await self._why_not(conn, claim_id)
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
        await self._guard(
            lambda: conn.execute(
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
        )

    async def add_attempt(self, conn: Connection, claim_id: int) -> None:
        """Count one attempt and renew the lease; HandedOver if another instance has it now."""
        status = await self._guard(
            lambda: conn.execute(
                sql.manifest_attempt(self.name), claim_id, self.token, self.lease_s
            )
        )
        if status != "UPDATE 1":
            await self._why_not(conn, claim_id)
            raise HandedOver(f"another process took over manifest row {claim_id}")

    async def renew(self, conn: Connection, claim_ids: list[int]) -> set[int]:
        """Renew this process's leases on the files it is loading; the ids renewed."""
        rows = await self._guard(
            lambda: conn.fetch(sql.manifest_renew(self.name), self.token, claim_ids, self.lease_s)
        )
        return {int(r["id"]) for r in rows}

    async def finish(
        self, conn: Connection, claim_id: int, status: ManifestStatus, notes: str | None
    ) -> int:
        """Mark the outcome (success, failed, retrying, skipped) with the reason in notes;
        returns the rows the version committed. Inside a batch's transaction (its last),
        the outcome commits with it."""
        rows = await self._guard(
            lambda: conn.fetchval(
                sql.manifest_finish(self.name), claim_id, status, notes, self.token
            )
        )
        if rows is None:
            await self._why_not(conn, claim_id)
            raise HandedOver(f"another process took over manifest row {claim_id}")
        return int(rows)

    async def earlier_versions(
        self, conn: Connection, claim_id: int, version: FileVersion, table: str
    ) -> list[Earlier]:
        """Other versions of this file for this table left incomplete with committed rows."""
        del claim_id  # the version's own row has its checksum: never among them
        rows = await self._guard(
            lambda: conn.fetch(
                sql.manifest_earlier_versions(self.name),
                version.filename,
                table,
                version.checksum,
            )
        )
        return [Earlier(int(r["id"]), r["status"], int(r["rows"])) for r in rows]

    async def same_content(
        self, conn: Connection, claim_id: int, version: FileVersion, table: str
    ) -> Earlier | None:
        """An earlier row with the same bytes for this table under another name."""
        row = await self._guard(
            lambda: conn.fetchrow(
                sql.manifest_same_content(self.name),
                version.checksum,
                table,
                version.filename,
                claim_id,
            )
        )
        if row is None:
            return None
        return Earlier(int(row["id"]), row["status"], int(row["rows"]), row["filename"])

    async def record_failure(
        self, conn: Connection, version: FileVersion, table: str, run_id: str, notes: str
    ) -> None:
        """Record a file that failed before it could be claimed."""
        await self._guard(
            lambda: conn.execute(
                sql.manifest_record_failure(self.name),
                version.filename,
                version.checksum,
                version.filesize,
                table,
                run_id,
                notes,
            )
        )

    async def summary(self, conn: Connection, recent: int) -> dict[str, Any]:
        """Counts by status and the most recent failures and files in progress."""
        counts = await conn.fetch(sql.manifest_status_counts(self.name))
        recent_with = functools.partial(conn.fetch, sql.manifest_recent(self.name))
        failed = await recent_with(ManifestStatus.FAILED, recent)
        pending = await recent_with(ManifestStatus.PENDING, recent)
        retrying = await recent_with(ManifestStatus.RETRYING, recent)
        return {
            "counts": {
                r["status"]: {"files": r["files"], "rows": r["rows"], "rejected": r["rejected"]}
                for r in counts
            },
            "failed": [dict(r) for r in failed],
            "pending": [dict(r) for r in pending],
            "retrying": [dict(r) for r in retrying],
        }
