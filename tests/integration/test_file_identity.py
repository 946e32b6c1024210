"""A local file is one version from its checksum to its last commit: replaced or rewritten
in between, even by bytes of the same size with the mtime set back (`cp -p`, `rsync -t`,
`touch -r`), that version is not loaded under the checksum of other bytes, and `--once`
never leaves a file that changed under its checksum behind in silence."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd import scanner
from ingestd.claim import INLINE_HASH_BYTES
from ingestd.db.manifest import FileVersion
from tests.helpers import log_events
from tests.pg import Db


def csv_of_size(size: int, start: int = 0) -> bytes:
    """A CSV id,v of exactly `size` bytes, ids from `start` (the last value padded)."""
    head, rows, n = b"id,v\n", [], start
    body = len(head)
    while body + 40 < size:
        row = f"{n},x{n}\n".encode()
        rows.append(row)
        body += len(row)
        n += 1
    last = f"{n},".encode()
    rows.append(last + b"p" * (size - body - len(last) - 1) + b"\n")
    data = head + b"".join(rows)
    assert len(data) == size
    return data


def books(db: Db) -> list[dict[str, Any]]:
    return db.fetch("SELECT status, rows, filesize, checksum FROM ingestion_manifest ORDER BY id")


def replace_keeping_mtime(path: Path, data: bytes) -> None:
    """Other bytes of the same size under the same name, the old mtime set back on them."""
    st = path.stat()
    other = path.with_name(".replacement")
    other.write_bytes(data)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (1000, 200_000),  # grows past the inline-hash limit after discovery
        (1000, 30_000),  # grows within it
        (60_000, 500),  # shrinks
        (INLINE_HASH_BYTES, INLINE_HASH_BYTES + 1),  # one byte over
        (5000, 5000),  # replaced by the same size, mtime set back
    ],
)
def test_once_loads_the_bytes_a_file_holds_after_it_changed_under_its_checksum(
    cli: Any, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: int, then: int
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "f.csv"
    path.write_bytes(csv_of_size(first))
    final = csv_of_size(then, start=10_000_000)
    real = scanner.file_version
    changed: list[int] = []

    async def change_then_hash(p: Path, name: PurePosixPath, *rest: Any) -> FileVersion:
        if not changed:
            changed.append(1)
            replace_keeping_mtime(p, final)
        return await real(p, name, *rest)

    monkeypatch.setattr(scanner, "file_version", change_then_hash)
    result = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    assert result.code == 0, result.out + result.err
    rows = final.count(b"\n") - 1
    assert db.val("SELECT count(*) FROM t") == rows
    assert db.val("SELECT min(id::bigint) FROM t") == 10_000_000
    [book] = books(db)
    assert (book["status"], book["rows"], book["filesize"]) == ("success", rows, then)
    assert bytes(book["checksum"]) == hashlib.sha256(final).digest()


def test_once_says_so_when_a_file_keeps_changing_under_its_checksum(
    cli: Any, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "f.csv"
    path.write_bytes(csv_of_size(1000))
    real = scanner.file_version
    grown = [1000]

    async def grow_then_hash(p: Path, name: PurePosixPath, *rest: Any) -> FileVersion:
        grown.append(grown[-1] + 100)
        p.write_bytes(csv_of_size(grown[-1]))  # noqa: ASYNC240 - the race is the point
        return await real(p, name, *rest)

    monkeypatch.setattr(scanner, "file_version", grow_then_hash)
    result = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    assert result.code == 1, result.out + result.err
    assert len(grown) == 1 + scanner._HASH_TRIES  # each checksum overtaken
    [event] = log_events(result.err, "file_unsettled")
    assert "changed while it was checksummed" in event["reason"]
    assert "stays in the inbox" in event["reason"]
    assert path.exists()
    assert books(db) == []


def test_a_file_replaced_after_its_claim_by_the_same_size_and_mtime_is_not_loaded_as_claimed(
    cli: Any, db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed, then replaced before the worker reads it: size and mtime alone let the
    second bytes load under the first bytes' checksum, and the first bytes, delivered
    again, were skipped as loaded already."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "f.csv"
    first, second = csv_of_size(5000), csv_of_size(5000, start=10_000_000)
    path.write_bytes(first)
    real = scanner.Scanner._queue_or_report

    async def replace_then_queue(self: Any, job: Any) -> None:
        replace_keeping_mtime(path, second)
        await real(self, job)

    monkeypatch.setattr(scanner.Scanner, "_queue_or_report", replace_then_queue)
    result = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    assert result.code == 1, result.out + result.err
    [book] = books(db)
    assert (book["status"], book["rows"]) == ("failed", 0)
    assert bytes(book["checksum"]) == hashlib.sha256(first).digest()
    assert "changed while it was being loaded" in result.out + result.err
    assert path.exists()  # the replacement stays for the next run
    assert db.val("SELECT to_regclass('t')") is None or db.val("SELECT count(*) FROM t") == 0

    monkeypatch.setattr(scanner.Scanner, "_queue_or_report", real)
    path.write_bytes(first)  # the first bytes delivered again, as the sender would
    again = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    assert again.code == 0, again.out + again.err
    rows = first.count(b"\n") - 1
    assert db.val("SELECT count(*) FROM t") == rows
    assert db.val("SELECT min(id::bigint) FROM t") == 0


HOLD_A_LEASE = """
import fcntl, os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
signal.signal(signal.SIGIO, lambda *a: None)  # the kernel asks for the lease back
try:
    fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE, as Samba's kernel oplocks do
except OSError as exc:
    print("no lease:", exc, flush=True)
    sys.exit()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
fcntl.fcntl(fd, 1024, fcntl.F_UNLCK)
"""


def test_once_waits_for_a_writer_to_give_up_its_lease_instead_of_failing_the_file(
    cli: Any, db: Db, tmp_path: Path
) -> None:
    """Opened while a writer holds a lease, a file gives EAGAIN: it passes (the kernel
    breaks the lease), so it is looked at again, not sent to failed/ for good."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    f = inbox / "f.csv"
    f.write_text("id,v\n1,a\n2,b\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LEASE, str(f), "1.2"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        said = holder.stdout.readline().strip()
        if said != "held":
            pytest.skip(f"this file system grants no write lease ({said})")
        result = cli("--once", "--inbox", inbox, "--table", "t", "--pk", "id")
    finally:
        holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
    assert result.code == 0, result.out + result.err
    assert not (tmp_path / "failed").exists()
    assert db.val("SELECT count(*) FROM t") == 2
    assert [b["status"] for b in books(db)] == ["success"]
