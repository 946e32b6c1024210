"""The database layer is the boundary: only driver errors are translated, anything else is
a bug and passes through as itself."""

from __future__ import annotations

import asyncio
from pathlib import Path, PurePosixPath
from typing import Any

import asyncpg
import pytest
from asyncpg import exceptions as pgx

from ingestd import pipeline
from ingestd.claim import Job
from ingestd.db.connection import Connection
from ingestd.db.errors import BatchError, translate, translate_batch
from ingestd.db.manifest import Claim, FileVersion
from ingestd.exceptions import FileError, RetryableError
from ingestd.settings import Contract, Settings


@pytest.mark.parametrize("bug", [KeyError("x"), ValueError("v"), AttributeError("a")])
def test_translate_refuses_what_is_not_a_driver_error(bug: Exception) -> None:
    with pytest.raises(TypeError, match="not a database driver error"):
        translate(bug)  # type: ignore[arg-type]  # the type forbids it; so does the code


class _Raw:
    """A stand-in for an asyncpg connection whose calls raise what they are given."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.log: list[str] = []

    async def execute(self, query: str, *args: Any) -> str:
        self.log.append(query)
        if self.error is not None:
            raise self.error
        return "SELECT 1"

    def transaction(self) -> _Tx:
        return _Tx(self)


class _Tx:
    def __init__(self, raw: _Raw) -> None:
        self.raw = raw

    async def __aenter__(self) -> None:
        self.raw.log.append("BEGIN")

    async def __aexit__(self, kind: object, exc: object, tb: object) -> None:
        self.raw.log.append("COMMIT" if kind is None else "ROLLBACK")


def _conn(error: BaseException | None = None) -> tuple[Connection, _Raw]:
    raw = _Raw(error)
    return Connection(raw), raw  # type: ignore[arg-type]  # duck-typed driver


async def test_a_driver_error_comes_out_translated_and_chained() -> None:
    conn, _ = _conn(ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(RetryableError, match="transient; will retry") as info:
        await conn.execute("SELECT 1")
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert info.value.error_class == "connectionreseterror"  # the db error metric's label


async def test_a_server_error_is_permanent_with_its_class() -> None:
    conn, _ = _conn(pgx.UndefinedColumnError('column "x" does not exist'))
    with pytest.raises(FileError, match='column "x" does not exist') as info:
        await conn.execute("SELECT x")
    assert info.value.sqlstate == "42703" and info.value.error_class == "undefinedcolumn"


async def test_a_bug_passes_through_the_connection_untouched() -> None:
    conn, _ = _conn(KeyError("x"))
    with pytest.raises(KeyError):
        await conn.execute("SELECT 1")


async def test_atomic_rolls_back_on_a_bug_and_lets_it_out_as_itself() -> None:
    conn, raw = _conn()
    with pytest.raises(KeyError):
        async with conn.atomic():
            await conn.execute("INSERT 1")
            raise KeyError("x")
    assert raw.log == ["BEGIN", "INSERT 1", "ROLLBACK"]
    async with conn.atomic():
        await conn.execute("INSERT 2")
    assert raw.log[-3:] == ["BEGIN", "INSERT 2", "COMMIT"]


def test_a_copy_error_is_placed_in_the_file_by_the_caller() -> None:
    exc = asyncpg.PostgresError.new(
        {"C": "22P02", "M": 'invalid input syntax for type integer: "x"',
         "W": "COPY t, line 2, column age: \"x\""}
    )  # fmt: skip
    payload = b'1,30\n"2\nsecond line",x\n3,40\n'
    error = translate_batch(exc, payload=payload)
    assert isinstance(error, BatchError) and error.record == 2
    placed = error.at(101)
    assert placed.row == 102 and "(row 102, column age)" in str(placed)
    assert str(translate(exc, first_row=101, payload=payload)) == str(placed)


def _job(path: Path) -> Job:
    version = FileVersion(str(path), b"", 0)
    contract = Contract(name="c", table="t")
    return Job(path, PurePosixPath(path.name), contract, version, Claim(1, 0, 0, 0, None),
               (0, 0))  # fmt: skip


async def test_a_permission_error_reading_a_file_is_not_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "x.csv"
    f.write_text("id\n1\n")

    def refused(path: Path, *args: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pipeline, "open_reader", refused)
    with pytest.raises(FileError) as info:
        await pipeline.open_file(_job(f), Settings(contracts=(_job(f).contract,)))
    assert str(info.value) == "cannot read x.csv: Permission denied"
    assert not isinstance(info.value, RetryableError) and "transient" not in str(info.value)


def test_the_drivers_own_state_error_is_transient_never_the_files_fault() -> None:
    # Seen when the server shut down mid-batch: the next statement on that connection.
    exc = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    out = translate(exc)
    assert isinstance(out, RetryableError) and out.error_class == "internalclienterror"


async def test_a_worker_that_ended_after_the_stop_is_not_a_death() -> None:
    from ingestd.service import _raise_if_dead

    async def nothing() -> None:
        return None

    scanning = asyncio.ensure_future(nothing())
    worker = asyncio.ensure_future(nothing())
    await asyncio.wait([scanning, worker])
    _raise_if_dead(scanning, worker, stopping=True)  # workers end by themselves after a stop
    with pytest.raises(RuntimeError, match="stopped unexpectedly"):
        _raise_if_dead(scanning, worker, stopping=False)
