"""Which driver errors are a bug in ingestd (InternalError), weather (RetryableError) or
the file's fault (BatchError): by who raised them and their SQLSTATE."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg.exceptions._base import DataError as ClientDataError

from ingestd.db.errors import BatchError, translate_batch
from ingestd.exceptions import InternalError, RetryableError


def _server(code: str, message: str) -> asyncpg.PostgresError:
    """An error as the server sends it (with a severity)."""
    error = asyncpg.PostgresError.new({"C": code, "M": message, "S": "ERROR", "V": "ERROR"})
    assert isinstance(error, asyncpg.PostgresError)
    return error


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_server("42601", 'syntax error at or near "WHERE"'), InternalError),
        (_server("25P02", "current transaction is aborted"), InternalError),
        (_server("42P18", "could not determine data type of parameter $1"), InternalError),
        (ClientDataError("invalid input for query argument $1: 'x'"), InternalError),
        (asyncpg.exceptions.DataError("invalid input for query argument $3: '2'"), InternalError),
        (asyncpg.InterfaceError("the server expects 2 arguments, 3 were passed"), InternalError),
        (_server("22P02", "invalid input syntax for type integer"), BatchError),
        (_server("23505", "duplicate key value violates unique constraint"), BatchError),
        (_server("42501", "permission denied for table t"), BatchError),
        (_server("42703", 'column "x" of relation "t" does not exist'), BatchError),
        (_server("57P01", "terminating connection due to administrator command"), RetryableError),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), RetryableError),
        (
            asyncpg.InterfaceError("cannot call Connection.fetchval(): connection is closed"),
            RetryableError,
        ),
        (asyncpg.InterfaceError("pool is closing"), RetryableError),
        (ConnectionResetError(104, "Connection reset by peer"), RetryableError),
    ],
)
def test_sorted_by_who_caused_it(exc: BaseException, kind: type) -> None:
    error = translate_batch(exc)  # type: ignore[arg-type]
    assert isinstance(error, kind), error
    if kind is InternalError:
        assert "a bug in ingestd" in str(error)
