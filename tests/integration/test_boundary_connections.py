"""With no connection slots left (a role's CONNECTION LIMIT reached), the pool's attempts to
reopen a lost connection are one readable warning line, not a traceback every few seconds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid

import asyncpg
import pytest

from ingestd.db.database import Database
from ingestd.exceptions import RetryableError
from ingestd.retry import Backoff
from tests.integration.test_least_privilege import as_role


async def test_a_pool_that_cannot_reconnect_says_so_in_one_line(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    role = "lim_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(dsn)
    hogs: list[asyncpg.Connection] = []
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' CONNECTION LIMIT 2")
        limited = as_role(dsn, role, "pw")
        db = await Database.open(
            limited, size=2, connect_timeout_s=2, statement_timeout_s=5, attempts=0,
            backoff=Backoff(),
        )  # fmt: skip
        try:
            with caplog.at_level(logging.INFO):
                # Both pool connections lost; another client takes a slot as they go.
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                    role,
                )
                for _ in range(40):
                    if len(hogs) == 2:
                        break
                    try:
                        hogs.append(await asyncpg.connect(limited))
                    except asyncpg.TooManyConnectionsError:
                        await asyncio.sleep(0.05)
                for _ in range(8):  # the health check's pings, meanwhile
                    await db.ping(timeout_s=1)
                    await asyncio.sleep(0.5)
        finally:
            await db.close()
    finally:
        for hog in hogs:
            await hog.close()
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
    pool_lines = [r for r in caplog.records if r.name == "asyncpg.pool"]
    assert pool_lines, "the pool never tried to reconnect: the test did not exhaust the slots"
    assert all(r.exc_info is None and r.exc_text is None for r in pool_lines)
    assert "Traceback" not in caplog.text
    [line] = [r for r in pool_lines if r.levelno >= logging.WARNING]  # repeats are DEBUG
    assert line.getMessage() == "db_reconnect_failed"
    assert "too many connections" in line.error  # type: ignore[attr-defined]


async def test_a_held_connection_the_server_dropped_is_weather_at_every_first_statement(
    dsn: str,
) -> None:
    """A worker holds its connection for its life; when the server drops it, the pool
    detaches the proxy and any call, the transaction's BEGIN included, says "released
    back to the pool". That is a retryable outage, never a bug (internal_error)."""
    admin = await asyncpg.connect(dsn)
    db = await Database.open(
        dsn, size=2, connect_timeout_s=2, statement_timeout_s=5, attempts=0, backoff=Backoff()
    )
    try:
        for first in ("atomic", "execute"):
            conn = await db.acquire()
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            for _ in range(100):  # the client notices the closed socket
                try:
                    if conn.raw.is_closed():
                        break
                except asyncpg.InterfaceError:  # detached: "released back to the pool"
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(RetryableError):
                if first == "atomic":
                    async with conn.atomic():
                        await conn.execute("SELECT 1")
                else:
                    await conn.execute("SELECT 1")
            await db.release(conn, broken=True)
    finally:
        await db.close()
        await admin.close()


async def test_a_connection_the_server_dropped_unnoticed_is_given_back_quietly(dsn: str) -> None:
    """The server ends a held connection (a shutdown, pg_terminate_backend) and the client
    has not read that yet when it gives the connection back: the pool's reset meets the
    57P01 and raised ConnectionDoesNotExistError out of release, which crashed the daemon's
    scanner (its claims' connection) at a server shutdown. Now the pool replaces it."""
    db = await Database.open(
        dsn, size=2, connect_timeout_s=5, statement_timeout_s=10, attempts=0, backoff=Backoff()
    )
    try:
        conn = await db.acquire()
        pid = await conn.fetchval("SELECT pg_backend_pid()")

        async def terminate_and_wait() -> None:
            admin = await asyncpg.connect(dsn)
            try:
                # With a timeout, it returns once the backend has exited (PostgreSQL 14+).
                assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
            finally:
                await admin.close()

        # On another thread's loop, and this loop blocked meanwhile: it must not read the
        # server's goodbye before the release does.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, terminate_and_wait()).result(timeout=30)
        await db.release(conn)
        async with db.connection() as again:  # the pool opened a new one
            assert await again.fetchval("SELECT pg_backend_pid()") != pid
    finally:
        await db.close()
