"""read.compression: codecs by name and by magic bytes, streams that end early or break,
xz streams one after another; NDJSON's reading without a database."""

from __future__ import annotations

import lzma
from pathlib import Path

import pyarrow as pa
import pytest

from ingestd.exceptions import FileError
from ingestd.read import guess_file_type, open_reader
from ingestd.read.compression import BrokenStream, check_compression, open_stream, sniff
from ingestd.settings import Contract
from tests.integration.test_formats import compress


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.csv.zst", "csv"), ("a.TSV.BZ2", "csv"), ("a.txt.xz", "csv"), ("a.csv.lz4", "csv"),
        ("a.jsonl", "ndjson"), ("a.ndjson.gz", "ndjson"), ("a.jsonl.zst", "ndjson"),
        ("a.json", "unknown"), ("a.zst", "unknown"), ("a.parquet", "parquet"),
    ],
)  # fmt: skip
def test_file_types_by_suffix(name: str, kind: str) -> None:
    assert guess_file_type(name) == kind


@pytest.mark.parametrize("suffix", ["gz", "zst", "bz2", "xz", "lz4"])
def test_every_codec_is_known_by_its_magic_bytes(suffix: str) -> None:
    head = compress(b"id\n1\n", suffix)[:10]
    assert sniff(head) == {"gz": "gzip", "zst": "zstd"}.get(suffix, suffix)
    check_compression(f"a.csv.{suffix}", head)  # agrees: no error


def test_text_that_starts_like_bz2_is_text() -> None:
    assert sniff(b"BZh is a word,x\n") is None
    check_compression("a.csv", b"BZh is a wo")


def test_a_header_cut_short_is_left_to_the_stream_to_call_truncated() -> None:
    check_compression("a.csv.xz", b"\xfd7z")  # no "not xz-compressed": it starts like one
    with pytest.raises(FileError, match="not zstd-compressed"):
        check_compression("a.csv.zst", b"id,name\n1,")


def test_xz_streams_one_after_another_read_as_one(tmp_path: Path) -> None:
    f = tmp_path / "two.csv.xz"
    f.write_bytes(lzma.compress(b"id\n1\n") + lzma.compress(b"2\n3\n"))
    stream = open_stream(f)
    data = b"".join(iter(lambda: stream.read(3), b""))
    assert data == b"id\n1\n2\n3\n"


@pytest.mark.parametrize("suffix", ["gz", "zst", "bz2", "xz", "lz4"])
def test_a_stream_cut_short_is_a_broken_stream(tmp_path: Path, suffix: str) -> None:
    whole = compress(b"".join(b"%d\n" % i for i in range(100_000)), suffix)
    f = tmp_path / f"cut.csv.{suffix}"
    f.write_bytes(whole[: len(whole) // 2])
    stream = open_stream(f)
    with pytest.raises(BrokenStream, match="ends early"):
        while stream.read(1 << 16):
            pass


def test_a_file_system_error_is_not_a_broken_stream() -> None:
    from ingestd.read.compression import Decompressed

    raw = pa.PythonFile(_Eio(), mode="r")
    with pytest.raises(OSError, match="Input/output") as caught:
        Decompressed(raw, "xz").read(10)
    assert not isinstance(caught.value, BrokenStream)


class _Eio:
    closed = False

    def read(self, size: int = -1) -> bytes:
        raise OSError(5, "Input/output error")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def test_a_broken_stream_says_how_many_rows_were_committed() -> None:
    error = BrokenStream("zstd", "Truncated compressed stream").after(12_000)
    assert str(error) == (
        "the zstd stream ends early (truncated) after row 12,000: 12,000 rows committed, the "
        "rest not loaded (Truncated compressed stream); send the complete file again"
    )
    assert error.row == 12_001


def _read(path: Path, **contract: object) -> list[dict[str, object]]:
    reader = open_reader(path, Contract(name="c", pattern="*", table="t", **contract), 2)  # type: ignore[arg-type]
    return [row for batch in reader for row in batch.to_pylist()]


def test_ndjson_crlf_bom_and_a_last_line_without_newline(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n{"a": "x", "b": [1]}')
    assert _read(f) == [{"a": "1", "b": None}, {"a": "x", "b": "[1]"}]


def test_ndjson_a_json_column_gets_json_text_of_scalars_too(tmp_path: Path) -> None:
    f = tmp_path / "j.jsonl"
    f.write_bytes(b'{"j": "s"}\n{"j": 2}\n{"j": {"k": null}}\n')
    assert _read(f, types=(("j", "jsonb"),)) == [{"j": '"s"'}, {"j": "2"}, {"j": '{"k": null}'}]


def test_ndjson_a_lone_surrogate_fails_naming_the_key(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    f.write_bytes(b'{"a": "\\ud800"}\n')
    with pytest.raises(FileError, match="key a: a value holds a lone surrogate"):
        _read(f)


def test_ndjson_a_key_that_is_not_an_identifier_says_what_to_do(tmp_path: Path) -> None:
    f = tmp_path / "k.jsonl"
    f.write_bytes(b'{"user-id": 1}\n')
    with pytest.raises(FileError, match="Rename the key"):
        _read(f)


def test_ndjson_a_line_beyond_the_memory_limit_fails(tmp_path: Path) -> None:
    f = tmp_path / "long.jsonl"
    f.write_bytes(b'{"a": "' + b"x" * (9 << 20) + b'"}\n')
    reader_contract = Contract(name="c", pattern="*", table="t")
    with pytest.raises(FileError, match="line 1 is longer than 8 MiB"):
        open_reader(f, reader_contract, 2, 16 << 20)


def test_a_zip_archive_and_legacy_lz4_say_what_to_do() -> None:
    with pytest.raises(FileError, match=r"a\.csv is a zip archive: name it \*\.zip"):
        check_compression("a.csv", b"PK\x03\x04\x14\x00\x00\x00\x08\x00")
    with pytest.raises(FileError, match=r"legacy LZ4 format \(lz4 -l\)"):
        check_compression("a.csv.lz4", b"\x02\x21\x4c\x18\x00\x00\x00\x00\x00\x00")
