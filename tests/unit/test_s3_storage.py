"""The object-store pieces that need no server: locations, the settings' URLs, and how the
client's errors are sorted (gone, refused, transient) without secrets in their text."""

from __future__ import annotations

import pytest
from obstore.exceptions import GenericError, NotFoundError, PreconditionError

from ingestd.config import resolve
from ingestd.exceptions import UsageError
from ingestd.settings import beside_inbox
from ingestd.storage.base import StorageUnavailableError
from ingestd.storage.s3 import Location
from ingestd.storage.s3_client import translate


def _client_error(status: int, code: str) -> GenericError:
    return GenericError(
        f"Generic S3 error: Error performing GET http://h/b/k - Server returned non-2xx "
        f"status code: {status} X: <Error><Code>{code}</Code></Error>\n\nDebug source: "
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIDSECRETSECRET"
    )


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("s3://b/landing/inbox/", "b", "landing/inbox/"),
        ("s3://b/x", "b", "x/"),
        ("s3://b", "b", ""),
        ("s3:/b/in", "b", "in/"),
    ],
)
def test_locations_parse_with_a_trailing_slash_on_the_prefix(
    text: str, bucket: str, prefix: str
) -> None:
    assert Location.parse(text) == Location(bucket, prefix)


def test_done_and_failed_sit_beside_the_inbox_prefix() -> None:
    inbox = Location.parse("s3://b/landing/inbox/")
    assert str(inbox.beside("done")) == "s3://b/landing/done/"
    assert str(Location.parse("s3://b/in/").beside("failed")) == "s3://b/failed/"
    assert beside_inbox(None, "s3://b/landing/inbox/", "done") == "s3://b/landing/done/"
    assert beside_inbox(None, "s3://b/", "done") == "s3://b/done/"


def test_the_settings_keep_an_s3_url_as_written() -> None:
    env = {"INGESTD_INBOX": "s3://b/landing/inbox", "INGESTD_TABLE": "t", "INGESTD_MODE": "append"}
    settings = resolve({}, env, {})
    assert settings.inbox == "s3://b/landing/inbox/"
    assert settings.done_path == "s3://b/landing/done/"
    with pytest.raises(UsageError, match="S3 and S3-compatible"):
        resolve({}, {"INGESTD_INBOX": "gs://b/in/", "INGESTD_TABLE": "t"}, {})


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (_client_error(503, "SlowDown"), StorageUnavailableError, "503 SlowDown"),
        (_client_error(500, "InternalError"), StorageUnavailableError, "500"),
        (_client_error(429, "TooManyRequests"), StorageUnavailableError, "429"),
        (_client_error(403, "SignatureDoesNotMatch"), PermissionError, "access denied"),
        (_client_error(403, "AccessDenied"), PermissionError, "access denied"),
        (_client_error(404, "NoSuchBucket"), FileNotFoundError, "bucket does not exist"),
        (NotFoundError("not found"), FileNotFoundError, "no such object"),
        (PreconditionError("412"), FileNotFoundError, "replaced since it was listed"),
        (GenericError("connection refused"), StorageUnavailableError, "no answer"),
    ],
)
def test_client_errors_are_sorted_into_one_short_line_without_secrets(
    error: Exception, kind: type[Exception], words: str
) -> None:
    got = translate(error, "s3://b/k")
    assert isinstance(got, kind)
    assert words in str(got)
    assert "AKIDSECRET" not in str(got) and "\n" not in str(got)


def test_a_listing_error_is_explained_as_the_once_line_says_it() -> None:
    """The daemon's inbox_missing reason (scanner) comes from explain(): no errno prefix,
    what to check, and for no answer the endpoint (without its user:password@)."""
    from ingestd.storage.s3 import S3Storage

    inbox = Location.parse("s3://b/in/")
    storage = S3Storage(None, inbox, None, None, endpoint="http://user:pw@127.0.0.1:1/x")  # type: ignore[arg-type]
    refused = translate(_client_error(403, "InvalidAccessKeyId"), str(inbox))
    text = storage.explain(refused)
    assert "[Errno" not in text and "check the credentials" in text
    away = translate(GenericError("connection refused"), str(inbox))
    text = storage.explain(away)
    assert "http://127.0.0.1:1" in text and "s3_endpoint_url" in text and "pw" not in text


@pytest.mark.parametrize(
    ("key", "after"),
    [
        ("in/x//y.csv", "in/x/0"),
        ("in/b/./c.csv", "in/b/0"),
        ("in/b/../c.csv", "in/b/0"),
        ("in/t\tab.csv", "in/t "),
        ("in/d\x7f.csv", "in/d\xa0"),
        ("in/..", "in/0"),
    ],
)
def test_a_bad_key_is_stepped_over_by_the_first_nameable_offset(key: str, after: str) -> None:
    from ingestd.storage.s3 import _after

    assert _after(key) == after
