"""Many small files (issue 14 goal 5): a file of one batch ends in that batch's own
transaction, a session keeps what a target is, and the manifest rows are as before."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ingestd.db.connection import Connection
from ingestd.db.sql import Target
from ingestd.db.topology import place_target
from ingestd.exceptions import FileError
from ingestd.load import Piece, read_ahead
from tests.conftest import write
from tests.pg import Db

HEADER = "id,name\n"


def _csv(rows: range) -> str:
    return HEADER + "".join(f"{i},n{i}\n" for i in rows)


def test_read_ahead_knows_the_last_piece_without_waiting() -> None:
    """exhausted() is True only once the read after the piece in hand found nothing; a read
    still in flight, or one that failed, is not the end."""
    gate = threading.Event()
    made = iter([b"a", b"b"])

    def produce() -> Piece | None:
        chunk = next(made, None)
        if chunk is None:
            gate.wait(5)  # the end is found only once the test lets it
            return None
        return Piece(memoryview(chunk), None)  # type: ignore[arg-type]

    async def scenario() -> list[tuple[bytes, bool]]:
        seen: list[tuple[bytes, bool]] = []
        pieces = read_ahead(produce)
        async for piece in pieces:
            await asyncio.sleep(0.05)  # the next read runs meanwhile
            seen.append((bytes(piece.payload), pieces.exhausted()))
            if bytes(piece.payload) == b"b":
                assert not pieces.exhausted()  # the read is held: not known yet
                gate.set()
                for _ in range(100):
                    if pieces.exhausted():
                        break
                    await asyncio.sleep(0.01)
                seen.append((b"end", pieces.exhausted()))
        return seen

    assert asyncio.run(scenario()) == [(b"a", False), (b"b", False), (b"end", True)]

    def failing() -> Piece | None:
        raise OSError("gone")

    async def broken() -> bool:
        pieces = read_ahead(failing)
        await asyncio.sleep(0.05)
        try:
            return pieces.exhausted()
        finally:
            with pytest.raises(OSError):
                await anext(pieces)

    assert asyncio.run(broken()) is False


def test_one_batch_files_finish_in_their_batch(tmp_path: Path, cli: Any, db: Db) -> None:
    """Files of one batch load and end success with the manifest row they always had
    (rows, batches, processed_at, no notes); a file of several batches too."""
    inbox = tmp_path / "inbox"
    for n in range(12):
        write(inbox / f"f{n:02d}.csv", _csv(range(n * 10, n * 10 + 10)))
    write(inbox / "big.csv", _csv(range(1000, 1250)))
    r = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id", "--chunk-size", 100)
    assert r.code == 0, r.err
    assert db.val("SELECT count(DISTINCT id) FROM t") == 120 + 250
    rows = db.fetch(
        "SELECT filename, status, rows, batches, notes, processed_at >= started_at AS ordered "
        "FROM ingestion_manifest ORDER BY filename"
    )
    assert [r["filename"] for r in rows] == ["big.csv", *(f"f{n:02d}.csv" for n in range(12))]
    for row in rows:
        assert row["status"] == "success" and row["notes"] is None and row["ordered"]
    assert (rows[0]["rows"], rows[0]["batches"]) == (250, 3)
    assert all((r["rows"], r["batches"]) == (10, 1) for r in rows[1:])
    assert sorted(p.name for p in (tmp_path / "done").rglob("*.csv")) == sorted(
        ["big.csv", *(f"f{n:02d}.csv" for n in range(12))]
    )


def test_a_target_made_anew_is_judged_as_it_is_now(dsn: str) -> None:
    """What a target is, is read for every file: a table recreated partitioned, or plain,
    between two files is judged as it is then (breaker4: a session-long cache loaded into a
    plain table where create_partitions was asked, and refused a partitioned one with
    PostgreSQL's ON CONFLICT message instead of ingestd's)."""

    async def scenario() -> None:
        raw = await asyncpg.connect(dsn)
        try:
            conn = Connection(raw)
            target = Target(None, "p", ("id", "day"), ("id",))
            await raw.execute("CREATE TABLE p (id int PRIMARY KEY, day date)")
            await place_target(conn, target, "upsert", None, 2)
            await raw.execute(
                "DROP TABLE p; CREATE TABLE p (id int, day date) PARTITION BY RANGE (day);"
                "CREATE TABLE p_all PARTITION OF p DEFAULT"
            )
            with pytest.raises(FileError) as caught:
                await place_target(conn, target, "upsert", None, 2)
            assert "partitioned by (day)" in str(caught.value)
            await place_target(conn, target, "append", "day", 2)
            await raw.execute("DROP TABLE p; CREATE TABLE p (id int PRIMARY KEY, day date)")
            with pytest.raises(FileError) as caught:
                await place_target(conn, target, "append", "day", 2)
            assert "create_partitions" in str(caught.value)
        finally:
            await raw.close()

    asyncio.run(scenario())


def test_a_file_rewritten_during_its_last_batch_rolls_that_batch_back(
    tmp_path: Path, cli: Any, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look for a changed file comes before the last batch's commit: a file rewritten
    while its only batch is in the database loads nothing, its row says why, and it stays
    in the inbox for the next run, which loads the new version."""
    from ingestd import load

    inbox = tmp_path / "inbox"
    f = write(inbox / "a.csv", _csv(range(5)))
    apply_batch = load.apply_batch

    async def rewriting(*args: Any) -> tuple[int, int]:
        done = await apply_batch(*args)
        if f.read_text() == _csv(range(5)):
            write(f, _csv(range(7)))
        return done

    monkeypatch.setattr(load, "apply_batch", rewriting)
    r = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    assert r.code == 1, r.err
    [row] = db.fetch("SELECT status, rows, notes FROM ingestion_manifest")
    assert row["status"] == "failed" and row["rows"] == 0
    assert "changed while it was being loaded" in row["notes"]
    assert db.val("SELECT count(*) FROM t") == 0
    assert f.exists() and not (tmp_path / "failed").exists()
    monkeypatch.setattr(load, "apply_batch", apply_batch)
    r = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    assert r.code == 0, r.err
    assert db.val("SELECT count(DISTINCT id) FROM t") == 7


def test_a_small_piece_brings_the_end_of_its_file_along() -> None:
    """A small piece is read on from in its own hop to a thread: the end of a one-piece file
    is known the moment its piece arrives (its batch then finishes the file). A read error
    after it comes out where that read's piece is asked for, after the piece; a large piece
    is handed over without waiting for the read after it."""

    def pieces_of(*chunks: bytes | Exception) -> Any:
        made = iter(chunks)

        def produce() -> Piece | None:
            chunk = next(made, None)
            if isinstance(chunk, Exception):
                raise chunk
            return None if chunk is None else Piece(memoryview(chunk), None)  # type: ignore[arg-type]

        return read_ahead(produce)

    async def one_piece() -> tuple[bytes, bool]:
        pieces = pieces_of(b"id\n1\n")
        piece = await anext(pieces)
        return bytes(piece.payload), pieces.exhausted()

    assert asyncio.run(one_piece()) == (b"id\n1\n", True)

    async def failing_after() -> tuple[bytes, bool]:
        pieces = pieces_of(b"a", OSError("gone"))
        piece = await anext(pieces)
        ended = pieces.exhausted()
        with pytest.raises(OSError, match="gone"):
            await anext(pieces)
        return bytes(piece.payload), ended

    assert asyncio.run(failing_after()) == (b"a", False)

    gate = threading.Event()
    big = b"x" * (2 << 20)
    made = iter([big])

    def held() -> Piece | None:
        chunk = next(made, None)
        if chunk is None:
            gate.wait(5)
            return None
        return Piece(memoryview(chunk), None)  # type: ignore[arg-type]

    async def large() -> tuple[int, bool, bool]:
        pieces = read_ahead(held)
        piece = await asyncio.wait_for(anext(pieces), 2)  # not held back by the gated read
        waiting = pieces.exhausted()
        gate.set()
        assert [p async for p in pieces] == []
        return len(piece.payload), waiting, gate.is_set()

    assert asyncio.run(large()) == (len(big), False, True)
