"""Backfill bench (issue 20): N rows x 11 columns into a table with a primary key and three
secondary indexes, four ways side by side:

  psql_indexed      psql \\copy with the indexes in place
  psql_drop_build   drop the three, psql \\copy, CREATE INDEX each (one session, as by hand)
  ingestd_indexed   ingestd --once append, indexes in place
  ingestd_backfill  ingestd --once append --backfill (drop, load, rebuild in parallel, ANALYZE)

plus ingestd's peak RSS and its progress ETA at the half-way point against the real
remaining load time. Default 20,000,000 rows (about 2.6 GB of CSV, cached under
bench/data/); --quick: 1,000,000 rows.

    python -m bench.backfill [--quick | --rows N] [--dsn DSN] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import data
from bench.cases import child_pythonpath
from bench.server import Server, psql_path, wait_child, watch_rss

TABLE = "bench_bf"
MANIFEST = "ingestion_manifest"
TIMEOUT_S = 4 * 3600.0
# The three secondary indexes: a text column, a composite, a date (typical lookups).
INDEXES = (
    f"CREATE INDEX bench_bf_razao ON {TABLE} (razao_social)",
    f"CREATE INDEX bench_bf_uf_mun ON {TABLE} (uf, municipio)",
    f"CREATE INDEX bench_bf_inicio ON {TABLE} (data_inicio)",
)
MAINTENANCE_WORK_MEM = "512MB"  # ingestd's backfill default, given to the manual case too


@dataclass
class Result:
    case: str
    wall_s: float
    load_s: float | None = None  # ingestd: until the last batch (before the rebuild)
    rss_mb: float | None = None
    eta_error: float | None = None  # |ETA - real remaining| / real remaining at half-way


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _fresh(srv: Server, *, indexed: bool) -> None:
    for table in (TABLE, MANIFEST, "ingestion_rejects", "ingestion_backfill_indexes"):
        srv.execute(f"DROP TABLE IF EXISTS {table}")
    srv.execute(data.table_ddl(TABLE))
    if indexed:
        for ddl in INDEXES:
            srv.execute(ddl)
    srv.checkpoint()


def _psql(srv: Server, *commands: str) -> float:
    args = [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", srv.dsn]
    for c in commands:
        args += ["-c", c]
    started = time.perf_counter()
    subprocess.run(args, check=True, timeout=TIMEOUT_S)
    return time.perf_counter() - started


def _copy(path: Path) -> str:
    quoted = str(path).replace("'", "''")
    return (
        f"\\copy {TABLE} FROM '{quoted}' "
        f"WITH (FORMAT csv, DELIMITER '{data.DELIMITER}', ENCODING 'LATIN1')"
    )


def psql_indexed(srv: Server, csv: Path) -> Result:
    _fresh(srv, indexed=True)
    return Result("psql_indexed", _psql(srv, _copy(csv)))


def psql_drop_build(srv: Server, csv: Path) -> Result:
    _fresh(srv, indexed=True)
    started = time.perf_counter()
    _psql(srv, *(f"DROP INDEX {ddl.split()[2]}" for ddl in INDEXES))
    load = _psql(srv, _copy(csv))
    _psql(srv, f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'", *INDEXES)
    _psql(srv, f"ANALYZE {TABLE}")
    return Result("psql_drop_build", time.perf_counter() - started, load_s=load)


def _ingestd(srv: Server, csv: Path, workdir: Path, case: str, *extra: str) -> Result:
    _fresh(srv, indexed=True)
    args = [
        sys.executable, "-m", "ingestd", "--once", "--files", str(csv), "--dsn", srv.dsn,
        "--metrics-addr", "off", "--log-format", "json", "--state-dir", str(workdir / "state"),
        "--table", TABLE, "--pk", data.PK, "--mode", "append", "--file-type", "csv",
        "--no-header", "--headers", ",".join(data.COLUMNS),
        "--delimiter", data.DELIMITER, "--encoding", data.ENCODING, *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=err)
        watch_rss(proc)
        code, _, rss = wait_child(proc, TIMEOUT_S)
        wall = time.perf_counter() - started
        err.seek(0)
        lines = err.read().decode(errors="replace").splitlines()
    if code != 0:
        raise SystemExit(f"{case}: ingestd exited {code}:\n" + "\n".join(lines[-15:]))
    events = [json.loads(line) for line in lines if line.startswith("{")]
    load, eta_error = _load_and_eta(events)
    return Result(case, wall, load_s=load, rss_mb=rss, eta_error=eta_error)


def _stamp(event: dict[str, object]) -> float:
    # The log's time has millisecond precision ("2026-12-01 16:29:58,540").
    text = str(event["time"])
    return time.mktime(time.strptime(text[:19], "%Y-%m-%d %H:%M:%S")) + int(text[20:23]) / 1000


def _load_and_eta(events: list[dict[str, object]]) -> tuple[float | None, float | None]:
    """(load seconds, relative ETA error at the first progress line past half-way)."""
    batches = [e for e in events if e.get("event") == "batch_committed"]
    progress = [e for e in events if e.get("event") == "progress" and e.get("bytes_total")]
    if not batches:
        return None, None
    first = _stamp(events[0])
    end = _stamp(batches[-1])
    half = next(
        (p for p in progress if int(str(p["bytes_done"])) * 2 >= int(str(p["bytes_total"]))), None
    )
    error = None
    if half is not None and half.get("eta_s") is not None:
        remaining = end - _stamp(half)
        if remaining > 0:
            error = abs(float(str(half["eta_s"])) - remaining) / remaining
    return end - first, error


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="1,000,000 rows (CI)")
    p.add_argument("--rows", type=int, help="rows (default 20,000,000)")
    p.add_argument("--dsn", help="use this server instead of an embedded one (tables dropped!)")
    cases = ["psql_indexed", "psql_drop_build", "ingestd_indexed", "ingestd_backfill"]
    p.add_argument("--only", nargs="+", choices=cases)
    p.add_argument("--output", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    rows = args.rows or (1_000_000 if args.quick else 20_000_000)
    log(f"data: {rows:,} rows")
    csv = data.csv_file(1, rows)
    size = csv.stat().st_size
    workdir = Path(tempfile.mkdtemp(prefix="ingestd-bench-bf-"))
    srv = Server(args.dsn, workdir)
    results: list[Result] = []
    load_before = os.getloadavg()
    try:
        cases = {
            "psql_indexed": lambda: psql_indexed(srv, csv),
            "psql_drop_build": lambda: psql_drop_build(srv, csv),
            "ingestd_indexed": lambda: _ingestd(srv, csv, workdir, "ingestd_indexed"),
            "ingestd_backfill": lambda: _ingestd(
                srv, csv, workdir, "ingestd_backfill", "--backfill"
            ),
        }
        for name, case in cases.items():
            if args.only and name not in args.only:
                continue
            log(f"{name} ...")
            r = case()
            got = int(srv.value(f"SELECT count(*) FROM {TABLE}"))
            indexes = int(srv.value("SELECT count(*) FROM pg_indexes WHERE tablename = $1", TABLE))
            if got != rows or indexes != 1 + len(INDEXES):
                raise SystemExit(f"{name}: {got:,} rows and {indexes} indexes after the run")
            log(f"{name}: {r.wall_s:.1f} s")
            results.append(r)
    finally:
        srv.close()
    report = _report(results, rows, size, srv.version, load_before)
    print(report)
    if args.output:
        args.output.write_text(report + "\n")
    return 0


def _report(results: list[Result], rows: int, size: int, version: str,
            load_before: tuple[float, float, float]) -> str:  # fmt: skip
    base = next((r.wall_s for r in results if r.case == "psql_indexed"), None)
    lines = [
        f"backfill bench: {rows:,} rows x 11 columns ({size / 1e9:.2f} GB CSV), PK + 3 "
        f"secondary indexes; PostgreSQL {version}; {os.cpu_count()} CPUs; load average "
        f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after",
        "",
        "| case | wall s | x psql_indexed | rows/s | load s | peak RSS MB "
        "| ETA error at half-way |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratio = f"{r.wall_s / base:.2f}" if base else ""
        load = f"{r.load_s:.1f}" if r.load_s is not None else ""
        rss = f"{r.rss_mb:.0f}" if r.rss_mb else ""
        eta = f"{100 * r.eta_error:.0f}%" if r.eta_error is not None else ""
        lines.append(f"| {r.case} | {r.wall_s:.1f} | {ratio} | {rows / r.wall_s:,.0f} | {load} "
                     f"| {rss} | {eta} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
