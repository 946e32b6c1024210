"""`python -m bench.citus`: 1 M rows into a plain, a partitioned and a distributed table.

Starts a Citus coordinator and two workers on loopback (tests/citus/cluster.py; build
Citus first with `tests/citus/build.sh`), so every table lives on the same coordinator
with the same settings. Prints one Markdown table; asserts rows, never time.

python -m bench.citus                 # 1,000,000 rows
python -m bench.citus --rows 100000   # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.citus.cluster import Cluster
from tests.pg import Db

REPO = Path(__file__).resolve().parents[1]
BINDIR = REPO / "build/citus/root/usr/lib/postgresql/15/bin"
MONTHS = 12

TABLES = {
    "plain": "CREATE TABLE {t} (tenant_id int, id bigint, day date, v text, "
    "PRIMARY KEY (tenant_id, id, day))",
    "partitioned": "CREATE TABLE {t} (tenant_id int, id bigint, day date, v text, "
    "PRIMARY KEY (tenant_id, id, day)) PARTITION BY RANGE (day)",
    "distributed": "CREATE TABLE {t} (tenant_id int, id bigint, day date, v text, "
    "PRIMARY KEY (tenant_id, id, day)); SELECT create_distributed_table('{t}', 'tenant_id')",
}


def _write(path: Path, rows: int, start: int = 0) -> Path:
    with path.open("w") as out:
        out.write("tenant_id,id,day,v\n")
        for i in range(start, start + rows):
            out.write(f"{i % 97},{i},2024-{1 + i % MONTHS:02d}-{1 + i % 28:02d},value {i}\n")
    return path


def _ingestd(dsn: str, table: str, mode: str, files: list[Path], *extra: str) -> float:
    cmd = [
        sys.executable, "-m", "ingestd", "--once", "--files", *map(str, files), "--dsn", dsn,
        "--table", table, "--pk", "tenant_id,id,day", "--mode", mode,
        "--metrics-addr", "off", "--log-level", "WARNING", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{table} {mode}: {done.stderr[-2000:]}")
    return took


def _fresh(db: Db, kind: str, table: str) -> None:
    db.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    db.execute("DROP TABLE IF EXISTS ingestion_manifest, ingestion_rejects")
    for statement in TABLES[kind].format(t=table).split("; "):
        db.execute(statement)
    if kind == "partitioned":
        for m in range(1, MONTHS + 1):
            db.execute(
                f"CREATE TABLE {table}_m{m} PARTITION OF {table} "
                f"FOR VALUES FROM ('2024-{m:02d}-01') TO ('{2024 + m // 12}-{m % 12 + 1:02d}-01')"
            )


def _sql_stages(db: Db, rows: int) -> list[tuple[str, float]]:
    """The same upsert from a coordinator temp table and from a colocated distributed
    unlogged stage (the merge pushed down to the workers), in SQL alone."""
    db.execute("DROP TABLE IF EXISTS s_dist, s_co CASCADE")
    for statement in TABLES["distributed"].format(t="s_dist").split("; "):
        db.execute(statement)
    db.execute("CREATE UNLOGGED TABLE s_co (tenant_id int, id bigint, day date, v text, n bigint)")
    db.execute("SELECT create_distributed_table('s_co', 'tenant_id', colocate_with => 's_dist')")
    fill = (
        "SELECT i % 97, i, date '2024-01-01' + (i % 300), 'value ' || i, i "
        f"FROM generate_series(0, {rows - 1}) AS i"
    )
    upsert = (
        "INSERT INTO s_dist AS t SELECT DISTINCT ON (tenant_id, id, day) tenant_id, id, day, v "
        "FROM {src} ORDER BY tenant_id, id, day, n DESC ON CONFLICT (tenant_id, id, day) "
        "DO UPDATE SET v = EXCLUDED.v WHERE t.v IS DISTINCT FROM EXCLUDED.v"
    )
    out = []
    script = (
        "BEGIN; CREATE TEMP TABLE s_tmp (tenant_id int, id bigint, day date, v text, n bigint);"
        f"INSERT INTO s_tmp {fill}; {upsert.format(src='s_tmp')}; COMMIT"
    )
    out.append(("temp stage on the coordinator", _timed(db, script)))
    db.execute("TRUNCATE s_dist")
    script = f"BEGIN; INSERT INTO s_co {fill}; {upsert.format(src='s_co')}; COMMIT"
    out.append(("colocated distributed unlogged stage", _timed(db, script)))
    return out


def _check(db: Db, rows: int) -> None:
    got = db.val("SELECT count(*) FROM b")
    if got != rows:
        raise SystemExit(f"b holds {got} rows, not {rows}")


def _timed(db: Db, script: str) -> float:
    started = time.perf_counter()
    db.execute(script)
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.citus", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    ns = p.parse_args()
    if not (BINDIR / "postgres").exists():
        print("build Citus first: tests/citus/build.sh", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="ingestd-bench-citus-"))
    root.chmod(0o755)
    cluster = Cluster(BINDIR, root / "nodes")
    try:
        cluster.start()
        dsn = cluster.coordinator.dsn
        db = Db(dsn)
        data = root / "data"
        data.mkdir()
        one = _write(data / "all.csv", ns.rows)
        quarter = ns.rows // 4
        parts = [_write(data / f"part{n}.csv", quarter, n * quarter) for n in range(4)]
        print(f"{ns.rows:,} rows, {os.cpu_count()} cores; coordinator and 2 workers on loopback\n")
        print("| target | mode | files x concurrency | seconds | rows/s |")
        print("| --- | --- | --- | --- | --- |")
        for kind in ("plain", "partitioned", "distributed"):
            for mode in ("append", "upsert"):
                _fresh(db, kind, "b")
                took = _ingestd(dsn, "b", mode, [one])
                _check(db, ns.rows)
                print(f"| {kind} | {mode} | 1 x 1 | {took:.1f} | {ns.rows / took:,.0f} |")
        for cap in (1, 2, 4):
            _fresh(db, "distributed", "b")
            extra = ("--concurrency", "4", "--distributed-concurrency", str(cap))
            took = _ingestd(dsn, "b", "upsert", parts, *extra)
            _check(db, quarter * 4)
            print(
                f"| distributed, distributed_concurrency {cap} | upsert | 4 x 4 | {took:.1f} "
                f"| {quarter * 4 / took:,.0f} |"
            )
        print("\n| SQL upsert of the rows into a distributed table, staged in | seconds |")
        print("| --- | --- |")
        for name, took in _sql_stages(db, ns.rows):
            print(f"| {name} | {took:.1f} |")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
