"""What every landing area must do (ingestd.storage.base.Storage), whatever it is.

Each implementation is a param of the `area` fixture: a factory that gives an empty inbox
with its done/ and failed/ areas, and says how to put an entry in and read one back. An
implementation added to ingestd/storage/ adds its factory to AREAS (and must pass all of
this file).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestd.read import open_reader
from ingestd.settings import Contract
from ingestd.storage import BoundSource, Handle, LocalStorage, Storage, resolve
from ingestd.storage.base import size_of

DAY = dt.date(2026, 1, 2)


@dataclass
class Area:
    """An empty landing area and how a test reaches around the storage under test."""

    storage: Storage
    put: Callable[[str, bytes], None]  # an entry in the inbox, by its name there
    done: Callable[[str], bytes | None]  # the bytes at done/DAY/NAME, None if absent
    failed: Callable[[str], bytes | None]  # the bytes at failed/NAME, None if absent


def _local_area(tmp_path: Path, request: pytest.FixtureRequest) -> Area:
    inbox, done, failed = tmp_path / "inbox", tmp_path / "done", tmp_path / "failed"
    inbox.mkdir()

    def put(name: str, data: bytes) -> None:
        path = inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def read(path: Path) -> bytes | None:
        return path.read_bytes() if path.is_file() else None

    return Area(
        LocalStorage(inbox, done, failed),
        put,
        lambda name: read(done / DAY.isoformat() / name),
        lambda name: read(failed / name),
    )


def _s3_area(tmp_path: Path, request: pytest.FixtureRequest) -> Area:
    # A bucket of its own on the session's SeaweedFS (skips when weed cannot run here).
    from ingestd.storage.s3 import Location, S3Storage
    from tests.s3server import new_bucket

    server = request.getfixturevalue("s3server")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    bucket = new_bucket(server)
    inbox = Location.parse(bucket.url("landing/inbox/"))
    done, failed = inbox.beside("done"), inbox.beside("failed")
    storage = S3Storage(bucket.store, inbox, done, failed)

    def read(key: str) -> bytes | None:
        from obstore.exceptions import NotFoundError

        try:
            return bucket.get(key)
        except NotFoundError:
            return None

    return Area(
        storage,
        lambda name, data: bucket.put(inbox.prefix + name, data),
        lambda name: read(f"{done.prefix}{DAY.isoformat()}/{name}"),
        lambda name: read(failed.prefix + name),
    )


AREAS = [pytest.param(_local_area, id="local"), pytest.param(_s3_area, id="s3")]


@pytest.fixture(params=AREAS)
def area(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Area]:
    yield request.param(tmp_path, request)


def _listed(storage: Storage) -> dict[str, Handle]:
    return {str(storage.name_of(h)): h for h in storage.entries()}


def _one(storage: Storage, name: str) -> Handle:
    return _listed(storage)[name]


def test_the_listing_names_entries_relative_to_the_inbox(area: Area) -> None:
    for name in ("b.csv", "a.csv", "sub/deeper/c.csv", "sub/a.parquet"):
        area.put(name, b"id\n1\n")
    assert set(_listed(area.storage)) == {"a.csv", "b.csv", "sub/a.parquet", "sub/deeper/c.csv"}
    handle = _one(area.storage, "sub/deeper/c.csv")
    assert handle.name == "c.csv"
    assert area.storage.name_of(handle) == PurePosixPath("sub/deeper/c.csv")
    # Whatever handle it is, the pipeline reaches a storage that can read it.
    with resolve(handle).open_stream(handle) as stream:
        assert stream.read() == b"id\n1\n"


def test_ignored_names_are_never_listed(area: Area) -> None:
    for name in (".hidden.csv", "a.csv.tmp", "b.part", "c.PARTIAL", "d.csv.error.json"):
        area.put(name, b"x\n")
    area.put("kept.csv", b"id\n1\n")
    assert list(_listed(area.storage)) == ["kept.csv"]


def test_the_version_holds_until_the_bytes_change(area: Area) -> None:
    area.put("a.csv", b"id\n1\n")
    first = area.storage.identity(_one(area.storage, "a.csv"))
    assert first is not None and size_of(first) == 5
    assert area.storage.identity(_one(area.storage, "a.csv")) == first
    area.put("a.csv", b"id\n1\n2\n")
    now = area.storage.identity(_one(area.storage, "a.csv"))
    assert now is not None and now != first and size_of(now) == 7


def test_a_stream_and_a_random_access_file_give_the_bytes(area: Area) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: more than one read
    area.put("blob.csv", data)
    handle = _one(area.storage, "blob.csv")
    with area.storage.open_stream(handle) as stream:
        got = b""
        while piece := stream.read(100_000):
            got += piece
    assert got == data
    with area.storage.open_random(handle) as f:
        assert f.size() == len(data)
        assert f.read_at(10, 1000) == data[1000:1010]
        f.seek(len(data) - 3)
        assert f.read() == data[-3:]


def test_parquet_reads_through_ranged_reads(area: Area) -> None:
    table = pa.table({"id": list(range(1000)), "v": [f"r{i}" for i in range(1000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=100)
    area.put("t.parquet", sink.getvalue())
    handle = _one(area.storage, "t.parquet")
    with area.storage.open_random(handle) as f:
        pf = pq.ParquetFile(f)
        assert pf.metadata.num_row_groups == 10
        assert pf.read_row_group(7).column("id").to_pylist() == list(range(700, 800))


def test_the_readers_open_a_bound_source(area: Area) -> None:
    area.put("in/rows.csv", b"id,v\n1,a\n2,b\n3,c\n")
    handle = _one(area.storage, "in/rows.csv")
    reader = open_reader(BoundSource(area.storage, handle), Contract(name="c", table="t"), 2)
    rows = [r for batch in reader for r in batch.to_pylist()]
    assert rows == [{"id": "1", "v": "a"}, {"id": "2", "v": "b"}, {"id": "3", "v": "c"}]


def test_to_done_moves_the_entry_under_its_day(area: Area) -> None:
    area.put("sub/a.csv", b"id\n1\n")
    handle = _one(area.storage, "sub/a.csv")
    where = area.storage.to_done(handle, PurePosixPath("sub/a.csv"), DAY)
    assert "sub" in where and where.endswith("a.csv")
    assert area.done("sub/a.csv") == b"id\n1\n"
    assert "sub/a.csv" not in _listed(area.storage)
    assert area.storage.identity(handle) is None


def test_to_failed_puts_the_sidecar_beside_the_entry(area: Area) -> None:
    area.put("bad.csv", b"id\nx\n")
    handle = _one(area.storage, "bad.csv")
    area.storage.to_failed(handle, PurePosixPath("bad.csv"), b'{"reason": "r"}\n')
    assert area.failed("bad.csv") == b"id\nx\n"
    assert area.failed("bad.csv.error.json") == b'{"reason": "r"}\n'
    assert _listed(area.storage) == {}


def test_a_name_taken_in_failed_gets_a_free_variant(area: Area) -> None:
    for data in (b"one\n", b"two\n"):
        area.put("bad.csv", data)
        area.storage.to_failed(_one(area.storage, "bad.csv"), PurePosixPath("bad.csv"), b"{}")
    assert area.failed("bad.csv") == b"one\n"
    assert _listed(area.storage) == {}


def test_the_same_bytes_already_in_done_count_as_done(area: Area) -> None:
    for _ in range(2):
        area.put("a.csv", b"id\n1\n")
        area.storage.to_done(_one(area.storage, "a.csv"), PurePosixPath("a.csv"), DAY)
    assert area.done("a.csv") == b"id\n1\n"
    assert _listed(area.storage) == {}


def test_a_gone_entry_reads_as_gone(area: Area) -> None:
    area.put("a.csv", b"id\n1\n")
    handle = _one(area.storage, "a.csv")
    area.storage.delete(handle)
    area.storage.delete(handle)  # gone already: nothing to do
    assert area.storage.identity(handle) is None
    with pytest.raises(FileNotFoundError):
        area.storage.open_stream(handle)
    assert _listed(area.storage) == {}


def test_a_usable_inbox_has_no_problem_and_describes_itself(area: Area) -> None:
    assert area.storage.problem() is None
    text = area.storage.describe()
    assert text and "secret" not in text.lower() and "@" not in text
