"""Sort database errors into retryable (transient) and permanent (this file is bad)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg

from ingestd.db.dsn import mask_dsn
from ingestd.encode import record_at_line
from ingestd.exceptions import FileError, InternalError, RetryableError

# SQLSTATE classes and codes worth another attempt: the same statement may succeed later.
_RETRYABLE_CLASSES = ("08",)  # connection exception
_RETRYABLE_CODES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "53300",  # too_many_connections
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, shutting down)
    "57014",  # query_canceled (statement timeout hit by a stalled server)
    "58000",  # system_error
    "58030",  # io_error
}
# SQLSTATEs only ingestd's own statements can cause: no part of a file (its values, its
# column names, which reach SQL quoted) and no setting makes them. Each is a bug.
_BUG_CODES = {
    "08P01",  # protocol_violation: the driver and the server disagree on a message
    "25001",  # active_sql_transaction: BEGIN inside a transaction
    "25P01",  # no_active_sql_transaction
    "25P02",  # in_failed_sql_transaction: a statement after an error, before ROLLBACK
    "42601",  # syntax_error
    "42P02",  # undefined_parameter
    "42P08",  # ambiguous_parameter
    "42P18",  # indeterminate_datatype: a parameter whose type cannot be told
    "42725",  # ambiguous_function
}
_GENERATED_HINT = (
    "PostgreSQL computes a GENERATED column itself: leave it out of the file, or select "
    "the file's other columns with --headers"
)
# (SQLSTATE, a piece of the message, hint). One SQLSTATE covers several causes (42P10 is
# ON CONFLICT without a matching index, and also a generated column named in COPY), so a
# hint is given only where the message shows it is the true one.
_HINTS = (
    ("42501", "", "grant the role ingestd connects as the privilege named above (see deploy/sql)"),
    (
        "42P10",
        "ON CONFLICT",
        "the target table has no primary key or unique index on the key: add one, "
        "or use --mode merge",
    ),
    ("42P10", "is a generated column", _GENERATED_HINT),
    ("428C9", "", _GENERATED_HINT),  # generated_always: a value for a GENERATED column
    ("42703", "", "the target table lacks a column the file has: add it, or fix --headers"),
    ("0A000", "MERGE", "MERGE needs PostgreSQL 15 or newer: use --mode upsert"),
)
_PART_CHARS = 400  # each part of a message (PostgreSQL's, its detail) at most this long
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COPY_CONTEXT = re.compile(r"COPY \S+, line (?P<line>\d+)(?:, column (?P<column>\w+))?")

# What the driver raises: the server's errors, its own client-side errors (its interface's
# and its internal state's), and the socket's (OSError, a timeout). Only these are sorted
# here; an OSError from anything but a driver call (a file read) never comes here.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
DriverError = (
    asyncpg.PostgresError
    | asyncpg.InterfaceError
    | asyncpg.InternalClientError
    | OSError
    | TimeoutError
)

TRANSIENT_PYTHON_ERRORS = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, socket errors
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    # A table altered under a cached statement: asyncpg drops the statement; a retry
    # prepares it afresh.
    asyncpg.exceptions.InvalidCachedStatementError,
)
# Other client-side InterfaceErrors are bugs (wrong arguments...), not weather; only a
# connection that went away, or was left mid-operation by a timeout, is worth another
# attempt (on a new connection).
_STALE_CONNECTION = (
    "connection is closed",
    "connection was closed",
    "released back to the pool",
    "another operation is in progress",
    # Stopping: the pool closes under a worker still at work; the file stays pending.
    "pool is closing",
    "pool is closed",
)
# Of those, the texts of a connection the server or the network ended under a worker.
_CLOSED = ("connection is closed", "connection was closed", "released back to the pool")
_CLOSED_MESSAGE = (
    "the database connection was closed under this work (by the server: a restart, "
    "pg_terminate_backend, idle_in_transaction_session_timeout; or by the network)"
)
# Citus reports a worker connection lost mid-statement or mid-commit as XX000 (no SQLSTATE
# from libpq's own error), with libpq's text or its own: a worker restart, not the file.
_CITUS_CONNECTION_LOST = (
    "failure on connection marked as essential",
    "server closed the connection unexpectedly",
    "SSL SYSCALL error",
    "SSL connection has been closed unexpectedly",
    "connection not open",
    "could not receive data from server",
    "could not send data to server",
)


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a server error, if it is one."""
    return getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None


def is_retryable(exc: BaseException) -> bool:
    """True for errors where the same work may succeed on a new attempt."""
    if isinstance(exc, TRANSIENT_PYTHON_ERRORS):
        return True
    code = sqlstate_of(exc)
    if code == "XX000":
        return any(text in str(exc) for text in _CITUS_CONNECTION_LOST)
    if code is not None:
        return code in _RETRYABLE_CODES or code.startswith(_RETRYABLE_CLASSES)
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        return any(text in str(exc) for text in _STALE_CONNECTION)
    # The driver's own state went wrong ("cannot switch to state 15; another operation is
    # in progress", seen when the server shuts down mid-batch): never the file's fault; a
    # new connection starts clean.
    return isinstance(exc, asyncpg.InternalClientError)


_BAD_ARGUMENT = ("invalid input for query argument", "invalid input in executemany()")


def is_bug(exc: BaseException) -> bool:
    """True for driver errors only a mistake in ingestd causes: its own SQL refused, or a
    client-side error that is not a lost connection (wrong argument count or type)."""
    if is_retryable(exc):
        # Also raised by the driver itself, with a server SQLSTATE (08003 for a connection
        # that went away): weather, not a bug.
        return False
    if type(exc) is asyncpg.DataError and str(exc).startswith(_BAD_ARGUMENT):
        # Never sent: the driver could not encode an argument ingestd gave (a str for an
        # int). It carries class 22's SQLSTATE, like the server's data errors, which are
        # the file's (those are subclasses: 22P02 and the like).
        return True
    code = sqlstate_of(exc)
    if code is not None:
        return code in _BUG_CODES
    return isinstance(exc, asyncpg.InterfaceError)


def error_class(exc: BaseException) -> str:
    """A low-cardinality label for metrics: the SQLSTATE class name, or the Python type."""
    code = sqlstate_of(exc)
    if code is not None:
        return type(exc).__name__.removesuffix("Error").lower() or code
    return type(exc).__name__.lower()


def one_line(text: str, limit: int = _PART_CHARS) -> str:
    """`text` as one line of at most `limit` characters: a trigger's message or DETAIL may
    hold line breaks, and a summary line, a log field and a manifest note must not."""
    lines = (line.strip() for line in re.split(r"\r\n|\r|\n", text))
    flat = _CONTROL.sub(" ", " / ".join(line for line in lines if line))
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _hint(code: str | None, message: str) -> str | None:
    return next((h for c, part, h in _HINTS if c == code and part in message), None)


class BatchError(FileError):
    """A database error about a batch, whose row (if COPY named one) is still counted from
    the batch's first record: the caller, which knows where the batch starts in the file,
    places it with at()."""

    def __init__(
        self,
        parts: _Parts,
        *,
        record: int | None,
        column: str | None,
        sqlstate: str | None,
        error_class: str,
    ):
        self._parts = parts
        self.record = record
        self.column = column
        super().__init__(
            parts.text(record, column), row=record, sqlstate=sqlstate, error_class=error_class
        )

    def with_record(self, record: int) -> BatchError:
        """The same error, placed on record `record` of the batch (1-based) by a caller
        that found the row itself (a staged statement names none)."""
        placed = BatchError(
            self._parts,
            record=record,
            column=self.column,
            sqlstate=self.sqlstate,
            error_class=self.error_class or "",
        )
        placed.__cause__ = self.__cause__
        return placed

    def at(self, first_row: int) -> FileError:
        """The same error with its row numbered in the file (`first_row`: the file row of
        the batch's first record)."""
        return self.at_row(None if self.record is None else first_row - 1 + self.record)

    def at_row(self, row: int | None) -> FileError:
        """The same error naming file row `row` (a caller that numbers rows itself)."""
        return FileError(
            self._parts.text(row, self.column),
            row=row,
            sqlstate=self.sqlstate,
            error_class=self.error_class,
        )


@dataclass(frozen=True)
class _Parts:
    """A permanent error's message without its row: the primary message, DETAIL, hint."""

    message: str
    extra: str | None
    hint: str | None

    def text(self, row: int | None, column: str | None) -> str:
        detail = []
        if row is not None:
            detail.append(f"row {row}" + (f", column {column}" if column else ""))
        if self.extra:
            detail.append(self.extra)
        text = self.message + (f" ({'; '.join(detail)})" if detail else "")
        return text + (f". Hint: {self.hint}" if self.hint else "")


def translate(
    exc: DriverError,
    *,
    first_row: int = 1,
    payload: bytes | memoryview | None = None,
    quote: str = '"',
) -> FileError | RetryableError | InternalError:
    """Turn a database driver error into our error tree with a message for the user.

    `first_row` is the file row number of the batch's first row: COPY reports the line
    within the batch (`payload`, CSV quoted with `quote`), which this turns back into a
    position in the file. Only driver errors come here: anything else is a bug in ingestd
    and must travel up as it is (never "bad file", never "transient"); a driver error
    that shows a bug in ingestd (is_bug) comes back as an InternalError.
    """
    error = translate_batch(exc, payload=payload, quote=quote)
    return error.at(first_row) if isinstance(error, BatchError) else error


def translate_batch(
    exc: DriverError, *, payload: bytes | memoryview | None = None, quote: str = '"'
) -> BatchError | RetryableError | InternalError:
    """translate(), with a COPY error's row left for the caller to place (BatchError.at)."""
    if not isinstance(exc, DRIVER_ERRORS):
        raise TypeError(f"not a database driver error: {exc!r}") from exc
    code = sqlstate_of(exc)
    label = error_class(exc)
    # asyncpg's str() appends DETAIL and HINT lines; take the primary message alone.
    primary = getattr(exc, "message", None) or str(exc).strip().split("\n", 1)[0]
    message = one_line(mask_dsn(primary or type(exc).__name__))
    if is_bug(exc):
        return InternalError(
            f"the database refused ingestd's own request (a bug in ingestd): {message}",
            sqlstate=code,
            error_class=label,
        )
    if is_retryable(exc):
        closed = (asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError)
        if isinstance(exc, closed) and any(t in message for t in _CLOSED):
            # asyncpg's words name its own bookkeeping; the server's reason (a timeout, an
            # administrator, a restart) went to the log with the connection.
            message = _CLOSED_MESSAGE
        return RetryableError(
            f"{message} (transient; will retry)", sqlstate=code, error_class=label
        )
    record = column = None
    context = getattr(exc, "context", None) or ""  # libpq field W: "COPY x, line 3, column y"
    match = _COPY_CONTEXT.search(context)
    if match:
        line = int(match.group("line"))
        record = record_at_line(payload, line, quote) if payload else line
        column = match.group("column")
    extra = getattr(exc, "detail", None)
    parts = _Parts(message, one_line(mask_dsn(str(extra))) if extra else None, _hint(code, message))
    return BatchError(parts, record=record, column=column, sqlstate=code, error_class=label)


@contextlib.contextmanager
def driver_errors(*, payload: bytes | memoryview | None = None, quote: str = '"') -> Iterator[None]:
    """Around one call into the driver: its errors come out translated, chained to the
    original (an InternalError when the call itself was wrong); anything else passes
    untouched (a bug is not the database's weather)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise translate_batch(exc, payload=payload, quote=quote) from exc
