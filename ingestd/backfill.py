"""--backfill: drop the targets' secondary indexes before a --once load, rebuild exactly those
after it (in parallel, with more maintenance_work_mem), then ANALYZE; crash-safe through
the records table beside the manifest (db.indexes)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ingestd.db import indexes
from ingestd.db.connection import Connection
from ingestd.db.database import Database
from ingestd.db.indexes import Index, Plan, Target
from ingestd.exceptions import FileError, IngestdError, InternalError, UsageError
from ingestd.identifiers import quote_qualified
from ingestd.settings import Settings

log = logging.getLogger(__name__)
FINISH_HINT = "ingestd backfill --finish"
INSUFFICIENT_PRIVILEGE = "42501"


def records_table(schema: str | None) -> str:
    """The quoted name of the table where dropped indexes are recorded (beside the manifest)."""
    return quote_qualified(schema, indexes.BACKFILL_TABLE)


@dataclass
class Outcome:
    """What a rebuild did: indexes built, found already there, and those still dropped."""

    built: list[str] = field(default_factory=list)
    existed: list[str] = field(default_factory=list)
    left: list[Index] = field(default_factory=list)  # failed: still dropped
    running: list[Index] = field(default_factory=list)  # another live backfill's
    errors: list[str] = field(default_factory=list)
    analyzed: list[str] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)  # tables dropped since: records cleared

    def message(self) -> str:
        """One line for the summary when indexes are still dropped ('' when none)."""
        if not self.left:
            return ""
        tables = sorted({ix.target_label for ix in self.left})
        why = f" ({self.errors[0]})" if self.errors else ""
        return (
            f"backfill: {len(self.left)} index(es) of {', '.join(tables)} still dropped{why}; "
            f"run `{FINISH_HINT}` (or any ingestd --once run) to rebuild them"
        )


async def contract_targets(conn: Connection, settings: Settings) -> list[Target]:
    """The existing targets of the run's contracts, each once."""
    seen: dict[str, Target] = {}
    for c in settings.contracts:
        target = await indexes.find_target(conn, c.schema, c.table)
        if target is not None:
            seen.setdefault(target.label, target)
    return list(seen.values())


async def refuse_daemon(conn: Connection, settings: Settings) -> None:
    """A daemon must not load into a table whose indexes a backfill dropped: UsageError."""
    records = records_table(settings.manifest_schema)
    waiting = await _pending(conn, records)
    if not waiting:
        return
    mine = {t.label for t in await contract_targets(conn, settings)}
    hit = [ix for ix in waiting if ix.target_label in mine]
    if not hit:
        return
    tables = sorted({ix.target_label for ix in hit})
    running = any(ix.alive for ix in hit)
    todo = (
        "a backfill is loading it now: start the daemon after it ends"
        if running
        else f"run `{FINISH_HINT}` (or finish the --once run) before starting the daemon"
    )
    raise UsageError(
        f"table {', '.join(tables)} is in backfill: {len(hit)} secondary index(es) dropped "
        f"(recorded in {records}, run {hit[0].run_id}); {todo}"
    )


async def _pending(conn: Connection, records: str, token: str = "") -> list[Index]:
    """The recorded indexes; none, with a warning, for a role that may not read them (a
    least-privilege daemon beside an owner's backfill: loading into a table whose indexes
    are dropped is slower, never wrong)."""
    try:
        return await indexes.pending(conn, records, token)
    except FileError as exc:
        if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
            raise
        log.warning("backfill_check_skipped", extra={"records": records, "error": str(exc)})
        return []


async def check_owners(conn: Connection, settings: Settings) -> list[Target]:
    """The existing targets; UsageError if this role may not act as the owner of one (run
    before the manifest is made too: a refused backfill changes nothing)."""
    targets = await contract_targets(conn, settings)
    foreign = [t for t in targets if not t.owner]
    if foreign:
        owners = ", ".join(f"{t.label} (owner {t.owned_by})" for t in foreign)
        raise UsageError(
            f"--backfill drops and rebuilds indexes, which only a table's owner may do: "
            f"{owners}; run it as that role (or a member of it), or without --backfill"
        )
    return targets


async def begin(conn: Connection, settings: Settings, run_id: str, token: str) -> list[Plan]:
    """Check the privilege on every target first, then record and drop, target by target."""
    targets = await check_owners(conn, settings)
    records = records_table(settings.manifest_schema)
    await indexes.ensure_records(conn, records)
    plans = []
    for target in targets:
        found = await indexes.drop_recorded(conn, records, target, run_id, token)
        plans.append(found)
        log.info(
            "backfill_indexes_dropped",
            extra={"table": target.label, "dropped": [ix.name for ix in found.drop],
                   "kept": [f"{name}: {why}" for name, why in found.keep]},
        )  # fmt: skip
    return plans


async def finish(
    db: Database,
    settings: Settings,
    *,
    jobs: int,
    token: str = "",
    analyze: Sequence[Target] = (),
    say: Callable[[str], None] | None = None,
) -> Outcome:
    """Rebuild every recorded index not held by a live backfill (`jobs` at once, each on its
    own connection), then ANALYZE their tables and `analyze`. Errors are kept in the
    Outcome: the records stay, and the next run or `ingestd backfill --finish` retries."""
    records = records_table(settings.manifest_schema)
    out = Outcome()
    async with db.connection() as conn:
        waiting = await _pending(conn, records, token)
    todo = [ix for ix in waiting if not ix.alive]
    out.running = [ix for ix in waiting if ix.alive]
    if todo:
        log.info("backfill_rebuild_started", extra={"indexes": len(todo), "jobs": jobs})
        if say is not None:
            say(f"backfill: rebuilding {len(todo)} index(es), {jobs} at a time")
    started = time.monotonic()
    gate = asyncio.Semaphore(max(1, jobs))

    async def one(ix: Index) -> None:
        async with gate:
            try:
                async with db.connection() as conn:
                    done = await indexes.rebuild(
                        conn, records, ix, settings.backfill_maintenance_work_mem_mb
                    )
            except (IngestdError, InternalError) as exc:  # the others go on; the record stays
                out.left.append(ix)
                out.errors.append(f"{ix.name}: {exc}")
                log.error(
                    "backfill_index_failed",
                    extra={"index": ix.name, "table": ix.target_label, "error": str(exc)},
                )
                return
            if done == "table_gone":
                out.gone.add(ix.target_label)
                return
            (out.existed if done == "existed" else out.built).append(ix.name)

    await asyncio.gather(*(one(ix) for ix in todo))
    tables = {t.label: t.qualified for t in analyze}
    tables.update(
        {ix.target_label: quote_qualified(ix.schema, ix.table) for ix in todo
         if ix.target_label not in out.gone}
    )  # fmt: skip
    await _analyze(db, tables, out)
    if todo or analyze:
        log.info(
            "backfill_finished",
            extra={"built": len(out.built), "existed": len(out.existed), "left": len(out.left),
                   "analyzed": out.analyzed, "seconds": round(time.monotonic() - started, 2)},
        )  # fmt: skip
    return out


async def _analyze(db: Database, tables: dict[str, str], out: Outcome) -> None:
    for label, qualified in sorted(tables.items()):
        try:
            async with db.connection() as conn:
                counts = await indexes.analyze(conn, qualified)
        except IngestdError as exc:
            log.warning("analyze_failed", extra={"table": label, "error": str(exc)})
            continue
        out.analyzed.append(label)
        dead = counts[0] if counts else None
        log.info("target_analyzed", extra={"table": label, "dead_tuples": dead})


async def describe(conn: Connection, settings: Settings) -> list[str]:
    """--dry-run --backfill: what a backfill would drop and keep, and what waits to be rebuilt."""
    lines = []
    for target in await contract_targets(conn, settings):
        found = await indexes.plan(conn, target)
        owner = "" if target.owner else f" (REFUSED: owned by {target.owned_by}, not this role)"
        lines.append(f"  backfill {target.label}{owner}:")
        lines += [f"    drop and rebuild {ix.name}: {ix.definition}" for ix in found.drop]
        lines += [f"    keep {name}: {why}" for name, why in found.keep]
    waiting = await indexes.pending(conn, records_table(settings.manifest_schema))
    lines += [
        f"  waiting from run {ix.run_id}: rebuild {ix.name} on {ix.target_label}" for ix in waiting
    ]
    return lines or ["  backfill: no existing target table (tables ingestd creates have no "
                     "secondary indexes)"]  # fmt: skip
