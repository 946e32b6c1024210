"""Compression: which codec a file name or its first bytes say, and its bytes decompressed
as a stream (never to disk, never whole in memory); a broken stream is a FileError."""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from typing import Protocol

import pyarrow as pa

from ingestd.exceptions import FileError
from ingestd.storage import Openable, open_bytes

# Suffix after .csv/.tsv/.txt/.jsonl/.ndjson -> codec. pyarrow streams gzip, zstd, bz2 and
# LZ4 frames in C++ (no GIL); xz goes through the standard library's lzma.
COMPRESSIONS: dict[str, str] = {
    ".gz": "gzip",
    ".zst": "zstd",
    ".bz2": "bz2",
    ".xz": "xz",
    ".lz4": "lz4",
}
SUFFIX_OF = {codec: suffix for suffix, codec in COMPRESSIONS.items()}
# The magic bytes each codec's stream starts with (bz2: "BZh", a block size digit, then the
# block magic, so a text file starting with "BZh" is not taken for one).
_MAGIC: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("xz", b"\xfd7zXZ\x00"),
    ("lz4", b"\x04\x22\x4d\x18"),
)
_BZ2_BLOCK = b"1AY&SY"
_ZIP = b"PK\x03\x04"
_LZ4_LEGACY = b"\x02\x21\x4c\x18"
MAGIC_BYTES = 10  # enough of a file's start for sniff()
_TRUNCATED = ("Truncated", "ended before the end-of-stream")
_CODEC_WORDS = ("compress", "inflate")
_XZ_READ = 1 << 16


class Readable(Protocol):
    """What a reader needs of a byte stream."""

    @property
    def closed(self) -> bool: ...

    def read(self, size: int = -1, /) -> bytes: ...


def compression_of(name: str) -> str | None:
    """The codec a file name's last suffix names (.csv.zst -> zstd), or None."""
    lower = name.lower()
    for suffix, codec in COMPRESSIONS.items():
        if lower.endswith(suffix):
            return codec
    return None


def without_compression(name: str) -> str:
    """The name without its compression suffix (data.csv.zst -> data.csv)."""
    codec = compression_of(name)
    return name[: -len(SUFFIX_OF[codec])] if codec else name


def sniff(head: bytes) -> str | None:
    """The codec a file's first bytes show, or None for anything else."""
    for codec, magic in _MAGIC:
        if head.startswith(magic):
            return codec
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == _BZ2_BLOCK:
        return "bz2"
    return None


def check_compression(name: str, head: bytes) -> None:
    """Refuse a file whose first bytes say another compression than its name does."""
    named, found = compression_of(name), sniff(head)
    if head.startswith(_ZIP):
        raise FileError(
            f"{name} is a zip archive: name it *.zip in the inbox, and each member loads "
            "as ARCHIVE.zip/MEMBER (a zip inside a zip is not read: unzip the outer one)"
        )
    if named == "lz4" and head.startswith(_LZ4_LEGACY):
        raise FileError(
            f"{name} is in the legacy LZ4 format (lz4 -l), which ingestd cannot read: "
            "compress it as an LZ4 frame (lz4 without -l)"
        )
    if named == found:
        return
    if named is None:
        raise FileError(f"{name} is {found}-compressed: name it {name}{SUFFIX_OF[str(found)]}")
    if found is None:
        if len(head) < MAGIC_BYTES and _starts_like(named, head):
            return  # empty or cut inside its header: the reader says so
        raise FileError(
            f"{name} is not {named}-compressed (its first bytes are not a {named} header): "
            f"name it {without_compression(name)} if it is plain text"
        )
    raise FileError(
        f"{name} is {found}-compressed, not {named}: name it "
        f"{without_compression(name)}{SUFFIX_OF[found]}"
    )


def _starts_like(codec: str, head: bytes) -> bool:
    magic = dict(_MAGIC).get(codec, b"BZh")
    return magic[: len(head)] == head[: len(magic)]


class BrokenStream(FileError):
    """A compressed stream that ends early or does not decompress."""

    def __init__(self, codec: str, detail: str):
        truncated = any(word in detail for word in _TRUNCATED)
        self.what = f"the {codec} stream " + (
            "ends early (truncated)" if truncated else "is corrupt"
        )
        self.detail = detail
        super().__init__(f"{self.what} ({detail}): send the complete file again")

    def after(self, rows: int) -> FileError:
        """The same failure, saying how many rows were committed before it."""
        return FileError(
            f"{self.what} after row {rows:,}: {rows:,} rows committed, the rest not loaded "
            f"({self.detail}); send the complete file again",
            row=rows + 1,
        )


class Decompressed:
    """A compressed file's bytes as a stream; any failure to decompress is a BrokenStream.

    Errors from the file system itself (EIO, the file gone) stay OSErrors: reading, not
    the stream, failed."""

    def __init__(self, source: pa.NativeFile, codec: str):
        self.codec = codec
        self._source: _Xz | pa.NativeFile = (
            _Xz(source) if codec == "xz" else pa.input_stream(source, compression=codec)
        )

    @property
    def closed(self) -> bool:
        return bool(self._source.closed)

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` decompressed bytes; b"" at the end of the stream."""
        try:
            data: bytes = self._source.read(size)
        except (EOFError, lzma.LZMAError) as exc:
            raise BrokenStream(self.codec, str(exc) or type(exc).__name__) from None
        except OSError as exc:
            # pyarrow's codecs say "Truncated compressed stream", "zlib inflate failed",
            # "ZSTD decompress failed"; anything else is the file system's (EIO, ESTALE).
            if not any(word in str(exc) for word in _CODEC_WORDS):
                raise
            raise BrokenStream(self.codec, str(exc)) from None
        return data

    def close(self) -> None:
        self._source.close()


class _Xz:
    """xz streams (one after another, as `cat a.xz b.xz` makes them) through the standard
    library's lzma; an empty file is an empty stream, as for the other codecs."""

    def __init__(self, source: pa.NativeFile):
        self._source = source
        self._decompressor = lzma.LZMADecompressor()
        self._input = b""
        self._in_stream = False  # input fed since the last stream ended

    @property
    def closed(self) -> bool:
        return bool(self._source.closed)

    def read(self, size: int = -1) -> bytes:
        want = size if size > 0 else _XZ_READ
        while True:
            if self._decompressor.eof:  # what follows a stream is the next one, or nothing
                self._input = self._decompressor.unused_data + self._input
                self._decompressor = lzma.LZMADecompressor()
                self._in_stream = False
            if self._decompressor.needs_input and not self._input:
                self._input = self._source.read(_XZ_READ)
                if not self._input:
                    if self._in_stream:
                        raise EOFError(
                            "Compressed file ended before the end-of-stream marker was reached"
                        )
                    return b""
            self._in_stream = True
            data: bytes = self._decompressor.decompress(self._input, max_length=want)
            self._input = b""
            if data:
                return data

    def close(self) -> None:
        self._source.close()


def open_stream(entry: Openable) -> Readable:
    """The entry's bytes, decompressed when its name says so."""
    codec = compression_of(entry.name)
    source = open_bytes(entry)
    return source if codec is None else Decompressed(source, codec)


def counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches; a broken compressed stream says after how many rows. Its error reaches
    the loader only once the batches before it have committed (each is read while the one
    before is in the database), so the rows yielded are the rows committed, a resume's
    skipped rows included: they pass through here too."""
    rows = 0
    try:
        for batch in batches:
            yield batch
            rows += batch.num_rows
    except BrokenStream as broken:
        raise broken.after(rows) from None
