"""More places a bug in ingestd may surface: the readers, ingestd's own SQL, the archive
move and the worker's own handlers. Each is a bug (internal_error, the file pending in the
inbox, nothing in failed/), never the file's fault."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import log_events, write
from tests.pg import Db


def _status(db: Db, name: str) -> str:
    return str(db.val("SELECT status FROM ingestion_manifest WHERE filename LIKE $1", f"%{name}"))


def _assert_a_bug(result: Any, db: Db, tmp_path: Path, bad: Path, frame: str) -> None:
    """`bad` met a bug: pending in the inbox, one internal_error with the bug's frame."""
    assert result.code == 1, result.err
    assert bad.exists(), result.out
    assert not (tmp_path / "failed").exists() or not list((tmp_path / "failed").rglob("*"))
    assert _status(db, bad.name) == "pending"
    events = log_events(result.err, "internal_error")
    assert len(events) == 1, result.err
    assert frame in str(events[0].get("exc_info")), events[0]
    assert "internal error (a bug in ingestd)" in result.out
    assert "FAILED" not in result.out


def _raise_in(exc: BaseException) -> Callable[..., Any]:
    def buggy(*_args: object, **_kwargs: object) -> Any:
        raise exc

    return buggy


def _buggy_generator(exc: BaseException) -> Callable[..., Iterator[pa.RecordBatch]]:
    """A batch stream whose first step raises `exc`: a bug met while iterating the file."""

    def stream(*_args: object, **_kwargs: object) -> Iterator[pa.RecordBatch]:
        raise exc
        yield  # pragma: no cover - makes this a generator

    return stream


# --- D0: the readers -------------------------------------------------------------------


@pytest.mark.parametrize("exc", [ValueError("injected"), TypeError("injected")])
def test_a_bug_planning_a_parquet_file_is_internal(
    cli, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bad = inbox / "p.parquet"
    pq.write_table(pa.table({"id": [1, 2], "v": ["a", "b"]}), bad)
    write(inbox / "good.csv", "id,v\n3,c\n")
    monkeypatch.setattr("ingestd.read.parquet_reader._plan", _raise_in(exc))
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append")
    _assert_a_bug(result, db, tmp_path, bad, "buggy")
    assert "not a readable Parquet file" not in result.out + result.err
    assert [p.name for p in (tmp_path / "done").rglob("*.csv")] == ["good.csv"]


@pytest.mark.parametrize(
    "exc", [ValueError("injected"), EOFError("x"), UnicodeEncodeError("utf-8", "x", 0, 1, "x")]
)
def test_a_bug_iterating_a_csv_file_is_internal(
    cli, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    inbox = tmp_path / "inbox"
    bad = write(inbox / "b.csv", "id,v\n1,a\n2,b\n")
    # Read through Arrow, not sent to COPY as the file's own bytes.
    monkeypatch.setattr("ingestd.read.csv_reader.raw_csv", lambda *_a: None)
    monkeypatch.setattr("ingestd.read.csv_reader._normalise", _buggy_generator(exc))
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append")
    if isinstance(exc, EOFError):
        # A truncated stream's EOFError is the file's: kept a file error (failed/).
        assert result.code == 1 and "FAILED" in result.out and not bad.exists()
        return
    _assert_a_bug(result, db, tmp_path, bad, "stream")


# --- D10: ingestd's own use of the driver ---------------------------------------------


def _buggy_sql(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Manifest.checkpoint, inside the batch's transaction, misuses the driver."""
    from ingestd.db.manifest import Manifest

    checkpoint = Manifest.checkpoint

    async def buggy(self: Manifest, conn: Any, claim_id: int, before: int, after: int,
                    rejected: int = 0, *, last: bool = False) -> None:  # fmt: skip
        if kind == "syntax":
            await conn.execute("UPDATE ingestion_manifest SET notes = notes WHERE WHERE id = $1",
                               claim_id)  # fmt: skip
        elif kind == "function":
            await conn.execute("SELECT no_such_function_in_ingestd($1::int)", claim_id)
        # "argument": a str for an int parameter (asyncpg's client-side DataError)
        await checkpoint(self, conn, claim_id, before, str(after), rejected, last=last)  # type: ignore[arg-type]

    monkeypatch.setattr(Manifest, "checkpoint", buggy)


@pytest.mark.parametrize("kind", ["argument", "syntax"])
def test_ingestds_own_sql_refused_is_a_bug_not_the_files_fault(
    cli, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    inbox = tmp_path / "inbox"
    bad = write(inbox / "a.csv", "id,v\n1,a\n2,b\n")
    _buggy_sql(monkeypatch, kind)
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append")
    _assert_a_bug(result, db, tmp_path, bad, "buggy")
    [event] = log_events(result.err, "internal_error")
    assert event["error"].startswith("InternalError: the database refused ingestd's own request")
    wanted = "invalid input for query argument" if kind == "argument" else "syntax error"
    assert wanted in event["error"]
    assert "asyncpg" in str(event["exc_info"])  # the driver's error is chained
    assert db.val("SELECT count(*) FROM t") == 0
    assert not log_events(result.err, "file_retry")


def test_a_file_refused_by_the_server_still_fails(cli, db: Db, tmp_path: Path) -> None:
    """A value the column cannot hold (22P02) is the file's fault: failed/, one line."""
    db.execute("CREATE TABLE t (id int, v text)")
    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", "id,v\nzz,a\n")
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append")
    assert result.code == 1 and "FAILED" in result.out
    assert (tmp_path / "failed" / "a.csv").exists() or list((tmp_path / "failed").rglob("a.csv"))
    assert not log_events(result.err, "internal_error")


# --- D1: the whole of a file's handling is inside the bug boundary --------------------


def _once_then_real(monkeypatch: pytest.MonkeyPatch, target: Any, attr: str, name: str,
                    when: Callable[..., bool] = lambda *a: True) -> list[int]:  # fmt: skip
    """Patch target.attr to raise KeyError('injected') once, for file `name` (in any arg)."""
    real = getattr(target, attr)
    hits: list[int] = []

    def matches(args: tuple[Any, ...]) -> bool:
        return any(name in str(a) for a in args) and when(*args)

    if asyncio.iscoroutinefunction(real):

        async def buggy_async(*args: Any, **kwargs: Any) -> Any:
            if not hits and matches(args):
                hits.append(1)
                raise KeyError("injected")
            return await real(*args, **kwargs)

        monkeypatch.setattr(target, attr, buggy_async)
    else:

        def buggy(*args: Any, **kwargs: Any) -> Any:
            if not hits and matches(args):
                hits.append(1)
                raise KeyError("injected")
            return real(*args, **kwargs)

        monkeypatch.setattr(target, attr, buggy)
    return hits


def test_once_a_bug_recording_a_failure_leaves_the_file_pending_and_goes_on(
    cli, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user error (a bad value) whose recording (_fail -> manifest.finish) meets a bug."""
    from ingestd.db.manifest import Manifest

    db.execute("CREATE TABLE t (id int, v text)")
    inbox = tmp_path / "inbox"
    bad = write(inbox / "a.csv", "id,v\nzz,a\n")
    write(inbox / "b.csv", "id,v\n1,b\n")
    write(inbox / "c.csv", "id,v\n2,c\n")
    hits = _once_then_real(monkeypatch, Manifest, "finish", "failed")
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append", "--concurrency", 1)
    assert hits == [1]
    assert "stopped unexpectedly" not in result.err and "crashed" not in result.err
    _assert_a_bug(result, db, tmp_path, bad, "buggy_async")
    assert sorted(p.name for p in (tmp_path / "done").rglob("*.csv")) == ["b.csv", "c.csv"]
    assert sorted(r["id"] for r in db.fetch("SELECT id FROM t")) == [1, 2]


def test_once_a_bug_moving_a_file_is_internal_and_the_move_is_left_for_later(
    cli, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingestd import archive

    inbox = tmp_path / "inbox"
    first = write(inbox / "a.csv", "id,v\n1,a\n")
    write(inbox / "b.csv", "id,v\n2,b\n")
    hits = _once_then_real(monkeypatch, archive, "to_done", "a.csv")
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append", "--concurrency", 1)
    assert hits == [1]
    assert "stopped unexpectedly" not in result.err and "crashed" not in result.err, result.err
    [event] = log_events(result.err, "internal_error")
    assert "buggy" in str(event["exc_info"]) and event["error"] == "KeyError: 'injected'"
    # Loaded and recorded (its row is final), still in the inbox: the next run moves it.
    assert first.exists() and _status(db, "a.csv") == "success"
    assert [p.name for p in (tmp_path / "done").rglob("*.csv")] == ["b.csv"]
    again = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append")
    assert again.code == 0, again.err
    assert not first.exists()
    assert sorted(p.name for p in (tmp_path / "done").rglob("*.csv")) == ["a.csv", "b.csv"]
    assert sorted(r["id"] for r in db.fetch("SELECT id FROM t")) == ["1", "2"]


async def test_daemon_a_bug_moving_a_file_is_retried_and_the_daemon_goes_on(
    dsn: str, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingestd import archive
    from ingestd.service import Service
    from ingestd.settings import Contract, Settings

    inbox = tmp_path / "inbox"
    first = write(inbox / "a.csv", "id,v\n1,a\n")
    write(inbox / "b.csv", "id,v\n2,b\n")
    hits = _once_then_real(monkeypatch, archive, "to_done", "a.csv")
    monkeypatch.setattr(archive, "retry_delay_s", lambda attempts: 0.05)
    settings = Settings(
        contracts=(Contract(name="t", pattern="*.csv", table="t", mode="append"),),
        inbox=inbox, dsn=dsn, metrics_addr=None, settle_s=0.05, rescan_s=3600.0,
        shutdown_grace_s=5.0, concurrency=1,
    )  # fmt: skip
    service = Service(settings)
    run = asyncio.create_task(service.run())
    try:
        for _ in range(400):
            done = {p.name for p in (tmp_path / "done").rglob("*.csv")}
            if done == {"a.csv", "b.csv"} or run.done():
                break
            await asyncio.sleep(0.05)
    finally:
        service.request_stop()
        report = await asyncio.wait_for(run, 60)
    assert hits == [1] and report.exit_code == 0
    assert not first.exists()
    assert {p.name for p in (tmp_path / "done").rglob("*.csv")} == {"a.csv", "b.csv"}
    assert _internal_errors(service.metrics) == 1


def _internal_errors(metrics: Any) -> float:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "ingest_internal_errors_total":
                return float(sample.value)
    raise AssertionError("ingest_internal_errors_total is not exposed")


# --- D7: a connection lost mid-batch keeps its own message ----------------------------


def test_a_connection_lost_mid_batch_is_retried_with_the_servers_reason(
    cli, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingestd.load import BatchLoader

    inbox = tmp_path / "inbox"
    write(inbox / "a.csv", "id,v\n1,a\n2,b\n")
    checkpoint = BatchLoader._checkpoint
    killed: list[int] = []

    async def killing(self: BatchLoader, piece: Any, tally: Any, rows: int) -> None:
        if not killed:
            pid = await self.conn.fetchval("SELECT pg_backend_pid()")
            killed.append(pid)
            await asyncio.to_thread(db.val, "SELECT pg_terminate_backend($1)", pid)
            await self.conn.fetchval("SELECT 1")  # the server has ended this session
        await checkpoint(self, piece, tally, rows)

    monkeypatch.setattr(BatchLoader, "_checkpoint", killing)
    result = cli("--once", "--inbox", inbox, "--table", "t", "--mode", "append")
    assert result.code == 0, result.err
    [retry] = log_events(result.err, "file_retry")
    assert "Transaction.__aexit__" not in retry["error"], retry
    assert "transient; will retry" in retry["error"]
    assert sorted(str(r["id"]) for r in db.fetch("SELECT id FROM t")) == ["1", "2"]
