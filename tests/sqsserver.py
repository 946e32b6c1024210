"""A real SQS-compatible queue for tests: moto's server (`moto_server`, the moto[server] extra)
on a free loopback port, started and stopped by the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import free_port


def moto_binary() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.is_file() else shutil.which("moto_server")


@dataclass
class SqsServer:
    """One `moto_server` process; its SQS takes any credentials."""

    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    # INITIAL_NO_AUTH_ACTION_COUNT=0: every request needs credentials moto's IAM knows.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> SqsServer:
        binary = moto_binary()
        if binary is None:
            pytest.skip("moto_server not installed (pip install 'moto[server]')")
        self.port = self.port or free_port()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **self.env},
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.skip(f"moto_server could not start: {self.log.read_text()[-500:]}")
            with suppress(OSError):
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()  # noqa: S310 - our own http URL
                return self
            time.sleep(0.2)
        self.stop()
        pytest.skip("moto_server did not answer within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def client(self, service: str = "sqs") -> Any:
        import botocore.session

        return botocore.session.get_session().create_client(
            service, region_name="us-east-1", endpoint_url=self.endpoint,
            aws_access_key_id="test", aws_secret_access_key="test",  # noqa: S106 - moto's
        )  # fmt: skip

    def queue(self, name: str) -> Queue:
        url = self.client().create_queue(QueueName=name)["QueueUrl"]
        return Queue(self, str(url))


@dataclass
class Queue:
    server: SqsServer
    url: str

    def send(self, body: str) -> None:
        self.server.client().send_message(QueueUrl=self.url, MessageBody=body)

    def send_created(self, bucket: str, *keys: str, event: str = "ObjectCreated:Put") -> None:
        """The JSON S3 sends for new objects (keys form-encoded, as S3 does)."""
        self.send(json.dumps(s3_event(bucket, *keys, event=event)))

    def count(self) -> int:
        """Messages in the queue, visible or received and not yet deleted."""
        attrs = self.server.client().get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(v) for v in attrs.values())


def s3_event(bucket: str, *keys: str, event: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": event,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": 1},
                },
            }
            for key in keys
        ]
    }


def module_server(log: Path) -> Iterator[SqsServer]:
    server = SqsServer(log).start()
    try:
        yield server
    finally:
        server.stop()
