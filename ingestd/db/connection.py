"""Connections: the pool, its session settings, and waiting for the server to be reachable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import asyncpg

from ingestd.db import sql
from ingestd.db.dsn import mask_dsn
from ingestd.exceptions import DatabaseUnavailableError
from ingestd.retry import Backoff

log = logging.getLogger("ingestd.db")

# A pooled connection is a proxy; both expose the same methods.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
PooledConnection = asyncpg.pool.PoolConnectionProxy
Pool = asyncpg.Pool


def session_settings(
    statement_timeout_s: float, lock_timeout_s: float = 0.0, application_name: str = "ingestd"
) -> dict[str, str]:
    """Startup parameters of every connection.

    Every statement gets a deadline, and a session whose client vanished mid-transaction
    (a network partition) is ended by the server, releasing its locks. A wait for a lock
    has a deadline of its own, far shorter than a statement's: a lock held by someone else
    is not a slow server. As startup parameters they survive the RESET ALL the pool runs
    when a connection is released, which a SET after connecting would not. The
    application_name carries the process's claim token (manifest.application_name).
    """
    timeout_ms = str(int(statement_timeout_s * 1000))
    settings = {
        "statement_timeout": timeout_ms,
        "idle_in_transaction_session_timeout": timeout_ms,
        "application_name": application_name,
        # The merge sorts a batch by key (last occurrence wins, and a fixed lock order);
        # 50,000 rows spill past the default 4MB to disk. Per session, so 64MB x workers.
        "work_mem": "64MB",
    }
    if lock_timeout_s > 0:
        settings["lock_timeout"] = str(max(1, int(lock_timeout_s * 1000)))
    return settings


async def create_pool(
    dsn: str,
    *,
    size: int,
    connect_timeout_s: float,
    statement_timeout_s: float,
    attempts: int,
    backoff: Backoff,
    lock_timeout_s: float = 0.0,
    application_name: str = "ingestd",
) -> asyncpg.Pool:
    """Open a pool of `size` connections, retrying while the server is unreachable."""

    last: BaseException | None = None
    for attempt in range(attempts + 1):
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                dsn,
                min_size=size,
                max_size=size,
                timeout=connect_timeout_s,
                command_timeout=statement_timeout_s + 5,
                server_settings=session_settings(
                    statement_timeout_s, lock_timeout_s, application_name
                ),
                # The statement cache saves a Parse round trip per statement: a large
                # share of the cost of small files. Behind PgBouncer in transaction mode,
                # use 1.21+ with max_prepared_statements set.
            )
            return pool
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            last = exc
            if not _worth_retrying_connect(exc) or attempt == attempts:
                break
            delay = backoff.delay(attempt)
            log.warning(
                "db_connect_retry",
                extra={
                    "error": describe_connect_error(exc),
                    "attempt": attempt + 1,
                    "delay_s": delay,
                },
            )
            await backoff.sleep(delay)
    assert last is not None  # noqa: S101 - the loop ran at least once
    raise DatabaseUnavailableError(
        f"cannot connect to {mask_dsn(dsn)}: {describe_connect_error(last)}. "
        "Check that the server is running and that --dsn / INGESTD_DSN is right."
    ) from None


def _worth_retrying_connect(exc: BaseException) -> bool:
    # Wrong password, unknown database or a socket we may not open will not fix itself.
    return not isinstance(
        exc,
        asyncpg.InvalidPasswordError
        | asyncpg.InvalidAuthorizationSpecificationError
        | asyncpg.InvalidCatalogNameError
        | PermissionError
        | FileNotFoundError,  # e.g. sslrootcert
    )


def describe_connect_error(exc: BaseException) -> str:
    """A one-line, password-free reason for a failed connection."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason}"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    text = str(exc).strip() or type(exc).__name__
    return mask_dsn(text.splitlines()[0])


async def server_version(conn: Connection) -> int:
    """server_version_num, e.g. 150004."""
    value: Any = await conn.fetchval(sql.SERVER_VERSION)
    return int(value)


async def give_back(pool: asyncpg.Pool, conn: PooledConnection, *, broken: bool) -> None:
    """Return a worker's connection to the pool; a broken one is closed so the pool replaces it.

    The pool may already have taken back a connection whose socket died, so both steps
    tolerate a connection that is no longer ours.
    """
    if broken:
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.terminate()
    with contextlib.suppress(asyncpg.InterfaceError, OSError, TimeoutError):
        await asyncio.wait_for(pool.release(conn), 5)


async def ping(pool: asyncpg.Pool, *, timeout_s: float) -> bool:
    """True if a pooled connection answers SELECT 1 within the timeout."""
    try:
        async with pool.acquire(timeout=timeout_s) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return True
