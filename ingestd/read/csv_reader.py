"""CSV: stream a (maybe compressed) CSV file as record batches, growing the block for big rows."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

from ingestd.exceptions import FileError
from ingestd.read.batches import (
    CSV_BLOCK_BYTES,
    FILE_READ_ERRORS,
    BatchReader,
    FileLayout,
    Limits,
    _normalise,
    arrow_file_error,
    rebatch,
    skip_rows,
)
from ingestd.read.columns import load_names, normalize_names, renamed, select_columns
from ingestd.read.compression import (
    BrokenStream,
    Readable,
    compression_of,
    counted,
    open_stream,
)
from ingestd.read.quoting import OpenQuotes
from ingestd.read.raw_csv import RawCsv, raw_csv
from ingestd.settings import Contract, CsvOptions
from ingestd.storage import Openable, open_bytes
from ingestd.storage.zip import is_member

# --- CSV ----------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"


def _csv_stream(path: Openable) -> Readable:
    return open_stream(path)


class CsvStream:
    """A CSV file's text as UTF-8, for pyarrow: a leading UTF-8 BOM dropped whatever the
    encoding (the raw path drops it too), any other encoding decoded here, the last line
    ended; with `scan`, every byte followed by OpenQuotes."""

    def __init__(self, path: Openable, csv: CsvOptions, scan: bool = False):
        self._source = _csv_stream(path)
        self._scan = scan
        utf8 = codecs.lookup(csv.encoding).name == "utf-8"
        self._decoder = None if utf8 else codecs.getincrementaldecoder(csv.encoding)()
        self._buffer = self._last = b""
        self._started = self._ended = False
        self.quotes = OpenQuotes(csv.delimiter, csv.quote)
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of UTF-8 text (all the rest if negative); b"" at the end."""
        want = size if size >= 0 else 1 << 62
        while len(self._buffer) < want and not self._ended:
            self._buffer += self._next(max(want - len(self._buffer), 1 << 16))
        data, self._buffer = self._buffer[:want], self._buffer[want:]
        return data

    def _next(self, size: int) -> bytes:
        data: bytes = self._source.read(size)
        if not self._started:
            while len(data) < len(_BOM) and (more := self._source.read(size)):
                data += more
            self._started = True
            data = data.removeprefix(_BOM)
        self._ended = not data
        if self._decoder is not None:
            data = self._decoder.decode(data, final=self._ended).encode("utf-8")
        if self._ended and (data[-1:] or self._last) not in (b"", b"\n", b"\r"):
            # pyarrow reads an empty last field at the very end, after a quoted one, as
            # quoted ('' where it means NULL): with the line ended, it does not.
            data += b"\n"
        self._last = data[-1:] or self._last
        if self._scan:
            self.quotes.feed(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        # pyarrow may still be reading ahead (see _read_header): the source closes when
        # it is let go of.
        self.closed = True


def _csv_options(
    contract: Contract, block_bytes: int
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    opts = contract.csv
    read = pacsv.ReadOptions(
        # One thread: row numbers in errors are only known single-threaded, and the
        # other core belongs to PostgreSQL.
        use_threads=False,
        block_size=block_bytes,
        encoding="utf8",  # CsvStream decodes
        column_names=list(contract.headers) if not opts.header and contract.headers else None,
    )
    parse = pacsv.ParseOptions(
        delimiter=opts.delimiter,
        quote_char=opts.quote,
        newlines_in_values=True,
    )
    return read, parse


def _is_straddle(exc: BaseException) -> bool:
    return isinstance(exc, pa.ArrowInvalid) and "straddl" in str(exc)


def row_too_large(limits: Limits, rows_before: int) -> FileError:
    """A row that does not fit in memory_limit_mb, or quoting that never ends."""
    return FileError(
        f"after row {rows_before}, a row is larger than {limits.max_block_bytes >> 20} MiB, "
        "or a quoted field is never closed (malformed quoting). If rows really are that "
        "large, raise memory_limit_mb (a row may use half of it)"
    )


def read_header(path: Openable, contract: Contract, limits: Limits) -> list[str]:
    """The header row's names as the file spells them (--dry-run shows what normalizing
    makes of them)."""
    return _read_header(path, contract, limits)


def _read_header(path: Openable, contract: Contract, limits: Limits) -> list[str]:
    block = CSV_BLOCK_BYTES
    while True:
        read, parse = _csv_options(contract, block)
        try:
            # The reader owns its stream, as in open_csv below: never close it ourselves.
            # pyarrow reads ahead on an IO thread that outlives open_csv() (returned or
            # raised), and its read loop does not notice a close: its next read() would
            # take bytes from the next file given that descriptor number (the retry's own
            # stream, or the data stream). The file closes when the readahead lets go of it.
            stream = CsvStream(path, contract.csv)
            reader = pacsv.open_csv(stream, read_options=read, parse_options=parse)
            return list(reader.schema.names)
        except pa.ArrowInvalid as exc:
            if not _is_straddle(exc):
                raise
            if block * 2 > limits.max_block_bytes:
                raise row_too_large(limits, 0) from None
            block *= 2


def open_csv(path: Openable, contract: Contract, limits: Limits) -> BatchReader:
    if contract.csv.header:
        try:
            file_names = _read_header(path, contract, limits)
        except BrokenStream as broken:
            raise broken.after(0) from None
        names = load_names(file_names, path, contract)  # checked, or normalized
    else:
        names = file_names = list(contract.headers or ())
    columns, missing = select_columns(names, contract)
    source = dict(zip(names, file_names, strict=True))
    convert = _convert(file_names, [source[c] for c in columns if c not in missing])

    def open_with(block: int) -> pacsv.CSVStreamingReader:
        read, parse = _csv_options(contract, block)
        return pacsv.open_csv(
            CsvStream(path, contract.csv),
            read_options=read,
            parse_options=parse,
            convert_options=convert,
        )

    types = dict(contract.types)
    layout = FileLayout("csv", columns, tuple(types.get(c, "text") for c in columns))

    def open_at_end(last: pa.RecordBatch) -> bool:
        # The file's last column, if loaded, rules most files out at once.
        end = file_names[-1]
        if end in last.schema.names and not _may_be_open(last.column(end)):
            return False
        return _open_at_end(path, contract)

    batches = _iter_csv(open_with, limits, open_at_end)
    if names != file_names:
        batches = renamed(batches, dict(zip(file_names, names, strict=True)))
    batches = _normalise(batches, columns, missing, contract)
    header_rows = 1 if contract.csv.header else 0
    batches = counted(rebatch(batches, limits.chunk_size, limits.batch_bytes))
    as_is = not missing and columns == tuple(names)
    # A compressed file's bytes are not COPY's: never raw, so never split either; nor a
    # zip member's (a stream out of its archive, without random access).
    stream_only = compression_of(path.name) is not None or is_member(path)
    raw = raw_csv(path, contract.csv, as_is, stream_only)
    return BatchReader(layout, batches, header_rows, names, raw)


def _convert(names: list[str], include: list[str]) -> pacsv.ConvertOptions:
    return pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        include_columns=include,
        # PostgreSQL's CSV rules: an unquoted empty field is NULL, a quoted one ("") is ''.
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        null_values=[""],
    )


def parse_segment(
    segment: bytes, contract: Contract, raw: RawCsv, rows_before: int
) -> pa.RecordBatch:
    """A raw segment (data rows only, after `rows_before` rows of the file) as one Arrow
    batch, read with the file's dialect; errors name rows of the whole file."""
    names = list(contract.headers) if not contract.csv.header and contract.headers else None
    if names is None:
        with open_bytes(raw.path) as fh:  # the header row names the columns
            header = fh.read(raw.start)
        names = _read_names(header, contract)
        if contract.column_names == "normalize":
            names = normalize_names(names)
    read = pacsv.ReadOptions(use_threads=False, column_names=names, encoding=contract.csv.encoding)
    parse = pacsv.ParseOptions(
        delimiter=contract.csv.delimiter, quote_char=contract.csv.quote, newlines_in_values=True
    )
    if not segment.endswith((b"\n", b"\r")):
        segment += b"\n"  # as CsvStream ends the last line: an empty last field is NULL
    try:
        table = pacsv.read_csv(
            pa.BufferReader(segment),
            read_options=read,
            parse_options=parse,
            convert_options=_convert(names, names),
        )
    except FILE_READ_ERRORS as exc:
        # Row numbers count from the segment's start: shift them to the file's.
        raise arrow_file_error(exc, -rows_before, names) from None
    if _may_be_open(table.column(names[-1])):  # only a file's last piece can be
        quotes = OpenQuotes(contract.csv.delimiter, contract.csv.quote)
        quotes.feed(segment)
        if quotes.open:
            raise unclosed_quote(rows_before + table.num_rows)
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def _read_names(header: bytes, contract: Contract) -> list[str]:
    read = pacsv.ReadOptions(use_threads=False, encoding=contract.csv.encoding)
    parse = pacsv.ParseOptions(delimiter=contract.csv.delimiter, quote_char=contract.csv.quote)
    text = header.removeprefix(_BOM) + b"\n"
    return list(pacsv.read_csv(pa.BufferReader(text), read, parse).schema.names)


def _may_be_open(last_column: pa.Array | pa.ChunkedArray) -> bool:
    """Whether the last row may end in a quoted field never closed. Such a field runs to the
    end of the text, which always ends with a line break (CsvStream ends the last line),
    and it is the last field of the last row: a last value not ending with a line break
    rules it out without reading the file again."""
    if not len(last_column):
        return False
    value = last_column[-1].as_py()
    return isinstance(value, str) and value.endswith(("\n", "\r"))


def _open_at_end(path: Openable, contract: Contract) -> bool:
    stream = CsvStream(path, contract.csv, scan=True)
    while stream.read(CSV_BLOCK_BYTES):
        pass
    return stream.quotes.open


def unclosed_quote(row: int) -> FileError:
    """A quoted field that runs to the end of the file (readers would load the rest of the
    file as its value)."""
    return FileError(
        f"row {row}: a quoted field opened in this row is never closed, so the rest of the "
        'file would be one value: close the quote (a quote inside a quoted value is written "")',
        row=row,
    )


def _iter_csv(
    open_with: Callable[[int], pacsv.CSVStreamingReader],
    limits: Limits,
    open_at_end: Callable[[pa.RecordBatch], bool],
) -> Iterator[pa.RecordBatch]:
    """Stream record batches; when a row does not fit pyarrow's block, reopen with a larger
    block (up to the limit) and continue after the rows already yielded. The last batch
    waits for the end of the file: it holds the row a never-closed quote opened in."""
    block = CSV_BLOCK_BYTES
    done = 0
    while True:
        reader: pacsv.CSVStreamingReader | None = None
        try:
            reader = open_with(block)
            held: pa.RecordBatch | None = None
            for batch in skip_rows(iter(reader), done):
                if not batch.num_rows:
                    continue
                if held is not None:
                    done += held.num_rows
                    yield held
                held = batch
            if held is not None:
                if open_at_end(held):
                    raise unclosed_quote(done + held.num_rows)
                yield held
            return
        except pa.ArrowInvalid as exc:
            if not _is_straddle(exc):
                raise
            if block * 2 > limits.max_block_bytes:
                raise row_too_large(limits, done) from None
            block *= 2
        finally:
            if reader is not None:
                reader.close()
