"""A Parquet date column's range check (read.values): years 1 to 9999 pass unchanged, a
day outside is refused at its index, and a column of valid dates is cleared by one kernel
that does not import pyarrow.compute (~40-50 ms on the way to the first binary piece)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestd.exceptions import FileError
from ingestd.read import open_reader
from ingestd.read.values import BadValueError, converter_for
from ingestd.settings import Contract

FIRST, LAST = -719_162, 2_932_896  # 0001-01-01 and 9999-12-31 as days since 1970
DAY_MS = 86_400_000


def _convert(array: pa.Array) -> pa.Array:
    convert, checked = converter_for(array.type, "d")
    assert checked
    return convert(array)


@pytest.mark.parametrize("kind", [pa.date32(), pa.date64()])
def test_the_first_and_last_day_and_nulls_pass_unchanged(kind: pa.DataType) -> None:
    days = [dt.date(1, 1, 1), None, dt.date(9999, 12, 31), dt.date(1970, 1, 1)]
    out = _convert(pa.array(days, kind))
    assert out.type == pa.date32()
    assert out.to_pylist() == days


@pytest.mark.parametrize("days", [[], [None], [None, None, None]])
def test_no_values_pass(days: list[None]) -> None:
    assert _convert(pa.array(days, pa.date32())).to_pylist() == days


@pytest.mark.parametrize(
    ("at", "value", "text"),
    [
        (0, FIRST - 1, "0000-12-31"),
        (2, LAST + 1, "10000-01-01"),
        (1, -(2**31), "-2147483648 day after 1970-01-01"),
    ],
)
def test_a_day_outside_is_refused_at_its_index(at: int, value: int, text: str) -> None:
    days = [0, 1, 2]
    days[at] = value
    for array in (
        pa.array(days, pa.int32()).view(pa.date32()),
        pa.array([d * DAY_MS for d in days], pa.int64()).view(pa.date64()),
    ):
        with pytest.raises(BadValueError) as err:
            _convert(array)
        assert err.value.index == at
        assert "outside the years 1 to 9999" in str(err.value)
        assert str(err.value).startswith(text)


@pytest.mark.parametrize("days", [2**31 + 5, -(2**31) - 5, 2**36])
def test_a_date64_past_32_bit_days_is_refused_at_its_index(days: int) -> None:
    # Arrow's date64 -> date32 cast refused the whole column, naming neither row nor column.
    array = pa.array([0, days * DAY_MS, None], pa.int64()).view(pa.date64())
    with pytest.raises(BadValueError) as err:
        _convert(array)
    assert err.value.index == 1
    assert (
        str(err.value) == f"{days} day after 1970-01-01 is outside the years 1 to 9999, "
        "the dates ingestd can carry to PostgreSQL"
    )


def test_a_null_slot_holding_a_day_outside_passes() -> None:
    # What a NULL stores is no value: the kernel skips it, as the refusal's mask does.
    data = pa.array([FIRST - 10, 5, LAST + 10], pa.int32()).buffers()[1]
    valid = pa.py_buffer(bytes([0b010]))
    array = pa.Array.from_buffers(pa.date32(), 3, [valid, data])
    assert _convert(array).to_pylist() == [None, dt.date(1970, 1, 6), None]


def test_dates_in_range_do_not_import_pyarrow_compute(tmp_path: Path) -> None:
    code = (
        "import sys, datetime as dt, pyarrow as pa\n"
        "from ingestd.read.values import BadValueError, converter_for\n"
        "convert, _ = converter_for(pa.date32(), 'd')\n"
        "days = pa.array([dt.date(2024, 1, 2), None, dt.date(1, 1, 1)], pa.date32())\n"
        "assert convert(days).to_pylist() == days.to_pylist()\n"
        "print('pyarrow.compute' in sys.modules)\n"
        "try:\n"
        "    convert(pa.array([0, 3_000_000], pa.int32()).view(pa.date32()))\n"
        "except BadValueError as exc:\n"
        "    print(exc.index)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "1"]


@pytest.mark.parametrize("statistics", [True, False])
def test_a_parquet_file_with_the_least_date32_fails_naming_its_row(
    tmp_path: Path, statistics: bool
) -> None:
    # Arrow prints -2**31 days as "out of range"; its text came from a cast date32 ->
    # int64 that Arrow has not, so the file ended in an internal error, not a FileError.
    days = pa.array([0, None, -(2**31)], pa.int32()).view(pa.date32())
    path = tmp_path / "days.parquet"
    pq.write_table(pa.table({"d": days}), path, write_statistics=statistics)
    contract = Contract(name="c", pattern="*", table="t", preserve_types=True)
    with pytest.raises(FileError) as err:
        for _ in open_reader(path, contract, 2):
            pass
    assert str(err.value) == (
        "row 3, column d (date32[day]): -2147483648 day after 1970-01-01 is outside the "
        "years 1 to 9999, the dates ingestd can carry to PostgreSQL"
    )
    assert err.value.row == 3
