"""Connection settings hold for the life of a pooled connection, not just its first use."""

from __future__ import annotations

from ingestd.db.connection import create_pool
from ingestd.retry import Backoff


async def test_timeouts_survive_pool_release(dsn: str) -> None:
    pool = await create_pool(
        dsn, size=1, connect_timeout_s=5, statement_timeout_s=7,
        attempts=0, backoff=Backoff(),
    )  # fmt: skip
    try:
        for _ in range(3):  # the pool runs RESET ALL on every release
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW statement_timeout") == "7s"
                assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "7s"
                assert await conn.fetchval("SHOW application_name") == "ingestd"
    finally:
        await pool.close()
