"""The formats data comes in (issue 17): CSV compressed five ways gives the table the plain
file gives; a cut or corrupt stream fails saying how many rows were committed; NDJSON."""

from __future__ import annotations

import json
import lzma
import os
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers import log_events
from tests.invariants import check_books
from tests.pg import Db

CODECS = {"gz": "gzip", "zst": "zstd", "bz2": "bz2", "xz": "xz", "lz4": "lz4"}


def compress(data: bytes, suffix: str) -> bytes:
    """The bytes as a .gz/.zst/.bz2/.xz/.lz4 file holds them."""
    if suffix == "xz":
        return lzma.compress(data, preset=0)  # the fastest: tests compress megabytes
    sink = pa.BufferOutputStream()
    stream = pa.CompressedOutputStream(sink, CODECS[suffix])
    stream.write(data)
    stream.close()
    return bytes(sink.getvalue().to_pybytes())


def _rows(n: int) -> list[tuple[str | None, ...]]:
    """What makes CSV hard: quotes, line breaks and delimiters in values, '' beside NULL,
    accents and emoji, blanks kept."""
    notes = ["", None, 'say "hi"', "two\nlines", "a,b", "ação ☃ 🚀", " padded "]
    return [
        (str(i), f"name {i}", notes[i % 7], f"{i * 1.25:.2f}" if i % 5 else None) for i in range(n)
    ]


def _field(value: str | None) -> str:
    if value is None:
        return ""  # unquoted empty: NULL
    if value == "" or any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _table_csv(rows: list[tuple[str | None, ...]]) -> bytes:
    """The rows as CSV with CRLF line ends."""
    lines = ["id,name,note,amount", *(",".join(map(_field, r)) for r in rows)]
    return ("\r\n".join(lines) + "\r\n").encode()


def test_the_same_table_plain_and_compressed_five_ways(cli, db: Db, tmp_path: Path) -> None:
    expected = _rows(5000)
    table_csv = _table_csv(expected)
    files = [tmp_path / "plain.csv"]
    files[0].write_bytes(table_csv)
    for suffix in CODECS:
        f = tmp_path / f"t_{suffix}.csv.{suffix}"
        f.write_bytes(compress(table_csv, suffix))
        files.append(f)
    for f in files:
        table = f.name.split(".")[0]
        result = cli("--files", f, "--table", table, "--mode", "append", "--chunk-size", 700)
        assert result.code == 0, result.err
        got = db.fetch(f"SELECT id, name, note, amount FROM {table} ORDER BY id::int")
        assert [tuple(r.values()) for r in got] == expected
        # '' and NULL kept apart: the note of row 0 is '', of row 1 NULL.
        assert db.fetch(f"SELECT note FROM {table} WHERE id IN ('0', '1') ORDER BY id") == [
            {"note": ""}, {"note": None},
        ]  # fmt: skip
        vias = {e["via"] for e in log_events(result.err, "batch_committed")}
        assert vias == ({"copy"} if f.suffix == ".csv" else {"arrow"}), (f.name, vias)
    check_books(db, None, None, None, files=tuple(files))


def _big_csv(rows: int) -> bytes:
    return b"id,v\n" + b"".join(b"%d,value %d\n" % (i, i) for i in range(rows))


@pytest.mark.parametrize("suffix", list(CODECS))
def test_a_truncated_stream_fails_saying_how_many_rows_were_committed(
    cli, db: Db, tmp_path: Path, suffix: str
) -> None:
    db.execute("CREATE TABLE t (id text, v text)")
    whole = compress(_big_csv(600_000), suffix)
    f = tmp_path / f"cut.csv.{suffix}"
    f.write_bytes(whole[: len(whole) * 6 // 10])  # an upload that died
    result = cli("--files", f, "--table", "t", "--mode", "append", "--chunk-size", 10_000)
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    [m] = db.manifest()
    committed = m["rows"]
    # pyarrow reads ahead of the rows it hands out, and the block before an error is held
    # back (it may end in an open quote): how many rows commit before the error depends on
    # timing, from none to about the cut, never past it.
    assert m["status"] == "failed" and 0 <= committed < 360_000
    assert db.val("SELECT count(*) FROM t") == db.val("SELECT count(DISTINCT id) FROM t")
    assert db.val("SELECT count(*) FROM t") == committed
    assert m["notes"].startswith(
        f"the {CODECS[suffix]} stream ends early (truncated) after row {committed:,}: "
        f"{committed:,} rows committed, the rest not loaded"
    ), m["notes"]
    assert m["notes"].endswith("send the complete file again")
    check_books(db, None, None, None, "t", files=(f,))


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz"])  # streams with a checksum
def test_a_corrupt_stream_fails_as_corrupt(cli, db: Db, tmp_path: Path, suffix: str) -> None:
    db.execute("CREATE TABLE t (id text, v text)")
    data = bytearray(compress(_big_csv(600_000), suffix))
    data[len(data) // 2] ^= 0xFF
    f = tmp_path / f"bad.csv.{suffix}"
    f.write_bytes(bytes(data))
    result = cli("--files", f, "--table", "t", "--mode", "append", "--chunk-size", 10_000)
    assert result.code == 1, result.err
    [m] = db.manifest()
    assert m["status"] == "failed"
    assert f"the {CODECS[suffix]} stream is corrupt after row {m['rows']:,}" in m["notes"]
    assert db.val("SELECT count(*) FROM t") == m["rows"]


@pytest.mark.parametrize(
    ("name", "suffix", "message"),
    [
        ("z.csv", "zst", "z.csv is zstd-compressed: name it z.csv.zst"),
        ("x.csv.gz", "xz", "x.csv.gz is xz-compressed, not gzip: name it x.csv.xz"),
        ("p.csv.lz4", None, "p.csv.lz4 is not lz4-compressed (its first bytes are not a lz4"),
    ],
)
def test_a_name_that_disagrees_with_the_bytes_fails_saying_what_to_name_it(
    cli, db: Db, tmp_path: Path, name: str, suffix: str | None, message: str
) -> None:
    f = tmp_path / name
    f.write_bytes(compress(b"id\n1\n", suffix) if suffix else b"id\n1\n")
    result = cli("--files", f, "--table", "t", "--mode", "append")
    assert result.code == 1
    [m] = db.manifest()
    assert m["notes"].startswith(message), m["notes"]


def test_an_empty_compressed_file_is_an_empty_file(cli, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "e.csv.xz"
    f.write_bytes(b"")
    result = cli("--files", f, "--table", "t", "--mode", "append")
    assert result.code == 1
    [m] = db.manifest()
    assert m["notes"] == "the file is empty (no header, no rows)"


# --- NDJSON ---------------------------------------------------------------------------------

_LINES: list[object] = [
    '{"id": 1, "name": "Zoë ☃", "tags": ["a", {"b": 1.50}], "ok": true, "score": 1.5}',
    {"id": 2, "name": None, "extra": "only here", "score": 2},
    {"id": 3, "name": "", "meta": {"x": "é", "y": [1, None]}, "ok": False},
    {"id": 4, "name": 'quote " and \\ back', "big": 12345678901234567890, "score": -0.25},
]


def _ndjson(lines: list[object]) -> bytes:
    text = "\n".join(json.dumps(x, ensure_ascii=False) if not isinstance(x, str) else x
                     for x in lines)  # fmt: skip
    return (text + "\n").encode()


def _columns(db: Db, table: str) -> dict[str, str]:
    rows = db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return {r["column_name"]: r["data_type"] for r in rows}


@pytest.mark.parametrize("suffix", ["", ".zst", ".gz"])
def test_ndjson_untyped_keys_are_columns_nested_values_jsonb(
    cli, db: Db, tmp_path: Path, suffix: str
) -> None:
    data = _ndjson([*_LINES[:2], "", "   ", *_LINES[2:]])  # blank lines are no rows
    f = tmp_path / f"events.jsonl{suffix}"
    f.write_bytes(compress(data, suffix[1:]) if suffix else data)
    result = cli("--files", f, "--table", "ev", "--mode", "append", "--chunk-size", 2)
    assert result.code == 0, result.err
    assert _columns(db, "ev") == {
        "id": "text", "name": "text", "tags": "jsonb", "ok": "text", "score": "text",
        "extra": "text", "meta": "jsonb", "big": "text",
    }  # fmt: skip
    got = db.fetch("SELECT * FROM ev ORDER BY id")
    assert got[0] == {
        "id": "1", "name": "Zoë ☃", "tags": '["a", {"b": 1.50}]', "ok": "true",
        "score": "1.5", "extra": None, "meta": None, "big": None,
    }  # fmt: skip
    assert got[1]["name"] is None and got[1]["extra"] == "only here" and got[1]["score"] == "2"
    assert got[2]["name"] == "" and got[2]["ok"] == "false"
    assert json.loads(got[2]["meta"]) == {"x": "é", "y": [1, None]}
    assert got[3]["name"] == 'quote " and \\ back' and got[3]["big"] == "12345678901234567890"
    assert got[3]["score"] == "-0.25"


def test_ndjson_typed_numbers_and_booleans_keep_their_types(cli, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "typed.ndjson"
    f.write_bytes(_ndjson(_LINES))
    result = cli("--files", f, "--table", "ty", "--mode", "upsert", "--pk", "id",
                 "--preserve-types")  # fmt: skip
    assert result.code == 0, result.err
    assert _columns(db, "ty") == {
        "id": "bigint", "name": "text", "tags": "jsonb", "ok": "boolean",
        "score": "double precision", "extra": "text", "meta": "jsonb", "big": "numeric",
    }  # fmt: skip
    got = db.fetch("SELECT id, ok, score, big FROM ty ORDER BY id")
    assert got == [
        {"id": 1, "ok": True, "score": 1.5, "big": None},
        {"id": 2, "ok": None, "score": 2.0, "big": None},
        {"id": 3, "ok": False, "score": None, "big": None},
        {"id": 4, "ok": None, "score": -0.25, "big": 12345678901234567890},
    ]
    assert db.val("SELECT tags->1->>'b' FROM ty WHERE id = 1") == "1.50"  # digits as written


def test_ndjson_with_headers_loads_those_keys_only(cli, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "h.jsonl"
    f.write_bytes(_ndjson(_LINES))
    result = cli("--files", f, "--table", "h", "--mode", "append", "--headers", "name,id")
    assert result.code == 0, result.err
    assert list(_columns(db, "h")) == ["name", "id"]
    assert db.val("SELECT count(*) FROM h") == 4


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"id": 7,}', "line 3 is not valid JSON: Expecting property name"),
        ("[1, 2]", "line 3 is a JSON array, not an object"),
        ('{"id": NaN}', "line 3 cannot be read: NaN is not a JSON value"),
        (b'{"id": "\xff"}', "line 3 is not valid UTF-8"),
    ],
)
def test_a_malformed_ndjson_line_fails_the_file_naming_it_before_any_row_loads(
    cli, db: Db, tmp_path: Path, bad: str | bytes, message: str
) -> None:
    f = tmp_path / "m.jsonl"
    good = _ndjson(_LINES[:2])
    f.write_bytes(good + (bad.encode() if isinstance(bad, str) else bad) + b"\n" + good)
    result = cli("--files", f, "--table", "m", "--mode", "append", "--chunk-size", 1)
    assert result.code == 1 and "Traceback" not in result.err
    [m] = db.manifest()
    assert m["status"] == "failed" and m["rows"] == 0
    assert m["notes"].startswith(message), m["notes"]
    assert db.val("SELECT to_regclass('m')") is None  # nothing created, nothing loaded


def test_an_ndjson_value_postgres_refuses_is_set_aside_under_max_bad_rows(
    cli, db: Db, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE r (id bigint, name text)")
    f = tmp_path / "r.jsonl"
    f.write_bytes(_ndjson([{"id": 1, "name": "a"}, {"id": "x", "name": "b"}, {"id": 3}]))
    result = cli("--files", f, "--table", "r", "--mode", "append", "--max-bad-rows", 1)
    assert result.code == 0, result.err
    assert db.fetch("SELECT id FROM r ORDER BY id") == [{"id": 1}, {"id": 3}]
    assert db.val("SELECT count(*) FROM ingestion_rejects") == 1


def test_a_nul_in_an_ndjson_string_fails_naming_its_row(cli, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "nul.jsonl"
    f.write_bytes(b'{"id": 1, "v": "a"}\n{"id": 2, "v": "x\\u0000y"}\n')
    result = cli("--files", f, "--table", "nul", "--mode", "append")
    assert result.code == 1
    [m] = db.manifest()
    assert "0x00 (row 2, column v)" in m["notes"], m["notes"]


def test_a_compressed_file_whose_name_is_not_utf8_loads(cli, db: Db, tmp_path: Path) -> None:
    f = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.csv.zst"))
    f.write_bytes(compress(b"id\n1\n2\n", "zst"))
    result = cli("--files", f, "--table", "t", "--mode", "append")
    assert result.code == 0, result.err
    assert db.val("SELECT count(*) FROM t") == 2


def test_dry_run_reads_compressed_csv_and_ndjson(cli, db: Db, tmp_path: Path) -> None:
    (tmp_path / "a.csv.bz2").write_bytes(compress(b"id\n1\n2\n", "bz2"))
    (tmp_path / "b.ndjson.xz").write_bytes(compress(b'{"id": 1}\n', "xz"))
    result = cli("--inbox", tmp_path, "--once", "--dry-run", "--table", "t", "--mode", "append")
    assert result.code == 0, result.out + result.err
    assert "a.csv.bz2 -> t (append): 2 rows" in result.out, result.out
    assert "b.ndjson.xz -> t (append): 1 rows" in result.out, result.out


def test_a_compressed_file_is_never_split(cli, db: Db, tmp_path: Path) -> None:
    """The same rows and flags split as plain CSV (byte ranges of the file), not as .zst."""
    body = _big_csv(100_000)
    for name, data in (("p.csv", body), ("s.csv.zst", compress(body, "zst"))):
        f = tmp_path / name
        f.write_bytes(data)
        table = name.split(".")[0]
        result = cli("--files", f, "--table", table, "--mode", "append", "--concurrency", 3,
                     "--split-mb", "0.01", "--chunk-size", 20_000)  # fmt: skip
        assert result.code == 0, result.err
        assert bool(log_events(result.err, "file_split")) == (name == "p.csv")
        count = f"SELECT count(*) FROM {table}"
        assert db.val(count) == db.val(f"SELECT count(DISTINCT id) FROM {table}") == 100_000
