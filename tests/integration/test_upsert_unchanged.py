"""A batch after one that wrote little drops rows equal to the target's before ON CONFLICT
(no row lock, no WAL for them): the final rows stay the last occurrence of each key, the
rows written are the changed ones, and a target where an old row could still refuse an
equal one (NOT VALID constraint, row security) keeps the plain statement. An unchanged
file loaded again is not ANALYZEd (upkeep counts rows written, not read)."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ingestd.db import merge, sql
from ingestd.db.connection import Connection
from ingestd.db.merge import merge_batch
from ingestd.db.sql import Target
from ingestd.db.stage import create_stage, follow_target
from ingestd.exceptions import FileError
from tests.helpers import log_events
from tests.pg import Db

Row = tuple[int | None, str]


@pytest.fixture(autouse=True)
def _every_batch_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests' batches are a few rows: let them take the path big batches take.
    monkeypatch.setattr(merge, "_TRY_FROM_ROWS", 1)
    monkeypatch.setattr(merge, "_MOSTLY_UNCHANGED", set())
    monkeypatch.setattr(merge, "_DUPLICATES_SEEN", {})


def _csv(rows: list[Row]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(("" if k is None else k, v) for k, v in rows)
    return out.getvalue().encode()


class Batches:
    """Stage and upsert batches of (k, v) rows into `table` on one connection."""

    def __init__(self, raw: asyncpg.Connection, table: str):
        self.raw, self.conn = raw, Connection(raw)
        self.target = Target(None, table, ("k", "v"), ("k",))
        self.stage = sql.stage_name(self.target)
        self.table = table

    async def run(self, rows: list[Row]) -> tuple[int, int, Target]:
        """One batch: (rows written, the batch's xid, the target as followed)."""
        async with self.conn.atomic():
            if not await self.raw.fetchval("SELECT to_regclass($1) IS NOT NULL", self.stage):
                await create_stage(self.conn, self.target, self.stage)
            followed = await follow_target(self.conn, self.target, self.stage)
            await self.raw.copy_to_table(
                self.stage, source=io.BytesIO(_csv(rows)), columns=["k", "v"], format="csv"
            )
            written = await merge_batch(self.conn, followed, self.stage, "upsert", len(rows))
            xid = int(await self.raw.fetchval("SELECT pg_current_xact_id()::text::bigint"))
        return written, xid, followed

    async def skippable(self) -> bool:
        """Whether the target lets an unchanged row skip ON CONFLICT."""
        return bool(await self.raw.fetchval(sql.UNCHANGED_SKIPPABLE, self.target.qualified))

    async def rows(self) -> dict[int, tuple[str, int]]:
        """k -> (v, the xid that locked or wrote the row last: xmax if set, else xmin) of
        the rows with a key.
        A subtransaction's xid comes after its transaction's, before the next one's."""
        got = await self.raw.fetch(
            f"SELECT k, v, CASE WHEN xmax::text = '0' THEN xmin ELSE xmax END::text AS x "
            f"FROM {self.table} WHERE k IS NOT NULL"
        )
        return {int(r["k"]): (r["v"], int(r["x"])) for r in got}


def test_a_batch_after_one_that_wrote_little_skips_only_the_unchanged_rows(dsn: str) -> None:
    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            await raw.execute("CREATE TABLE un (k bigint PRIMARY KEY, v text)")
            held = [(k, f"held{k}") for k in range(1, 21)]
            await raw.executemany("INSERT INTO un VALUES ($1, $2)", held)
            b = Batches(raw, "un")
            # The file again: nothing written; ON CONFLICT locked every row.
            written, first, _ = await b.run(held)
            assert written == 0 and await b.skippable()
            assert all(x >= first for _, x in (await b.rows()).values())
            # Key 3: changed, then as held (the last, equal, wins: nothing to write);
            # key 4: as held, then changed; key 2 changed, key 100 new, the rest as held.
            rows = [*held[:2], (2, "new2"), (3, "chg3"), (4, "held4"), (3, "held3")]
            rows += [(4, "new4"), (100, "new100"), *held[4:]]
            written, second, _ = await b.run(rows)
            assert written == 3
            reference = dict(held) | {2: "new2", 4: "new4", 100: "new100"}
            now = await b.rows()
            assert {k: v for k, (v, _) in now.items()} == reference
            # Written by the second batch (its xid or a subtransaction's, all later than
            # the first's): only the changed and the new keys; the rest were not even
            # locked (still the first batch's).
            assert {k for k, (_, x) in now.items() if x >= second} == {2, 4, 100}
            # A batch that writes most of its rows: the next one goes as before (locks).
            fresh = [(k, f"f{k}") for k in range(200, 210)]
            assert (await b.run(fresh))[0] == 10
            written, fourth, _ = await b.run([(1, "held1"), (2, "new2")])
            assert written == 0
            now = await b.rows()
            assert now[1][1] >= fourth and now[2][1] >= fourth
        finally:
            await raw.close()

    asyncio.run(scenario())


TARGETS = [
    ("NOT VALID check", "ALTER TABLE {t} ADD CONSTRAINT positive CHECK (k > 0) NOT VALID"),
    ("row security", "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"),
]


@pytest.mark.parametrize(("why", "ddl"), TARGETS, ids=[t[0] for t in TARGETS])
def test_a_target_where_an_old_row_can_refuse_keeps_the_plain_statement(
    dsn: str, why: str, ddl: str
) -> None:
    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            await raw.execute("CREATE TABLE old (k bigint PRIMARY KEY, v text)")
            await raw.execute("INSERT INTO old VALUES (-1, 'old'), (1, 'a'), (2, 'b')")
            await raw.execute(ddl.format(t="old"))
            b = Batches(raw, "old")
            assert (await b.run([(1, "a"), (2, "b")]))[0] == 0
            assert not await b.skippable(), why
            if "check" in why:
                # The row the table holds breaks the constraint added since: ON CONFLICT
                # checks the proposed row first and refuses it, as it always did.
                with pytest.raises(FileError, match="positive"):
                    await b.run([(-1, "old"), (1, "a")])
        finally:
            await raw.close()

    asyncio.run(scenario())


def test_a_partition_with_a_not_valid_check_keeps_the_plain_statement(dsn: str) -> None:
    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            await raw.execute(
                "CREATE TABLE parted (k bigint PRIMARY KEY, v text) PARTITION BY RANGE (k)"
            )
            await raw.execute(
                "CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM (0) TO (100)"
            )
            await raw.execute(
                "CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM (100) TO (200)"
            )
            b = Batches(raw, "parted")
            assert await b.skippable()
            await raw.execute(
                "ALTER TABLE parted_b ADD CONSTRAINT short CHECK (v <> 'x') NOT VALID"
            )
            assert not await b.skippable()
        finally:
            await raw.close()

    asyncio.run(scenario())


def test_an_unchanged_file_loaded_again_writes_nothing_and_is_not_analyzed(
    db: Db, cli: Any, tmp_path: Path
) -> None:
    path = tmp_path / "f.csv"
    path.write_text("k,v\n" + "".join(f"{k},v{k}\n" for k in range(3000)))
    db.execute("CREATE TABLE again (k bigint PRIMARY KEY, v text)")
    args = ("--once", "--files", path, "--table", "again", "--pk", "k", "--mode", "upsert",
            "--concurrency", "1", "--chunk-size", 500, "--keep-files",
            "--analyze-after-rows", 2000, "--log-level", "INFO")  # fmt: skip
    first = cli(*args)
    assert first.code == 0, first.err
    assert len(log_events(first.err, "target_analyzed")) == 1
    xmin = db.val("SELECT array_agg(xmin::text ORDER BY k) FROM again")
    again = cli(*args, "--no-resume")
    assert again.code == 0, again.err
    written = [e["rows_written"] for e in log_events(again.err, "batch_committed")]
    assert len(written) > 1 and set(written) == {0}
    assert log_events(again.err, "target_analyzed") == []
    assert db.val("SELECT array_agg(xmin::text ORDER BY k) FROM again") == xmin
    assert db.val("SELECT count(*) FROM again") == 3000


def test_null_keys_and_values_without_equality_under_the_skip(dsn: str) -> None:
    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            # A nullable UNIQUE key (a NULL equals no other NULL) and json, which has no =.
            await raw.execute("CREATE TABLE nj (k bigint UNIQUE, v json)")
            held = [(k, f'{{"a": {k}}}') for k in range(1, 9)]
            await raw.executemany("INSERT INTO nj VALUES ($1, $2::json)", held)
            b = Batches(raw, "nj")
            rows = [*held, (None, '{"a": 1}')]
            assert (await b.run(rows))[0] == 1  # the NULL-key row is a new row each time
            written, second, followed = await b.run([*rows, (2, '{"a":  2}')])
            assert await b.skippable() and "v" in followed.as_text
            # json compared by its text: '{"a":  2}' is a change, the rest is not.
            assert written == 2
            now = await b.rows()
            assert {k for k, (_, x) in now.items() if x >= second} == {2}
            assert await raw.fetchval("SELECT v::text FROM nj WHERE k = 2") == '{"a":  2}'
            assert await raw.fetchval("SELECT count(*) FROM nj WHERE k IS NULL") == 2
        finally:
            await raw.close()

    asyncio.run(scenario())
