"""One meaning for every byte: a CSV file gives the same table on every path (raw or Arrow,
split or not, resumed or not, any chunk size, .csv or .csv.gz), the one Python's csv
module reads, or the same failure."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from tests.conftest import write
from tests.corpora import csv_spectrum
from tests.helpers import log_events
from tests.pg import Db


def _no_raw(tmp_path: Path) -> Path:
    return write(tmp_path / "no-raw.toml", "raw_csv = false\n")


def test_inch_marks_in_unquoted_fields_stay_in_their_rows(cli, db: Db, tmp_path: Path) -> None:
    f = tmp_path / "inch.csv"
    f.write_bytes(b'id,v\n1,5" screen\n2,7" screen\n3,x\n')
    result = cli("--files", f, "--table", "inch", "--mode", "append")
    assert result.code == 0, result.err
    assert db.fetch("SELECT id, v FROM inch ORDER BY id") == [
        {"id": "1", "v": '5" screen'}, {"id": "2", "v": '7" screen'}, {"id": "3", "v": "x"},
    ]  # fmt: skip


def test_inch_marks_load_alike_in_upsert_with_types_and_coordinates_keep_quotes(
    cli, db: Db, tmp_path: Path
) -> None:
    f = tmp_path / "geo.csv"
    f.write_bytes("id,n,where\n1,5,37°36'37.8\"N 121°2'17.9\"W\n2,7,x\n".encode())
    result = cli("--files", f, "--table", "geo", "--pk", "id", "--mode", "upsert",
                 "--types", "id:integer,n:integer")  # fmt: skip
    assert result.code == 0, result.err
    assert db.fetch("SELECT id, n, \"where\" FROM geo ORDER BY id") == [
        {"id": 1, "n": 5, "where": "37°36'37.8\"N 121°2'17.9\"W"}, {"id": 2, "n": 7, "where": "x"},
    ]  # fmt: skip
    assert [e["reason"] for e in log_events(result.err, "raw_csv_fallback")] == [
        "a quote inside a field, or a lone carriage return"
    ]


def test_malformed_quoting_reads_alike_and_a_resume_after_the_fix_loads_no_row_twice(
    cli, db: Db, tmp_path: Path
) -> None:
    """Rows 120-121 quote oddly, row 250 does not cast: the file fails after some batches
    (raw, then through Arrow from the odd rows on); once the table is fixed, the unchanged
    file resumes (counting rows) and every row is there once, with the lenient values."""
    rows = [f"{i},v{i},{i}" for i in range(1, 301)]
    rows[119:121] = ['120,"ab"c",120', '121,"x"y",121']
    rows[249] = "250,v250,oops"
    f = write(tmp_path / "odd.csv", "id,v,n\n" + "\n".join(rows) + "\n")
    db.execute("CREATE TABLE odd (id int, v text, n int)")
    args = ("--files", f, "--table", "odd", "--mode", "append", "--chunk-size", 50)
    first = cli(*args)
    assert first.code == 1
    [m] = db.manifest()
    assert 'integer: "oops" (row 250, column n)' in m["notes"], m["notes"]
    assert db.val("SELECT count(*) FROM odd") == m["rows"] > 0
    via = [e["via"] for e in log_events(first.err, "batch_committed")]
    assert via[0] == "copy" and via[-1] == "arrow", via
    db.execute("ALTER TABLE odd ALTER n TYPE text")
    second = cli(*args)
    assert second.code == 0, second.err
    assert db.val("SELECT count(*) FROM odd") == 300
    assert db.val("SELECT count(DISTINCT id) FROM odd") == 300
    assert db.fetch("SELECT v FROM odd WHERE id IN (120, 121) ORDER BY id") == [
        {"v": 'abc"'}, {"v": 'xy"'},
    ]  # fmt: skip
    # The Arrow path reads the same rows.
    db.execute("CREATE TABLE odd_arrow (id int, v text, n int)")
    arrow = cli(*args, "--table", "odd_arrow", "--config", _no_raw(tmp_path), "--no-resume")
    assert arrow.code == 1
    assert 'integer: "oops" (row 250, column n)' in db.manifest()[-1]["notes"]


# Every encoding COPY can be told (the raw path), and two only the Arrow path reads.
ENCODINGS = ["utf-8", "ascii", "latin-1", "iso8859-2", "iso8859-15", "cp1250", "cp1251",
             "cp1252", "shift_jis", "cp437"]  # fmt: skip


def _sample(encoding: str) -> str:
    for text in ("São", "Łódź", "€uro", "Жук", "日本", "Ça", "plain"):
        try:
            text.encode(encoding)
        except UnicodeEncodeError:
            continue
        return text
    raise AssertionError(encoding)


def test_a_utf8_bom_is_skipped_whatever_the_encoding(cli, db: Db, tmp_path: Path) -> None:
    for n, encoding in enumerate(ENCODINGS):
        value = _sample(encoding)
        body = f'id,v\n1,{value}\n2,"{value}, too"\n'.encode(encoding)
        for path, data, name in [
            ("raw", _BOM + body, f"bom{n}.csv"),
            ("gz", gzip.compress(_BOM + body), f"bom{n}.csv.gz"),
        ]:
            f = tmp_path / name
            f.write_bytes(data)
            table = f"bom{n}_{path}"
            result = cli("--files", f, "--table", table, "--mode", "append",
                         "--encoding", encoding)  # fmt: skip
            assert result.code == 0, (encoding, result.err)
            assert db.fetch(f"SELECT id, v FROM {table} ORDER BY id") == [
                {"id": "1", "v": value}, {"id": "2", "v": f"{value}, too"},
            ], encoding  # fmt: skip


def test_a_last_line_of_blanks_fails_the_file_showing_the_blanks_on_every_path(
    cli, db: Db, tmp_path: Path
) -> None:
    data = b"id,v\n1,a\n2,b\n   "
    expected = "row 3 has 1 fields where 2 were expected: '   ' (a line of only blanks: remove it)"
    for n, extra in enumerate([(), ("--config", _no_raw(tmp_path)), ("--chunk-size", 1)]):
        f = tmp_path / f"blanks{n}.csv"
        f.write_bytes(data)
        result = cli("--files", f, "--table", f"b{n}", "--mode", "append", *extra)
        assert result.code == 1
        assert db.manifest()[-1]["notes"] == expected, extra
    # With one column, the blanks are a value, as Python's csv module reads them.
    f = tmp_path / "one.csv"
    f.write_bytes(b"v\na\n   ")
    assert cli("--files", f, "--table", "one", "--mode", "append").code == 0
    assert db.fetch("SELECT v FROM one ORDER BY v") == [{"v": "   "}, {"v": "a"}]


def test_a_quoted_field_never_closed_fails_the_file_with_its_row(
    cli, db: Db, tmp_path: Path
) -> None:
    data = b"id,v\n" + b"".join(b"%d,x\n" % i for i in range(1, 21)) + b'21,"open\n22,y\n'
    expected = "row 21: a quoted field opened in this row is never closed"
    for n, extra in enumerate([(), ("--config", _no_raw(tmp_path)), ("--chunk-size", 7)]):
        f = tmp_path / f"open{n}.csv"
        f.write_bytes(data)
        result = cli("--files", f, "--table", f"o{n}", "--mode", "append", *extra)
        assert result.code == 1
        [m] = db.manifest()[-1:]
        assert m["notes"].startswith(expected), (extra, m["notes"])
        assert db.val(f"SELECT count(*) FROM o{n} WHERE id = '21'") == 0
    gz = tmp_path / "open.csv.gz"
    gz.write_bytes(gzip.compress(data))
    assert cli("--files", gz, "--table", "ogz", "--mode", "append").code == 1
    assert db.manifest()[-1]["notes"].startswith(expected)
    # The last column not loaded: the file is read again to look for the open quote.
    f = tmp_path / "open_selected.csv"
    f.write_bytes(data)
    assert cli("--files", f, "--table", "osel", "--mode", "append", "--headers", "id").code == 1
    assert db.manifest()[-1]["notes"].startswith(expected)
    # A closed quoted value that ends with a line break, last in the file, is no open quote.
    f = tmp_path / "closed.csv"
    f.write_bytes(b'id,v\n1,"a\n"\n2,"b\r\n"')
    for n, extra in enumerate([(), ("--config", _no_raw(tmp_path)), ("--headers", "id")]):
        result = cli("--files", f, "--table", f"closed{n}", "--mode", "append", "--no-resume",
                     *extra)  # fmt: skip
        assert result.code == 0, (extra, result.err)
    assert db.fetch("SELECT v FROM closed0 ORDER BY id") == [{"v": "a\n"}, {"v": "b\r\n"}]


# csv-spectrum's location_coordinates case: its header names are not identifiers (renamed
# here), and its JSON holds another phone number than its CSV (a slip in the corpus).
_SPECTRUM_HEADERS = {"location_coordinates": b"phone,coordinates,cities,counties\n"}


def test_the_csv_spectrum_corpus_loads_as_it_says(cli, db: Db, tmp_path: Path) -> None:
    """csv-spectrum (npm csv-spectrum 2.0.0, BSD-2-Clause; fetched at test time, see
    tests/corpora.py): each CSV beside the JSON of the rows it holds; loaded raw and through
    Arrow, and compared with the JSON and with Python's csv module."""
    spectrum = csv_spectrum()
    cases = sorted((spectrum / "csvs").glob("*.csv"))
    assert len(cases) >= 11
    for n, case in enumerate(cases):
        expected = json.loads((spectrum / "json" / f"{case.stem}.json").read_text())
        expected = expected if isinstance(expected, list) else [expected]
        data = case.read_bytes()
        if case.stem in _SPECTRUM_HEADERS:
            data = _SPECTRUM_HEADERS[case.stem] + data.split(b"\n", 1)[1]
            expected = [dict(zip(csv.DictReader(io.StringIO(data.decode())).fieldnames or [],
                                 row.values(), strict=True)) for row in expected]  # fmt: skip
            for row in expected:
                row.pop("phone")
        reference = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
        for path, extra in [("raw", ()), ("arrow", ("--config", _no_raw(tmp_path)))]:
            f = tmp_path / path / case.name
            f.parent.mkdir(exist_ok=True)
            f.write_bytes(data)
            table = f"s{n}_{path}"
            result = cli("--files", f, "--table", table, "--mode", "append", *extra)
            assert result.code == 0, (case.name, result.err)
            got = db.fetch(f"SELECT * FROM {table}")
            # The corpus writes '' for every empty value; unquoted empties load as NULL.
            got = [{k: "" if v is None else v for k, v in row.items()} for row in got]
            assert sorted(got, key=repr) == sorted(reference, key=repr), (case.name, path)
            columns = list(expected[0])
            picked = [{k: row[k] for k in columns} for row in got]
            assert sorted(picked, key=repr) == sorted(expected, key=repr), (case.name, path)


# --- the differential test ------------------------------------------------------------------
#
# Every path loads the same bytes into its own table; all must end alike, and where the
# file is valid, hold what Python's csv module reads. INGESTD_DEEP=1 runs many more
# examples (make test-deep).

DEEP = os.environ.get("INGESTD_DEEP", "") not in ("", "0")
# Each example is ten loads: shrinking one that fails would take hours, so none is done
# (the failing bytes are in the assertion message).
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile(
    "one_meaning", max_examples=8, deadline=None, phases=_PHASES, suppress_health_check=_QUIET
)
settings.register_profile(
    "deep", max_examples=int(os.environ.get("INGESTD_DEEP_EXAMPLES", "300")), deadline=None,
    phases=_PHASES, suppress_health_check=_QUIET,
)  # fmt: skip
PROFILE = settings.get_profile("deep" if DEEP else "one_meaning")

_BOM = b"\xef\xbb\xbf"


_HOSTILE = ['5" screen', "37°36'37.8\"N", 'a"', '"ab"c"', '"x"y"', '""', "\\.", '"a" "b"', '"""',
            "x\x00y", '"abc"""', "", " ", '"open']  # fmt: skip


@st.composite
def _field(draw: st.DrawFn, delimiter: str, hostility: int) -> str:
    if draw(st.integers(0, 9)) < hostility:
        return draw(st.sampled_from(_HOSTILE))
    if draw(st.integers(0, 30)) == 0:
        return "x" * draw(st.integers(1000, 70000))  # longer than a read, or a batch
    if draw(st.booleans()):
        parts = ["a", "b", " ", '"', "\n", "\r\n", delimiter]
        text = "".join(draw(st.lists(st.sampled_from(parts), max_size=8)))
        return '"' + text.replace('"', '""') + '"'
    return draw(st.text(st.sampled_from("ab 9é°'"), max_size=6))


@st.composite
def hostile_csv(draw: st.DrawFn) -> tuple[bytes, str, int]:
    """(file bytes, delimiter, columns): rows with a drawn share of hostile fields and
    lines, or hostile bytes in any order."""
    delimiter = draw(st.sampled_from([",", ";", "|", "\t"]))
    columns = draw(st.integers(1, 3))
    hostility = draw(st.sampled_from([0, 0, 1, 3, 10]))  # in ten fields and lines
    names = [f'"c{i}"' if draw(st.booleans()) else f"c{i}" for i in range(columns)]
    lines = [delimiter.join(names)]
    if draw(st.integers(0, 5)) == 0:
        alphabet = ["a", '"', delimiter, "\n", "\r\n", "\r", " ", '""', "\\.", "é"]
        lines.append("".join(draw(st.lists(st.sampled_from(alphabet), max_size=40))))
    else:
        for _ in range(draw(st.integers(1, 30))):
            if draw(st.integers(0, 19)) < hostility:  # a blank, a \. or a ragged line
                line = draw(st.sampled_from(["", " ", "\t ", "\\.", "\r", "a"]))
                lines.append(line * (delimiter not in line or columns > 1))
            else:
                lines.append(
                    delimiter.join(draw(_field(delimiter, hostility)) for _ in range(columns))
                )
    ends = draw(st.sampled_from(["\n", "\n", "\r\n", "\r", "mixed"]))
    text = ""
    for line in lines:
        text += line + (draw(st.sampled_from(["\n", "\r\n"])) if ends == "mixed" else ends)
    if draw(st.booleans()):
        text = text.removesuffix("\n").removesuffix("\r")  # no line end at the end
    data = text.encode()
    return (_BOM + data if draw(st.booleans()) else data), delimiter, columns


def _reference(data: bytes, delimiter: str, columns: int) -> list[tuple[str, ...]] | None:
    """The rows Python's csv module reads (empty values as ''), or None if the file must
    fail: ragged rows, a quoted field never closed, a NUL byte PostgreSQL cannot hold."""
    text = data.removeprefix(_BOM).decode()
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r]
    if _never_closed(text, delimiter) or any(len(r) != columns for r in rows):
        return None
    if "\x00" in text:
        return None
    return [tuple(r) for r in rows[1:]]


def _never_closed(text: str, delimiter: str) -> bool:
    """Whether text ends inside a quoted field (the lenient reading, char by char)."""
    inside = at_start = True
    inside = False
    after_quote = False
    for char in text:
        if inside:
            if after_quote:
                after_quote = False
                if char == '"':
                    continue
                inside = False
            elif char == '"':
                after_quote = True
                continue
            else:
                continue
        if char == '"' and at_start:
            inside, at_start = True, False
        else:
            at_start = char in (delimiter, "\n", "\r")
    return inside and not after_quote


@dataclass
class _Outcome:
    code: int
    rows: list[tuple[str | None, ...]] | None
    notes: str | None


def _load(cli, db: Db, f: Path, table: str, columns: int, *extra: object) -> _Outcome:
    result = cli("--files", f, "--table", table, "--mode", "append", *extra)
    [m] = [m for m in db.manifest() if m["filename"].endswith(f.name)][-1:]
    via = sorted({b["via"] for b in log_events(result.err, "batch_committed")})
    split = bool(log_events(result.err, "file_split"))
    event(f"{f.stem}: via {'+'.join(via) or 'nothing'}, split {split}")
    if result.code != 0:
        assert m["status"] == "failed", (result.err, m)
        assert "Traceback" not in result.err
        return _Outcome(result.code, None, m["notes"])
    assert m["status"] == "success", m
    names = ", ".join(f"c{i}" for i in range(columns))
    rows = [tuple(r.values()) for r in db.fetch(f"SELECT {names} FROM {table}")]
    assert m["rows"] == len(rows)  # the books agree with the table
    return _Outcome(0, sorted(rows, key=repr), None)


_EXAMPLE = iter(range(1 << 30))


@pytest.mark.timeout(4 * 3600 if DEEP else 300)  # every example runs inside the one test
@PROFILE
@given(hostile_csv(), st.integers(1, 12))
def test_every_path_reads_every_byte_alike(
    cli, db: Db, tmp_path: Path, case: tuple[bytes, str, int], kill_at: int
) -> None:
    data, delimiter, columns = case
    n = next(_EXAMPLE)
    folder = tmp_path / f"ex{n}"
    folder.mkdir()
    flags = ("--delimiter", delimiter)
    outcomes: dict[str, _Outcome] = {}

    def run(path: str, *extra: object, body: bytes = data, suffix: str = ".csv") -> None:
        f = folder / f"{path}{suffix}"
        f.write_bytes(body)
        outcomes[path] = _load(cli, db, f, f"t{n}_{path}", columns, *flags, *extra)

    run("raw", "--chunk-size", 50000)
    run("chunk1", "--chunk-size", 1)
    run("chunk7", "--chunk-size", 7)
    run("arrow", "--chunk-size", 7, "--config", _no_raw(folder))
    run("gz", "--chunk-size", 7, body=gzip.compress(data), suffix=".csv.gz")
    for parts in (2, 3):
        split_mb = f"{len(data) / parts / (1 << 20) * 0.999:.12f}"
        run(f"split{parts}", "--chunk-size", 7, "--concurrency", parts, "--split-mb", split_mb)
    # Resumed: the connection dies at the kill_at-th batch, the run gives up, the next resumes.
    table = f"t{n}_resumed"
    cols = ", ".join(f"c{i} text" for i in range(columns))
    db.execute(f"CREATE TABLE {table} ({cols})")
    db.execute(f"CREATE SEQUENCE {table}_seq")
    db.execute(
        f"""CREATE FUNCTION {table}_kill() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF nextval('{table}_seq') = {kill_at} THEN PERFORM pg_terminate_backend(pg_backend_pid());
          END IF;
          RETURN NULL;
        END $$;
        CREATE TRIGGER kill AFTER INSERT ON {table} FOR EACH STATEMENT
          EXECUTE FUNCTION {table}_kill()"""
    )
    f = folder / "resumed.csv"
    f.write_bytes(data)
    cli("--files", f, "--table", table, "--mode", "append", "--chunk-size", 1,
        "--max-retries", 0, *flags)  # fmt: skip
    db.execute(f"DROP TRIGGER kill ON {table}")
    outcomes["resumed"] = _load(cli, db, f, table, columns, "--chunk-size", 7, *flags)

    first = outcomes["raw"]
    for path, outcome in outcomes.items():
        if first.code != 0:  # the same failure: partial loads differ by chunk size
            assert (outcome.code, outcome.notes) == (first.code, first.notes), (path, data)
        else:
            assert outcome == first, (path, data)
    expected = _reference(data, delimiter, columns)
    event("valid" if expected is not None else "must fail")
    if expected is None:
        assert first.code == 1, (data, first)
    else:
        assert first.code == 0, (data, first.notes)
        assert first.rows is not None
        got = sorted((tuple(v or "" for v in r) for r in first.rows), key=repr)
        assert got == sorted(expected, key=repr), data
