"""Apply a batch to the target: COPY straight in (append), or stage then upsert or MERGE."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.sql import Target
from ingestd.db.stage import CopyFormat, copy_batch, copy_into_target, follow_target
from ingestd.exceptions import FileError
from ingestd.settings import Mode

# Awaited by a staged batch before it merges: the batch before it has committed (relay.py).
Turn = Callable[[], Awaitable[None]]

MERGE_MIN_VERSION = 150000
CARDINALITY_VIOLATION = "21000"  # ON CONFLICT DO UPDATE met one key twice


async def apply_batch(
    conn: Connection,
    target: Target,
    stage: str | None,
    mode: Mode,
    payload: memoryview,
    fmt: CopyFormat,
    turn: Turn | None = None,
) -> tuple[int, int]:
    """Write one payload to the target (inside the caller's transaction): (rows read from
    the payload, target rows written). A staged batch awaits `turn` between its COPY and
    its merge (relay.Relay: the batch before it must have committed)."""
    if mode == "append":
        rows = await copy_into_target(conn, target, payload, fmt)
        return rows, rows
    assert stage is not None  # noqa: S101 - upsert and merge always have a stage
    # Before every batch: a target altered since the last one gets a new stage, and the
    # merge statement is written for its types and keys as they are now.
    target = await follow_target(conn, target, stage)
    rows = await copy_batch(conn, target, stage, payload, fmt)
    if turn is not None:
        await turn()
    return rows, await merge_batch(conn, target, stage, mode, rows)


async def merge_batch(
    conn: Connection, target: Target, stage: str, mode: Mode, rows: int | None = None
) -> int:
    """Apply the `rows` staged rows (None: not counted) to the target (upsert or MERGE);
    returns the rows written."""
    small = rows is not None and rows < _TRY_FROM_ROWS
    plain = mode == "upsert" and not small and sql.optimistic_upsert(target)
    if (
        plain
        and stage in _MOSTLY_UNCHANGED
        and await conn.fetchval(sql.UNCHANGED_SKIPPABLE, target.qualified)
    ):
        # The last batch of this layout wrote little (a file loaded again, a full export
        # with a few changes): rows equal to the target's skip ON CONFLICT's row lock.
        written = await _written(conn, sql.upsert(target, stage, skip_unchanged=True))
        _note_written(stage, rows, written)
        return written
    if plain and _worth_trying(stage):
        # Most batches hold each key once: try without DISTINCT ON (its step costs ~4% of
        # the upsert's server CPU), in a savepoint; a key met twice makes PostgreSQL
        # refuse the statement, and the batch then goes deduplicated (last one wins).
        try:
            async with conn.atomic():
                written = await _written(conn, sql.upsert(target, stage, dedupe=False))
            _DUPLICATES_SEEN.pop(stage, None)
            _note_written(stage, rows, written)
            return written
        except FileError as exc:
            # Refused for another reason (a CHECK, NOT NULL...), the deduplicated statement
            # below decides: the row at fault may be an earlier occurrence it drops, and
            # the message is then that statement's own, as before.
            if exc.sqlstate == CARDINALITY_VIOLATION:
                _DUPLICATES_SEEN[stage] = _TRY_AGAIN_AFTER
    if mode == "upsert" or target.citus:  # Citus takes no MERGE from a temp table
        statement = sql.upsert(target, stage)
    else:
        statement = sql.merge(target, stage)
    written = await _written(conn, statement)
    if plain:
        _note_written(stage, rows, written)
    return written


# Layouts (stage names) whose last try met a key twice, and how many batches they skip the
# try for: a file with duplicates in every batch would pay for a refused statement each
# time (up to the whole upsert) to save 4%.
_DUPLICATES_SEEN: dict[str, int] = {}
_TRY_AGAIN_AFTER = 16
# Below this many rows DISTINCT ON costs less than the savepoint's two round trips and
# subtransaction (~0.5 us a row against ~0.3 ms): a small file's one batch just dedupes.
_TRY_FROM_ROWS = 5_000


# Layouts whose last batch wrote at most 1/_UNCHANGED_FROM of its rows: their next batch
# drops rows equal to the target's before ON CONFLICT. The probe costs a batch of new or
# changed rows ~25% more and saves an unchanged one's lock (~35% of its upsert): it pays
# from ~60% unchanged rows (one 50,000-row batch, statement CPU, interleaved repeats).
_MOSTLY_UNCHANGED: set[str] = set()
_UNCHANGED_FROM = 4


def _note_written(stage: str, rows: int | None, written: int) -> None:
    if rows is None:
        return
    if written * _UNCHANGED_FROM <= rows:
        _MOSTLY_UNCHANGED.add(stage)
    else:
        _MOSTLY_UNCHANGED.discard(stage)


def _worth_trying(stage: str) -> bool:
    left = _DUPLICATES_SEEN.get(stage, 0)
    if left <= 0:
        return True
    if left == 1:
        del _DUPLICATES_SEEN[stage]
    else:
        _DUPLICATES_SEEN[stage] = left - 1
    return False


async def _written(conn: Connection, statement: str) -> int:
    status = await conn.execute(statement)
    return int(status.rsplit(" ", 1)[-1])


async def reads_committed(conn: Connection) -> bool:
    """Whether this session's transactions see what others committed before each statement
    (read committed); relay.Relay merges a batch staged before the one ahead committed."""
    return bool(await conn.fetchval(sql.READS_COMMITTED))


async def keep_alive(conn: Connection) -> None:
    """One trivial statement in the open transaction: it is not idle for the server's
    idle_in_transaction_session_timeout while it waits (relay.Relay)."""
    await conn.execute(sql.KEEP_ALIVE)


def check_mode_supported(mode: Mode, server_version: int) -> None:
    """MERGE arrived in PostgreSQL 15; say so plainly on older servers."""
    if mode == "merge" and server_version < MERGE_MIN_VERSION:
        major = server_version // 10000
        raise FileError(
            f"--mode merge needs PostgreSQL 15 or newer and this server is {major}: "
            "use --mode upsert (same result when the key has a unique index)"
        )
