"""Quoting: the one reading of quote characters that every way into the database keeps.

A quote opens a quoted field only at the start of a field (the start of the file, or
after a delimiter or a line end outside quotes); inside it a doubled quote stands for
one quote and a single quote closes it; after that, up to the next delimiter or line
end, and in any field that did not start with one, a quote is a plain character. This
is lenient RFC 4180, as Python's csv module and pyarrow read it.

PostgreSQL's COPY opens a quoted section at any quote, even in the middle of a field.
Both readings agree only on bytes in which every quote opens a field, closes one (just
before a delimiter or a line end) or is doubled inside one: `plain_quoting` tells those
apart, and only they go to COPY as they are. For them, counting quotes also tells a
line break that ends a row from one inside a field.
"""

from __future__ import annotations

import functools
import re
import struct

import pyarrow as pa

try:  # the kernel alone: pyarrow.compute builds a wrapper per kernel at import (~0.1 s)
    from pyarrow._compute import MatchSubstringOptions, call_function
except ImportError:  # pragma: no cover - a pyarrow that moved it
    from pyarrow.compute import MatchSubstringOptions, call_function

_CR, _LF = 0x0D, 0x0A


@functools.cache
def _plain(delimiter: bytes, quote: bytes) -> re.Pattern[bytes]:
    d, q = re.escape(delimiter), re.escape(quote)
    # Runs without quotes, and quoted fields that open at a field start, hold only
    # doubled quotes, and close just before a delimiter, a line end or the end. Possessive
    # quantifiers: a failed match gives up at once instead of backtracking.
    field = rb"(?<![^" + d + rb"\n])" + q + rb"(?:[^" + q + rb"]++|" + q + q + rb")*+" + q
    return re.compile(
        rb"(?:[^" + q + rb"]*+" + field + rb"(?=[" + d + rb"\n]|\r\n|\Z))*+[^" + q + rb"]*+\Z"
    )


def plain_quoting(data: bytes, end: int, delimiter: str, quote: str) -> bool:
    """Whether COPY reads data[:end] (whole rows) as the lenient reading does: every quote
    opens a field, closes one before a delimiter or line end, or is doubled inside one;
    and no carriage return stands alone (COPY and the readers differ on those too)."""
    mark = quote.encode()
    if _lone_cr(data, end):
        return False
    if data.find(mark, 0, end) < 0:
        return True  # the common case: nothing to read differently
    whole = _whole(delimiter, quote)
    if end >= _RE2_FROM and whole is not None and _matches(whole, data, end):
        return True
    return _plain_by_regex(data, end, delimiter, quote)  # the definition decides


# Arrow compiles the RE2 pattern on every call (~75 us): below this the regex is cheaper.
_RE2_FROM = 16 << 10


def _lone_cr(data: bytes, end: int) -> bool:
    return data.find(b"\r", 0, end) >= 0 and data.count(b"\r", 0, end) != data.count(
        b"\r\n", 0, end
    )


def _plain_by_regex(data: bytes, end: int, delimiter: str, quote: str) -> bool:
    """plain_quoting by the Python regex alone: its definition."""
    if _lone_cr(data, end):
        return False
    mark = quote.encode()
    pattern = _plain(delimiter.encode(), mark)
    # In steps of whole rows: a match holds the GIL throughout, and the event loop must
    # keep feeding COPY meanwhile. Each step starts at a row boundary if the ones before
    # were plain (then counting quotes finds row ends).
    at = 0
    while at < end:
        cut = _step_end(data, at, end, mark)
        if pattern.fullmatch(data, at, cut) is None:
            return False
        at = cut
    return True


@functools.cache
def _whole(delimiter: str, quote: str) -> str | None:
    """_plain's language as an RE2 pattern over all of the bytes at once, for data without
    a lone CR; None for marks it is not written for (then only the regex decides).

    Python's regex costs ~10 ns a byte on quoted CSV (a group per field) and holds the GIL;
    RE2, through Arrow, runs a DFA at a few ns a byte and releases the GIL. Without
    lookarounds: a field opens at the start or after a delimiter or LF, holds bytes and
    doubled quotes, and closes before a delimiter, LF, CR (then an LF: no lone CR) or the
    end; between two fields, one byte can be both. Splitting the bytes into _step_end's
    steps (at LFs outside fields) keeps each step in the language and vice versa, so one
    match answers as the steps do."""
    marks = (delimiter, quote)
    if any(len(c) != 1 or not c.isascii() or c in "\r\n" for c in marks) or delimiter == quote:
        return None
    d, q = (f"\\x{{{ord(c):02x}}}" for c in marks)
    other = f"[^{q}]"
    field = f"{q}(?:{other}|{q}{q})*{q}"
    between = f"(?:[{d}\\n]|[{d}\\n\\r]{other}*[{d}\\n])"
    fields = f"(?:{other}*[{d}\\n])?{field}(?:{between}{field})*(?:[{d}\\n\\r]{other}*)?"
    return f"\\A(?:{other}*|{fields})\\z"


def _matches(pattern: str, data: bytes, end: int) -> bool:
    # One large_binary value viewing data[:end]: no copy. Binary input makes RE2 read
    # Latin-1, one byte a character, whatever the file's encoding.
    offsets = pa.py_buffer(struct.pack("<qq", 0, end))
    value = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    found = call_function("match_substring_regex", [value], MatchSubstringOptions(pattern))
    return bool(found[0].as_py())


# Byte sequences COPY reads otherwise than the readers, at a line start after the first:
# a blank line (LF or CRLF) and a line starting with \. (the end-of-data marker).
_MARKS = rb"\n(?:\r?\n|\\\.)"
_MARKS_RE = re.compile(_MARKS)


def line_marks(data: bytes, end: int) -> bool:
    """Whether data[:end] holds a line feed followed by a blank line or by `\\.`.
    bytes.find of each costs ~1 ns a byte and holds the GIL; RE2 skips to each LF at
    memchr speed (~0.2 ns a byte) without it. Small data: the regex (RE2 compiles per call)."""
    if end >= _RE2_FROM:
        return _matches(_MARKS.decode(), data, end)
    return _MARKS_RE.search(data, 0, end) is not None


_STEP_BYTES = 256 << 10


def _step_end(data: bytes, at: int, end: int, quote: bytes) -> int:
    stop = at + _STEP_BYTES
    while stop < end:
        newline = data.rfind(b"\n", at, stop)
        odd = data.count(quote, at, newline) % 2 if newline >= 0 else 0
        while newline >= 0 and odd:  # inside a quoted field: try the line break before
            before = data.rfind(b"\n", at, newline)
            odd ^= data.count(quote, max(before, at), newline) % 2
            newline = before
        if newline >= 0:
            return newline + 1
        stop += _STEP_BYTES  # a row longer than a step
    return end


@functools.cache
def _lenient(delimiter: bytes, quote: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    d, q = re.escape(delimiter), re.escape(quote)
    body = rb"(?:[^" + q + rb"]++|" + q + q + rb")*+"
    # Outside quotes: anything but a quote, or a quote that does not start a field.
    outside = rb"(?:[^" + q + rb"]++|(?<![" + d + rb"\r\n])" + q + rb")*+"
    # A quote at the end of a block may be the first of a doubled pair: it closes nothing yet.
    run = re.compile(rb"(?:" + outside + q + body + q + rb"(?=.))*+" + outside, re.DOTALL)
    return run, re.compile(body)


class OpenQuotes:
    """Follows a CSV stream from its first byte, block by block, under the lenient
    reading: `open` says whether the bytes so far end inside a quoted field.

    pyarrow and Python's csv module take a quoted field that is never closed as running
    to the end of the file; ingestd refuses such a file instead of loading the rest of
    it into one value."""

    def __init__(self, delimiter: str, quote: str):
        self._run, self._body = _lenient(delimiter.encode(), quote.encode())
        self._quote = ord(quote)
        self._starts = {ord(delimiter), _CR, _LF}
        self._inside = False
        self._pending = False  # inside, and the last byte was a quote: closing or doubled?
        self._at_start = True  # outside, and the next byte starts a field

    @property
    def open(self) -> bool:
        """The bytes fed so far end inside a quoted field."""
        return self._inside and not self._pending

    def feed(self, block: bytes) -> None:
        """Read the next bytes of the stream."""
        size = len(block)
        if not size:
            return
        at = 0
        if self._pending:
            self._pending = False
            if block[0] == self._quote:
                at = 1  # a doubled quote: still inside
            else:
                self._inside = self._at_start = False  # it closed the field
        while at < size:
            if self._inside:
                close = _end(self._body, block, at, size)
                if close >= size - 1:
                    self._pending = close == size - 1
                    return
                at, self._inside = close + 1, False
            elif at == 0 and self._at_start and block[0] == self._quote:
                at, self._inside = 1, True
            else:
                # The run stops at a quote opening a field whose close is not in this block.
                opening = _end(self._run, block, at, size)
                if opening == size:
                    self._at_start = block[-1] in self._starts
                    return
                at, self._inside = opening + 1, True


@functools.cache
def _outside(delimiter: bytes, quote: bytes) -> re.Pattern[bytes]:
    d, q = re.escape(delimiter), re.escape(quote)
    return re.compile(rb"(?:[^" + q + rb"]++|(?<![" + d + rb"\r\n])" + q + rb")*+")


def lenient_row_end(data: bytes, end: int, delimiter: str, quote: str) -> int | None:
    """Offset just after the last line break in data[:end] outside quotes under the lenient
    reading, data starting at a row boundary; None if there is none. One step per quoted
    field: for files whose quotes are not plain, where counting quotes misleads."""
    mark = quote.encode()
    outside = _outside(delimiter.encode(), mark)
    body = _lenient(delimiter.encode(), mark)[1]
    last: int | None = None
    at = 0
    if data[:1] == mark and end:  # the first field opens with a quote
        at = _end(body, data, 1, end) + 1
    while at < end:
        opening = _end(outside, data, at, end)
        newline = data.rfind(b"\n", at, opening)
        if newline >= 0:
            last = newline + 1
        if opening >= end:
            break
        at = _end(body, data, opening + 1, end) + 1  # past the closing quote
    return last


def _end(pattern: re.Pattern[bytes], data: bytes, at: int, end: int) -> int:
    match = pattern.match(data, at, end)
    assert match is not None  # noqa: S101 - the patterns match the empty string
    return match.end()
