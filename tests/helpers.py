"""Small helpers the tests share: CSV bodies, file delivery, counts, log lines, slow targets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from tests.pg import Db


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write a text file (creating folders) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def csv_rows(n: int, start: int = 1, value: str = "v{}") -> str:
    """A CSV `id,v` of `n` rows, ids counting from `start`; `value` formats the id into v."""
    return "id,v\n" + "".join(f"{i},{value.format(i)}\n" for i in range(start, start + n))


def touch(path: Path, text: str = "id\n1\n") -> Path:
    """A small file (folders created), for tests that need a file more than its content."""
    return write(path, text)


def drop(folder: Path, name: str | bytes, text: str) -> Path:
    """Deliver a file the safe way: write a dot-file beside it, then rename it into place.

    `name` may be bytes (a name that is not UTF-8). The dot-file has a short fixed name so
    that a name at the length limit can still be delivered.
    """
    final = folder / os.fsdecode(name)
    tmp = write(final.parent / ".incoming.tmp", text)
    os.rename(tmp, final)
    return final


def row_count(db: Db, table: str = "t", *, unreachable: int | None = None) -> int:
    """Rows in `table` (0 before it exists); `unreachable` instead of raising while the
    server is down, for tests that stop it."""
    try:
        return int(db.val(f"SELECT count(*) FROM {table}"))
    except asyncpg.UndefinedTableError:
        return 0
    except Exception:  # a server starting, stopping or gone fails in many ways
        if unreachable is None:
            raise
        return unreachable


def counts(db: Db, table: str = "t") -> tuple[int, int]:
    """(rows, distinct ids) in `table`: equal when no row was loaded twice."""
    return (
        int(db.val(f"SELECT count(*) FROM {table}")),
        int(db.val(f"SELECT count(DISTINCT id) FROM {table}")),
    )


def files_with_status(db: Db, status: str) -> int:
    """Manifest rows with `status` (0 before the manifest exists)."""
    try:
        return int(db.val("SELECT count(*) FROM ingestion_manifest WHERE status = $1", status))
    except asyncpg.UndefinedTableError:
        return 0


def slow_inserts(db: Db, table: str, sleep_s: float) -> None:
    """Every INSERT statement into `table` (which must exist) takes `sleep_s`: a test can act
    between two batches."""
    db.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
               f"$$ BEGIN PERFORM pg_sleep({sleep_s}); RETURN NULL; END $$")  # fmt: skip
    db.execute(
        f"CREATE TRIGGER slow AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION slow()"
    )


def log_events(text: str, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines in `text` (stderr of --log-format json), only event `name` if given."""
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [e for e in events if name is None or e.get("event") == name]


def unix_socket(dsn: str) -> str | None:
    """The server's Unix socket when the DSN names a socket folder (the embedded server)."""
    parts = urlsplit(dsn)
    host = parse_qs(parts.query).get("host", [""])[0]
    return f"{host}/.s.PGSQL.{parts.port or 5432}" if host.startswith("/") else None


def without_root_powers() -> tuple[str, ...]:
    """A command prefix under which chmod 000 really denies (root reads anything); skips the
    test as root without setpriv. Both sets go: an inheritable capability would come back."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: chmod 000 cannot deny a read")
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--")


# Peak RSS as the child's own memory map saw it (ingestd's metric reads VmHWM, which
# starts afresh at exec; ru_maxrss keeps the forked parent's peak, a pytest of 500 MB).
_PEAK = (
    "import runpy, sys\n"
    "sys.argv = ['ingestd', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('ingestd', run_name='__main__')\n"
    "finally:\n"
    "    from ingestd.metrics import peak_rss_bytes\n"
    "    print('peak_rss_kb', peak_rss_bytes() // 1024, file=sys.stderr)\n"
)


def run_with_peak(
    args: list[str], timeout: float, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `ingestd ARGS` in a child; its result and its own peak RSS in bytes."""
    command = [sys.executable, "-c", _PEAK, *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )
    return result, int(result.stderr.rsplit("peak_rss_kb", 1)[1].split()[0]) * 1024


def run_measuring_peak(args: list[str], timeout: float) -> int:
    """Run `ingestd ARGS` in a child that must exit 0; the child's peak RSS in bytes."""
    result, peak = run_with_peak(args, timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return peak
