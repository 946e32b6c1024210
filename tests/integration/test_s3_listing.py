"""Discovery in a large object-store inbox: between full listings only keys after the last
one seen are listed, yet every call still returns the whole inbox it knows."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ingestd.storage import s3
from tests.s3server import Bucket, S3Server, new_bucket


@pytest.fixture
def bucket(s3server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    for name, value in s3server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(s3, "_PAGE", 2)  # "large" from three keys on
    yield new_bucket(s3server)


def _names(storage: s3.S3Storage) -> list[str]:
    return [str(storage.name_of(h)) for h in storage.entries()]


def test_cheap_polls_find_growing_keys_and_full_listings_find_the_rest(bucket: Bucket) -> None:
    inbox = s3.Location.parse(bucket.url("in/"))
    storage = s3.S3Storage(bucket.store, inbox, inbox.beside("done"), None, rescan_s=1.0)
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        bucket.put(f"in/{day}.csv", "id\n1\n")
    assert _names(storage) == ["2026-01-01.csv", "2026-01-02.csv", "2026-01-03.csv"]
    bucket.put("in/2026-01-04.csv", "id\n1\n")  # after the last key: the cheap poll sees it
    bucket.put("in/0-early.csv", "id\n1\n")  # before it: only a full listing does
    assert _names(storage) == [
        "2026-01-01.csv", "2026-01-02.csv", "2026-01-03.csv", "2026-01-04.csv",
    ]  # fmt: skip
    moved = next(h for h in storage.entries() if h.name == "2026-01-01.csv")
    storage.to_done(moved, storage.name_of(moved))
    assert "2026-01-01.csv" not in _names(storage)
    time.sleep(1.1)  # rescan_s: the next listing is full again
    assert _names(storage) == ["0-early.csv", "2026-01-02.csv", "2026-01-03.csv",
                               "2026-01-04.csv"]  # fmt: skip
