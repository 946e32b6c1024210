"""Probe for issue #14: could one Arrow -> binary COPY path replace ingestd's two readers?

python -m bench.probe_binary                      # 1,000,000 rows, 3 repeats
python -m bench.probe_binary --repeat 1 --ingestd-rev HEAD

1. Client only, in this process, no server: CPU and wall to read each file with pyarrow
   (Parquet; CSV typed, as ADBC's path reads it; CSV as text) and to encode it with pgpq
   into COPY BINARY, per row.
2. Loads, measured by bench.run (same server, data and accounting as `make bench`):
   Parquet -> pgpq -> binary COPY (one stream; or per batch over two connections) against
   ingestd's Parquet path and ADBC; CSV read as text -> pgpq -> binary COPY into a text
   stage -> `INSERT ... SELECT` with casts (PostgreSQL still casts every value) against the
   raw CSV COPY (psql, asyncpg, ingestd).

Reports: bench/data/probe-binary-client.md and bench/data/probe-binary.md (git-ignored).
Needs the bench extra (pgpq, ADBC): pip install -e '.[dev,bench]'.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from bench import data, peers, run

LOADS = [
    "psql_copy", "asyncpg_raw_copy", "ingestd_append_csv", "ingestd_append_default",
    "adbc_csv", "pgpq_csv_text", "pgpq_csv_text_2conn",
    "ingestd_parquet", "adbc_parquet", "pgpq_parquet", "pgpq_parquet_2conn",
]  # fmt: skip
OUT = data.DATA_DIR / "probe-binary.md"
CLIENT_OUT = data.DATA_DIR / "probe-binary-client.md"


def _drain(batches: Iterator[pa.RecordBatch]) -> tuple[int, int]:
    rows = nbytes = 0
    for batch in batches:
        rows += batch.num_rows
        nbytes += batch.nbytes
    return rows, nbytes


def _encode(batches: pa.RecordBatchReader) -> tuple[int, int]:
    from pgpq import ArrowToPostgresBinaryEncoder

    encoder = ArrowToPostgresBinaryEncoder(batches.schema)
    rows, nbytes = 0, len(encoder.write_header())
    for batch in batches:
        rows += batch.num_rows
        nbytes += len(encoder.write_batch(batch))
    return rows, nbytes + len(encoder.finish())


def client_costs(csv: Path, parquet: Path, repeat: int) -> str:
    """Median CPU and wall of reading (and encoding) each file, as a markdown table."""
    steps: list[tuple[str, Callable[[], tuple[int, int]]]] = [
        ("Parquet read (pyarrow, batches of 100,000)",
         lambda: _drain(peers.parquet_reader(str(parquet)))),
        ("Parquet read + pgpq encode", lambda: _encode(peers.parquet_reader(str(parquet)))),
        ("CSV read typed (pyarrow, as the ADBC case)",
         lambda: _drain(peers.csv_reader(str(csv)))),
        ("CSV read typed + pgpq encode", lambda: _encode(peers.csv_reader(str(csv)))),
        ("CSV read as text (pyarrow)", lambda: _drain(peers.csv_reader(str(csv), as_text=True))),
        ("CSV read as text + pgpq encode",
         lambda: _encode(peers.csv_reader(str(csv), as_text=True))),
    ]  # fmt: skip
    lines = [
        "| step | rows | output MB | CPU s | wall s | CPU µs/row |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, step in steps:
        cpu, wall = [], []
        for _ in range(repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            rows, nbytes = step()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        c, w = sorted(cpu)[len(cpu) // 2], sorted(wall)[len(wall) // 2]
        lines.append(
            f"| {name} | {rows:,} | {nbytes / 1e6:.1f} | {c:.2f} | {w:.2f} | {c / rows * 1e6:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.probe_binary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ingestd-rev", metavar="REV", help="as bench.run's --ingestd-rev")
    p.add_argument("--client-only", action="store_true", help="skip the loads (no server)")
    args = p.parse_args(argv)

    csv, parquet = data.csv_file(1, args.rows), data.parquet_file(1, args.rows)
    run.log("client-only costs (no server)")
    table = client_costs(csv, parquet, args.repeat)
    CLIENT_OUT.parent.mkdir(parents=True, exist_ok=True)
    CLIENT_OUT.write_text(
        f"# Client-only costs, {args.rows:,} rows, median of {args.repeat}\n\n"
        "CPU: this process, every thread (time.process_time).\n\n" + table
    )
    print(table)
    if args.client_only:
        return 0
    load_args = ["--only", *LOADS, "--repeat", str(args.repeat), "--rows", str(args.rows),
                 "--output", str(OUT)]  # fmt: skip
    if args.ingestd_rev:
        load_args += ["--ingestd-rev", args.ingestd_rev]
    return run.main(load_args)


if __name__ == "__main__":
    sys.exit(main())
