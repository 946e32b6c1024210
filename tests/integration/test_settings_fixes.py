"""Settings defects that need the server (notes-breaker-settings): a concurrency the
server has no connection slots for is named as such, not "check that the server is running"."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from ingestd.db.database import Database
from ingestd.exceptions import DatabaseUnavailableError
from ingestd.retry import Backoff
from tests.integration.test_least_privilege import as_role


async def test_too_many_connections_names_max_connections(dsn: str) -> None:
    """D15: a pool larger than the role's (or server's) connection limit."""
    role = "lim_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' CONNECTION LIMIT 1")
        limited = as_role(dsn, role, "pw")
        with pytest.raises(DatabaseUnavailableError) as caught:
            await Database.open(
                limited, size=3, connect_timeout_s=2, statement_timeout_s=5, attempts=0,
                backoff=Backoff(),
            )  # fmt: skip
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
    message = str(caught.value)
    assert "Too many connections" in message and "max_connections" in message
    assert "--concurrency" in message
    assert "Check that the server is running" not in message
    assert "pw@" not in message
