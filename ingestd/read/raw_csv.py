"""Raw CSV: a file's own bytes in row-aligned batches, for PostgreSQL's COPY to parse.

When a CSV file's columns are exactly the columns to load, in order, there is nothing for
the client to change: reading, parsing and re-encoding it would only take CPU from the
server. The file is then cut into batches of about chunk-size rows, each ending at a
line break outside quotes (an even number of quote characters before it), and each
batch is COPYed as it is, if COPY reads it as the readers do (see quoting): from the
first batch that it would read otherwise, the file goes through Arrow. (A "segment" is
a part of a split file, see split_points.)
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass

from ingestd.read.quoting import lenient_row_end, line_marks, plain_quoting
from ingestd.settings import CsvOptions
from ingestd.storage import Handle, Source, open_bytes, open_ranged

# Python codec name -> PostgreSQL encoding name, for COPY's ENCODING option. Not ascii:
# PostgreSQL has no such encoding, and UTF8 would let bytes past 127 through unnoticed.
PG_ENCODINGS = {
    "utf-8": "UTF8",
    "iso8859-1": "LATIN1",
    "iso8859-2": "LATIN2",
    "iso8859-15": "LATIN9",
    "cp1250": "WIN1250",
    "cp1251": "WIN1251",
    "cp1252": "WIN1252",
}
_SAMPLE_BYTES = 64 << 10
_SCAN_BYTES = 4 << 20
_BOM = b"\xef\xbb\xbf"


class NotRaw(Exception):
    """This file (or what is left of it) cannot go as raw bytes: use the Arrow path."""


@dataclass(frozen=True)
class RawCsv:
    """Where a file's data rows start, and how COPY must read them."""

    path: Handle | Source  # the entry: a local path, or a storage's handle or source
    start: int  # byte offset of the first data row (after a BOM and the header)
    delimiter: str
    quote: str
    pg_encoding: str
    row_bytes: float  # average bytes per row, from a sample

    def batches(
        self,
        chunk_rows: int,
        max_bytes: int,
        start: int | None = None,
        end: int | None = None,
        plain_until: int = 0,
    ) -> Iterator[memoryview]:
        """Row-aligned pieces of about chunk_rows rows (never over max_bytes) of the bytes from
        start (the first data row) to end (the end of the file; both row boundaries). Raises
        NotRaw on bytes COPY would read otherwise than the readers (a blank line, a quote
        inside a field), or on a row bigger than a batch (the Arrow reader's limits apply).
        Quotes before byte `plain_until` are known to be plain (split_points checked them)."""
        # Quote counting finds row ends, as long as every piece before was plain.
        target = max(1, min(max_bytes, int(chunk_rows * self.row_bytes)))
        position = self.start if start is None else start
        for piece in self.row_reads(target, max_bytes, start, end):
            position += piece.nbytes
            yield self.checked(piece, quotes=position > plain_until)

    def pieces(
        self, chunk_rows: int, max_bytes: int, start: int | None = None, end: int | None = None
    ) -> Iterator[memoryview]:
        """batches() without the checks COPY needs, for pieces parsed by Arrow: cut where
        the lenient reading ends a row (quote counting misleads on quotes that are not plain)."""
        target = max(1, min(max_bytes, int(chunk_rows * self.row_bytes)))
        return self.row_reads(target, max_bytes, start, end, lenient=True)

    def checked(self, batch: memoryview, quotes: bool = True) -> memoryview:
        """The batch, if COPY reads it as the readers do (its quotes checked if `quotes`);
        else raises NotRaw."""
        data = batch.obj  # the read's bytes: searched in place, not copied
        assert isinstance(data, bytes)  # noqa: S101 - batches are views of read_at results
        end = batch.nbytes
        # One pass for both marks below (line_marks); the reason only when one is there.
        if data.startswith((b"\n", b"\r\n", b"\\.")) or line_marks(data, end):
            if data.startswith((b"\n", b"\r\n")) or _found(data, (b"\n\n", b"\n\r\n"), end):
                raise NotRaw("blank line")
            # A line of just \. ends COPY's data before PostgreSQL 18: later rows would be lost.
            raise NotRaw("a line starting with \\.")
        if data.find(b"\x00", 0, end) >= 0:
            raise NotRaw("a NUL byte")  # refused with its row on the Arrow path
        if quotes and not plain_quoting(data, end, self.delimiter, self.quote):
            # COPY would open a quoted section at a quote inside a field and run on into
            # later rows; quote counting would misplace row ends too.
            raise NotRaw("a quote inside a field, or a lone carriage return")
        return batch

    def row_reads(
        self,
        target: int,
        max_bytes: int,
        start: int | None = None,
        end: int | None = None,
        lenient: bool = False,
    ) -> Iterator[memoryview]:
        """Reads of about `target` bytes, each cut after its last line break outside quotes
        (quotes counted from `start`, or read as the readers do if `lenient`); raises NotRaw
        on a row over half of max_bytes."""
        quote = self.quote.encode()
        with open_ranged(self.path) as fh:
            position = self.start if start is None else start
            stop = fh.size() if end is None else end
            while position < stop:
                # Each read starts at a row boundary, so a piece is a view of one read:
                # the bytes are not copied (the tail after the cut is simply read again).
                size = target
                while True:
                    want = min(size, stop - position)
                    data = fh.read_at(want, position)
                    if len(data) < size:  # the end: all of it is the last piece
                        cut: int | None = len(data)
                        break
                    if lenient:
                        cut = lenient_row_end(data, len(data), self.delimiter, self.quote)
                    else:
                        cut = _row_boundary(data, quote, 0)
                    if cut is not None:
                        break
                    if size * 2 > max_bytes:
                        raise NotRaw("a row larger than a batch")
                    size *= 2
                if not cut:
                    return
                yield memoryview(data)[:cut]
                position += cut


def _found(data: bytes, needles: tuple[bytes, ...], end: int) -> bool:
    return any(data.find(needle, 0, end) >= 0 for needle in needles)


def _row_boundary(data: bytes, quote: bytes, search_from: int) -> int | None:
    """Offset just after the last line break in data that is outside quotes, or None."""
    end = len(data)
    while True:
        newline = data.rfind(b"\n", search_from, end)
        if newline < 0:
            return None
        if data.count(quote, 0, newline) % 2 == 0:
            return newline + 1
        end = newline


def _records(data: bytes, quote: bytes, start: int) -> int:
    """Complete rows in data from start: line breaks outside quotes (once per file)."""
    return _tally(data, quote, start, 0)[0]


def _tally(
    data: bytes, quote: bytes, at: int, quotes: int, line_start: bool = True
) -> tuple[int, int]:
    """Rows ended in data from `at` and the quotes counted by its end, given the quotes
    counted before `at` (only their parity matters) and whether `at` starts a line. Blank
    lines are not rows, as for the readers."""
    rows = 0
    while (newline := data.find(b"\n", at)) >= 0:
        blank = line_start and quotes % 2 == 0 and data[at:newline] in (b"", b"\r")
        quotes += data.count(quote, at, newline)
        rows += quotes % 2 == 0 and not blank
        at = newline + 1
        line_start = True
    return rows, quotes + data.count(quote, at)


def raw_csv(
    path: Handle | Source, csv: CsvOptions, names_match: bool, compressed: bool
) -> RawCsv | None:
    """A RawCsv for the file, or None when it must go through Arrow: columns selected or
    reordered, gzip, an encoding COPY cannot be told, no line feeds, or odd quoting."""
    if not names_match or compressed:
        return None
    pg_encoding = PG_ENCODINGS.get(codecs.lookup(csv.encoding).name)
    if pg_encoding is None:
        return None
    with open_bytes(path) as fh:
        sample = fh.read(_SAMPLE_BYTES)
    # A UTF-8 BOM is skipped whatever the encoding, as the Arrow reader skips it.
    start = len(_BOM) if sample.startswith(_BOM) else 0
    if b"\r" in sample.replace(b"\r\n", b""):
        return None  # old Mac line ends: leave them to the Arrow reader
    if csv.header:
        end = sample.find(b"\n", start)
        if end < 0 or not plain_quoting(sample[start:], end + 1 - start, csv.delimiter, csv.quote):
            return None  # a header spanning lines, longer than the sample, or oddly quoted
        start = end + 1
    rows = _records(sample, csv.quote.encode(), start)
    if rows == 0 and len(sample) == _SAMPLE_BYTES:
        return None  # rows longer than the sample: the Arrow reader grows its blocks
    body = len(sample) - start
    return RawCsv(path, start, csv.delimiter, csv.quote, pg_encoding, body / max(rows, 1))


def split_points(raw: RawCsv, parts: int, max_bytes: int = _SCAN_BYTES * 16) -> list[int]:
    """Where to cut the file's data rows into `parts` segments of about equal size: the
    end offset of each segment, each a row boundary (the last is the end of the file).

    Whether a line break ends a row depends on every quote before it, so the file is read
    once from the start to the last cut, counting quotes (at memory speed: bytes.count).
    Counting is only right if every quote before a cut is plain (see quoting): raises
    NotRaw if one is not. The last segment's own reads check the rest.
    """
    quote = raw.quote.encode()
    with open_ranged(raw.path) as fh:
        size = fh.size()
    body = size - raw.start
    wanted = [raw.start + body * i // parts for i in range(1, parts)]
    ends: list[int] = []
    position = raw.start
    for piece in raw.row_reads(_SCAN_BYTES, max(max_bytes, 2 * _SCAN_BYTES)):
        if not wanted:
            break
        data, length = piece.obj, piece.nbytes
        assert isinstance(data, bytes)  # noqa: S101 - reads are views of read_at results
        if not plain_quoting(data, length, raw.delimiter, raw.quote):
            raise NotRaw("a quote inside a field, or a lone carriage return")
        while wanted and wanted[0] < position + length:
            at = max(0, wanted[0] - position)
            cut = _next_boundary(data, quote, at, data.count(quote, 0, at), length)
            wanted.pop(0)
            if cut is not None and (not ends or position + cut > ends[-1]):
                ends.append(position + cut)
        position += length
    return [end for end in ends if end < size] + [size]


def _next_boundary(block: bytes, quote: bytes, at: int, quotes_before: int, end: int) -> int | None:
    """Offset just after the first line break in block[at:end] that ends a row, given the
    quotes counted up to `at`; None if there is none."""
    while (newline := block.find(b"\n", at, end)) >= 0:
        quotes_before += block.count(quote, at, newline)
        if quotes_before % 2 == 0:
            return newline + 1
        at = newline + 1
    return None


def count_rows(raw: RawCsv, end: int) -> int:
    """Data rows before byte offset `end` (a row boundary): to number rows in messages when
    a load starts in the middle of the file. Reads the file up to there."""
    quote = raw.quote.encode()
    rows, quotes, position, line_start = 0, 0, raw.start, True
    with open_ranged(raw.path) as fh:
        while position < end:
            block = fh.read_at(min(_SCAN_BYTES, end - position), position)
            if not block:
                break
            ended, quotes = _tally(block, quote, 0, quotes, line_start)
            rows += ended
            line_start = block.endswith(b"\n")
            position += len(block)
    return rows
