"""A small local file is hashed on the event loop, any other in a thread: the same version
either way (checksum, size, manifest name), and the same refusals (symlink, FIFO)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd import claim
from ingestd.claim import INLINE_HASH_BYTES, file_version, sha256_file


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions file_version sent to a thread."""
    sent: list[str] = []
    real = asyncio.to_thread

    async def counted(func: Callable[..., Any], /, *args: Any) -> Any:
        sent.append(func.__name__)
        return await real(func, *args)

    monkeypatch.setattr(claim.asyncio, "to_thread", counted)
    return sent


@pytest.mark.parametrize("size", [0, 1, 10_000, INLINE_HASH_BYTES])
async def test_a_small_file_is_hashed_inline(tmp_path: Path, hops: list[str], size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    version = await file_version(path, PurePosixPath("f.csv"), size)
    assert (version.checksum, version.filesize) == (hashlib.sha256(data).digest(), size)
    assert (version.checksum, version.filesize) == sha256_file(path)
    assert version.filename == "f.csv"
    assert hops == []  # no thread


@pytest.mark.parametrize("size", [INLINE_HASH_BYTES + 1, 3 * (1 << 20) + 7])
async def test_a_larger_file_is_hashed_in_a_thread(
    tmp_path: Path, hops: list[str], size: int
) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    version = await file_version(path, PurePosixPath("f.csv"), size)
    assert (version.checksum, version.filesize) == (hashlib.sha256(data).digest(), size)
    assert hops == ["sha256_entry"]


async def test_a_file_grown_past_the_limit_since_discovery_is_hashed_whole(
    tmp_path: Path, hops: list[str]
) -> None:
    """Discovery saw 10 bytes; it has 200 KB now: all of it is hashed (in a thread), never
    the first 64 KiB as if they were the file."""
    path = tmp_path / "f.csv"
    path.write_bytes(b"id\n1\n2\n3\n4")
    seen = path.stat().st_size
    data = os.urandom(200_000)
    path.write_bytes(data)
    version = await file_version(path, PurePosixPath("f.csv"), seen)
    assert (version.checksum, version.filesize) == (hashlib.sha256(data).digest(), 200_000)
    assert hops == ["sha256_entry"]


async def test_no_size_is_hashed_in_a_thread(tmp_path: Path, hops: list[str]) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"id\n1\n")
    version = await file_version(path, PurePosixPath("f.csv"))
    assert version.checksum == hashlib.sha256(b"id\n1\n").digest()
    assert hops == ["sha256_entry"]


async def test_inline_refuses_a_symlink(tmp_path: Path, hops: list[str]) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"top-secret\n")
    path = tmp_path / "f.csv"
    path.symlink_to(secret)
    with pytest.raises(OSError):
        await file_version(path, PurePosixPath("f.csv"), 11)
    assert hops == []


async def test_inline_refuses_a_fifo_without_blocking(tmp_path: Path, hops: list[str]) -> None:
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        await asyncio.wait_for(file_version(fifo, PurePosixPath("f.csv"), 0), 5)
    assert hops == []


async def test_inline_gone_is_file_not_found(tmp_path: Path) -> None:
    """The scanner tells a file moved away (FileNotFoundError) from one it cannot read."""
    with pytest.raises(FileNotFoundError):
        await file_version(tmp_path / "gone.csv", PurePosixPath("gone.csv"), 5)
