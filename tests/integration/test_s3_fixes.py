"""Object-store inboxes against what a breaker found: done/ or failed/ on the inbox's own
prefix, keys the client cannot name, folder placeholders with a dot in their name, and the
wording of an unreachable endpoint. Real SeaweedFS, except for keys SeaweedFS cannot hold
(tests/s3fake.py: AWS S3 keeps `//`, `/./` and control characters in keys)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.daemon import Daemon, wait_for
from tests.pg import Db
from tests.s3fake import fake_s3
from tests.s3server import SECRET_KEY, Bucket

INBOX = "landing/inbox/"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ingestd")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--done-dir", "s3://b/landing/inbox/"), "is the inbox"),
        (("--failed-dir", "s3://b/landing/inbox"), "is the inbox"),
        (("--done-dir", "s3://b/landing/"), "the inbox s3://b/landing/inbox/ is inside done_dir"),
        (("--done-dir", "s3://b/out/", "--failed-dir", "s3://b/out/failed/"), "is inside"),
        (("--done-dir", "s3://b/out/", "--failed-dir", "s3://b/out/"), "failed_dir"),
    ],
)
def test_done_or_failed_on_the_inbox_prefix_is_refused_at_start(
    cli: Any, flags: tuple[str, ...], words: str
) -> None:
    result = cli("--once", "--inbox", "s3://b/landing/inbox/", "--table", "t",
                 "--mode", "append", *flags)  # fmt: skip
    assert result.code == 2
    line = _one_error_line(result.err)
    assert words in line and "prefixes of their own" in line


def test_check_config_refuses_done_dir_equal_to_an_s3_inbox(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'inbox = "s3://b/in/"\ndone_dir = "s3://b/in/"\n\n[[contracts]]\nname = "x"\n'
        'pattern = "*.csv"\ntable = "t"\nmode = "append"\n'
    )
    result = run_cli(["check-config", str(config)])
    assert result.code == 2
    assert "is the inbox" in _one_error_line(result.err)


def test_done_inside_the_inbox_prefix_stays_allowed(cli: Any, db: Db, bucket: Bucket) -> None:
    bucket.put(f"{INBOX}a.csv", "id,v\n1,x\n")
    result = cli("--once", "--inbox", bucket.url(INBOX), "--done-dir", bucket.url(f"{INBOX}done/"),
                 "--table", "t", "--mode", "append")  # fmt: skip
    assert result.code == 0, result.err
    assert db.fetch("SELECT count(*) AS n FROM t")[0]["n"] == 1


def test_keys_the_client_cannot_name_are_reported_once_and_the_others_load(
    cli: Any, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = ["in/b/./c.csv", "in/x//y.csv", "in/y/t\tab.csv"]
    with fake_s3("bk") as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        good = {"in/a.csv": b"id,v\n1,a\n", "in/m.csv": b"id,v\n2,m\n",
                "in/x/z.csv": b"id,v\n3,z\n"}  # fmt: skip
        fake.objects.update(good)
        fake.objects.update({key: b"id,v\n9,bad\n" for key in bad})
        result = cli("--once", "--inbox", "s3://bk/in/", "--table", "t", "--mode", "append")
        left = set(fake.objects)
    assert result.code == 0, result.err
    assert sorted(r["id"] for r in db.fetch("SELECT id FROM t")) == ["1", "2", "3"]
    assert set(bad) <= left and not set(good) & left  # loaded ones moved to done/
    events = [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]
    ignored = [e for e in events if e.get("event", e.get("msg")) == "file_ignored"]
    named = sorted(e["file"].removeprefix("s3://bk/") for e in ignored)
    assert named == sorted(bad), result.err
    assert all("rename the object" in e["reason"] for e in ignored)
    assert "unavailable" not in result.err


def test_a_folder_placeholder_with_a_dot_is_not_a_file(cli: Any, db: Db, bucket: Bucket) -> None:
    bucket.put(f"{INBOX}v1.2/", b"")
    bucket.put(f"{INBOX}2026.01/", b"")
    bucket.put(f"{INBOX}v1.2/data.csv", "id,v\n1,x\n")
    bucket.put(f"{INBOX}2026.01/more.csv", "id,v\n2,y\n")
    result = cli("--once", "--inbox", bucket.url(INBOX), "--table", "t", "--mode", "append")
    assert result.code == 0, result.err
    assert sorted(r["id"] for r in db.fetch("SELECT id FROM t")) == ["1", "2"]
    assert bucket.keys("landing/failed/") == []
    statuses = {r["status"] for r in db.manifest()}
    assert statuses == {"success"}


def test_an_unreachable_endpoint_names_it_and_what_to_check(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-never-shown")
    result = cli("--once", "--inbox", "s3://bk/in/", "--table", "t", "--mode", "append",
                 "--s3-endpoint-url", "http://127.0.0.1:1")  # fmt: skip
    assert result.code == 2
    line = _one_error_line(result.err)
    assert "http://127.0.0.1:1" in line and "s3_endpoint_url" in line
    assert "s3cr3t" not in result.err + result.out


DAEMON = """
inbox = "{inbox}"
poll_s = 0.3
shutdown_grace_s = 5
[[contracts]]
name = "main"
pattern = "*.csv"
table = "t"
mode = "append"
"""


def test_the_daemon_says_what_to_do_about_refused_credentials(
    daemons: Callable[..., Daemon], bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY + "-wrong")
    daemon = daemons(DAEMON.format(inbox=bucket.url(INBOX)), ready=False)
    wait_for(lambda: daemon.events("inbox_missing") or daemon.proc.poll() is not None,
             what="inbox_missing")  # fmt: skip
    reasons = [e["reason"] for e in daemon.events("inbox_missing")]
    text = daemon.logs_text()
    daemon.kill()
    assert reasons, text
    assert "[Errno" not in reasons[0] and "check the credentials" in reasons[0]
    assert SECRET_KEY not in text


# breaker3 #1: the client folds `//`, `.` and `..` away, so a prefix compared as written
# could archive into the inbox (a reload loop) or name keys the client refuses.
_UNNAMEABLE = [
    ("s3://b//landing/inbox/", "'s3://b/landing/inbox/'"),
    ("s3://b/landing/inbox/./", "'s3://b/landing/inbox/'"),
    ("s3://b/landing/inbox/../inbox/", "'s3://b/landing/inbox/'"),
    ("s3://b/landing/inbox//done/", "'s3://b/landing/inbox/done/'"),
    ("s3://b/landing/\x07in/", "'s3://b/landing/in/'"),
]
_NOT_BUCKETS = ["s3://LANDING/in/", "s3://my_bucket/in/", "s3://-b/in/", "s3://a..b/in/"]


@pytest.mark.parametrize(("url", "instead"), _UNNAMEABLE)
@pytest.mark.parametrize("key", ["--done-dir", "--failed-dir", "--inbox"])
def test_a_prefix_the_client_folds_is_refused_at_start_naming_what_to_write(
    cli: Any, key: str, url: str, instead: str
) -> None:
    args = {"--inbox": "s3://b/landing/inbox/", key: url}
    result = cli("--once", *(x for kv in args.items() for x in kv), "--table", "t",
                 "--mode", "append")  # fmt: skip
    assert result.code == 2
    line = _one_error_line(result.err)
    assert key in line and f"write {instead}" in line


@pytest.mark.parametrize("url", _NOT_BUCKETS)
def test_a_bucket_name_s3_would_refuse_is_refused_at_start(cli: Any, url: str) -> None:
    result = cli("--once", "--inbox", url, "--table", "t", "--mode", "append")
    assert result.code == 2
    assert "is not an S3 bucket name" in _one_error_line(result.err)


@pytest.mark.parametrize(("url", "instead"), [*_UNNAMEABLE, ("s3://Up/in/", "")])
def test_check_config_refuses_the_same_urls(tmp_path: Path, url: str, instead: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'inbox = "s3://b/landing/inbox/"\ndone_dir = "{url.replace(chr(7), chr(92) + "u0007")}"'
        '\n\n[[contracts]]\nname = "x"\npattern = "*.csv"\ntable = "t"\nmode = "append"\n'
    )
    result = run_cli(["check-config", str(config)])
    assert result.code == 2
    line = _one_error_line(result.err)
    assert "done_dir" in line and (f"write {instead}" in line if instead else "bucket" in line)


def test_the_loop_check_compares_prefixes_as_the_client_uses_them() -> None:
    from ingestd.config import UsageError, _check_no_prefix_loop

    for done in ("s3://b/landing/inbox", "s3:/b/landing/x/../inbox/", "s3://b//landing/"):
        with pytest.raises(UsageError, match="prefixes of their own"):
            _check_no_prefix_loop("s3://b/landing/inbox/", (("done_dir", done),))
    # Another bucket with the same prefix, or a bucket whose name starts alike, is no loop.
    _check_no_prefix_loop("s3://b/landing/inbox/", (("done_dir", "s3://c/landing/inbox/"),))
    _check_no_prefix_loop("s3://bb/landing/inbox/", (("done_dir", "s3://b/"),))


def test_an_archive_key_the_client_refuses_is_an_archive_failure_not_a_bug(
    bucket: Bucket,
) -> None:
    from ingestd.storage.s3 import Location, ObjectHandle, S3Storage

    bucket.put(f"{INBOX}a.csv", "id\n1\n")
    store = bucket.store
    odd = Location(bucket.name, f"{INBOX}/done/")  # only settings built in code can say this
    storage = S3Storage(store, Location(bucket.name, INBOX), odd, odd)
    h = ObjectHandle(storage, f"{INBOX}a.csv", "", 5)
    with pytest.raises(OSError, match="cannot name this key"):
        storage.to_done(h, PurePosixPath("a.csv"))
    assert bucket.keys(INBOX) == [f"{INBOX}a.csv"]
