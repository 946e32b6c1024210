"""CSV files that need no change go to COPY as their own bytes; everything else via Arrow.
Either way the same rows land, with the same messages."""

from __future__ import annotations

import gzip
from pathlib import Path

from tests.conftest import write
from tests.helpers import csv_rows, log_events
from tests.pg import Db


def _via(err: str) -> list[str]:
    return [e["via"] for e in log_events(err, "batch_committed")]


def _rows(n: int, *, quoted_newlines: bool = False) -> str:
    value = '"two\nlines, ""quoted"""' if quoted_newlines else "plain"
    return csv_rows(n, start=0, value=value)


def test_plain_csv_goes_as_raw_segments_of_about_chunk_size(cli, db: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", _rows(1000, quoted_newlines=True))
    result = cli("--files", f, "--table", "t", "--pk", "id", "--chunk-size", "100")
    assert result.code == 0, result.err
    via = _via(result.err)
    assert set(via) == {"copy"} and 5 <= len(via) <= 20
    assert db.val("SELECT count(*) FROM t") == 1000
    assert db.val("SELECT v FROM t WHERE id = '7'") == 'two\nlines, "quoted"'
    [m] = db.manifest()
    assert (m["rows"], m["batches"]) == (1000, len(via))


def test_selected_columns_gzip_and_blank_lines_go_via_arrow(cli, db: Db, tmp_path: Path) -> None:
    reordered = write(tmp_path / "r.csv", "v,id\nx,1\n")
    assert _via(
        cli("--files", reordered, "--table", "r", "--pk", "id", "--headers", "id,v").err
    ) == ["arrow"]
    gz = tmp_path / "g.csv.gz"
    gz.write_bytes(gzip.compress(b"id,v\n1,x\n"))
    assert _via(cli("--files", gz, "--table", "g", "--pk", "id").err) == ["arrow"]
    blank = write(tmp_path / "b.csv", "id,v\n1,x\n\n2,y\n")
    result = cli("--files", blank, "--table", "b", "--pk", "id")
    assert result.code == 0 and _via(result.err) == ["arrow"]
    assert db.val("SELECT count(*) FROM b") == 2  # blank lines are skipped, as the reader does


def test_blank_line_midway_switches_to_arrow_after_the_committed_rows(
    cli, db: Db, tmp_path: Path
) -> None:
    body = (
        "".join(f"{i},x\n" for i in range(300))
        + "\n"
        + "".join(f"{i},y\n" for i in range(300, 400))
    )
    f = write(tmp_path / "m.csv", "id,v\n" + body)
    result = cli(
        "--files", f, "--table", "m", "--pk", "id", "--mode", "append", "--chunk-size", "50"
    )
    assert result.code == 0, result.err
    via = _via(result.err)
    assert via[0] == "copy" and via[-1] == "arrow"
    assert db.val("SELECT count(*) FROM m") == 400
    assert db.val("SELECT count(DISTINCT id) FROM m") == 400


def test_rows_postgres_refuses_are_redone_via_arrow_with_the_same_messages(
    cli, db: Db, tmp_path: Path
) -> None:
    ragged = write(tmp_path / "x.csv", "id,v\n1,a\n2,b,c\n")
    result = cli("--files", ragged, "--table", "x", "--pk", "id")
    assert result.code == 1
    assert "row 2 has 3 fields where 2 were expected" in db.manifest()[0]["notes"]
    latin = tmp_path / "l.csv"
    latin.write_bytes("id,v\n1,São\n".encode("latin-1"))
    result = cli("--files", latin, "--table", "l", "--pk", "id")
    assert result.code == 1
    assert "row 1, column v: bytes that are not valid UTF-8" in db.manifest()[1]["notes"]


def test_latin1_file_goes_raw_with_copy_encoding(cli, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "k.csv"
    f.write_bytes('"1";"São Paulo"\n"2";"Ação; ""x"""\n'.encode("latin-1"))
    result = cli("--files", f, "--table", "k", "--pk", "id", "--headers", "id,name",
                 "--no-header", "--delimiter", ";", "--encoding", "latin-1")  # fmt: skip
    assert result.code == 0, result.err
    assert _via(result.err) == ["copy"]
    assert db.fetch("SELECT id, name FROM k ORDER BY id") == [
        {"id": "1", "name": "São Paulo"}, {"id": "2", "name": 'Ação; "x"'},
    ]  # fmt: skip


def test_ascii_reads_alike_on_every_path(cli, db: Db, tmp_path: Path) -> None:
    # A byte past 127 after the first megabyte (what a header read sees): COPY under UTF8
    # would have loaded it as "café" where Arrow refuses it.
    body = csv_rows(200_000, start=0, value="filler") + "999999,café\n"
    plain = write(tmp_path / "a.csv", body)
    packed = tmp_path / "gz" / "a.csv.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(body.encode()))
    for n, f in enumerate([plain, packed]):
        result = cli("--files", f, "--table", f"t{n}", "--mode", "append", "--encoding", "ascii")
        assert result.code == 1, (f.name, result.out)
        notes = db.manifest()[-1]["notes"]
        # Arrow decodes ahead in blocks: an offset within a block would be false.
        assert "not valid ascii text" in notes and "offset" not in notes, notes
