"""With no connection slots left (a role's CONNECTION LIMIT reached), the pool's attempts to
reopen a lost connection are one readable warning line, not a traceback every few seconds."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest

from ingestd.db.database import Database
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
