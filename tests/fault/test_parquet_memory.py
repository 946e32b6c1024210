"""A Parquet append at the defaults: its memory above ingestd's own start-up is a few
batches, whatever the file's size (issue 14 goal 4: flat as the file grows).

Measured as the child's peak RSS above that of the same load of a tiny file, so the
imports (~80 MB, most of the peak) are not counted: what is left is what the load holds.
"""

from __future__ import annotations

import datetime as dt
import decimal
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import run_with_peak
from tests.pg import Db

pytestmark = [pytest.mark.fault, pytest.mark.slow]
MB = 1 << 20
GROUP = 100_000  # rows per row group, as bench's file


def write_rows(path: Path, rows: int, seed: int = 7) -> Path:
    """Rows shaped like bench's companies file: a key, texts, small ints, a decimal, a date."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghij klmnop", k=rng.randint(8, 60))) for _ in range(997)]
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("kind", pa.int32()),
            ("size", pa.int16()),
            ("capital", pa.decimal128(18, 2)),
            ("since", pa.date32()),
            ("email", pa.string()),
        ]
    )
    with pq.ParquetWriter(str(path), schema) as writer:
        for start in range(0, rows, GROUP):
            ids = range(start, min(start + GROUP, rows))
            writer.write_table(
                pa.table(
                    {
                        "id": pa.array(ids, pa.int64()),
                        "name": pa.array([words[i % 997] + str(i) for i in ids]),
                        "kind": pa.array([i % 2000 for i in ids], pa.int32()),
                        "size": pa.array([i % 5 for i in ids], pa.int16()),
                        "capital": pa.array(
                            [decimal.Decimal(i * 37).scaleb(-2) for i in ids],
                            pa.decimal128(18, 2),
                        ),
                        "since": pa.array(
                            [dt.date(1990, 1, 1) + dt.timedelta(days=i % 9000) for i in ids]
                        ),
                        "email": pa.array([f"{words[i % 991][:12]}{i}@example.com" for i in ids]),
                    },
                    schema=schema,
                )
            )
    return path


def peak_of(dsn: str, f: Path, table: str, *extra: str) -> int:
    """Peak RSS (bytes) of ingestd --once --preserve-types loading `f` at the defaults."""
    args = [
        "--once", "--files", str(f), "--dsn", dsn, "--table", table, "--pk", "id",
        "--mode", "append", "--preserve-types", "--metrics-addr", "off", "--keep-files",
        "--state-dir", str(f.parent / f"state-{table}"), *extra,
    ]  # fmt: skip
    result, peak = run_with_peak(args, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return peak


def test_parquet_memory_is_a_few_batches_and_flat(dsn: str, db: Db, tmp_path: Path) -> None:
    tiny = write_rows(tmp_path / "tiny.parquet", 1_000)
    one = write_rows(tmp_path / "one.parquet", 400_000)
    four = write_rows(tmp_path / "four.parquet", 1_600_000)
    base = peak_of(dsn, tiny, "pm_tiny")
    above_one = peak_of(dsn, one, "pm_one") - base
    above_four = peak_of(dsn, four, "pm_four") - base
    assert db.val("SELECT count(*) FROM pm_one") == 400_000
    assert db.val("SELECT count(*) FROM pm_four") == 1_600_000
    assert db.val("SELECT count(DISTINCT id) FROM pm_four") == 1_600_000
    # Two binary pieces in flight (one in the database, the next encoded meanwhile) and
    # the reader's decode buffers: ~50 MB here. Arrow batches regrouped and kept for a
    # redo (64 MB), or two segments on two cores (97 MB at 4x), broke these bounds.
    assert above_one < 58 * MB, f"{above_one / MB:.0f} MB above start-up"
    assert above_four < 58 * MB, f"{above_four / MB:.0f} MB above start-up"
    # Flat: 4x the rows within 10% of the peak (issue 14 goal 4).
    assert base + above_four <= 1.10 * (base + above_one), (above_one / MB, above_four / MB)
