"""Every kind of bad input fails alone, with a clear reason, in failed/ with a sidecar."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import write
from tests.helpers import without_root_powers
from tests.pg import Db

BAD = Path(__file__).parent.parent / "data" / "bad"

# file in tests/data/bad -> a fragment of the reason the user sees (README's table).
EXPECTED = {
    "ragged_too_many.csv": "row 2 has 3 fields where 2 were expected",
    "ragged_too_few.csv": "row 2 has 1 fields where 2 were expected",
    "invalid_utf8.csv": "row 1, column v: bytes that are not valid UTF-8; if the file is not UTF-8",
    "nul_bytes.csv": 'invalid byte sequence for encoding "UTF8": 0x00 (row 1',
    "header_duplicate.csv": "header names column 'v' twice",
    "header_empty.csv": "header column is empty",
    "header_long.csv": "is longer than 63 bytes",
    "header_non_ascii.csv": "header column 'café' is not allowed",
    "header_injection.csv": "header column 'id; DROP TABLE x' is not allowed",
    "header_quote.csv": "header column '\"a\"' is not allowed",
    "header_mismatch.csv": "file lacks column(s) v that the contract expects",
    "zero_byte.csv": "the file is empty",
    "not_csv.csv": "the file is not valid utf-8 text",
    "truncated.parquet": "not a readable Parquet file",
    "nested.parquet": "column v has type list<element: int64>",
    "csv_named_parquet.parquet": "is not a Parquet file (no PAR1 magic bytes)",
    "parquet_named_csv.csv": "is a Parquet file with a CSV name",
}


def test_corpus_is_complete() -> None:
    on_disk = {p.name for p in BAD.iterdir()} - {"malformed_quoting.csv"}
    assert on_disk == set(EXPECTED)


def test_each_bad_file_fails_alone_with_its_reason(cli, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in EXPECTED:
        shutil.copy(BAD / name, inbox / name)
    write(inbox / "good.csv", "id,v\n1,a\n2,b\n")
    result = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id", "--headers", "id,v",
                 "--concurrency", "2")  # fmt: skip
    assert result.code == 1
    assert "Traceback" not in result.err
    assert db.fetch("SELECT id, v FROM t ORDER BY id") == [
        {"id": "1", "v": "a"}, {"id": "2", "v": "b"},
    ]  # fmt: skip
    notes = {m["filename"]: (m["status"], m["notes"], m["rows"]) for m in db.manifest()}
    for name, fragment in EXPECTED.items():
        status, note, rows = notes[name]
        assert (status, rows) == ("failed", 0), name
        assert fragment in note, f"{name}: {note}"
        sidecar = json.loads((tmp_path / "failed" / f"{name}.error.json").read_text())
        assert fragment in sidecar["reason"], name
        assert (tmp_path / "failed" / name).read_bytes() == (BAD / name).read_bytes()
    assert notes["good.csv"][0] == "success"
    assert not any(inbox.iterdir())


def test_header_only_file_loads_zero_rows_and_creates_the_table(
    cli, db: Db, tmp_path: Path
) -> None:
    f = write(tmp_path / "empty.csv", "id,v\n")
    result = cli("--files", f, "--table", "t", "--pk", "id")
    assert result.code == 0, result.err
    assert db.val("SELECT count(*) FROM t") == 0
    assert list(db.columns("t")) == ["id", "v"]
    [m] = db.manifest()
    assert (m["status"], m["rows"]) == ("success", 0)


def test_malformed_quoting_is_read_leniently_into_the_right_columns(
    cli, db: Db, tmp_path: Path
) -> None:
    # pyarrow, like most CSV readers, keeps a stray quote inside a field as text.
    f = tmp_path / "q.csv"
    shutil.copy(BAD / "malformed_quoting.csv", f)
    assert cli("--files", f, "--table", "t", "--pk", "id").code == 0
    assert db.fetch("SELECT id, v FROM t ORDER BY id") == [
        {"id": "1", "v": 'abc"'}, {"id": "2", "v": "ok"},
    ]  # fmt: skip


def test_symlink_to_a_file_outside_the_inbox_is_never_read(cli, db: Db, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    secret = write(tmp_path / "secret.csv", "id,v\n1,secret\n")
    os.symlink(secret, inbox / "link.csv")
    write(inbox / "good.csv", "id,v\n2,ok\n")
    result = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    assert result.code == 0, result.err
    assert db.fetch("SELECT id FROM t") == [{"id": "2"}]
    assert (inbox / "link.csv").is_symlink() and secret.exists()
    assert "link.csv" in result.err and '"file_ignored"' in result.err


def test_unreadable_file_fails_alone(tcp_dsn: str, db: Db, tmp_path: Path) -> None:
    # Root reads every file, so ingestd runs here without the capabilities that let it,
    # as an unprivileged service account would.
    inbox = tmp_path / "inbox"
    write(inbox / "good.csv", "id,v\n1,a\n")
    write(inbox / "locked.csv", "id,v\n2,b\n").chmod(0o000)
    # Without those capabilities the server's socket directory is out of reach too: tcp_dsn.
    result = subprocess.run(
        [*without_root_powers(),
         sys.executable, "-m", "ingestd", "--once", "--inbox", str(inbox), "--dsn", tcp_dsn,
         "--table", "t", "--pk", "id", "--metrics-addr", "off"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert db.fetch("SELECT id FROM t") == [{"id": "1"}]
    sidecar = json.loads((tmp_path / "failed" / "locked.csv.error.json").read_text())
    assert "cannot read file: Permission denied" in sidecar["reason"]
