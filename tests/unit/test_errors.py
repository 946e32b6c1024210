"""Database errors sorted into retryable and permanent, with messages a user can act on."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg import exceptions as pgx

from ingestd.db.errors import error_class, is_retryable, sqlstate_of, translate
from ingestd.exceptions import FileError, InternalError, RetryableError


def server_error(sqlstate: str, message: str, **fields: str) -> asyncpg.PostgresError:
    """A server error built the way asyncpg builds one from the wire protocol's fields.

    Field codes: C sqlstate, M message, D detail, H hint, W where/context.
    """
    return asyncpg.PostgresError.new({"C": sqlstate, "M": message, **fields})


def test_server_error_helper_builds_the_real_class() -> None:
    exc = server_error("22P02", "bad", W="COPY s, line 1")
    assert type(exc) is pgx.InvalidTextRepresentationError
    assert exc.context == "COPY s, line 1"


RETRYABLE: list[BaseException] = [
    pgx.AdminShutdownError("terminating connection due to administrator command"),
    pgx.CrashShutdownError("crash"),
    pgx.CannotConnectNowError("the database system is starting up"),
    pgx.SerializationError("could not serialize access"),
    pgx.DeadlockDetectedError("deadlock detected"),
    pgx.TooManyConnectionsError("too many clients"),
    pgx.LockNotAvailableError("could not obtain lock"),
    pgx.QueryCanceledError("canceling statement due to statement timeout"),
    pgx.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    pgx.ConnectionFailureError("connection failure"),
    pgx.InterfaceError("cannot perform operation: another operation is in progress"),
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
]

PERMANENT: list[BaseException] = [
    pgx.UniqueViolationError("duplicate key value violates unique constraint"),
    pgx.InvalidTextRepresentationError('invalid input syntax for type integer: "abc"'),
    pgx.NotNullViolationError("null value in column"),
    pgx.UndefinedColumnError('column "x" does not exist'),
    pgx.InsufficientPrivilegeError("permission denied for table t"),
    pgx.StringDataRightTruncationError("value too long"),
    ValueError("not a database error"),
    KeyError("k"),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: type(e).__name__)
def test_transient_errors_are_retryable(exc: BaseException) -> None:
    assert is_retryable(exc) is True


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_errors_are_not_retryable(exc: BaseException) -> None:
    assert is_retryable(exc) is False


def test_sqlstate_of() -> None:
    assert sqlstate_of(pgx.UniqueViolationError("x")) == "23505"
    assert sqlstate_of(pgx.DeadlockDetectedError("x")) == "40P01"
    assert sqlstate_of(ConnectionRefusedError()) is None
    # A non-asyncpg exception that happens to carry a sqlstate is not a server error.
    odd = ValueError("x")
    odd.sqlstate = "40001"  # type: ignore[attr-defined]
    assert sqlstate_of(odd) is None
    assert is_retryable(odd) is False


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: type(e).__name__)
def test_translate_retryable(exc: BaseException) -> None:
    out = translate(exc, first_row=5)
    assert type(out) is RetryableError
    assert str(out).endswith("(transient; will retry)")
    assert out.sqlstate == sqlstate_of(exc)


def test_translate_retryable_keeps_message_and_sqlstate() -> None:
    out = translate(pgx.SerializationError("could not serialize access"))
    assert isinstance(out, RetryableError)
    assert str(out) == "could not serialize access (transient; will retry)"
    assert out.sqlstate == "40001"


def test_translate_copy_error_points_at_the_file_row_and_column() -> None:
    exc = server_error(
        "22P02",
        'invalid input syntax for type integer: "abc"',
        W='COPY ingestd_stage_0123456789abcdef, line 3, column age: "abc"',
    )
    out = translate(exc, first_row=101)
    assert type(out) is FileError
    assert out.row == 103
    assert out.sqlstate == "22P02"
    assert str(out) == 'invalid input syntax for type integer: "abc" (row 103, column age)'


def test_translate_copy_error_without_column() -> None:
    exc = server_error(
        "22P04", "extra data after last expected column", W="COPY ingestd_stage_x, line 1"
    )
    out = translate(exc, first_row=1)
    assert out.row == 1
    assert out.sqlstate == "22P04"
    assert str(out) == "extra data after last expected column (row 1)"


def test_translate_reads_the_context_attribute_set_directly() -> None:
    exc = pgx.NotNullViolationError("null value in column")
    exc.context = "COPY ingestd_stage_x, line 10, column id: null input"
    out = translate(exc, first_row=1_000)
    assert out.row == 1_009
    assert "(row 1009, column id)" in str(out)


def test_translate_ignores_a_context_that_is_not_copy() -> None:
    exc = server_error("23505", "duplicate key", W='SQL statement "INSERT ..."')
    out = translate(exc, first_row=7)
    assert out.row is None
    assert str(out) == "duplicate key"


def test_translate_without_copy_context_has_no_row() -> None:
    out = translate(pgx.UniqueViolationError("duplicate key"), first_row=50)
    assert isinstance(out, FileError)
    assert out.row is None
    assert str(out) == "duplicate key"


def test_translate_keeps_detail_and_adds_a_hint() -> None:
    exc = server_error("42501", "permission denied for table orders", D="role app lacks INSERT")
    out = translate(exc)
    assert isinstance(out, FileError)
    assert out.sqlstate == "42501"
    assert str(out).startswith("permission denied for table orders")
    assert "role app lacks INSERT" in str(out)
    assert str(out).endswith(
        ". Hint: grant the role ingestd connects as the privilege named above (see deploy/sql)"
    )


def test_translate_shows_the_detail_once() -> None:
    exc = server_error(
        "22P02", "invalid input", D="role app lacks INSERT", W="COPY s, line 2, column a: x"
    )
    out = translate(exc, first_row=1)
    assert str(out).count("role app lacks INSERT") == 1


@pytest.mark.parametrize(
    ("sqlstate", "message", "fragment"),
    [
        (
            "42P10",
            "there is no unique or exclusion constraint matching the ON CONFLICT specification",
            "--mode merge",
        ),
        ("42703", 'column "x" of relation "t" does not exist', "fix --headers"),
        ("0A000", "MERGE not supported in WITH query", "PostgreSQL 15"),
        ("42P10", 'column "g" is a generated column', "GENERATED column"),
        ("428C9", 'cannot insert a non-DEFAULT value into column "g"', "GENERATED column"),
    ],
)
def test_translate_hints(sqlstate: str, message: str, fragment: str) -> None:
    assert fragment in str(translate(server_error(sqlstate, message)))


@pytest.mark.parametrize(
    ("sqlstate", "message", "wrong"),
    [
        # COPY naming a generated column is 42P10 too: not a missing key.
        ("42P10", 'column "g" is a generated column', "--mode merge"),
        # Any unsupported feature is 0A000: a server without XML support is not about MERGE.
        ("0A000", "unsupported XML feature", "MERGE"),
    ],
)
def test_translate_gives_no_hint_meant_for_another_cause(
    sqlstate: str, message: str, wrong: str
) -> None:
    assert wrong not in str(translate(server_error(sqlstate, message)))


def test_translate_makes_a_multi_line_trigger_error_one_line() -> None:
    exc = server_error(
        "P0001",
        "order rejected\nby policy",
        D="line one\nline two\r\n\n  line three\ttabbed\r",
    )
    out = str(translate(exc))
    assert "\n" not in out and "\r" not in out and "\t" not in out
    assert out == "order rejected / by policy (line one / line two / line three tabbed)"


def test_translate_bounds_a_long_message_and_detail() -> None:
    exc = server_error("P0001", "x" * 5000, D="y" * 5000)
    out = str(translate(exc))
    assert len(out) < 1000
    assert out.startswith("x" * 100) and "…" in out and "y" * 100 in out


def test_translate_one_line_for_transient_errors_too() -> None:
    out = translate(server_error("40P01", "deadlock\ndetected"))
    assert isinstance(out, RetryableError)
    assert str(out) == "deadlock / detected (transient; will retry)"


def test_translate_masks_passwords_in_messages_and_details() -> None:
    exc = server_error(
        "23505", "bad postgresql://u:topsecret@h/db", D="see host=h password=topsecret"
    )
    out = translate(exc)
    assert "topsecret" not in str(out)
    assert "postgresql://u:***@h/db" in str(out)


def test_translate_masks_passwords_in_retryable_messages() -> None:
    out = translate(OSError("cannot reach postgresql://u:topsecret@h/db"))
    assert isinstance(out, RetryableError)
    assert "topsecret" not in str(out)


def test_translate_empty_message_falls_back_to_type_name() -> None:
    assert str(translate(pgx.UniqueViolationError(""))) == "UniqueViolationError"


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (pgx.UniqueViolationError("x"), "uniqueviolation"),
        (pgx.DeadlockDetectedError("x"), "deadlockdetected"),
        (ConnectionRefusedError(), "connectionrefusederror"),
        (TimeoutError(), "timeouterror"),
    ],
)
def test_error_class_labels(exc: BaseException, label: str) -> None:
    assert error_class(exc) == label


def test_client_side_programming_errors_are_not_retried() -> None:
    # A wrong argument count is a bug: retrying it only hides it behind "unreachable".
    error = asyncpg.exceptions.InterfaceError(
        "the server expects 3 arguments for this query, 2 were passed"
    )
    assert not is_retryable(error)
    assert isinstance(translate(error), InternalError)  # a bug: never the file's fault


@pytest.mark.parametrize(
    "message",
    [
        "failure on connection marked as essential: 127.0.0.1:44015",
        "SSL SYSCALL error: EOF detected",
        "server closed the connection unexpectedly\n\tThis probably means the server terminated",
    ],
)
def test_a_citus_worker_lost_mid_statement_is_weather(message: str) -> None:
    # Seen as XX000 from the coordinator while a worker restarted mid-load (test_citus).
    exc = server_error("XX000", message)
    assert is_retryable(exc) is True
    assert type(translate(exc, first_row=1)) is RetryableError


def test_other_internal_errors_are_not_retried() -> None:
    exc = server_error("XX000", "could not find block containing chunk 0x55")
    assert is_retryable(exc) is False


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.InterfaceError(
            "cannot call Connection.execute(): connection has been released back to the pool"
        ),
        asyncpg.InterfaceError("cannot call Connection.fetchval(): connection is closed"),
        pgx.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
)
def test_a_connection_the_server_closed_says_so(exc: Exception) -> None:
    # asyncpg's words (its pool's bookkeeping) told an operator nothing: a waiting relay
    # connection ended by idle_in_transaction_session_timeout or pg_terminate_backend.
    error = translate(exc, first_row=1)
    assert type(error) is RetryableError
    assert str(error).startswith("the database connection was closed under this work (by")
    assert "pool" not in str(error) and str(error).endswith("(transient; will retry)")


def test_another_client_error_keeps_its_words() -> None:
    exc = asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    assert str(translate(exc, first_row=1)).startswith("cannot perform operation: another")
