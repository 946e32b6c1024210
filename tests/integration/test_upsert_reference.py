"""Upsert and merge against a reference: a Python dict where the last occurrence of a key
wins, whatever the path a batch takes (the file's raw bytes, Arrow, binary Parquet), with
and without duplicate keys (inside one batch and across batches), with NULL keys, and the
unchanged file loaded again writes no tuple."""

from __future__ import annotations

import asyncio
import gzip
import io
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestd.db import sql
from ingestd.db.connection import Connection
from ingestd.db.merge import merge_batch
from ingestd.db.sql import Target
from ingestd.db.stage import create_stage, follow_target
from tests.helpers import log_events
from tests.pg import Db

Row = tuple[int | None, str, int]

# One batch holds 16 rows: a key seen twice lands in one batch or in two.
CHUNK = 16
PATHS = ["raw", "arrow", "parquet"]
VIAS = {"raw": {"copy"}, "arrow": {"arrow"}, "parquet": {"binary"}}


def _file_rows(seed: int, *, duplicates: bool, null_keys: bool) -> list[Row]:
    rng = random.Random(seed)
    # The hard cases first: an earlier occurrence equal to the row the table holds and a
    # later one not (the later must win), and the reverse, and three in one batch.
    hard: list[Row] = [(1, "held", 1), (1, "new", 2), (2, "new", 2), (2, "held", 2)]
    hard += [(3, "a", 1), (3, "b", 1), (3, "a", 1)]
    rows: list[Row] = hard if duplicates else []
    keys = range(10, 60) if duplicates else range(10, 210)
    picked = [rng.choice(keys) for _ in range(200)] if duplicates else list(keys)
    rng.shuffle(picked)
    for k in picked:
        rows.append((k, rng.choice(["x", "y", "z", "éà"]), rng.randrange(3)))
    if null_keys:
        for at in (0, 5, 40, 41, len(rows)):
            rows.insert(at, (None, f"null{at}", at))
    return rows


HELD: list[Row] = [(1, "held", 1), (2, "held", 2), (10, "x", 0), (11, "old", 9), (500, "k", 5)]


def _reference(held: list[Row], rows: list[Row]) -> list[Row]:
    """What the table must hold: the last occurrence of each key wins; a NULL key equals no
    other (PostgreSQL's rule for a unique key), so each such row is a row of its own."""
    by_key: dict[int, Row] = {r[0]: r for r in held if r[0] is not None}
    nulls = [r for r in held if r[0] is None]
    for r in rows:
        if r[0] is None:
            nulls.append(r)
        else:
            by_key[r[0]] = r
    return sorted([*by_key.values(), *nulls], key=_order)


def _order(r: Row) -> tuple[int, int, str, int]:
    return (r[0] is None, r[0] or 0, r[1], r[2])


def _write(path_kind: str, folder: Path, rows: list[Row]) -> Path:
    if path_kind == "parquet":
        path = folder / "f.parquet"
        table = pa.table(
            {
                "k": pa.array([r[0] for r in rows], pa.int64()),
                "v": pa.array([r[1] for r in rows], pa.string()),
                "n": pa.array([r[2] for r in rows], pa.int32()),
            }
        )
        pq.write_table(table, path)
        return path
    text = "k,v,n\n" + "".join(f"{'' if k is None else k},{v},{n}\n" for k, v, n in rows)
    if path_kind == "arrow":  # a compressed file is read through Arrow, never as raw bytes
        path = folder / "f.csv.gz"
        path.write_bytes(gzip.compress(text.encode()))
        return path
    path = folder / "f.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _table_rows(db: Db, table: str) -> list[Row]:
    got = db.fetch(f"SELECT k, v, n FROM {table}")
    return sorted(((r["k"], r["v"], r["n"]) for r in got), key=_order)


def _settled(db: Db) -> None:
    """Wait until every ingestd session has ended: a backend reports its table counters
    when it exits, so only then do n_tup_ins and n_tup_upd hold the load."""
    for _ in range(100):
        if not db.val(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ingestd%'"
        ):
            return
        time.sleep(0.05)
    raise AssertionError("ingestd sessions still open after the run")


def _tuples(db: Db, table: str) -> tuple[int, int]:
    _settled(db)
    row = db.fetch(
        "SELECT pg_stat_get_tuples_inserted(c.oid) AS i, pg_stat_get_tuples_updated(c.oid) AS u "
        "FROM pg_class c WHERE c.oid = $1::regclass",
        table,
    )[0]
    return int(row["i"]), int(row["u"])


def _load(cli: Any, path: Path, table: str, mode: str, *extra: Any, concurrency: int = 1) -> Any:
    return cli("--once", "--files", path, "--table", table, "--pk", "k", "--mode", mode,
               "--concurrency", concurrency, "--chunk-size", CHUNK, "--keep-files",
               "--no-resume", *extra)  # fmt: skip


# concurrency 2: an idle worker joins the file's load (relay.Relay), the two connections
# taking its batches in turns; the rows must be what one connection writes.
@pytest.mark.parametrize("concurrency", [1, 2])
@pytest.mark.parametrize("path_kind", PATHS)
@pytest.mark.parametrize("mode", ["upsert", "merge"])
@pytest.mark.parametrize("shape", ["unique", "duplicates", "duplicates_and_null_keys"])
def test_final_rows_are_the_last_occurrence_of_each_key(
    cli: Any, db: Db, tmp_path: Path, path_kind: str, mode: str, shape: str, concurrency: int
) -> None:
    null_keys = shape == "duplicates_and_null_keys"
    rows = _file_rows(len(shape) * 7 + len(path_kind), duplicates=shape != "unique",
                      null_keys=null_keys)  # fmt: skip
    key = "k bigint UNIQUE" if null_keys else "k bigint PRIMARY KEY"
    db.execute(f"CREATE TABLE t ({key}, v text NOT NULL, n integer NOT NULL)")
    held = [*HELD, (None, "held null", 0)] if null_keys else HELD
    for r in held:
        db.execute("INSERT INTO t VALUES ($1, $2, $3)", *r)
    path = _write(path_kind, tmp_path, rows)

    first = _load(cli, path, "t", mode, concurrency=concurrency)
    assert first.code == 0, first.err
    batches = log_events(first.err, "batch_committed")
    assert {e["via"] for e in batches} == VIAS[path_kind]
    committed = [e["rows_committed"] for e in batches]  # in file order, each row once
    assert committed == sorted(set(committed)) and committed[-1] == len(rows)
    if concurrency > 1:  # both connections wrote batches, in file order
        assert log_events(first.err, "relay_joined")
        assert len({e["worker_id"] for e in batches}) == 2
    expected = _reference(held, rows)
    assert _table_rows(db, "t") == expected

    # The unchanged file again: every row compares equal, none is rewritten; a NULL key
    # matches nothing, so those rows are added again (and only those). A key the file
    # holds twice in different batches is written by its earlier batch and then by its
    # last one again (each batch commits on its own): only keys seen once stay untouched.
    once = [k for k, c in Counter(r[0] for r in rows).items() if c == 1 and k is not None]
    versions = "SELECT k, xmin::text AS x, ctid::text AS c FROM t WHERE k = ANY ($1) ORDER BY k"
    kept = db.fetch(versions, once)
    before = _tuples(db, "t")
    again = _load(cli, path, "t", mode, concurrency=concurrency)
    assert again.code == 0, again.err
    inserted, updated = (a - b for a, b in zip(_tuples(db, "t"), before, strict=True))
    if shape == "unique":
        assert updated == 0
    assert inserted == sum(1 for r in rows if r[0] is None)
    assert db.fetch(versions, once) == kept
    assert _table_rows(db, "t") == _reference(expected, [r for r in rows if r[0] is None])


@pytest.mark.parametrize("path_kind", PATHS)
def test_a_key_only_target_keeps_one_row_per_key(
    cli: Any, db: Db, tmp_path: Path, path_kind: str
) -> None:
    # Every column is the key: the upsert is ON CONFLICT DO NOTHING, where a duplicate in
    # the batch would be skipped silently; the rows must still be the distinct keys.
    rng = random.Random(3)
    keys = [rng.randrange(40) for _ in range(120)]
    db.execute("CREATE TABLE keys (k bigint PRIMARY KEY)")
    db.execute("INSERT INTO keys VALUES (5), (1000)")
    if path_kind == "parquet":
        path = tmp_path / "k.parquet"
        pq.write_table(pa.table({"k": pa.array(keys, pa.int64())}), path)
    else:
        text = "k\n" + "".join(f"{k}\n" for k in keys)
        path = tmp_path / ("k.csv.gz" if path_kind == "arrow" else "k.csv")
        path.write_bytes(gzip.compress(text.encode()) if path_kind == "arrow" else text.encode())
    result = _load(cli, path, "keys", "upsert")
    assert result.code == 0, result.err
    got = [r["k"] for r in db.fetch("SELECT k FROM keys ORDER BY k")]
    assert got == sorted({*keys, 5, 1000})
    before = _tuples(db, "keys")
    assert _load(cli, path, "keys", "upsert").code == 0
    assert _tuples(db, "keys") == before


async def _stage(raw: asyncpg.Connection, stage: str, text: bytes) -> None:
    # As a raw piece goes: CSV, the row ordinal from the stage's sequence.
    await raw.copy_to_table(stage, source=io.BytesIO(text), columns=["k", "v"], format="csv")


# Each its own table: a layout's stage remembers duplicates for the whole process.
KEY_INDEXES = [
    ("u_int_pk", "k bigint PRIMARY KEY", "", True),
    ("u_text_pk", "k text PRIMARY KEY", "", True),
    ("u_pattern", "k text", "CREATE UNIQUE INDEX ON {t} (k text_pattern_ops)", False),
    ("u_posix", "k text", 'CREATE UNIQUE INDEX ON {t} (k COLLATE "POSIX")', False),
    ("u_pk_posix", "k text PRIMARY KEY", 'CREATE UNIQUE INDEX ON {t} (k COLLATE "POSIX")', False),
]


@pytest.mark.parametrize(("name", "column", "index", "plain"), KEY_INDEXES)
def test_the_upsert_goes_without_distinct_on_only_where_it_is_exact(
    dsn: str, name: str, column: str, index: str, plain: bool
) -> None:
    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            conn = Connection(raw)
            await raw.execute(f"CREATE TABLE {name} ({column}, v text)")
            if index:
                await raw.execute(index.format(t=name))
            await raw.execute(f"INSERT INTO {name} VALUES ('1', 'held'), ('2', 'held')")
            target = Target(None, name, ("k", "v"), ("k",))
            stage = sql.stage_name(target)

            async def batch(text: bytes) -> tuple[int, set[bool]]:
                """Stage and upsert one batch: (rows written, {written in a savepoint})."""
                async with conn.atomic():
                    if not await raw.fetchval("SELECT to_regclass($1) IS NOT NULL", stage):
                        await create_stage(conn, target, stage)
                    followed = await follow_target(conn, target, stage)
                    assert followed.plain_key is plain
                    assert sql.optimistic_upsert(followed) is plain
                    assert not sql.optimistic_upsert(replace(followed, citus=True))
                    await _stage(raw, stage, text)
                    written = await merge_batch(conn, followed, stage, "upsert")
                    # Subtransactions' xids come after their transaction's own.
                    row = await raw.fetchrow(
                        "SELECT count(*) FILTER (WHERE xmin::text::bigint = top) AS own, "
                        "count(*) FILTER (WHERE xmin::text::bigint > top) AS sub "
                        f"FROM {name}, (SELECT pg_current_xact_id()::text::bigint AS top) AS x"
                    )
                assert row is not None
                return written, {row["sub"] > 0 and row["own"] == 0}

            async def table() -> list[tuple[str, str]]:
                got = await raw.fetch(f"SELECT k::text, v FROM {name} ORDER BY k")
                return [(r[0], r[1]) for r in got]

            # Each key once: tried without DISTINCT ON (rows written by a subtransaction,
            # not by the batch's own xid) only where that is exact.
            assert await batch(b"3,a\n4,c\n") == (2, {plain})
            assert await table() == [("1", "held"), ("2", "held"), ("3", "a"), ("4", "c")]
            # Key 1: held, then changed (the change is last); key 2: changed, then held
            # again (held is last): only the last occurrence may win.
            written, _ = await batch(b"1,held\n2,new\n1,new\n3,b\n2,held\n")
            assert written == 2
            assert await table() == [("1", "new"), ("2", "held"), ("3", "b"), ("4", "c")]
            # A key met twice: the next batches of that layout dedupe straight away.
            assert await batch(b"5,e\n") == (1, {False})
            assert await table() == [
                ("1", "new"), ("2", "held"), ("3", "b"), ("4", "c"), ("5", "e")
            ]  # fmt: skip
        finally:
            await raw.close()

    asyncio.run(scenario())


def test_an_earlier_occurrence_the_dedupe_drops_never_refuses_the_batch(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    # Key 7's first row breaks the CHECK, its last does not: DISTINCT ON drops the first,
    # so the file loads, as it did before the upsert went without DISTINCT ON first.
    db.execute("CREATE TABLE c (k bigint PRIMARY KEY, v text, n integer CHECK (n >= 0))")
    path = tmp_path / "c.csv"
    path.write_text("k,v,n\n1,a,1\n7,bad,-1\n7,good,2\n8,b,3\n")
    result = _load(cli, path, "c", "upsert")
    assert result.code == 0, result.err
    assert db.fetch("SELECT k, v, n FROM c ORDER BY k") == [
        {"k": 1, "v": "a", "n": 1}, {"k": 7, "v": "good", "n": 2}, {"k": 8, "v": "b", "n": 3}
    ]  # fmt: skip
    # Where the last occurrence is at fault the batch is refused with its row, as before.
    bad = tmp_path / "bad.csv"
    bad.write_text("k,v,n\n9,good,2\n9,bad,-1\n")
    refused = _load(cli, bad, "c", "upsert")
    assert refused.code != 0
    assert "check constraint" in refused.err and "Traceback" not in refused.err


def test_a_target_with_a_row_trigger_sees_only_the_rows_distinct_on_keeps(
    dsn: str, db: Db, cli: Any, tmp_path: Path
) -> None:
    # A BEFORE INSERT trigger sees every row proposed to ON CONFLICT: an earlier, dropped
    # occurrence must never reach it (here: an audit table of what was proposed).
    db.execute("CREATE TABLE a (k bigint PRIMARY KEY, v text)")
    db.execute("CREATE TABLE audit (k bigint, v text)")
    db.execute(
        "CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO audit VALUES (NEW.k, NEW.v); RETURN NEW; END$$"
    )
    db.execute("CREATE TRIGGER note BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION note()")
    db.execute("INSERT INTO a VALUES (1, 'held')")
    db.execute("TRUNCATE audit")

    # A trigger on one partition only counts as well.
    db.execute("CREATE TABLE p (k bigint PRIMARY KEY, v text) PARTITION BY RANGE (k)")
    db.execute("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10)")
    db.execute("CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20)")

    async def read(table: str) -> Target:
        raw = await asyncpg.connect(dsn)
        try:
            conn = Connection(raw)
            target = Target(None, table, ("k", "v"), ("k",))
            async with conn.atomic():
                await create_stage(conn, target, "probe")
                return await follow_target(conn, target, "probe")
        finally:
            await raw.close()

    followed = asyncio.run(read("a"))
    assert followed.row_triggers and followed.plain_key, followed
    assert not sql.optimistic_upsert(followed)
    assert sql.optimistic_upsert(asyncio.run(read("p")))
    db.execute("CREATE TRIGGER note BEFORE INSERT ON p2 FOR EACH ROW EXECUTE FUNCTION note()")
    assert asyncio.run(read("p")).row_triggers
    path = tmp_path / "a.csv"
    path.write_text("k,v\n1,held\n1,new\n2,x\n")
    result = _load(cli, path, "a", "upsert")
    assert result.code == 0, result.err
    assert db.fetch("SELECT k, v FROM a ORDER BY k") == [{"k": 1, "v": "new"}, {"k": 2, "v": "x"}]
    assert db.fetch("SELECT k, v FROM audit ORDER BY k") == [
        {"k": 1, "v": "new"}, {"k": 2, "v": "x"}
    ]  # fmt: skip


def test_a_small_batch_dedupes_without_a_savepoint(dsn: str) -> None:
    """A batch of a few rows goes straight to DISTINCT ON (the try's savepoint would cost
    more than it saves); a large or uncounted one is tried without it."""

    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            conn = Connection(raw)
            await raw.execute("CREATE TABLE u_small (k bigint PRIMARY KEY, v text)")
            target = Target(None, "u_small", ("k", "v"), ("k",))
            stage = sql.stage_name(target)

            async def in_savepoint(rows: int | None, first: int) -> bool:
                async with conn.atomic():
                    if not await raw.fetchval("SELECT to_regclass($1) IS NOT NULL", stage):
                        await create_stage(conn, target, stage)
                    followed = await follow_target(conn, target, stage)
                    await _stage(raw, stage, f"{first},a\n{first + 1},b\n".encode())
                    assert await merge_batch(conn, followed, stage, "upsert", rows) == 2
                    sub = await raw.fetchval(
                        "SELECT count(*) FROM u_small WHERE k >= $1 AND "
                        "xmin::text::bigint > pg_current_xact_id()::text::bigint",
                        first,
                    )
                return bool(sub)

            assert await in_savepoint(2, 1) is False
            assert await in_savepoint(None, 10) is True
            assert await in_savepoint(50_000, 20) is True
        finally:
            await raw.close()

    asyncio.run(scenario())
