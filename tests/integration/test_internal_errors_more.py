"""More places a bug in ingestd may surface: the readers, ingestd's own SQL, the archive
move and the worker's own handlers. Each is a bug (internal_error, the file pending in the
inbox, nothing in failed/), never the file's fault."""

from __future__ import annotations

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
                    rejected: int = 0) -> None:  # fmt: skip
        if kind == "syntax":
            await conn.execute("UPDATE ingestion_manifest SET notes = notes WHERE WHERE id = $1",
                               claim_id)  # fmt: skip
        elif kind == "function":
            await conn.execute("SELECT no_such_function_in_ingestd($1::int)", claim_id)
        # "argument": a str for an int parameter (asyncpg's client-side DataError)
        await checkpoint(self, conn, claim_id, before, str(after), rejected)  # type: ignore[arg-type]

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
