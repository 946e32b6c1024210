"""One function per benchmark case. Each prepares the database, runs one client process,
checks what landed, and returns a Measurement."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import data
from bench.server import ChildRun, Server, psql_path, run_child, wait_child, watch_rss

TARGET = "bench_t"  # typed table with a primary key: every CSV case loads into it
SOURCE = "bench_src"  # the full data set, loaded once, to prepare half-full / full targets
PARQUET_TARGET = "bench_pq"  # created by ingestd --preserve-types
SMALL_TARGET = "bench_small"
MANIFEST = "ingestion_manifest"
TIMEOUT_S = 1800.0


class CaseError(RuntimeError):
    """A case could not run or loaded the wrong thing."""


class CaseSkipped(RuntimeError):
    """A case that cannot run here (e.g. a peer whose optional package is missing)."""


@dataclass
class Measurement:
    """One run of one case."""

    case: str
    rows: int
    nbytes: int
    wall_s: float
    client_cpu_s: float | None = None
    server_cpu_s: float | None = None
    peak_rss_mb: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """How big each case is (the full suite, or --quick)."""

    rows: int
    small_files: int = 2_000
    small_rows: int = 100
    daemon_files: int = 200
    daemon_interval_s: float = 0.05
    big_factor: int = 4  # memory flatness: a file this many times bigger


@dataclass
class Files:
    """The generated inputs (cached under bench/data/)."""

    csv: Path
    parquet: Path
    halves: tuple[Path, Path]
    small_dir: Path
    daemon_dir: Path
    big_csv: Path | None = None


@dataclass
class Bench:
    """What every case needs."""

    srv: Server
    sizes: Sizes
    files: Files
    workdir: Path
    python: str = sys.executable
    verified: set[str] = field(default_factory=set)  # cases whose values were compared


def prepare_files(sizes: Sizes, *, big: bool, log: Callable[[str], None]) -> Files:
    """Build (or reuse) every input file."""
    n = sizes.rows
    half = n // 2
    log(f"data: {n:,} rows CSV + Parquet (cached in {data.DATA_DIR})")
    csv = data.csv_file(1, n)
    parquet = data.parquet_file(1, n)
    halves = (
        data.csv_file(1, half, name=f"half_a_v{data.FORMAT_VERSION}_{n}.csv"),
        data.csv_file(half + 1, n - half, name=f"half_b_v{data.FORMAT_VERSION}_{n}.csv"),
    )
    small_first = 10**9  # keys far away from the big files' keys
    log(f"data: {sizes.small_files:,} small files of {sizes.small_rows} rows")
    small_dir = data.small_file_set(small_first, sizes.small_files, sizes.small_rows)
    daemon_dir = data.small_file_set(2 * small_first, sizes.daemon_files, sizes.small_rows)
    big_csv = None
    if big:
        log(f"data: {n * sizes.big_factor:,} rows CSV for memory flatness")
        big_csv = data.csv_file(1, n * sizes.big_factor)
    return Files(csv, parquet, halves, small_dir, daemon_dir, big_csv)


# --- database preparation ----------------------------------------------------------------


def setup_database(b: Bench) -> None:
    """Fresh tables, and the source table loaded with the whole data set (via \\copy)."""
    srv = b.srv
    for table in (TARGET, SOURCE, PARQUET_TARGET, SMALL_TARGET, MANIFEST):
        srv.execute(f"DROP TABLE IF EXISTS {table}")
    srv.execute(data.table_ddl(TARGET))
    srv.execute(data.table_ddl(SMALL_TARGET))
    srv.execute(data.table_ddl(SOURCE))
    _psql_copy(b, SOURCE, b.files.csv)
    srv.execute(f"VACUUM ANALYZE {SOURCE}")


def _psql_copy(b: Bench, table: str, path: Path) -> ChildRun:
    run = run_child([psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", b.srv.dsn,
                     "-c", _copy_command(table, path)], timeout_s=TIMEOUT_S)  # fmt: skip
    _check(run, "psql \\copy")
    return run


def _copy_command(table: str, path: Path) -> str:
    quoted = str(path).replace("'", "''")
    return (
        f"\\copy {table} FROM '{quoted}' "
        f"WITH (FORMAT csv, DELIMITER '{data.DELIMITER}', ENCODING 'LATIN1')"
    )


def _fresh(b: Bench, table: str = TARGET, *, fill: str | None = None) -> None:
    """Empty the target (and the manifest), optionally refill it from the source table.

    fill="half": the even keys, with different values (so an upsert updates them);
    fill="all": the same rows as the file.
    """
    srv = b.srv
    srv.execute(f"TRUNCATE {table}")
    if srv.value("SELECT to_regclass($1) IS NOT NULL", MANIFEST):
        srv.execute(f"TRUNCATE {MANIFEST}")
    cols = ", ".join(data.COLUMNS)
    if fill == "half":
        changed = ", ".join(
            "razao_social || ' (antiga)'"
            if c == "razao_social"
            else ("capital_social + 1" if c == "capital_social" else c)
            for c in data.COLUMNS
        )
        srv.execute(
            f"INSERT INTO {table} ({cols}) SELECT {changed} FROM {SOURCE} WHERE {data.PK} % 2 = 0"
        )
    elif fill == "all":
        srv.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {SOURCE}")
    srv.execute(f"VACUUM ANALYZE {table}")
    srv.checkpoint()


def _count(b: Bench, table: str) -> int:
    return int(b.srv.value(f"SELECT count(*) FROM {table}"))


def _expect_rows(b: Bench, table: str, expected: int, case: str) -> None:
    got = _count(b, table)
    if got != expected:
        raise CaseError(f"{case}: {table} holds {got:,} rows, expected {expected:,}")


def _check(run: ChildRun, what: str) -> None:
    if run.returncode != 0:
        tail = "\n".join(run.stderr.strip().splitlines()[-15:])
        raise CaseError(f"{what} exited with {run.returncode}:\n{tail}")


REPO = Path(__file__).resolve().parents[1]


def child_pythonpath() -> str:
    """PYTHONPATH for children: bench.naive runs from the work dir, so the repo goes on it,
    after whatever is there already (run.py puts an --ingestd-rev snapshot first)."""
    current = os.environ.get("PYTHONPATH")
    return f"{current}{os.pathsep}{REPO}" if current else str(REPO)


def _measured(b: Bench, case: str, args: Sequence[str], rows: int, nbytes: int) -> Measurement:
    """Run one client process; wall, client CPU and peak RSS from its rusage, server CPU
    from the postgres processes' times before and after."""
    b.srv.checkpoint()
    before = b.srv.cpu_seconds()
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    run = run_child(args, timeout_s=TIMEOUT_S, cwd=b.workdir, env=env)
    after = _server_cpu_settled(b)
    _check(run, case)
    server_cpu = None if before is None or after is None else after - before
    return Measurement(case, rows, nbytes, run.wall_s, run.cpu_s, server_cpu, run.maxrss_mb)


def _server_cpu_settled(b: Bench) -> float | None:
    """Server CPU once the client's backends have exited and been reaped by the postmaster
    (until then their time is in neither the live children nor the reaped total)."""
    time.sleep(0.3)
    return b.srv.cpu_seconds()


# --- ingestd command lines ---------------------------------------------------------------


def _csv_contract(table: str, mode: str) -> list[str]:
    return [
        "--table", table, "--pk", data.PK, "--mode", mode, "--file-type", "csv",
        "--no-header", "--headers", ",".join(data.COLUMNS),
        "--delimiter", data.DELIMITER, "--encoding", data.ENCODING,
    ]  # fmt: skip


def _ingestd(b: Bench, *args: str) -> list[str]:
    return [
        b.python, "-m", "ingestd", "--dsn", b.srv.dsn, "--metrics-addr", "off",
        "--log-level", "WARNING", "--state-dir", str(b.workdir / "state"), *args,
    ]  # fmt: skip


def _size(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths)


# --- the limits ----------------------------------------------------------------------------


def psql_copy(b: Bench) -> Measurement:
    """psql \\copy of the CSV into the typed table: the limit for append."""
    _fresh(b)
    args = [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", b.srv.dsn,
            "-c", _copy_command(TARGET, b.files.csv)]  # fmt: skip
    m = _measured(b, "psql_copy", args, b.sizes.rows, _size(b.files.csv))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    return m


def sql_upsert(b: Bench) -> Measurement:
    """Temp table + \\copy + INSERT ... ON CONFLICT DO UPDATE, into a half-full table."""
    _fresh(b, fill="half")
    cols = ", ".join(data.COLUMNS)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in data.COLUMNS if c != data.PK)
    script = b.workdir / "sql_upsert.sql"
    script.write_text(
        "BEGIN;\n"
        f"CREATE TEMP TABLE stage (LIKE {TARGET}) ON COMMIT DROP;\n"
        f"{_copy_command('stage', b.files.csv)}\n"
        f"INSERT INTO {TARGET} ({cols}) SELECT {cols} FROM stage "
        f"ON CONFLICT ({data.PK}) DO UPDATE SET {sets};\n"
        "COMMIT;\n"
    )
    args = [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", b.srv.dsn, "-f", str(script)]
    stats = _settled_stats(b)
    m = _measured(b, "sql_upsert", args, b.sizes.rows, _size(b.files.csv))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    _add_tuple_deltas(b, m, stats)
    return m


def _settled_stats(b: Bench) -> tuple[int, int]:
    """The target's tuple counters once the admin connection's own writes (the refill)
    have reached them: a backend flushes its statistics at most once a second."""
    time.sleep(1.1)
    return b.srv.table_stats(TARGET)


def _add_tuple_deltas(b: Bench, m: Measurement, before: tuple[int, int]) -> None:
    # Statistics reach the shared counters when a backend ends or within about a second.
    time.sleep(1.1)
    ins, upd = b.srv.table_stats(TARGET)
    m.extra["n_tup_ins"] = ins - before[0]
    m.extra["n_tup_upd"] = upd - before[1]


def _measured_parallel(
    b: Bench, case: str, commands: Sequence[Sequence[str]], rows: int, nbytes: int
) -> Measurement:
    """Several client processes started together: wall until the last exits, their CPU
    summed, the highest peak RSS."""
    b.srv.checkpoint()
    before = b.srv.cpu_seconds()
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        procs = []
        for args in commands:
            err = stack.enter_context(tempfile.TemporaryFile())
            proc = subprocess.Popen(list(args), cwd=b.workdir, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
            watch_rss(proc)
            procs.append((proc, err))
        results = [wait_child(proc, TIMEOUT_S) for proc, _ in procs]
        wall = time.perf_counter() - started
        for (code, _, _), (_, err) in zip(results, procs, strict=True):
            if code != 0:
                err.seek(0)
                tail = "\n".join(err.read().decode(errors="replace").splitlines()[-15:])
                raise CaseError(f"{case} exited with {code}:\n{tail}")
    after = _server_cpu_settled(b)
    server_cpu = None if before is None or after is None else after - before
    return Measurement(case, rows, nbytes, wall, sum(cpu for _, cpu, _ in results), server_cpu,
                       max(rss for _, _, rss in results))  # fmt: skip


def psql_halves2(b: Bench) -> Measurement:
    """Two psql \\copy sessions at once, one per half of the CSV, two connections."""
    _fresh(b)
    commands = [
        [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", b.srv.dsn,
         "-c", _copy_command(TARGET, half)]
        for half in b.files.halves
    ]  # fmt: skip
    m = _measured_parallel(b, "psql_halves2", commands, b.sizes.rows, _size(*b.files.halves))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    return m


# --- peers (bench/peers.py, each its own process) -------------------------------------------


def _peer_available(case: str, family: str) -> None:
    missing = [m for m in peers_modules(family) if importlib.util.find_spec(m) is None]
    if missing:
        raise CaseSkipped(
            f"{case}: {', '.join(missing)} not installed; the peers are the optional "
            "'bench' extra: pip install -e '.[bench]' (make bench installs it)"
        )


def peers_modules(family: str) -> tuple[str, ...]:
    from bench.peers import MODULES

    return MODULES.get(family, ())


def _peer(b: Bench, case: str, method: str, source: Path, *, fill: str | None = None,
          family: str = "") -> Measurement:  # fmt: skip
    if family:
        _peer_available(case, family)
    _fresh(b, fill=fill)
    args = [b.python, "-m", "bench.peers", method, str(source), b.srv.dsn, TARGET]
    stats = _settled_stats(b) if fill is not None else None
    m = _measured(b, case, args, b.sizes.rows, _size(source))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    if stats is not None:
        _add_tuple_deltas(b, m, stats)
    if case not in b.verified:
        _expect_source_values(b, case)
        b.verified.add(case)
    return m


def _expect_source_values(b: Bench, case: str) -> None:
    """Every value as psql \\copy loaded it (bench_src): a peer that read a date, a
    decimal or an empty string otherwise would not be measuring the same load."""
    cols = ", ".join(data.COLUMNS)
    differ = b.srv.value(
        f"SELECT count(*) FROM (SELECT {cols} FROM {TARGET} "
        f"EXCEPT ALL SELECT {cols} FROM {SOURCE}) d"
    )
    if differ:
        raise CaseError(f"{case}: {differ:,} rows differ from what psql \\copy loaded")


def asyncpg_raw_copy(b: Bench) -> Measurement:
    """The CSV's bytes -> asyncpg copy_to_table (CSV COPY), one connection."""
    return _peer(b, "asyncpg_raw_copy", "raw-copy", b.files.csv)


def asyncpg_raw_upsert(b: Bench) -> Measurement:
    """The CSV's bytes -> temp table -> ON CONFLICT DO UPDATE, one transaction."""
    return _peer(b, "asyncpg_raw_upsert", "raw-upsert", b.files.csv, fill="half")


def adbc_csv(b: Bench) -> Measurement:
    """pyarrow's CSV reader (typed) -> ADBC adbc_ingest (binary COPY)."""
    return _peer(b, "adbc_csv", "adbc-csv", b.files.csv, family="adbc")


def adbc_parquet(b: Bench) -> Measurement:
    """Parquet -> ADBC adbc_ingest (binary COPY)."""
    return _peer(b, "adbc_parquet", "adbc-parquet", b.files.parquet, family="adbc")


def duckdb_parquet(b: Bench) -> Measurement:
    """DuckDB's postgres extension: INSERT INTO the attached table FROM read_parquet."""
    return _peer(b, "duckdb_parquet", "duckdb-parquet", b.files.parquet, family="duckdb")


def duckdb_csv(b: Bench) -> Measurement:
    """DuckDB's postgres extension: INSERT INTO the attached table FROM read_csv."""
    return _peer(b, "duckdb_csv", "duckdb-csv", b.files.csv, family="duckdb")


def pgpq_parquet(b: Bench) -> Measurement:
    """Probe: Parquet -> pgpq -> asyncpg binary COPY into the typed table."""
    return _peer(b, "pgpq_parquet", "pgpq-parquet", b.files.parquet, family="pgpq")


def pgpq_csv_text(b: Bench) -> Measurement:
    """Probe: CSV -> pyarrow (all text) -> pgpq -> binary COPY into a text stage ->
    INSERT ... SELECT with casts, per batch of 100,000 rows."""
    return _peer(b, "pgpq_csv_text", "pgpq-csv-text", b.files.csv, family="pgpq")


def pgpq_parquet_2conn(b: Bench) -> Measurement:
    """Probe: as pgpq_parquet, one COPY per 100,000-row batch over two connections."""
    return _peer(b, "pgpq_parquet_2conn", "pgpq-parquet-2conn", b.files.parquet, family="pgpq")


def pgpq_csv_text_2conn(b: Bench) -> Measurement:
    """Probe: as pgpq_csv_text over two connections (one reading thread)."""
    return _peer(b, "pgpq_csv_text_2conn", "pgpq-csv-text-2conn", b.files.csv, family="pgpq")


# --- ingestd -------------------------------------------------------------------------------


def ingestd_append_csv(b: Bench) -> Measurement:
    """ingestd --mode append of the CSV into the empty typed table, one worker."""
    _fresh(b)
    args = _ingestd(
        b, *_csv_contract(TARGET, "append"), "--concurrency", "1", "--files", str(b.files.csv)
    )
    m = _measured(b, "ingestd_append_csv", args, b.sizes.rows, _size(b.files.csv))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    return m


def ingestd_split2(b: Bench) -> Measurement:
    """The same file at --concurrency 2: cut into two segments, loaded by both workers."""
    _fresh(b)
    # Default settings split a file of 64 MB or more in two here; a smaller one (--quick)
    # needs smaller segments: a third of it still makes two (one per worker).
    size = b.files.csv.stat().st_size
    split = [] if size >= 64 << 20 else ["--split-mb", f"{size / 3 / (1 << 20):.3f}"]
    args = _ingestd(
        b, *_csv_contract(TARGET, "append"), "--concurrency", "2", *split,
        "--files", str(b.files.csv),
    )  # fmt: skip
    m = _measured(b, "ingestd_split2", args, b.sizes.rows, _size(b.files.csv))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    segments = b.srv.value(
        f"SELECT cardinality(segment_ends) FROM {MANIFEST} WHERE filename = $1",
        str(b.files.csv.resolve()),
    )
    if segments != 2:
        raise CaseError(f"ingestd_split2: the file was cut into {segments} segments, not 2")
    return m


def ingestd_upsert_csv(b: Bench) -> Measurement:
    """ingestd --mode upsert of the CSV into the half-full table."""
    return _ingestd_upsert(b, "ingestd_upsert_csv")


def ingestd_upsert_c1(b: Bench) -> Measurement:
    """The same upsert on one connection (--concurrency 1): no second connection stages the
    next batch while one merges (ingestd.relay)."""
    return _ingestd_upsert(b, "ingestd_upsert_c1", "--concurrency", "1")


def ingestd_upsert_bad(b: Bench) -> Measurement:
    """The upsert of a copy of the CSV with a value that does not cast in 1 row of 1,000,
    allowed by --max-bad-rows: each batch is sorted out (ingestd.reject)."""
    path, keys = data.dirty_csv(b.files.csv, 1_000)
    _fresh(b, fill="half")
    args = _ingestd(b, *_csv_contract(TARGET, "upsert"), "--files", str(path),
                    "--max-bad-rows", "1%")  # fmt: skip
    m = _measured(b, "ingestd_upsert_bad", args, b.sizes.rows, _size(path))
    # The half-full table holds the even keys: a bad row of an odd key adds no row.
    _expect_rows(b, TARGET, b.sizes.rows - sum(k % 2 for k in keys), m.case)
    rejected = b.srv.value(f"SELECT sum(rows_rejected) FROM {MANIFEST}")
    if rejected != len(keys):
        raise CaseError(f"{m.case}: {rejected} rows rejected, expected {len(keys):,}")
    m.extra["rows_rejected"] = len(keys)
    return m


def _ingestd_upsert(b: Bench, case: str, *extra: str) -> Measurement:
    _fresh(b, fill="half")
    args = _ingestd(b, *_csv_contract(TARGET, "upsert"), "--files", str(b.files.csv), *extra)
    stats = _settled_stats(b)
    m = _measured(b, case, args, b.sizes.rows, _size(b.files.csv))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    _add_tuple_deltas(b, m, stats)
    return m


def ingestd_rerun_csv(b: Bench) -> Measurement:
    """The unchanged file again with --no-resume: every row is read and compared, none written.

    Runs right after ingestd_upsert_csv; on its own it first loads the file (not timed).
    """
    loaded = b.srv.value(
        f"SELECT count(*) FROM {MANIFEST} WHERE status = 'success' AND filename = $1",
        str(b.files.csv.resolve()),
    ) if b.srv.value("SELECT to_regclass($1) IS NOT NULL", MANIFEST) else 0  # fmt: skip
    args = _ingestd(b, *_csv_contract(TARGET, "upsert"), "--files", str(b.files.csv))
    if not loaded or _count(b, TARGET) != b.sizes.rows:
        _fresh(b)
        _check(run_child(args, timeout_s=TIMEOUT_S, cwd=b.workdir), "ingestd first load")
    b.srv.execute(f"VACUUM ANALYZE {TARGET}")
    stats = _settled_stats(b)
    m = _measured(b, "ingestd_rerun_csv", [*args, "--no-resume"], b.sizes.rows,
                  _size(b.files.csv))  # fmt: skip
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    _add_tuple_deltas(b, m, stats)
    return m


def ingestd_parquet(b: Bench) -> Measurement:
    """ingestd --preserve-types --mode append of the Parquet file (ingestd creates the table)."""
    return _ingestd_parquet(b, "ingestd_parquet")


def ingestd_parquet_text(b: Bench) -> Measurement:
    """The same with binary COPY off: every batch as CSV text (the path before pgpq)."""
    return _ingestd_parquet(b, "ingestd_parquet_text", "--binary-copy", "false")


def ingestd_parquet_1conn(b: Bench) -> Measurement:
    """The same on one connection (--split-mb 0): the file's row groups in order, unsplit."""
    return _ingestd_parquet(b, "ingestd_parquet_1conn", "--split-mb", "0")


def _ingestd_parquet(b: Bench, case: str, *extra: str) -> Measurement:
    b.srv.execute(f"DROP TABLE IF EXISTS {PARQUET_TARGET}")
    _fresh(b)
    args = _ingestd(
        b, "--table", PARQUET_TARGET, "--pk", data.PK, "--mode", "append", "--preserve-types",
        "--file-type", "parquet", "--files", str(b.files.parquet), *extra,
    )  # fmt: skip
    m = _measured(b, case, args, b.sizes.rows, _size(b.files.parquet))
    _expect_rows(b, PARQUET_TARGET, b.sizes.rows, m.case)
    types = b.srv.value(
        "SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum) "
        "FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0",
        PARQUET_TARGET,
    )
    want = ",".join(pg for _, pg, _ in data.SCHEMA)
    if types != want:
        raise CaseError(f"ingestd_parquet: column types {types}, expected {want}")
    b.srv.execute(f"DROP TABLE {PARQUET_TARGET}")
    return m


def ingestd_concurrency2(b: Bench) -> Measurement:
    """Two files (the two halves of the CSV) at --concurrency 2, append."""
    _fresh(b)
    a, c = b.files.halves
    args = _ingestd(
        b, *_csv_contract(TARGET, "append"), "--concurrency", "2", "--files", str(a), str(c)
    )
    m = _measured(b, "ingestd_concurrency2", args, b.sizes.rows, _size(a, c))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    return m


def ingestd_append_default(b: Bench) -> Measurement:
    """ingestd --mode append of the CSV at its default concurrency and split size."""
    _fresh(b)
    args = _ingestd(b, *_csv_contract(TARGET, "append"), "--files", str(b.files.csv))
    m = _measured(b, "ingestd_append_default", args, b.sizes.rows, _size(b.files.csv))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    return m


def naive_tuples(b: Bench) -> Measurement:
    """csv.reader tuples -> copy_records_to_table -> INSERT ... SELECT (a reference point)."""
    _fresh(b)
    args = [b.python, "-m", "bench.naive", str(b.files.csv), b.srv.dsn, TARGET]
    m = _measured(b, "naive_tuples", args, b.sizes.rows, _size(b.files.csv))
    _expect_rows(b, TARGET, b.sizes.rows, m.case)
    return m


def small_files(b: Bench) -> Measurement:
    """Many small files in one --once run of the inbox, default concurrency and mode."""
    return _small_files(b, "small_files")


def small_files_c2(b: Bench) -> Measurement:
    """The same at --concurrency 2 (what a default from the machine gives on 2 cores)."""
    return _small_files(b, "small_files_c2", "--concurrency", "2")


def small_files_c1(b: Bench) -> Measurement:
    """The same at --concurrency 1."""
    return _small_files(b, "small_files_c1", "--concurrency", "1")


def _small_files(b: Bench, case: str, *extra: str) -> Measurement:
    _fresh(b, SMALL_TARGET)
    paths = sorted(b.files.small_dir.glob("*.csv"))
    args = _ingestd(b, *_csv_contract(SMALL_TARGET, "upsert"), "--once", "--inbox",
                    str(b.files.small_dir), "--keep-files", *extra)  # fmt: skip
    m = _measured(b, case, args, len(paths) * b.sizes.small_rows, _size(*paths))
    _expect_rows(b, SMALL_TARGET, len(paths) * b.sizes.small_rows, m.case)
    span = b.srv.value(
        f"SELECT extract(epoch FROM max(processed_at) - min(started_at)) FROM {MANIFEST} "
        "WHERE status = 'success'"
    )
    m.extra["files"] = len(paths)
    m.extra["files_per_s"] = len(paths) / m.wall_s
    m.extra["files_per_s_loading"] = len(paths) / float(span) if span else 0.0
    # CPU a file: on a shared machine wall time moves with the neighbours, CPU much less.
    if m.client_cpu_s is not None:
        m.extra["client_ms_per_file"] = m.client_cpu_s * 1000 / len(paths)
    if m.server_cpu_s is not None:
        m.extra["server_ms_per_file"] = m.server_cpu_s * 1000 / len(paths)
    return m


def daemon_latency(b: Bench) -> Measurement:
    """Small files renamed one by one into a running daemon's inbox (default settings).

    Latency: the manifest's processed_at (set when the row turns success) minus the wall
    clock time of the rename, per file.
    """
    _fresh(b, SMALL_TARGET)
    root = b.workdir / "daemon"
    shutil.rmtree(root, ignore_errors=True)
    staging, inbox = root / "staging", root / "inbox"
    shutil.copytree(b.files.daemon_dir, staging, ignore=shutil.ignore_patterns(".*"))
    inbox.mkdir()
    names = sorted(p.name for p in staging.glob("*.csv"))
    port = _free_port()
    args = _ingestd(b, *_csv_contract(SMALL_TARGET, "upsert"), "--inbox", str(inbox))
    args[args.index("--metrics-addr") + 1] = f"127.0.0.1:{port}"
    log_path = root / "ingestd.log"
    before = b.srv.cpu_seconds()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, cwd=b.workdir, stdout=subprocess.DEVNULL, stderr=log)
        watch_rss(proc)
        try:
            _wait_ready(port, proc, log_path)
            renamed: dict[str, float] = {}
            started = time.perf_counter()
            for name in names:
                os.rename(staging / name, inbox / name)
                renamed[name] = time.time()
                time.sleep(b.sizes.daemon_interval_s)
            rows = _wait_manifest(b, len(names), proc, log_path)
            wall = time.perf_counter() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            code, cpu, rss = wait_child(proc, 60)
    after = _server_cpu_settled(b)
    if code != 0:
        raise CaseError(f"daemon exited with {code}: {log_path.read_text()[-2000:]}")
    latencies = sorted(processed.timestamp() - renamed[name] for name, processed in rows)
    m = Measurement(
        "daemon_latency",
        len(names) * b.sizes.small_rows,
        _size(*(inbox.parent / "done").rglob("*.csv")),
        wall,
        cpu,
        None if before is None or after is None else after - before,
        rss,
    )
    m.extra["files"] = len(names)
    m.extra["p50_s"] = statistics.median(latencies)
    m.extra["p99_s"] = _percentile(latencies, 0.99)
    m.extra["max_s"] = latencies[-1]
    return m


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, min(len(values), int(-(-q * len(values) // 1))))
    return values[rank - 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CaseError(f"daemon died at start: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise CaseError("daemon not ready after 60 s")


def _wait_manifest(
    b: Bench, files: int, proc: subprocess.Popen[bytes], log_path: Path
) -> list[tuple[str, dt.datetime]]:
    deadline = time.monotonic() + max(120.0, files * 1.0)
    query = f"SELECT filename, processed_at FROM {MANIFEST} WHERE status = 'success'"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CaseError(f"daemon died: {log_path.read_text()[-2000:]}")
        if b.srv.value("SELECT to_regclass($1) IS NOT NULL", MANIFEST):
            rows = b.srv.fetch(query)
            if len(rows) >= files:
                return [(str(r[0]), r[1]) for r in rows]
        time.sleep(0.1)
    raise CaseError(f"daemon did not load {files} files in time")


def _instances(b: Bench, count: int) -> Measurement:
    """`count` daemons (distinct --instance-id) share one inbox of small files and one
    database: files/s and rows/s until every file is loaded (issue #7)."""
    _fresh(b, SMALL_TARGET)
    root = b.workdir / f"instances{count}"
    shutil.rmtree(root, ignore_errors=True)
    inbox = root / "inbox"
    shutil.copytree(b.files.small_dir, inbox, ignore=shutil.ignore_patterns(".*"))
    names = sorted(p.name for p in inbox.glob("*.csv"))
    nbytes = _size(*inbox.glob("*.csv"))
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    before = b.srv.cpu_seconds()
    started = time.perf_counter()
    try:
        for i in range(count):
            port = _free_port()
            args = _ingestd(b, *_csv_contract(SMALL_TARGET, "upsert"), "--inbox", str(inbox),
                            "--instance-id", f"bench-{i}")  # fmt: skip
            args[args.index("--metrics-addr") + 1] = f"127.0.0.1:{port}"
            log_path = root / f"ingestd-{i}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(args, cwd=b.workdir, stdout=subprocess.DEVNULL, stderr=log)
            watch_rss(proc)
            procs.append((proc, log_path))
        _wait_manifest(b, len(names), procs[0][0], procs[0][1])
        wall = time.perf_counter() - started
        per_owner = f"SELECT count(*) FROM {MANIFEST} GROUP BY owner ORDER BY 1"
        shares = [int(r[0]) for r in b.srv.fetch(per_owner)]
    finally:
        results = []
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            results.append(wait_child(proc, 60))
    after = _server_cpu_settled(b)
    for (code, _, _), (_, log_path) in zip(results, procs, strict=True):
        if code != 0:
            raise CaseError(f"instance exited with {code}: {log_path.read_text()[-2000:]}")
    m = Measurement(
        f"instances_{count}",
        len(names) * b.sizes.small_rows,
        nbytes,
        wall,
        sum(cpu for _, cpu, _ in results),
        None if before is None or after is None else after - before,
        max(rss for _, _, rss in results),
    )
    m.extra["files"] = len(names)
    m.extra["files_per_s"] = len(names) / wall
    m.extra["instances"] = count
    m.extra["share_min"] = min(shares) if shares else 0
    m.extra["share_max"] = max(shares) if shares else 0
    return m


def instances_1(b: Bench) -> Measurement:
    """One daemon on the small-file inbox (the base for instances_2 and instances_3)."""
    return _instances(b, 1)


def instances_2(b: Bench) -> Measurement:
    """Two daemons share the small-file inbox."""
    return _instances(b, 2)


def instances_3(b: Bench) -> Measurement:
    """Three daemons share the small-file inbox."""
    return _instances(b, 3)


def memory_big(b: Bench) -> Measurement:
    """ingestd append of a file big_factor times larger, at defaults (as
    ingestd_append_default): peak RSS should stay flat."""
    if b.files.big_csv is None:
        raise CaseError("memory_big needs the big file (not built in --quick)")
    _fresh(b)
    rows = b.sizes.rows * b.sizes.big_factor
    args = _ingestd(b, *_csv_contract(TARGET, "append"), "--files", str(b.files.big_csv))
    m = _measured(b, "memory_big", args, rows, _size(b.files.big_csv))
    _expect_rows(b, TARGET, rows, m.case)
    return m


Case = Callable[[Bench], Measurement]

# In run order; each repeat runs them all again, so cases alternate.
CASES: dict[str, Case] = {
    "psql_copy": psql_copy,
    "psql_halves2": psql_halves2,
    "asyncpg_raw_copy": asyncpg_raw_copy,
    "adbc_csv": adbc_csv,
    "adbc_parquet": adbc_parquet,
    "duckdb_parquet": duckdb_parquet,
    "duckdb_csv": duckdb_csv,
    "ingestd_append_default": ingestd_append_default,
    "ingestd_append_csv": ingestd_append_csv,
    "ingestd_split2": ingestd_split2,
    "sql_upsert": sql_upsert,
    "asyncpg_raw_upsert": asyncpg_raw_upsert,
    "ingestd_upsert_csv": ingestd_upsert_csv,
    "ingestd_rerun_csv": ingestd_rerun_csv,
    "ingestd_upsert_c1": ingestd_upsert_c1,
    "ingestd_upsert_bad": ingestd_upsert_bad,
    "ingestd_parquet": ingestd_parquet,
    "ingestd_parquet_text": ingestd_parquet_text,
    "ingestd_parquet_1conn": ingestd_parquet_1conn,
    "ingestd_concurrency2": ingestd_concurrency2,
    "naive_tuples": naive_tuples,
    "small_files": small_files,
    "small_files_c2": small_files_c2,
    "small_files_c1": small_files_c1,
    "daemon_latency": daemon_latency,
    "memory_big": memory_big,
    "instances_1": instances_1,
    "instances_2": instances_2,
    "instances_3": instances_3,
    "pgpq_parquet": pgpq_parquet,
    "pgpq_parquet_2conn": pgpq_parquet_2conn,
    "pgpq_csv_text": pgpq_csv_text,
    "pgpq_csv_text_2conn": pgpq_csv_text_2conn,
}
# bench/probe_binary.py's cases: run only when named in --only.
PROBES = {"pgpq_parquet", "pgpq_parquet_2conn", "pgpq_csv_text", "pgpq_csv_text_2conn"}
ONCE = {"memory_big"}  # measured in the first repeat only (slow, and not a speed number)

# Issue 17's formats: bench/formats.py uses this module's helpers, so it is imported last.
from bench.formats import FORMAT_CASES  # noqa: E402

CASES.update(FORMAT_CASES)
