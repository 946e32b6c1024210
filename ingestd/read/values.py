"""Values: the PostgreSQL type of each flat Arrow type, and the conversion that hands
PostgreSQL text it reads back as the very same value, or refuses the value with a reason."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pyarrow as pa

try:  # the kernel alone: pyarrow.compute builds a wrapper per kernel at import (lazy.py)
    from pyarrow._compute import call_function
except ImportError:  # pragma: no cover - a pyarrow that moved it
    from pyarrow.compute import call_function

from ingestd.exceptions import FileError
from ingestd.lazy import pyarrow_compute as pc  # imported at first use (lazy.py)

Converter = Callable[[pa.Array], pa.Array]

__all__ = ["BadValueError", "Converter", "converter_for", "pg_type_of", "range_only"]


class BadValueError(ValueError):
    """A value PostgreSQL cannot hold unchanged; `index` is its place in the array."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index


_INTEGERS = {
    pa.int8(): "smallint",
    pa.int16(): "smallint",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.uint8(): "smallint",
    pa.uint16(): "integer",
    pa.uint32(): "bigint",
    pa.uint64(): "numeric(20,0)",
}
_FLOATS = {pa.float16(): "real", pa.float32(): "real", pa.float64(): "double precision"}
_SIMPLE = {**_INTEGERS, **_FLOATS, pa.bool_(): "boolean"}
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}  # units per microsecond, inverted
_INT64_MAX = 2**63 - 1
# PostgreSQL reads Arrow's text of a date or timestamp only in years 1 to 9999: Arrow
# writes year 0 and BC years with a minus sign, and PostgreSQL refuses 5-digit years.
_MIN_US = -62_135_596_800 * 10**6  # 0001-01-01 00:00:00
_MAX_US = 253_402_300_800 * 10**6 - 1  # 9999-12-31 23:59:59.999999
_MIN_DAY, _MAX_DAY = -719_162, 2_932_896  # 0001-01-01, 9999-12-31
_DAY_MS = 86_400_000
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_YEARS = "outside the years 1 to 9999, the dates ingestd can carry to PostgreSQL"
_NS = (
    "is not a whole microsecond: PostgreSQL keeps microseconds and ingestd never rounds; "
    "round the column to microseconds where the file is written"
)


def pg_type_of(arrow_type: pa.DataType, column: str) -> str:
    """The PostgreSQL type of a column of `arrow_type` under --preserve-types.

    FileError for the types ingestd cannot load, whatever the mode: nested ones and
    those PostgreSQL has no type for.
    """
    t = arrow_type
    if pa.types.is_dictionary(t):
        return pg_type_of(t.value_type, column)
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return "uuid"
        if t.extension_name == "arrow.json":
            return "json"  # json, not jsonb: the text is kept as written
        raise _no_type(t, column)
    if t in _SIMPLE:
        return _SIMPLE[t]
    if pa.types.is_decimal(t):
        # Parquet cannot store a negative scale; Arrow can, and such values are integers.
        return f"numeric({t.precision},{t.scale})" if t.scale >= 0 else "numeric"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    for test, pg_type in _KINDS:
        if test(t):
            return pg_type
    if (pa.types.is_nested(t) or _is_list_view(t)) and not pa.types.is_run_end_encoded(t):
        raise FileError(
            f"column {column} has type {t}, a nested type, which ingestd cannot load into "
            "a column: flatten nested data before loading, or leave the column out with "
            "--headers"
        )
    raise _no_type(t, column)


def _no_type(t: pa.DataType, column: str) -> FileError:
    return FileError(
        f"column {column} has type {t}, which ingestd has no PostgreSQL type for: write "
        "it as another type, or leave the column out with --headers"
    )


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or t == pa.string_view())


def _is_binary(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or t == pa.binary_view()
    )


def _is_list_view(t: pa.DataType) -> bool:
    return bool(pa.types.is_list_view(t) or pa.types.is_large_list_view(t))


_KINDS: tuple[tuple[Callable[[pa.DataType], bool], str], ...] = (
    (pa.types.is_null, "text"),  # a column of NULLs only (pandas writes one for all-None data)
    (pa.types.is_time, "time"),
    (pa.types.is_date, "date"),
    (pa.types.is_duration, "interval"),
    (_is_string, "text"),
    (_is_binary, "bytea"),
)


def converter_for(
    arrow_type: pa.DataType, column: str, *, decode_binary: bool = False
) -> tuple[Converter, bool]:
    """The conversion of a column's arrays, and whether it can refuse a value.

    Call pg_type_of first: this assumes a type it accepts. `decode_binary` reads a binary
    column's bytes as UTF-8 text instead of giving them as bytea.
    """
    t = arrow_type
    if pa.types.is_dictionary(t):
        inner, checked = converter_for(t.value_type, column, decode_binary=decode_binary)
        return (lambda a: inner(a.dictionary_decode())), checked
    if isinstance(t, pa.BaseExtensionType):
        if t.extension_name == "arrow.uuid":
            return _uuid, False
        return (lambda a: _utf8(a.storage)), False
    if pa.types.is_timestamp(t):
        return _timestamp(t), True
    if pa.types.is_date(t):
        return _date, True
    if pa.types.is_time(t):
        return _time, True
    if pa.types.is_duration(t):
        return _duration, True
    if pa.types.is_decimal(t):
        return _decimal, False
    if t == pa.float16():
        # Widened, each value is written as the shortest float4 text that reads back as it.
        return (lambda a: a.cast(pa.float32())), False
    if _is_string(t):
        return _utf8, False
    if _is_binary(t):
        return (_decoded, True) if decode_binary else (_hex, False)
    return (lambda a: a), False


def _decimal(array: pa.Array) -> pa.Array:
    # Arrow writes small and zero values with an exponent (1E-10, 0E-10); PostgreSQL prints
    # numeric digits as they are (0.0000000001), and text columns must hold that text.
    text = pc.cast(array, pa.string())
    if not pc.any(pc.match_substring(text, "E")).as_py():
        return text
    return pa.array([None if v is None else format(v, "f") for v in array.to_pylist()], pa.string())


def range_only(arrow_type: pa.DataType) -> tuple[int, int] | None:
    """For a type whose values are refused only outside a range, that range as stored
    integers (a Parquet file's statistics can then clear a column without reading it)."""
    t = arrow_type
    if pa.types.is_timestamp(t) and t.unit in _UNIT_US:
        factor = _UNIT_US[t.unit]
        return -(-_MIN_US // factor), _MAX_US // factor
    if t == pa.date32():
        return _MIN_DAY, _MAX_DAY
    return None


def _first(mask: pa.Array) -> int | None:
    index: int = pc.index(mask, True).as_py()
    return None if index < 0 else index


def _text(array: pa.Array, index: int) -> str:
    text = str(pc.cast(array.slice(index, 1), pa.string())[0].as_py())
    if "out of range" in text:  # Arrow formats years 1677 to 2262 of a nanosecond type
        unit = getattr(array.type, "unit", "day")
        # A date32 has no cast to int64 (Arrow refuses it): its days are int32 storage.
        ints = array.view(pa.int32()) if array.type == pa.date32() else array.cast(pa.int64())
        return f"{ints[index].as_py()} {unit} after 1970-01-01"
    return text


def _not_multiple(ints: pa.Array, factor: int) -> pa.Array:
    return pc.not_equal(pc.multiply(pc.divide(ints, factor), factor), ints)


def _outside(ints: pa.Array, low: int, high: int) -> pa.Array:
    return pc.or_(pc.less(ints, low), pc.greater(ints, high))


def _within(ints: pa.Array, low: int, high: int) -> bool:
    """True if every value (NULLs aside) lies in [low, high]: one min_max kernel, from
    pyarrow._compute, so a file of valid dates never imports pyarrow.compute (~40-50 ms,
    on the path to the first binary COPY piece); a value outside is found by _outside."""
    span = call_function("min_max", [ints])
    least, most = span["min"].as_py(), span["max"].as_py()
    return least is None or (low <= least and most <= high)


def _timestamp(t: pa.TimestampType) -> Converter:
    # An aware timestamp goes out as UTC: Arrow writes other zones' offsets in whole
    # minutes (Paris in 1900 was +00:09:21), which would move the instant.
    out = pa.timestamp("us", tz="UTC" if t.tz else None)
    factor = _UNIT_US.get(t.unit)

    def convert(array: pa.Array) -> pa.Array:
        ints = array.cast(pa.int64())
        if factor is None:  # nanoseconds: years 1677 to 2262, always in range
            bad = _first(_not_multiple(ints, 1000))
            if bad is not None:
                raise BadValueError(bad, f"{_text(array, bad)} {_NS}")
        else:
            bad = _first(_outside(ints, -(-_MIN_US // factor), _MAX_US // factor))
            if bad is not None:
                raise BadValueError(bad, f"{_text(array, bad)} is {_YEARS}")
        return array.cast(out)

    return convert


def _date(array: pa.Array) -> pa.Array:
    if array.type == pa.date64():
        ms = array.cast(pa.int64())
        bad = _first(_not_multiple(ms, _DAY_MS))
        if bad is not None:
            raise BadValueError(bad, f"{ms[bad].as_py()} ms since 1970 is not a whole day")
        # Days past int32 would make Arrow's cast refuse the whole column, naming no row.
        bad = _first(_outside(ms, _INT32_MIN * _DAY_MS, _INT32_MAX * _DAY_MS))
        if bad is not None:
            days = ms[bad].as_py() // _DAY_MS
            raise BadValueError(bad, f"{days} day after 1970-01-01 is {_YEARS}")
        array = array.cast(pa.date32())
    if _within(array.view(pa.int32()), _MIN_DAY, _MAX_DAY):
        return array
    bad = _first(_outside(array.cast(pa.int32()), _MIN_DAY, _MAX_DAY))
    if bad is not None:
        raise BadValueError(bad, f"{_text(array, bad)} is {_YEARS}")
    return array


def _time(array: pa.Array) -> pa.Array:
    unit = array.type.unit
    ints = array.cast(pa.int32() if unit in ("s", "ms") else pa.int64()).cast(pa.int64())
    per_day = 86_400 * {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    bad = _first(_outside(ints, 0, per_day - 1))
    if bad is not None:
        raise BadValueError(bad, f"{ints[bad].as_py()} {unit} is not a time of day")
    if unit == "ns":
        bad = _first(_not_multiple(ints, 1000))
        if bad is not None:
            raise BadValueError(bad, f"{_text(array, bad)} {_NS}")
    return array.cast(pa.time64("us"))


def _duration(array: pa.Array) -> pa.Array:
    unit = array.type.unit
    ints = array.cast(pa.int64())
    if unit == "ns":
        bad = _first(_not_multiple(ints, 1000))
        if bad is not None:
            raise BadValueError(bad, f"{ints[bad].as_py()} ns {_NS}")
        micros = pc.divide(ints, 1000)
    else:
        limit = _INT64_MAX // _UNIT_US[unit]
        bad = _first(_outside(ints, -limit, limit))
        if bad is not None:
            raise BadValueError(
                bad, f"{ints[bad].as_py()} {unit} is longer than a PostgreSQL interval holds"
            )
        micros = pc.multiply(ints, _UNIT_US[unit])
    return pa.array([None if v is None else _interval(v) for v in micros.to_pylist()], pa.string())


def _interval(micros: int) -> str:
    # Hours, minutes and seconds: an elapsed time, never days or months, whose length
    # PostgreSQL lets vary (23 or 25 hours, 28 to 31 days) when added to a timestamp.
    sign = "-" if micros < 0 else ""
    hours, rest = divmod(abs(micros), 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, fraction = divmod(rest, 1_000_000)
    return f"{sign}{hours}:{minutes:02}:{seconds:02}.{fraction:06}"


def _utf8(array: pa.Array) -> pa.Array:
    if array.type == pa.string_view():
        array = array.cast(pa.string())
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        raise BadValueError(_bad_utf8(array.cast(pa.binary())), _NOT_UTF8) from None
    return array


_NOT_UTF8 = "bytes that are not valid UTF-8, in a column the file says holds text"


def _bytes(array: pa.Array) -> pa.Array:
    if pa.types.is_fixed_size_binary(array.type) or array.type == pa.binary_view():
        return array.cast(pa.binary())
    return array


def _hex(array: pa.Array) -> pa.Array:
    # Binary goes as PostgreSQL's hex bytea text.
    values = _bytes(array).to_pylist()
    return pa.array([None if v is None else "\\x" + v.hex() for v in values], pa.string())


def _decoded(array: pa.Array) -> pa.Array:
    data = _bytes(array)
    target = pa.large_string() if pa.types.is_large_binary(data.type) else pa.string()
    try:
        return data.cast(target)
    except pa.ArrowInvalid:
        raise BadValueError(
            _bad_utf8(data),
            "bytes that are not valid UTF-8; the column is binary in the file, and the "
            "contract gives it a text type: give it type bytea to load the bytes as they are",
        ) from None


def _bad_utf8(data: pa.Array) -> int:
    for index, value in enumerate(data.to_pylist()):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return index
    return 0


def _uuid(array: pa.Array) -> pa.Array:
    values = array.storage.to_pylist()
    return pa.array([None if v is None else str(uuid.UUID(bytes=v)) for v in values], pa.string())
