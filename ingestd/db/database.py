"""The database: owns the pool and hands out connections and transactions.

Everything above ingestd/db/ reaches the server through this object and the Connection
it lends; a driver error comes out of either as ingestd's own (db.errors.translate).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg

from ingestd.db.connection import Connection, create_pool, give_back, ping
from ingestd.db.errors import DRIVER_ERRORS, error_class, translate
from ingestd.exceptions import ConnectError, IngestdError
from ingestd.retry import Backoff


class Database:
    """One pool of connections to one database."""

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout_s: float) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        size: int,
        connect_timeout_s: float,
        statement_timeout_s: float,
        attempts: int,
        backoff: Backoff,
        lock_timeout_s: float = 0.0,
        application_name: str = "ingestd",
    ) -> Database:
        """Open a pool of `size` connections, retrying while the server is unreachable
        (DatabaseUnavailableError once the attempts are used up)."""
        pool = await create_pool(
            dsn,
            size=size,
            connect_timeout_s=connect_timeout_s,
            statement_timeout_s=statement_timeout_s,
            attempts=attempts,
            backoff=backoff,
            lock_timeout_s=lock_timeout_s,
            application_name=application_name,
        )
        return cls(pool, acquire_timeout_s=connect_timeout_s)

    async def acquire(self) -> Connection:
        """A connection to hold (a worker's, for its life): give it back with release().
        ConnectError if none can be had within the connect timeout."""
        try:
            raw = await self._pool.acquire(timeout=self._acquire_timeout_s)
        except DRIVER_ERRORS as exc:
            raise ConnectError(
                f"cannot get a database connection: {translate(exc)}",
                error_class=error_class(exc),
            ) from exc
        return Connection(raw)

    async def release(self, conn: Connection, *, broken: bool = False) -> None:
        """Give a held connection back; a broken one is closed and the pool replaces it."""
        await give_back(self._pool, conn, broken=broken)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection for a few statements (a claim, a look at the manifest). After an
        error that is not ingestd's own (a bug, a cancellation) it is closed, not reused:
        it may be left mid-transaction."""
        conn = await self.acquire()
        broken = True
        try:
            yield conn
            broken = False
        except IngestdError:
            broken = False  # the statement failed cleanly; the pool resets the session
            raise
        finally:
            await self.release(conn, broken=broken)

    async def ping(self, *, timeout_s: float) -> bool:
        """True if a pooled connection answers SELECT 1 within the timeout."""
        return await ping(self._pool, timeout_s=timeout_s)

    async def close(self, *, timeout_s: float = 10.0) -> None:
        """Close every connection, giving up on the polite way after `timeout_s`."""
        started = time.monotonic()
        await _reopening_finished(self._pool, timeout_s=min(timeout_s, _REOPEN_WAIT_S))
        try:
            left_s = max(0.1, timeout_s - (time.monotonic() - started))
            await asyncio.wait_for(self._pool.close(), left_s)
        except DRIVER_ERRORS:
            self._pool.terminate()


_REOPEN_WAIT_S = 2.0  # a reconnect takes milliseconds; one to a server that is down, longer


async def _reopening_finished(pool: asyncpg.Pool, *, timeout_s: float) -> None:
    """Let the pool's reconnect in flight end before the pool closes.

    asyncpg reopens a closed connection (one ingestd terminated after a failed file) in a
    task of its own, to keep the pool at its size, and Pool.close() cancels that task.
    Cancelled in the middle of a TLS handshake (sslmode=prefer over TCP: Citus turns TLS
    on), the half-made connection's socket outlived the event loop: an fd left open and
    a ResourceWarning at exit. asyncpg offers no public handle on the task, hence the
    attribute; without it (another asyncpg), close() behaves as before.
    """
    reopening = getattr(pool, "_maintenance_task", None)
    if not isinstance(reopening, asyncio.Task) or reopening.done():
        return
    # Only a connect in flight is worth the wait: while the server is down the task sleeps
    # out its backoff between attempts, and cancelling a sleep leaves nothing open.
    awaiting = getattr(reopening.get_coro(), "cr_await", None)
    if getattr(awaiting, "__qualname__", "") == "PoolConnectionHolder.connect":
        await asyncio.wait({reopening}, timeout=timeout_s)
