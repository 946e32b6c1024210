"""A large Parquet append of several row groups is cut into row-group ranges that several
workers load at once; whatever the split, the file means what it means unsplit: the same
rows (t::text), the same manifest, the same refusal (row, column, message), the same rejects.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import itertools
import json
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.read import open_reader
from ingestd.settings import Contract
from tests.helpers import log_events
from tests.pg import Db

ROWS = 6_000
GROUP = 700  # rows per row group: 9 groups, segments end at multiples of 700


def _table(
    n: int, start: int = 0, *, null_at: int | None = None, nul_at: int | None = None
) -> pa.Table:
    ids = range(start, start + n)
    texts = [f"é{i}" if i % 5 else None for i in ids]
    if null_at is not None:
        texts = [None if i == null_at else (t or "x") for i, t in zip(ids, texts, strict=True)]
    if nul_at is not None:
        texts[nul_at - start] = "bad\x00byte"
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "v": pa.array(texts, pa.string()),
            "n": pa.array([i * 7 if i % 3 else None for i in ids], pa.int32()),
            "d": pa.array([decimal.Decimal(i).scaleb(-2) for i in ids], pa.decimal128(18, 2)),
            "ts": pa.array(
                [dt.datetime(2020, 1, 1) + dt.timedelta(seconds=i) for i in ids],
                pa.timestamp("us"),
            ),
            "f": pa.array([i / 3 for i in ids], pa.float64()),
        }
    )


def _write(path: Path, table: pa.Table, group: int = GROUP) -> Path:
    pq.write_table(table, path, row_group_size=group)
    return path


def _load(cli: Any, f: Path, table: str, *extra: object, split: bool = True) -> Any:
    # 0.05 MB of data a segment: the ~0.4 MB of row groups is cut into one per worker.
    how = ("--concurrency", "3", "--split-mb", "0.05") if split else ("--concurrency", "1")
    return cli(
        "--once", "--files", f, "--table", table, "--pk", "id", "--mode", "append",
        "--preserve-types", "--chunk-size", "300", "--keep-files", "--no-resume", *how, *extra,
    )  # fmt: skip


def _rows(db: Db, table: str) -> list[str]:
    return [r["row"] for r in db.fetch(f"SELECT t::text AS row FROM {table} AS t ORDER BY id")]


def _finished(result: Any) -> dict[str, Any]:
    [event] = log_events(result.err, "file_finished")
    return event


def _outcome(db: Db, result: Any, name: str) -> tuple[Any, ...]:
    """What a run leaves, apart from how it was cut: exit, manifest, the file's end."""
    [m] = [r for r in db.manifest() if r["table_name"] == name]
    event = _finished(result)
    return result.code, m["status"], m["rows"], m["rows_rejected"], event["error"], event["row"]


@pytest.mark.parametrize("binary", ["true", "false"])
def test_a_parquet_file_split_into_row_group_ranges_loads_as_it_does_unsplit(
    cli: Any, db: Db, tmp_path: Path, binary: str
) -> None:
    f = _write(tmp_path / "big.parquet", _table(ROWS))
    split = _load(cli, f, "t_split", "--binary-copy", binary)
    one = _load(cli, f, "t_one", "--binary-copy", binary, split=False)
    assert split.code == 0 and one.code == 0, split.err + one.err
    [plan] = log_events(split.err, "file_split")
    assert plan["segments"] == 3
    assert not log_events(one.err, "file_split")
    batches = log_events(split.err, "batch_committed")
    assert {b["segment"] for b in batches} == {1, 2, 3}
    assert len({b["worker_id"] for b in batches}) >= 2  # idle workers helped
    assert {b["via"] for b in batches} == ({"binary"} if binary == "true" else {"arrow"})
    assert sum(b["rows"] for b in batches) == ROWS
    assert db.columns("t_split") == db.columns("t_one")
    assert _rows(db, "t_split") == _rows(db, "t_one")
    assert _outcome(db, split, "t_split") == _outcome(db, one, "t_one")
    [m] = [r for r in db.manifest() if r["table_name"] == "t_split"]
    # Segments are whole row groups, counted in rows, each finished.
    assert m["segment_done"] == m["segment_ends"] and m["segment_ends"][-1] == ROWS
    assert all(end % GROUP == 0 for end in m["segment_ends"][:-1])
    assert m["batches"] == len(batches)


@pytest.mark.parametrize(
    ("bad", "ddl"),
    [
        # A NULL into NOT NULL: binary COPY refuses it, the batch is redone as text.
        ({"null_at": 4321}, "v text NOT NULL"),
        # A NUL byte, refused by ingestd before the batch goes.
        ({"nul_at": 4321}, "v text"),
        # A CHECK on a later segment's row.
        ({}, "v text, CHECK (id <> 5000)"),
    ],
    ids=["not-null", "nul-byte", "check"],
)
def test_a_refused_row_in_a_later_segment_is_named_by_its_row_in_the_file(
    cli: Any, db: Db, tmp_path: Path, bad: dict[str, int], ddl: str
) -> None:
    f = _write(tmp_path / "bad.parquet", _table(ROWS, **bad))
    for name in ("t_split", "t_one"):
        db.execute(
            f"CREATE TABLE {name} (id bigint PRIMARY KEY, {ddl}, n integer, "
            "d numeric(18,2), ts timestamp, f double precision)"
        )
    split = _load(cli, f, "t_split")
    one = _load(cli, f, "t_one", split=False)
    assert log_events(split.err, "file_split")
    assert split.code == one.code != 0
    got, want = _finished(split), _finished(one)
    same = got["error"].replace("t_split", "t_one")  # the message names its table
    assert (same, got["row"]) == (want["error"], want["row"])
    assert want["row"] in (4322, 5001)
    assert f"row {want['row']}" in want["error"]
    [ms] = [r for r in db.manifest() if r["table_name"] == "t_split"]
    [mo] = [r for r in db.manifest() if r["table_name"] == "t_one"]
    assert ms["status"] == mo["status"] == "failed"
    assert ms["notes"].replace("t_split", "t_one") == mo["notes"]
    # Every segment's committed batches are in, none twice, and never the refused row.
    assert db.val("SELECT count(*) FROM t_split") == db.val(
        "SELECT count(DISTINCT id) FROM t_split"
    )
    assert db.val("SELECT count(*) FROM t_split") == ms["rows"]
    assert db.val("SELECT count(*) FROM t_split WHERE id = $1", want["row"] - 1) == 0


def test_parquet_files_that_are_not_split(cli: Any, db: Db, tmp_path: Path) -> None:
    """One row group, a small file, upserts, bad-row budgets and --split-mb 0 load in one
    pass, exactly as with one worker."""
    big = _write(tmp_path / "big.parquet", _table(ROWS))
    one_group = _write(tmp_path / "one.parquet", _table(ROWS), group=ROWS)
    cases: list[tuple[Path, tuple[object, ...]]] = [
        (one_group, ()),
        (big, ("--split-mb", "4")),
        (big, ("--split-mb", "0")),
        (big, ("--mode", "upsert")),
        (big, ("--max-bad-rows", "5")),
    ]
    for k, (f, extra) in enumerate(cases):
        result = _load(cli, f, f"t{k}", *extra)
        assert result.code == 0, result.err
        assert not log_events(result.err, "file_split"), extra
        assert db.val(f"SELECT count(DISTINCT id) FROM t{k}") == ROWS
        [m] = [r for r in db.manifest() if r["table_name"] == f"t{k}"]
        assert m["segment_ends"] is None


def test_rejects_of_a_parquet_file_with_a_budget_are_those_of_one_worker(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    f = _write(tmp_path / "bad.parquet", _table(ROWS, null_at=4321))
    for name in ("t_many", "t_one"):
        db.execute(
            f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text NOT NULL, n integer, "
            "d numeric(18,2), ts timestamp, f double precision)"
        )
    many = _load(cli, f, "t_many", "--max-bad-rows", "3")
    one = _load(cli, f, "t_one", "--max-bad-rows", "3", split=False)
    assert many.code == one.code == 0, many.err + one.err
    assert _rows(db, "t_many") == _rows(db, "t_one")
    rejects = db.fetch(
        "SELECT m.table_name, r.row_number, r.raw, r.reason FROM ingestion_rejects r "
        "JOIN ingestion_manifest m ON m.id = r.manifest_id ORDER BY 1"
    )
    got = [
        (r["row_number"], r["raw"], r["reason"].replace("t_many", "t_one"))
        for r in rejects
        if r["table_name"] == "t_many"
    ]
    want = [(r["row_number"], r["raw"], r["reason"]) for r in rejects if r["table_name"] == "t_one"]
    assert got == want
    assert [r["row_number"] for r in rejects if r["table_name"] == "t_one"] == [4322]


def test_a_parquet_member_of_a_zip_archive_is_still_refused_in_one_line_not_split(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    """A zip member is a stream: never split, and Parquet (random access) is refused."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    buf = io.BytesIO()
    pq.write_table(_table(ROWS), buf, row_group_size=GROUP)
    with zipfile.ZipFile(inbox / "batch.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("big.parquet", buf.getvalue())
    cfg = tmp_path / "ingestd.toml"
    cfg.write_text(
        f'inbox = "{inbox}"\nconcurrency = 3\nsplit_mb = 0.05\nchunk_size = 300\n'
        '[[contracts]]\nname = "pq"\npattern = "*.zip/*.parquet"\ntable = "t"\n'
        'file_type = "parquet"\nmode = "append"\npk = ["id"]\npreserve_types = true\n'
    )
    result = cli("--config", cfg, "--once")
    assert result.code == 1
    assert not log_events(result.err, "file_split")
    assert "put it in the inbox unzipped" in _finished(result)["error"]
    assert db.val("SELECT to_regclass('t')") is None  # nothing loaded


def test_a_parquet_object_in_a_bucket_is_split_over_ranged_reads(
    cli: Any, db: Db, s3server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.s3server import new_bucket

    for name, value in s3server.env().items():
        monkeypatch.setenv(name, value)
    bucket = new_bucket(s3server)
    buf = io.BytesIO()
    pq.write_table(_table(ROWS), buf, row_group_size=GROUP)
    bucket.put("inbox/big.parquet", buf.getvalue())
    result = cli(
        "--once", "--inbox", bucket.url("inbox/"), "--table", "t", "--pk", "id",
        "--mode", "append", "--preserve-types", "--chunk-size", "300",
        "--concurrency", "3", "--split-mb", "0.05",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert log_events(result.err, "file_split")
    f = _write(tmp_path / "big.parquet", _table(ROWS))
    assert _load(cli, f, "t_one", split=False).code == 0
    assert _rows(db, "t") == _rows(db, "t_one")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    groups=st.lists(st.integers(1, 90), min_size=1, max_size=6),
    chunk=st.integers(1, 120),
    share=st.integers(1, 4),
    cut=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_any_row_range_reads_the_rows_of_the_whole_file_at_those_numbers(
    tmp_path: Path, groups: list[int], chunk: int, share: int, cut: tuple[float, float]
) -> None:
    """What a segment (or a resumed segment, starting inside a row group) reads is exactly
    the whole file's rows [start, end), in batches of at most chunk rows (chunk / share
    when segments share one worker's memory)."""
    total = sum(groups)
    table = _table(total)
    f = tmp_path / "g.parquet"
    with pq.ParquetWriter(f, table.schema) as writer:
        at = 0
        for n in groups:
            writer.write_table(table.slice(at, n))
            at += n
    reader = open_reader(f, Contract(name="c", table="t", preserve_types=True), chunk)
    assert reader.row_groups is not None and reader.row_groups.rows == tuple(groups)
    whole = pa.Table.from_batches(list(reader))
    start, end = sorted(int(c * total) for c in cut)
    part = list(reader.row_groups.read(start, end, share))
    assert all(b.num_rows <= max(1, chunk // share) for b in part)
    got = pa.Table.from_batches(part, schema=whole.schema)
    assert got.to_pylist() == whole.slice(start, end - start).to_pylist()
    json.dumps(reader.row_groups.rows)  # plain ints: what the manifest stores


@pytest.mark.parametrize("binary", ["true", "false"])
def test_every_parquet_type_split_gives_the_table_of_the_unsplit_load(
    cli: Any, db: Db, tmp_path: Path, binary: str
) -> None:
    """Every flat type of test_parquet_types' CASES, in row groups of 2 rows cut into
    segments: the same table, value for value, as one worker reading it in order."""
    from tests.integration.test_binary_copy import _table as every_type
    from tests.integration.test_parquet_types import CASES

    f = tmp_path / "types.parquet"
    pq.write_table(every_type({c.id for c in CASES}), f, row_group_size=2)
    tiny = ("--split-mb", "0.0001", "--binary-copy", binary)
    split = _load(cli, f, "t_split", *tiny)
    one = _load(cli, f, "t_one", *tiny, split=False)
    assert split.code == 0 and one.code == 0, split.err + one.err
    assert log_events(split.err, "file_split")
    assert db.columns("t_split") == db.columns("t_one")
    assert _rows(db, "t_split") == _rows(db, "t_one")
    assert _outcome(db, split, "t_split") == _outcome(db, one, "t_one")


@given(groups=st.lists(st.integers(0, 50), max_size=12), parts=st.integers(2, 8))
def test_segments_end_at_row_group_boundaries_and_cover_every_row(
    groups: list[int], parts: int
) -> None:
    from ingestd.split import _row_group_cuts

    ends = _row_group_cuts(tuple(groups), parts)
    total = sum(groups)
    bounds = {sum(groups[: k + 1]) for k in range(len(groups))}
    if not total:
        assert ends == []
        return
    assert ends[-1] == total and len(ends) <= parts
    assert all(a < b for a, b in itertools.pairwise(ends))  # no empty segment
    assert set(ends) <= bounds  # a row group is never cut
    sizes = [b - a for a, b in itertools.pairwise([0, *ends])]
    assert len(ends) == 1 or min(sizes) >= total // (parts * 4)  # no segment of a few rows


def test_a_tiny_row_group_is_not_a_segment_of_its_own() -> None:
    from ingestd.split import _row_group_cuts

    assert _row_group_cuts((100_000, 1), 2) == [100_001]  # not split: [100000, 100001]
    assert _row_group_cuts((1, 50_000, 50_000), 2) == [50_001, 100_001]
