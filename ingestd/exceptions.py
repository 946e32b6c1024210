"""The error tree: what the user did wrong, what is wrong with a file, what may pass."""

from __future__ import annotations


class IngestdError(Exception):
    """Base of every error ingestd raises on purpose; the message is written for the user."""


class UsageError(IngestdError):
    """Bad flag, bad configuration or unusable environment: exit 2, nothing touched."""


class FileError(IngestdError):
    """A permanent problem with one file: it fails alone and goes to the failed directory."""

    def __init__(
        self,
        message: str,
        *,
        row: int | None = None,
        sqlstate: str | None = None,
        error_class: str | None = None,
    ):
        super().__init__(message)
        self.row = row
        self.sqlstate = sqlstate
        self.error_class = error_class  # set by the database layer: the db error metric's label


class RetryableError(IngestdError):
    """Transient trouble (connection lost, server restarting, deadlock): retry with backoff."""

    def __init__(
        self, message: str, *, sqlstate: str | None = None, error_class: str | None = None
    ):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.error_class = error_class  # set by the database layer: the db error metric's label


class InternalError(Exception):
    """A bug in ingestd that the database layer met: its own SQL refused (a syntax error,
    an unknown function), or arguments the driver could not send. Deliberately not an
    IngestdError: it travels up like any bug (internal_error, the file stays pending in
    the inbox), never blamed on the file and never retried as weather."""

    def __init__(
        self, message: str, *, sqlstate: str | None = None, error_class: str | None = None
    ):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.error_class = error_class


class DatabaseUnavailableError(IngestdError):
    """The database cannot be reached at all after the configured attempts."""


class ConnectError(RetryableError):
    """No connection could be had: the database is down or unreachable."""


class Interrupted(IngestdError):
    """A stop was requested; the file stays pending and resumes on the next run."""


class HandedOver(IngestdError):
    """Another instance took the file over (this one's lease had expired): leave it be."""
