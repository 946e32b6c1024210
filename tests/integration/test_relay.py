"""relay.Relay: a staged file's batches taken in turns by two connections (an idle worker
stages batch k+1 while the owner merges batch k). Whatever the file holds (keys repeated
across batches, bad values, allowed or not), the table, the manifest, the rejects and the
exit code must be what one connection alone makes of it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.db import merge
from ingestd.db.connection import Connection, session_settings
from ingestd.exceptions import FileError
from ingestd.load import BatchLoader, Piece, Tally
from ingestd.relay import Relay
from ingestd.service import Service
from ingestd.settings import Contract, Settings
from tests.helpers import log_events
from tests.pg import Db

CHUNK = 8
SETTINGS = settings(
    max_examples=int(os.environ.get("INGESTD_PROPERTY_EXAMPLES", "40")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Keys from a small range: most repeat, within a batch and across batches. A value that is
# not an integer is a bad row (COPY refuses it; the Arrow redo names its row and column).
rows_strategy = st.lists(
    st.tuples(st.integers(0, 30), st.sampled_from(["a", "b", "é", ""]), st.integers(0, 9)),
    min_size=CHUNK * 3,
    max_size=CHUNK * 12,
)


def _text(rows: list[tuple[int, str, int]], bad: set[int]) -> str:
    lines = [f"{k},{v},{'x' if i in bad else n}" for i, (k, v, n) in enumerate(rows)]
    return "k,v,n\n" + "\n".join(lines) + "\n"


def _outcome(cli: Any, db: Db, path: Path, mode: str, budget: int, concurrency: int) -> Any:
    for table in ("t", "ingestion_manifest", "ingestion_rejects"):
        db.execute(f"DROP TABLE IF EXISTS {table}")
    db.execute("CREATE TABLE t (k bigint PRIMARY KEY, v text, n integer)")
    db.execute("INSERT INTO t VALUES (1, 'held', 1), (2, 'held', 2), (99, 'held', 9)")
    result = cli("--once", "--files", path, "--table", "t", "--pk", "k", "--mode", mode,
                 "--concurrency", concurrency, "--chunk-size", CHUNK, "--keep-files",
                 "--max-bad-rows", budget)  # fmt: skip
    [m] = db.manifest()
    rejects = db.fetch("SELECT row_number, reason FROM ingestion_rejects ORDER BY row_number")
    return (
        result.code,
        [tuple(r) for r in db.fetch("SELECT k, v, n FROM t ORDER BY k")],
        (m["status"], m["rows"], m["notes"]),
        [tuple(r) for r in rejects],
        result,
    )


@SETTINGS
@given(
    rows=rows_strategy,
    data=st.data(),
    mode=st.sampled_from(["upsert", "merge"]),
    budget=st.sampled_from([0, 3]),
)
def test_two_connections_in_turns_write_what_one_writes(
    cli: Any,
    db: Db,
    tmp_path: Path,
    rows: list[tuple[int, str, int]],
    data: st.DataObject,
    mode: str,
    budget: int,
) -> None:
    bad = set(data.draw(st.lists(st.integers(0, len(rows) - 1), max_size=4), label="bad"))
    # An inch mark in an unquoted field sends the rest of the file through Arrow from its
    # batch on (NotRaw: the relay ends; the load goes on after the rows committed).
    inch = data.draw(st.none() | st.integers(0, len(rows) - 1), label="inch")
    if inch is not None:
        rows = [*rows[:inch], (rows[inch][0], '5" screen', rows[inch][2]), *rows[inch + 1 :]]
    path = tmp_path / "f.csv"
    path.write_text(_text(rows, bad), encoding="utf-8")
    *alone, _ = _outcome(cli, db, path, mode, budget, 1)
    *relayed, result = _outcome(cli, db, path, mode, budget, 2)
    assert relayed == alone
    committed = [e["rows_committed"] for e in log_events(result.err, "batch_committed")]
    assert committed == sorted(set(committed))  # in file order, each batch once
    if not bad and len(rows) > 2 * CHUNK:
        assert log_events(result.err, "relay_joined")
    if inch is not None and (not bad or min(bad) > inch):
        assert log_events(result.err, "raw_csv_fallback")
    if bad and budget == 0:
        assert alone[0] == 1 and alone[2][0] == "failed"
        assert "column n" in alone[2][2]  # the true reason, naming the column


# --- a stop, a cancellation and DDL while two connections take turns -----------------------

ROWS = 400
KEYS = 150  # every key repeats across batches: a batch merged out of turn would show


def _upsert_file(folder: Path) -> Path:
    path = folder / "inbox" / "up.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("k,v\n" + "".join(f"{i % KEYS},{i}\n" for i in range(ROWS)), encoding="utf-8")
    return path


def _last_occurrences() -> list[tuple[int, int]]:
    return [(k, max(range(k, ROWS, KEYS))) for k in range(KEYS)]


def _service(dsn: str, inbox: Path, **extra: Any) -> Service:
    contract = Contract(name="t", pattern="*.csv", table="t", mode="upsert", pk=("k",))
    settings = Settings(
        contracts=(contract,), inbox=inbox, dsn=dsn, metrics_addr=None, settle_s=0.05,
        once=True, chunk_size=10, concurrency=2, raw_csv=False, **extra,
    )  # fmt: skip
    return Service(settings)


def _slow_checkpoints(
    monkeypatch: pytest.MonkeyPatch, delay_s: float, reached: asyncio.Event, after: int
) -> list[str]:
    """Each batch's checkpoint waits delay_s; `reached` is set once `after` batches began
    one. Returns the worker ids of the batches that checkpointed."""
    checkpoint = BatchLoader._checkpoint
    workers: list[str] = []

    async def slow(self: BatchLoader, piece: Piece, tally: Tally, rows: int) -> bool:
        workers.append(self.worker_id)
        if len(workers) >= after:
            reached.set()
        await asyncio.sleep(delay_s)
        return await checkpoint(self, piece, tally, rows)

    monkeypatch.setattr(BatchLoader, "_checkpoint", slow)
    return workers


async def _started(
    dsn: str,
    db: Db,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    delay_s: float,
    after: int,
    **extra: Any,
) -> tuple[Path, list[str], Service, asyncio.Task[Any]]:
    """A relayed upsert of _upsert_file under way: `after` batches have begun a checkpoint
    that takes delay_s. Returns the file, the workers that checkpointed, the service, its run."""
    await asyncio.to_thread(db.execute, "CREATE TABLE t (k bigint PRIMARY KEY, v bigint)")
    path = _upsert_file(tmp_path)
    reached = asyncio.Event()
    workers = _slow_checkpoints(monkeypatch, delay_s, reached, after)
    service = _service(dsn, path.parent, **extra)
    run = asyncio.create_task(service.run())
    await asyncio.wait_for(reached.wait(), 60)
    return path, workers, service, run


async def test_a_stop_mid_relay_commits_in_order_and_the_rest_resumes(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, workers, service, run = await _started(
        dsn, db, tmp_path, monkeypatch, 0.05, 6, shutdown_grace_s=30.0
    )
    service.request_stop()
    report = await asyncio.wait_for(run, 60)
    assert [f.status for f in report.files] == ["interrupted"]
    assert report.exit_code == 1
    assert len(set(workers)) == 2  # both connections took batches
    [m] = await asyncio.to_thread(db.manifest)
    assert m["status"] == "pending" and 0 < m["rows"] < ROWS and m["rows"] % 10 == 0
    # What committed is the file's first m["rows"] rows, merged in file order.
    first = {i % KEYS: i for i in range(m["rows"])}
    got = await asyncio.to_thread(db.fetch, "SELECT k, v FROM t ORDER BY k")
    assert {r["k"]: r["v"] for r in got} == first

    monkeypatch.undo()
    report = await asyncio.wait_for(_service(dsn, path.parent).run(), 60)
    assert [f.status for f in report.files] == ["success"] and report.exit_code == 0
    [m] = await asyncio.to_thread(db.manifest)
    assert (m["status"], m["rows"]) == ("success", ROWS)
    got = await asyncio.to_thread(db.fetch, "SELECT k, v FROM t ORDER BY k")
    assert [(r["k"], r["v"]) for r in got] == _last_occurrences()


async def test_workers_cancelled_mid_relay_leave_the_file_pending(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first batch's checkpoint never ends by itself.
    path, _, service, run = await _started(
        dsn, db, tmp_path, monkeypatch, 3600.0, 1, shutdown_grace_s=0.2
    )
    await asyncio.sleep(0.2)  # the helper stages the next batch and waits for its turn
    service.request_stop()
    report = await asyncio.wait_for(run, 60)
    assert [f.status for f in report.files] == ["interrupted"] and report.exit_code == 1
    assert path.exists()
    assert await asyncio.to_thread(db.val, "SELECT count(*) FROM t") == 0
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'ingestd%'"
    for _ in range(100):
        if not await asyncio.to_thread(db.val, sessions):
            break
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(db.val, sessions) == 0


async def test_a_column_added_mid_relay_waits_its_turn_and_loses_nothing(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The helper's staged batch holds a lock on the target while it waits for its turn; an
    # ALTER TABLE queued behind it must neither deadlock the two nor hang.
    _, _, _, run = await _started(dsn, db, tmp_path, monkeypatch, 0.05, 5)
    alter = "SET statement_timeout = '30s'; ALTER TABLE t ADD COLUMN note text"
    await asyncio.wait_for(asyncio.to_thread(db.execute, alter), 60)
    report = await asyncio.wait_for(run, 60)
    assert [f.status for f in report.files] == ["success"], report.files
    got = await asyncio.to_thread(db.fetch, "SELECT k, v, note FROM t ORDER BY k")
    assert [(r["k"], r["v"]) for r in got] == _last_occurrences()
    assert {r["note"] for r in got} == {None}


async def test_a_later_batch_failing_first_lets_the_batches_before_it_commit(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batch 2 fails on the owner at once, while batch 1 is still being staged on the
    # helper: batch 1 still commits (one connection would have committed it before
    # reading batch 2), and the file fails with batch 2's error.
    await asyncio.to_thread(db.execute, "CREATE TABLE t (k bigint PRIMARY KEY, v bigint)")
    path = _upsert_file(tmp_path)
    batch, copy = BatchLoader.batch, merge.copy_batch
    began: list[str] = []

    async def failing(self: BatchLoader, piece: Piece, tally: Tally, turn: Any = None) -> None:
        began.append(self.worker_id)
        if len(began) == 3:
            raise FileError("batch 2 refused before its turn")
        await batch(self, piece, tally, turn)

    async def slow(*args: Any) -> int:
        if len(began) == 2:  # batch 1's COPY outlasts batch 0 and batch 2's failure
            await asyncio.sleep(0.5)
        return await copy(*args)

    monkeypatch.setattr(BatchLoader, "batch", failing)
    monkeypatch.setattr(merge, "copy_batch", slow)
    report = await asyncio.wait_for(_service(dsn, path.parent).run(), 60)
    [f] = report.files
    assert began[1] != began[0] == began[2]  # batch 1 on the helper, 0 and 2 on the owner
    assert f.status == "failed" and f.error is not None
    assert "batch 2 refused before its turn" in f.error
    [m] = await asyncio.to_thread(db.manifest)
    assert (m["status"], m["rows"]) == ("failed", 20)
    got = await asyncio.to_thread(db.fetch, "SELECT k, v FROM t ORDER BY k")
    assert [(r["k"], r["v"]) for r in got] == [(k, k) for k in range(20)]


async def test_a_batch_waiting_its_turn_outlives_the_idle_in_transaction_timeout(
    dsn: str,
) -> None:
    # ingestd's sessions end after statement_timeout_s idle in a transaction; a staged
    # batch waits in its open transaction while the batch ahead runs, which may take longer
    # in all (many short statements: sorting out bad rows). The wait keeps it alive.
    timeout_s = 0.3
    raw = await asyncpg.connect(dsn, server_settings=session_settings(timeout_s))
    conn = Connection(raw)
    settings = SimpleNamespace(statement_timeout_s=timeout_s)
    owner: Any = SimpleNamespace(ctx=SimpleNamespace(settings=settings))
    relay = Relay(owner, SimpleNamespace(exhausted=lambda: False), Tally(0, 0, 0))  # type: ignore[arg-type]

    async def batch_ahead_commits() -> None:
        await asyncio.sleep(4 * timeout_s)
        relay._committed = 1
        relay._wake()

    try:
        async with conn.atomic():
            await conn.execute("SELECT")
            ahead = asyncio.create_task(batch_ahead_commits())
            await asyncio.wait_for(relay._turn(1, conn), 30)
            await ahead
            assert await conn.fetchval("SELECT 42") == 42  # the session was not ended
    finally:
        await raw.close()
