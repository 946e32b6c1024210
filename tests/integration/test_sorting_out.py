"""--max-bad-rows against a model: whatever mix of values that do not cast (COPY refuses
them), CHECK violations (the merge, or COPY into the target, refuses them) and keys met
again a file holds, the table, the rejects, the manifest row and the error past the budget
are what reading the file row by row in file order gives."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import log_events
from tests.pg import Db

SETTINGS = settings(
    max_examples=int(os.environ.get("INGESTD_PROPERTY_EXAMPLES", "40")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
HELD = {0: (7, "held"), 1: (8, "held")}  # rows the table holds before the load
TEXTS = ["a", "", "é", "line\nbreak", 'say "hi"', "comma, here"]


@dataclass(frozen=True)
class Row:
    k: int
    v: str  # an integer, or "x" (does not cast)
    t: str


def _rows() -> st.SearchStrategy[list[Row]]:
    # Keys from a small range repeat (within a batch and across); a negative value breaks
    # the CHECK and comes only on a key of its own, so no later row of that key supersedes
    # it (upsert's "last occurrence wins" would otherwise decide whether it is checked).
    repeated = st.builds(
        Row,
        st.integers(0, 12),
        st.one_of(st.integers(0, 99).map(str), st.just("x")),
        st.sampled_from(TEXTS),
    )
    alone = st.builds(Row, st.just(-1), st.integers(-9, -1).map(str), st.sampled_from(TEXTS))
    return st.lists(st.one_of(repeated, repeated, repeated, alone), min_size=1, max_size=90)


def _numbered(rows: list[Row]) -> list[Row]:
    return [Row(1000 + i, r.v, r.t) if r.k < 0 else r for i, r in enumerate(rows)]


def _csv(rows: list[Row]) -> str:
    out = io.StringIO()
    # Text quoted: an empty one is '' then, not NULL (numbers are not quoted).
    w = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    w.writerow(["k", "v", "t"])
    w.writerows([r.k, r.v, r.t] for r in rows)
    return out.getvalue()


def _bad_rows(rows: list[Row], mode: str) -> list[tuple[int, str]]:
    """(file row, SQLSTATE) of each bad row, reading row by row in file order."""
    keys = set(HELD)
    bad = []
    for i, r in enumerate(rows, start=1):
        if r.v == "x":
            bad.append((i, "22P02"))
        elif int(r.v) < 0:
            bad.append((i, "23514"))
        elif mode == "append" and r.k in keys:
            bad.append((i, "23505"))
        else:
            keys.add(r.k)
    return bad


def _table(rows: list[Row], bad: list[tuple[int, str]]) -> dict[int, tuple[int, str]]:
    """The table once `rows` (a prefix of the file) are in: the last good row of each key."""
    table = dict(HELD)
    skip = {i for i, _ in bad}
    for i, r in enumerate(rows, start=1):
        if i not in skip:
            table[r.k] = (int(r.v), r.t)
    return table


def _outcome(cli: Any, db: Db, path: Path, mode: str, chunk: int, budget: int, c: int) -> Any:
    for name in ("s", "ingestion_manifest", "ingestion_rejects"):
        db.execute(f"DROP TABLE IF EXISTS {name}")
    db.execute("CREATE TABLE s (k bigint PRIMARY KEY, v integer CHECK (v >= 0), t text)")
    for k, (v, t) in HELD.items():
        db.execute("INSERT INTO s VALUES ($1, $2, $3)", k, v, t)
    result = cli("--once", "--files", path, "--table", "s", "--pk", "k", "--mode", mode,
                 "--types", "k:bigint,v:integer", "--concurrency", c, "--chunk-size", chunk,
                 "--keep-files", "--max-bad-rows", budget)  # fmt: skip
    [m] = db.manifest()
    return result, m


@SETTINGS
@given(
    rows=_rows(),
    mode=st.sampled_from(["upsert", "merge", "append"]),
    chunk=st.integers(3, 40),
    budget=st.integers(0, 12),
    concurrency=st.sampled_from([1, 2]),
)
def test_bad_rows_are_those_a_row_by_row_reading_finds(
    cli: Any,
    db: Db,
    tmp_path: Path,
    rows: list[Row],
    mode: str,
    chunk: int,
    budget: int,
    concurrency: int,
) -> None:
    rows = _numbered(rows)
    path = tmp_path / "f.csv"
    path.write_text(_csv(rows), encoding="utf-8")
    bad = _bad_rows(rows, mode)
    result, m = _outcome(cli, db, path, mode, chunk, budget, concurrency)

    # Batches hold about --chunk-size rows (the raw path cuts by bytes): the committed
    # prefix is read from the log, and every batch in it fits the budget.
    ends = [e["rows_committed"] for e in log_events(result.err, "batch_committed")]
    done = ends[-1] if ends else 0
    committed = [b for b in bad if b[0] <= done]
    assert len(committed) <= budget
    got = {r["k"]: (r["v"], r["t"]) for r in db.fetch("SELECT k, v, t FROM s")}
    assert got == _table(rows[:done], bad)
    rejects = db.fetch(
        "SELECT row_number, sqlstate, raw FROM ingestion_rejects ORDER BY row_number"
    )
    assert [(r["row_number"], r["sqlstate"]) for r in rejects] == committed
    for r in rejects:  # the raw line is the file's row, as CSV
        row = rows[r["row_number"] - 1]
        assert next(csv.reader(io.StringIO(r["raw"]))) == [str(row.k), row.v, row.t]
    assert (m["rows"], m["rows_rejected"]) == (done, len(committed))
    if len(bad) <= budget:
        assert (result.code, m["status"], done) == (0, "success", len(rows)), result.err
    else:
        # The batch after the last committed one holds the first bad row over the budget.
        assert (result.code, m["status"]) == (1, "failed")
        over = bad[budget][0]
        assert over > done
        if len(committed) < budget:  # else the batch's own first error is the file's
            assert f"allows; row {over}:" in m["notes"], m["notes"]


@settings(SETTINGS, max_examples=max(2, SETTINGS.max_examples // 4))
@given(
    bad=st.lists(st.integers(0, 5_999), min_size=1, max_size=40, unique=True),
    mode=st.sampled_from(["upsert", "append"]),
    budget=st.sampled_from([10, 100]),
)
def test_bad_rows_far_apart_in_big_batches(
    cli: Any, db: Db, tmp_path: Path, bad: list[int], mode: str, budget: int
) -> None:
    # Batches of thousands of rows: the first pass over a staged batch COPYs a window of
    # rows at a time, resized to how far apart the refused rows are.
    rows = [Row(10_000 + i, "7", "t") for i in range(6_000)]  # keys apart from _numbered's
    for n, i in enumerate(sorted(bad)):
        rows[i] = Row(-1, "-3", "t") if n % 3 == 2 else Row(rows[i].k, "x", "t")
    rows = _numbered(rows)
    path = tmp_path / "big.csv"
    path.write_text(_csv(rows), encoding="utf-8")
    want = _bad_rows(rows, mode)
    result, m = _outcome(cli, db, path, mode, 3_000, budget, 1)
    rejects = db.fetch("SELECT row_number, sqlstate FROM ingestion_rejects ORDER BY 1")
    if len(want) <= budget:
        assert (result.code, m["status"], m["rows_rejected"]) == (0, "success", len(want))
        assert [(r["row_number"], r["sqlstate"]) for r in rejects] == want
        got = {r["k"]: (r["v"], r["t"]) for r in db.fetch("SELECT k, v, t FROM s")}
        assert got == _table(rows, want)
    else:
        assert (result.code, m["status"]) == (1, "failed")
        assert f"allows; row {want[budget][0]}:" in m["notes"] or len(rejects) == budget


def test_a_row_a_later_one_of_its_key_supersedes_is_not_checked(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    # Upsert merges a batch's last row of each key: an earlier one breaking the CHECK never
    # reaches the table, with or without a value elsewhere in the batch that does not cast.
    rows = [Row(5, "-1", "first"), Row(6, "x", "uncast"), Row(5, "3", "last"), Row(7, "4", "t")]
    path = tmp_path / "sup.csv"
    path.write_text(_csv(rows), encoding="utf-8")
    result, m = _outcome(cli, db, path, "upsert", 10, 1, 1)
    assert (result.code, m["status"], m["rows_rejected"]) == (0, "success", 1), result.err
    assert db.fetch("SELECT row_number, sqlstate FROM ingestion_rejects") == [
        {"row_number": 2, "sqlstate": "22P02"}
    ]
    got = {r["k"]: (r["v"], r["t"]) for r in db.fetch("SELECT k, v, t FROM s")}
    assert got == {**HELD, 5: (3, "last"), 7: (4, "t")}
