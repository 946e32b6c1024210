"""Connections: the pool, its session settings, and waiting for the server to be reachable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, cast

import asyncpg

from ingestd.db import sql
from ingestd.db.dsn import mask_dsn
from ingestd.db.errors import DRIVER_ERRORS, driver_errors
from ingestd.exceptions import DatabaseUnavailableError, IngestdError, RetryableError
from ingestd.retry import Backoff

log = logging.getLogger(__name__)

# A pooled connection is a proxy; both expose the same methods.
RawConnection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
_COPY_PIECE_BYTES = 1 << 20


class Connection:
    """A database connection as the rest of ingestd sees it: the few driver calls it
    makes, each one's error translated into ingestd's error tree (db.errors) and anything
    else passed through untouched, because it is a bug."""

    __slots__ = ("raw",)

    def __init__(self, raw: RawConnection) -> None:
        self.raw = raw  # for the database layer only (the pool, a terminate)

    async def execute(self, query: str, *args: Any) -> str:
        with driver_errors():
            return await self.raw.execute(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        with driver_errors():
            return await self.raw.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        with driver_errors():
            return await self.raw.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        with driver_errors():
            return await self.raw.fetchval(query, *args)

    async def copy_in(
        self,
        table: str,
        *,
        schema: str | None,
        columns: list[str],
        payload: memoryview,
        delimiter: str,
        quote: str,
        encoding: str | None,
        binary: bool = False,
    ) -> str:
        """COPY a CSV payload (or a binary COPY stream) into a table; a refused row comes
        out as a BatchError, its row counted from the payload's first record."""
        if binary:
            # Binary COPY numbers its rows as lines: no payload to read them back from.
            with driver_errors():
                return await self.raw.copy_to_table(
                    table,
                    schema_name=schema,
                    source=_pieces(payload),
                    columns=columns,
                    format="binary",
                )
        with driver_errors(payload=payload, quote=quote):
            return await self.raw.copy_to_table(
                table,
                schema_name=schema,
                source=_pieces(payload),
                columns=columns,
                format="csv",
                delimiter=delimiter,
                quote=quote,
                encoding=encoding,
            )

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        """A transaction (a savepoint inside one): committed if the block ends normally,
        rolled back if it raises. Errors of BEGIN, COMMIT and ROLLBACK come out translated."""
        with driver_errors():
            # A pooled connection the server dropped is detached from its proxy: even
            # transaction() raises then ("released back to the pool"), and that is weather.
            transaction = self.raw.transaction()
            await transaction.__aenter__()
        try:
            yield
        except IngestdError as exc:
            try:
                with driver_errors():
                    await transaction.__aexit__(type(exc), exc, exc.__traceback__)
            except RetryableError:
                # The rollback failed: the connection is gone. Its message ("cannot call
                # Transaction.__aexit__(): the underlying connection is closed") says
                # nothing; a transient error keeps its own (57P01 terminating connection).
                # After a permanent one the retry on a new connection is the news.
                if isinstance(exc, RetryableError):
                    raise exc from exc.__cause__
                raise
            raise
        except BaseException as exc:
            # A bug or a cancellation must come out as itself; the connection is given
            # back broken after either, which ends the transaction anyway.
            with contextlib.suppress(*DRIVER_ERRORS):
                await transaction.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        with driver_errors():
            await transaction.__aexit__(None, None, None)


def _pieces(payload: memoryview) -> AsyncIterable[bytes]:
    async def pieces() -> AsyncIterator[memoryview]:
        for start in range(0, len(payload), _COPY_PIECE_BYTES):
            yield payload[start : start + _COPY_PIECE_BYTES]

    # asyncpg sends any buffer; its stubs only name bytes. Slices of the view copy nothing.
    return cast("AsyncIterable[bytes]", pieces())


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


_REPEAT_QUIET_S = 300.0  # the same reconnect failure again within this: DEBUG only


class _PoolReconnectLine(logging.Filter):
    """asyncpg's pool logs each failed attempt to reopen a lost connection (its "floor")
    with a full traceback, a few seconds apart while the server refuses connections
    (max_connections or the role's CONNECTION LIMIT exhausted). Made one readable line, and
    a repeat of the same reason is demoted to DEBUG: the pool retries on its own, and the
    first line (and readiness, db_ok) already said it."""

    def __init__(self) -> None:
        super().__init__()
        self._last: tuple[str, float] | None = None  # reason, when it was logged

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        reason = describe_connect_error(error)
        record.msg, record.args = "db_reconnect_failed", ()
        record.exc_info = record.exc_text = None
        record.error = reason
        action = "the pool keeps retrying by itself"
        if getattr(error, "sqlstate", None) == "53300":  # too_many_connections
            action += (
                "; the server has no connection slots left: raise max_connections or the "
                "role's CONNECTION LIMIT, or lower --concurrency"
            )
        record.action = action
        now = time.monotonic()
        if self._last is not None:
            last_reason, logged_at = self._last
            if last_reason == reason and now - logged_at < _REPEAT_QUIET_S:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        self._last = (reason, now)
        return True


def _quiet_pool_reconnects() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolReconnectLine) for f in pool_log.filters):
        pool_log.addFilter(_PoolReconnectLine())


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
    _quiet_pool_reconnects()
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
    advice = "Check that the server is running and that --dsn / INGESTD_DSN is right."
    if getattr(last, "sqlstate", None) == "53300":  # too_many_connections: it is running
        advice = (
            f"Too many connections: the server has no slot left for the {size} this run "
            "opens (--concurrency, plus two; max_connections, or the role's CONNECTION "
            "LIMIT): lower --concurrency or raise max_connections."
        )
    raise DatabaseUnavailableError(
        f"cannot connect to {mask_dsn(dsn)}: {describe_connect_error(last)}. {advice}"
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


async def give_back(pool: asyncpg.Pool, conn: Connection, *, broken: bool) -> None:
    """Return a worker's connection to the pool; a broken one is closed so the pool replaces it.

    The pool may already have taken back a connection whose socket died, so both steps
    tolerate a connection that is no longer ours.
    """
    # Only pooled connections are held and given back.
    raw = cast("asyncpg.pool.PoolConnectionProxy[asyncpg.Record]", conn.raw)
    if broken:
        with contextlib.suppress(asyncpg.InterfaceError):
            raw.terminate()
    # The pool resets a connection given back (RESET ALL and the like); one the server
    # dropped before the client noticed (a shutdown, pg_terminate_backend) fails that
    # (57P01 "terminating connection", or asyncpg's InternalClientError), and the pool
    # has terminated it already. It escaped here and crashed the daemon's scanner, which
    # holds its claims' connection, at a server shutdown.
    with contextlib.suppress(*DRIVER_ERRORS):
        await asyncio.wait_for(pool.release(raw), 5)


async def ping(pool: asyncpg.Pool, *, timeout_s: float) -> bool:
    """True if a pooled connection answers SELECT 1 within the timeout."""
    try:
        async with pool.acquire(timeout=timeout_s) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return True
