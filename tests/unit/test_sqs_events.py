"""The S3 event bodies an SQS queue carries, as ingestd.storage.sqs reads them."""

from __future__ import annotations

import json

import pytest

from ingestd.exceptions import UsageError
from ingestd.storage.sqs import _region, check_url, parse
from tests.sqsserver import s3_event


def test_created_keys_are_decoded_as_s3_encodes_them() -> None:
    body = json.dumps(s3_event("b", "in/a b+c%.csv", "in/ü/x.csv"))
    assert '"in/a+b%2Bc%25.csv"' in body  # form-encoded, as S3 sends them
    assert parse(body, "b").keys == ("in/a b+c%.csv", "in/ü/x.csv")


def test_the_same_key_twice_in_one_message_is_offered_once() -> None:
    assert parse(json.dumps(s3_event("b", "in/x.csv", "in/x.csv")), "b").keys == ("in/x.csv",)


def test_an_event_through_sns_is_unwrapped() -> None:
    inner = json.dumps(s3_event("b", "in/x.csv"))
    body = json.dumps({"Type": "Notification", "Message": inner})
    assert parse(body, "b").keys == ("in/x.csv",)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}), "s3:TestEvent"),
        ("not json {", "not JSON"),
        ("[1, 2]", "not an S3 event"),
        (json.dumps({"Records": "x"}), "no Records"),
        (json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}), "not an S3 event"),
        (json.dumps(s3_event("b", "in/x.csv", event="ObjectRemoved:Delete")), "ObjectRemoved"),
        (json.dumps(s3_event("other", "in/x.csv")), "bucket other"),
    ],
)
def test_messages_that_name_no_new_object_say_why(body: str, said: str) -> None:
    event = parse(body, "b")
    assert event.keys == ()
    assert said in " ".join(event.ignored)


def test_the_region_comes_from_an_aws_queue_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    assert _region("https://sqs.eu-west-3.amazonaws.com/123/q") == "eu-west-3"
    assert _region("http://127.0.0.1:4566/000000000000/q") == "us-east-1"


@pytest.mark.parametrize(
    "url", ["arn:aws:sqs:us-east-1:123:q", "sqs.us-east-1.amazonaws.com/1/q", "https://h/"]
)
def test_a_queue_arn_or_host_alone_is_refused(url: str) -> None:
    with pytest.raises(UsageError, match="a queue URL is https://"):
        check_url(url)


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(UsageError) as caught:
        check_url("https://AKIAX:s3cr3tVALUE@sqs.us-east-1.amazonaws.com/1/q")
    assert "s3cr3tVALUE" not in str(caught.value)
    assert "AKIAX" not in str(caught.value)
