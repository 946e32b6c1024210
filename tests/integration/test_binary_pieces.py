"""Binary COPY pieces encoded as the Parquet rows are decoded (ingestd.binary_pieces) mean
what the CSV text path means: pieces of both kinds in one file (rows binary COPY cannot
carry go as text), a refusal in a later piece (its rows read again from the file for the
redo as text), and a resume after it, at any chunk size and in upsert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pg import Db

ROWS = 3_000
BINARY = ("--binary-copy", "true")
TEXT = ("--binary-copy", "false")


def _write(path: Path) -> Path:
    """id, n as text digits with NULL runs (whole reads of them can go binary into an
    integer column), v an int; row groups of 700 rows."""
    ids = range(ROWS)
    texts = [None if 300 <= i < 1_000 or 2_100 <= i < 2_500 else str(i * 3) for i in ids]
    table = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "n": pa.array(texts, pa.string()),
            "v": pa.array([i % 97 for i in ids], pa.int32()),
        }
    )
    pq.write_table(table, path, row_group_size=700)
    return path


def _load(cli: Any, path: Path, table: str, *extra: Any) -> Any:
    return cli("--once", "--files", path, "--table", table, "--pk", "id", "--preserve-types",
               "--concurrency", "1", "--keep-files", *extra)  # fmt: skip


def _vias(result: Any) -> list[str]:
    lines = [json.loads(x) for x in (result.out + result.err).splitlines() if x.startswith("{")]
    return [x["via"] for x in lines if x.get("event", x.get("msg")) == "batch_committed"]


def _rows(db: Db, table: str) -> list[str]:
    return [r["row"] for r in db.fetch(f"SELECT t::text AS row FROM {table} AS t ORDER BY id")]


def _outcome(db: Db, result: Any, table: str) -> tuple[Any, ...]:
    row = db.manifest()[-1]
    error = (row["notes"] or "").replace(table, "T")
    return result.code, row["status"], row["rows"], error, _rows(db, table)


@pytest.mark.parametrize("chunk", [7, 300, 1_000, 50_000])
@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_binary_and_text_pieces_in_one_file_mean_the_text_path(
    cli: Any, db: Db, tmp_path: Path, chunk: int, mode: str
) -> None:
    f = _write(tmp_path / "mixed.parquet")
    seen = []
    for table, flag in (("pb_bin", BINARY), ("pb_txt", TEXT)):
        db.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, n integer, v integer)")
        result = _load(cli, f, table, "--chunk-size", chunk, "--mode", mode, "--no-resume", *flag)
        seen.append((_outcome(db, result, table), _vias(result)))
    (binary, vias), (text, _) = seen
    assert binary == text
    assert binary[0] == 0 and binary[2] == ROWS
    assert db.val("SELECT count(DISTINCT id) FROM pb_bin") == ROWS
    assert db.val("SELECT count(*) FROM pb_bin WHERE n IS NULL") == 1_100
    if chunk <= 300:  # whole pieces of NULLs went binary, the digits as text
        assert {"binary", "arrow"} <= set(vias), vias


@pytest.mark.parametrize("chunk", [7, 300, 50_000])
def test_a_refusal_in_a_later_piece_is_the_text_paths(
    cli: Any, db: Db, tmp_path: Path, chunk: int
) -> None:
    ids = range(ROWS)
    f = tmp_path / "v.parquet"
    values = pa.array([i % 97 if i != 2_222 else 500 for i in ids], pa.int64())
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "v": values}), f, row_group_size=700)
    seen = []
    for table, flag in (("pr_bin", BINARY), ("pr_txt", TEXT)):
        db.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v bigint CHECK (v < 100))")
        result = _load(cli, f, table, "--chunk-size", chunk, "--no-resume", *flag)
        seen.append((_outcome(db, result, table), _vias(result)))
    (binary, vias), (text, _) = seen
    assert binary == text
    assert binary[0] != 0 and binary[1] == "failed" and "(2222, 500)" in binary[3], binary[:4]
    assert binary[2] == 2_222 // chunk * chunk
    committed = 2_222 // chunk * chunk  # the batches before the refused one
    assert db.val("SELECT count(*) FROM pr_bin") == committed
    assert db.val("SELECT count(DISTINCT id) FROM pr_bin") == committed
    assert set(vias) <= {"binary"}  # the redo as text is the refused batch's: not committed


def test_wide_rows_shrink_a_binary_piece(cli: Any, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "wide.parquet"
    texts = pa.array([chr(97 + i % 26) * 100_000 for i in range(300)], pa.string())
    pq.write_table(pa.table({"id": pa.array(range(300), pa.int64()), "s": texts}), f)
    result = _load(cli, f, "pw", "--memory-limit-mb", "16", "--no-resume")
    assert result.code == 0, result.err[-2000:]
    vias = _vias(result)
    # 4 MB of Arrow data a piece (a quarter of the limit): ~40 rows each, not 50,000.
    assert set(vias) == {"binary"} and 6 <= len(vias) <= 12, vias
    assert db.val("SELECT count(*) FROM pw WHERE length(s) = 100000") == 300
    assert db.val("SELECT count(DISTINCT id) FROM pw") == 300


@pytest.mark.parametrize("replacement", ["patched_in_place", "shorter"])
def test_a_file_replaced_before_the_redo_fails_as_changed_and_loads_none_of_its_rows(
    cli: Any, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replacement: str
) -> None:
    """The redo reads the rows again by the file's path: a file replaced meanwhile, even
    with its size and mtime kept, must not lend them (breaker5 finding 1), nor end in a
    traceback when it has fewer rows (finding 2)."""
    import os

    from ingestd.load import BatchLoader

    ids = range(ROWS)
    f = tmp_path / "v.parquet"
    values = pa.array([i % 97 if i != 2_222 else 500 for i in ids], pa.int64())
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "v": values}), f, row_group_size=700)
    db.execute("CREATE TABLE pc (id bigint PRIMARY KEY, v bigint CHECK (v < 100))")
    redo = BatchLoader._as_text

    async def replaced_first(self: Any, piece: Any, tally: Any) -> Any:
        seen = os.stat(f)
        if replacement == "shorter":
            other = tmp_path / "short.parquet"
            short = pa.table({"id": pa.array([1], pa.int64()), "v": pa.array([1], pa.int64())})
            pq.write_table(short, other)
            os.replace(other, f)
        else:  # same size, other bytes in the middle (the redone rows' row group)
            data = bytearray(f.read_bytes())
            middle = slice(len(data) // 3, 2 * len(data) // 3)
            data[middle] = bytes(b ^ 0x5A for b in data[middle])
            f.write_bytes(bytes(data))
        os.utime(f, ns=(seen.st_atime_ns, seen.st_mtime_ns))
        return await redo(self, piece, tally)

    monkeypatch.setattr(BatchLoader, "_as_text", replaced_first)
    result = _load(cli, f, "pc", "--chunk-size", 7, "--no-resume", *BINARY)
    out = result.out + result.err
    assert "changed while it was being loaded" in out, out[-2000:]
    assert "internal error" not in out and "Traceback" not in out, out[-2000:]
    committed = 2_222 // 7 * 7  # the batches before the refused one, all the old file's
    assert db.val("SELECT count(*) FROM pc") == committed
    assert db.val("SELECT count(*) FROM pc WHERE v <> id % 97") == 0
    assert db.manifest()[-1]["status"] != "success"
