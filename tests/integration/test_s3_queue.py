"""s3_queue_url: the daemon takes new keys from an SQS queue (moto's server on loopback) at
once, long before the next listing, and deletes a message only once its object is claimed,
skipped or known to need nothing. The objects live in the SeaweedFS bucket the other
object-store tests use; the queue gets the standard S3 event JSON from the test (as S3
sends it to a queue named in the bucket's notification configuration)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.daemon import Daemon, wait_for
from tests.helpers import csv_rows, files_with_status, row_count
from tests.pg import Db
from tests.s3server import SECRET_KEY, Bucket
from tests.sqsserver import Queue, SqsServer, module_server

pytest.importorskip("botocore", reason="the sqs extra (botocore) is not installed")

INBOX = "landing/inbox/"
CONFIG = """
inbox = "{inbox}"
s3_queue_url = "{queue}"
poll_s = {poll_s}
rescan_s = 300
log_level = "DEBUG"
shutdown_grace_s = 20
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
mode = "append"
"""


@pytest.fixture(scope="module")
def sqs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqsServer]:
    yield from module_server(tmp_path_factory.mktemp("sqs") / "moto.log")


@pytest.fixture
def queue(sqs: SqsServer, request: pytest.FixtureRequest) -> Queue:
    return sqs.queue(request.node.name[:70].replace("[", "-").replace("]", ""))


def _config(bucket: Bucket, queue: Queue, poll_s: float = 300) -> str:
    return CONFIG.format(inbox=bucket.url(INBOX), queue=queue.url, poll_s=poll_s)


def _errors(daemon: Daemon) -> list[str]:
    return [e["event"] for e in daemon.events() if e.get("level") in ("error", "ERROR")]


def test_a_notified_object_loads_long_before_the_next_listing(
    daemons: Callable[..., Daemon], db: Db, bucket: Bucket, queue: Queue
) -> None:
    daemon = daemons(_config(bucket, queue))  # lists once at start, next in 300 s
    bucket.put(INBOX + "a/first one.csv", csv_rows(3))
    queue.send_created(bucket.name, INBOX + "a/first one.csv")
    wait_for(lambda: row_count(db) == 3, timeout_s=15, what="the notified object")
    wait_for(lambda: queue.count() == 0, timeout_s=10, what="its message deleted")
    assert files_with_status(db, "success") == 1
    # The same bytes again, notified again: skipped (no rows twice), its message deleted.
    wait_for(lambda: bucket.keys(INBOX) == [], what="the first one moved to done/")
    bucket.put(INBOX + "a/first one.csv", csv_rows(3))
    queue.send_created(bucket.name, INBOX + "a/first one.csv")
    wait_for(lambda: queue.count() == 0 and bucket.keys(INBOX) == [], timeout_s=15,
             what="the identical re-upload skipped")  # fmt: skip
    assert row_count(db) == 3
    assert [e.get("status") for e in daemon.events("file_skipped")] == ["skipped"]
    # The same bytes are in done/ already: the skipped copy leaves the inbox onto it.
    assert len(bucket.keys("landing/done/")) == 1
    assert _errors(daemon) == []
    assert SECRET_KEY not in daemon.logs_text()
    assert daemon.stop() == 0


def test_messages_that_name_nothing_to_load_are_deleted_quietly(
    daemons: Callable[..., Daemon], db: Db, bucket: Bucket, queue: Queue
) -> None:
    daemon = daemons(_config(bucket, queue))
    bucket.put("landing/other/x.csv", csv_rows(2))  # outside the inbox prefix
    queue.send_created(bucket.name, "landing/other/x.csv")
    queue.send(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket.name}))
    queue.send("this is not json")
    queue.send('{"Records": [{"nothing": 1}]}')
    queue.send_created(bucket.name, INBOX + "gone.csv", event="ObjectRemoved:Delete")
    queue.send_created(bucket.name, INBOX + "never-uploaded.csv")
    queue.send_created("another-bucket", INBOX + "b.csv")
    queue.send_created(bucket.name, INBOX + "a//../b.csv")  # no client takes it as a key
    wait_for(lambda: queue.count() == 0, timeout_s=20, what="every message deleted")
    # Then a real one still loads at once: the odd messages did not stop the receiver.
    bucket.put(INBOX + "after.csv", csv_rows(2))
    queue.send_created(bucket.name, INBOX + "after.csv")
    wait_for(lambda: row_count(db) == 2, timeout_s=15, what="the object after them")
    ignored = " ".join(str(e.get("reason")) for e in daemon.events("s3_queue_ignored"))
    for said in ("s3:TestEvent", "not JSON", "ObjectRemoved:Delete", "landing/other/x.csv"):
        assert said in ignored
    assert {e.get("level") for e in daemon.events("s3_queue_ignored")} <= {"debug", "DEBUG"}
    assert bucket.keys("landing/other/") == ["landing/other/x.csv"]  # never touched
    assert _errors(daemon) == []
    assert daemon.stop() == 0


def test_a_queue_that_goes_away_does_not_stop_listings(
    daemons: Callable[..., Daemon], db: Db, bucket: Bucket, tmp_path: Path
) -> None:
    server = SqsServer(tmp_path / "moto.log").start()
    try:
        queue = server.queue("going-away")
        daemon = daemons(_config(bucket, queue, poll_s=0.5))
        server.stop()
        bucket.put(INBOX + "listed.csv", csv_rows(4))
        wait_for(lambda: row_count(db) == 4, timeout_s=20, what="the object found by listing")
        wait_for(lambda: daemon.events("s3_queue_unavailable"), timeout_s=40,
                 what="the queue's warning")  # fmt: skip
        bucket.put(INBOX + "listed-too.csv", csv_rows(1, 10))
        wait_for(lambda: row_count(db) == 5, timeout_s=20, what="a second object")
        assert len(daemon.events("s3_queue_unavailable")) == 1  # said once, not per retry
        assert daemon.get("/readyz")[0] == 200  # listings load: still ready
        assert _errors(daemon) == []
        assert daemon.stop() == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("{endpoint}/123456789012/no-such-queue", "the queue does not exist"),
        ("arn:aws:sqs:us-east-1:123456789012:q", "a queue URL is https://"),
    ],
)
def test_a_wrong_queue_url_is_one_line_and_exit_2(
    daemons: Callable[..., Daemon], bucket: Bucket, sqs: SqsServer, url: str, said: str
) -> None:
    config = CONFIG.format(inbox=bucket.url(INBOX), queue=url.format(endpoint=sqs.endpoint),
                           poll_s=1)  # fmt: skip
    daemon = daemons(config, ready=False)
    assert daemon.proc.wait(60) == 2
    text = daemon.logs_text() + daemon.out_path.read_text()
    assert said in text, text
    assert "Traceback" not in text
    assert SECRET_KEY not in text


def _hold_manifest_lock(dsn: str, locked: threading.Event, release: threading.Event) -> None:
    async def hold() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE ingestion_manifest IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await asyncio.to_thread(release.wait, 60)
        finally:
            await conn.close()

    asyncio.run(hold())


def test_the_message_stays_until_the_claim_is_in_the_manifest(
    daemons: Callable[..., Daemon], db: Db, dsn: str, bucket: Bucket, queue: Queue
) -> None:
    daemon = daemons("lock_timeout_s = 0.5\n" + _config(bucket, queue))
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_manifest_lock, args=(dsn, locked, release))
    holder.start()
    try:
        assert locked.wait(20)
        bucket.put(INBOX + "waits.csv", csv_rows(3))
        queue.send_created(bucket.name, INBOX + "waits.csv")
        wait_for(lambda: daemon.events("manifest_locked"), what="the claim waiting on the lock")
        assert queue.count() == 1  # received, not deleted: no claim yet
        assert row_count(db) == 0
    finally:
        release.set()
        holder.join(20)
    wait_for(lambda: row_count(db) == 3, timeout_s=20, what="the claim once the lock is gone")
    wait_for(lambda: queue.count() == 0, timeout_s=10, what="the message deleted after it")
    assert files_with_status(db, "success") == 1
    assert daemon.stop() == 0


def test_refused_credentials_are_one_line_and_exit_2(
    daemons: Callable[..., Daemon], bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "T0KEN-never-shown-8f3k"  # noqa: S105 - proves the session token stays out of logs
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    server = SqsServer(tmp_path / "moto.log", env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
    try:
        url = f"{server.endpoint}/123456789012/q"
        daemon = daemons(CONFIG.format(inbox=bucket.url(INBOX), queue=url, poll_s=1), ready=False)
        assert daemon.proc.wait(60) == 2
        text = daemon.logs_text() + daemon.out_path.read_text()
        assert "access denied" in text, text
        assert "Traceback" not in text
        assert SECRET_KEY not in text
        assert token not in text  # log_level is DEBUG: botocore's own lines are kept out
    finally:
        server.stop()


def test_real_bucket_events_from_moto_s3(
    daemons: Callable[..., Daemon], db: Db, sqs: SqsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto's own S3 sends the events (its bucket notification configuration to the queue,
    s3:ObjectCreated:*, with the s3:TestEvent S3 sends when it is set): no hand-made JSON."""
    for name, value in {
        "AWS_ENDPOINT_URL": sqs.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)  # fmt: skip
    queue = sqs.queue("real-events")
    s3 = sqs.client("s3")
    s3.create_bucket(Bucket="real-events")
    arn = sqs.client().get_queue_attributes(QueueUrl=queue.url, AttributeNames=["QueueArn"])
    s3.put_bucket_notification_configuration(
        Bucket="real-events",
        NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
        ]},
    )  # fmt: skip
    config = CONFIG.format(inbox="s3://real-events/landing/inbox/", queue=queue.url, poll_s=300)
    daemon = daemons(config)
    s3.put_object(Bucket="real-events", Key=INBOX + "a b+c.csv", Body=csv_rows(3).encode())
    s3.put_object(Bucket="real-events", Key="landing/elsewhere.csv", Body=csv_rows(2).encode())
    wait_for(lambda: row_count(db) == 3, timeout_s=15, what="the object its event names")
    wait_for(lambda: queue.count() == 0, timeout_s=15, what="every message deleted")
    done = s3.list_objects_v2(Bucket="real-events", Prefix="landing/done/").get("Contents", [])
    assert [o["Key"].rpartition("/")[2] for o in done] == ["a b+c.csv"]
    ignored = " ".join(str(e.get("reason")) for e in daemon.events("s3_queue_ignored"))
    assert "s3:TestEvent" in ignored and "landing/elsewhere.csv" in ignored
    assert _errors(daemon) == []
    assert daemon.stop() == 0
