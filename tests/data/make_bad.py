"""Regenerate the bad-input corpus in tests/data/bad/ (run from the repository root)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

BAD = Path(__file__).parent / "bad"

CSV = {
    "malformed_quoting.csv": b'id,v\n1,"ab"c"\n2,ok\n',
    "ragged_too_many.csv": b"id,v\n1,a\n2,b,extra\n",
    "ragged_too_few.csv": b"id,v\n1,a\n2\n",
    "invalid_utf8.csv": b"id,v\n1,caf\xe9\n",
    "nul_bytes.csv": b"id,v\n1,a\x00b\n",
    "header_duplicate.csv": b"id,v,v\n1,a,b\n",
    "header_empty.csv": b"id,,v\n1,a,b\n",
    "header_long.csv": b"id," + b"c" * 70 + b"\n1,a\n",
    "header_non_ascii.csv": "id,café\n1,a\n".encode(),
    "header_injection.csv": b'id,"id; DROP TABLE x"\n1,a\n',
    "header_quote.csv": b'id,"""a"""\n1,a\n',
    "header_mismatch.csv": b"id,other\n1,a\n",
    "zero_byte.csv": b"",
    "not_csv.csv": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
}


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def main() -> None:
    BAD.mkdir(exist_ok=True)
    for name, data in CSV.items():
        (BAD / name).write_bytes(data)
    good = _parquet(pa.table({"id": ["1", "2"], "v": ["a", "b"]}))
    (BAD / "truncated.parquet").write_bytes(good[: len(good) // 2] + good[-8:])
    nested = pa.table({"id": ["1"], "v": pa.array([[1, 2]], pa.list_(pa.int64()))})
    (BAD / "nested.parquet").write_bytes(_parquet(nested))
    (BAD / "csv_named_parquet.parquet").write_bytes(b"id,v\n1,a\n")
    (BAD / "parquet_named_csv.csv").write_bytes(good)


if __name__ == "__main__":
    main()
