"""Archiving objects when the store refuses a step (issue 15, scope 4): the server-side copy
to done/DATE/KEY or failed/KEY, the sidecar KEY.error.json and the delete from the inbox
each answered 403 (refused) or 500 (transient) by tests/s3fake.py. The books never lie: the
object's rows are in the table once, its manifest row is final, the failure is logged and
counted, nothing is loaded again, and the move completes once the store allows it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.daemon import Daemon, wait_for
from tests.pg import Db
from tests.s3fake import FakeS3, fake_s3

INBOX, DONE, FAILED = "landing/inbox/", "landing/done/", "landing/failed/"
GOOD = b"id,v\n1,a\n2,b\n"
BAD = b"id,v\n1,a\n2\n"  # a row short of a column: the object fails
REASON = {403: "permission", 500: "unavailable"}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeS3]:
    with fake_s3("bk") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server


def _once(cli: Any) -> Any:
    return cli("--once", "--inbox", f"s3://bk/{INBOX}", "--table", "t", "--mode", "append")


def _events(err: str, name: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event", e.get("msg")) == name]


def _keys(fake: FakeS3, prefix: str) -> list[str]:
    with fake.lock:
        return sorted(k for k in fake.objects if k.startswith(prefix))


def _rows(db: Db) -> list[str]:
    return sorted(r["id"] for r in db.fetch("SELECT id FROM t"))


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


@pytest.mark.parametrize("status", [403, 500])
@pytest.mark.parametrize("op", ["delete", "copy"])
def test_a_refused_move_to_done_keeps_the_books_and_completes_later(
    cli: Any, db: Db, fake: FakeS3, op: str, status: int
) -> None:
    fake.objects[f"{INBOX}a.csv"] = GOOD
    fake.refuse[op] = (INBOX if op == "delete" else DONE, status)
    first = _once(cli)
    failures = _events(first.err, "archive_failed")
    assert failures, first.err
    assert failures[0]["folder"] == "done" and failures[0]["reason"] == REASON[status]
    assert "cannot move the file to done/" in failures[0]["error"]
    assert "Traceback" not in first.err and not _events(first.err, "internal_error")
    assert "fake-secret" not in first.err + first.out
    assert _rows(db) == ["1", "2"]
    assert [r["status"] for r in db.manifest()] == ["success"]
    assert _keys(fake, INBOX) == [f"{INBOX}a.csv"]  # still there, nothing lost

    second = _once(cli)  # the store still refuses: the object is not loaded again
    assert _rows(db) == ["1", "2"]
    assert [r["status"] for r in db.manifest()] == ["success"]
    assert _events(second.err, "archive_failed"), second.err
    assert _keys(fake, INBOX) == [f"{INBOX}a.csv"]

    fake.refuse.clear()
    third = _once(cli)
    assert third.code == 0, third.err
    assert _rows(db) == ["1", "2"]
    assert [r["status"] for r in db.manifest()] == ["success"]
    assert _keys(fake, INBOX) == []
    assert _keys(fake, DONE) == [f"{DONE}{_today()}/a.csv"]
    assert fake.objects[f"{DONE}{_today()}/a.csv"] == GOOD


@pytest.mark.parametrize("status", [403, 500])
@pytest.mark.parametrize("op", ["put", "copy", "delete"])
def test_a_refused_move_to_failed_keeps_the_books_and_completes_later(
    cli: Any, db: Db, fake: FakeS3, op: str, status: int
) -> None:
    fake.objects[f"{INBOX}bad.csv"] = BAD
    fake.refuse[op] = (INBOX if op == "delete" else FAILED, status)
    first = _once(cli)
    failures = _events(first.err, "archive_failed")
    assert failures, first.err
    assert failures[0]["folder"] == "failed" and failures[0]["reason"] == REASON[status]
    assert "Traceback" not in first.err and not _events(first.err, "internal_error")
    assert [r["status"] for r in db.manifest()] == ["failed"]
    assert _keys(fake, INBOX) == [f"{INBOX}bad.csv"]

    second = _once(cli)
    assert [r["status"] for r in db.manifest()] == ["failed"]
    assert _events(second.err, "archive_failed"), second.err
    assert _keys(fake, INBOX) == [f"{INBOX}bad.csv"]

    fake.refuse.clear()
    third = _once(cli)
    assert [r["status"] for r in db.manifest()] == ["failed"], third.err
    assert _keys(fake, INBOX) == []
    assert _keys(fake, FAILED) == [f"{FAILED}bad.csv", f"{FAILED}bad.csv.error.json"]
    assert fake.objects[f"{FAILED}bad.csv"] == BAD
    report = json.loads(fake.objects[f"{FAILED}bad.csv.error.json"])
    assert report["file"] == "bad.csv" and report["reason"]


DAEMON = """
inbox = "s3://bk/{inbox}"
poll_s = 0.3
shutdown_grace_s = 5
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
mode = "append"
"""


@pytest.mark.parametrize("status", [403, 500])
def test_the_daemon_counts_a_refused_delete_and_retries_it(
    daemons: Callable[..., Daemon], db: Db, fake: FakeS3, status: int
) -> None:
    fake.refuse["delete"] = (INBOX, status)
    daemon = daemons(DAEMON.format(inbox=INBOX))
    try:
        fake.objects[f"{INBOX}a.csv"] = GOOD
        errors = {"folder": "done", "reason": REASON[status]}
        wait_for(lambda: daemon.metric("ingest_archive_errors_total", **errors) >= 2,
                 60, "two failed deletes")  # fmt: skip
        assert daemon.metric("ingest_archive_pending_files") == 1
        assert daemon.metric("ingest_internal_errors_total") == 0
        assert _rows(db) == ["1", "2"]
        assert [r["status"] for r in db.manifest()] == ["success"]
        assert _keys(fake, INBOX) == [f"{INBOX}a.csv"]
        assert daemon.events("archive_failed"), daemon.logs_text()

        fake.refuse.clear()
        wait_for(lambda: not _keys(fake, INBOX), 60, "the delete after the store allows it")
        wait_for(lambda: daemon.metric("ingest_archive_pending_files") == 0, 10, "no backlog")
        assert _keys(fake, DONE) == [f"{DONE}{_today()}/a.csv"]
        assert _rows(db) == ["1", "2"]
        assert [r["status"] for r in db.manifest()] == ["success"]
        assert daemon.events("file_archived"), daemon.logs_text()
    finally:
        assert daemon.stop() == 0, daemon.logs_text()
