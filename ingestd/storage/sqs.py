"""Object-created notifications from an SQS (or SQS-compatible) queue: new keys are offered
at once instead of at the next listing.

A receiver thread long-polls the queue (every wait has a timeout) and hands the scanner
`Arrival`s: the objects one message names, each already looked up (a HEAD) as the listing
would have seen it. The scanner offers them, then deletes the message, so a message is gone
only once its objects are claimed in the manifest, skipped, or known to need nothing (gone,
ignored, outside the inbox prefix). Messages that name nothing to load (test events, removed
objects, other prefixes, bodies that are not S3 events) are deleted by the thread at DEBUG.
Listings go on meanwhile: notifications are not guaranteed, and a queue that cannot be
reached only slows discovery down to `poll_s` (a warning once, retried with backoff).

The client is botocore (the `sqs` extra): the AWS credential chain (variables, profiles,
SSO, assume-role, web identity, instance roles) and SigV4 come with it. Why: README.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit

from ingestd.exceptions import UsageError
from ingestd.storage.base import StorageUnavailableError

if TYPE_CHECKING:
    from ingestd.storage.s3 import ObjectHandle, S3Storage

log = logging.getLogger(__name__)

WAIT_S = 10  # one long poll (SQS allows up to 20): also how long a stop may wait for it
VISIBILITY_S = 300  # a message received but not yet deleted stays hidden this long
_MAX_BACKOFF_S = 60.0
_REGION = re.compile(r"^sqs[.-](?P<region>[a-z0-9-]+)\.amazonaws\.com", re.IGNORECASE)
_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "NonExistentQueue", "QueueDoesNotExist"}
_REFUSED = {"AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
            "UnrecognizedClientException", "SignatureDoesNotMatch", "ExpiredToken",
            "IncompleteSignature", "MissingAuthenticationToken", "InvalidAccessKeyId",
            "KMS.AccessDeniedException"}  # fmt: skip


@dataclass(frozen=True)
class Event:
    """What one message says: the keys created (decoded), or why it names nothing."""

    keys: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # reasons, for the DEBUG line


def parse(body: str, bucket: str) -> Event:
    """The object-created keys of one S3 event notification (also wrapped by SNS)."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
            doc = json.loads(doc["Message"])  # S3 -> SNS -> SQS
    except (ValueError, TypeError):
        return Event(ignored=("not JSON",))
    if not isinstance(doc, dict):
        return Event(ignored=("not an S3 event",))
    if doc.get("Event") == "s3:TestEvent":
        return Event(ignored=("s3:TestEvent",))
    records = doc.get("Records")
    if not isinstance(records, list):
        return Event(ignored=("not an S3 event (no Records)",))
    keys: list[str] = []
    ignored: list[str] = []
    for record in records:
        try:
            name = str(record["eventName"])
            s3 = record["s3"]
            their_bucket = str(s3["bucket"]["name"])
            # S3 sends the key form-encoded ("a+b%2Bc.csv" is "a b+c.csv").
            key = unquote_plus(str(s3["object"]["key"]))
        except (KeyError, TypeError):
            ignored.append("a record that is not an S3 event")
            continue
        if not name.startswith("ObjectCreated:"):
            ignored.append(f"{name} {key}")
        elif their_bucket != bucket:
            ignored.append(f"bucket {their_bucket} is not the inbox's")
        else:
            keys.append(key)
    return Event(tuple(dict.fromkeys(keys)), tuple(ignored))


def _region(url: str) -> str:
    match = _REGION.match(urlsplit(url).hostname or "")
    if match:
        return match["region"]
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def check_url(url: str) -> None:
    """A queue URL is http(s)://HOST/ACCOUNT/NAME (as the console and CreateQueue give it)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        # Said without the URL: what is there may be a secret.
        raise UsageError(
            "s3_queue_url: credentials do not belong in the URL (use AWS_* or a profile)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path in ("", "/"):
        raise UsageError(
            f"s3_queue_url {url!r}: a queue URL is https://sqs.REGION.amazonaws.com/ACCOUNT/NAME "
            "(the queue's URL, not its ARN)"
        )


class QueueClient:
    """ReceiveMessage / DeleteMessage / GetQueueAttributes on one queue, errors sorted
    into missing and refused (OSError, UsageError at start) or transient (retry)."""

    def __init__(self, url: str):
        check_url(url)
        try:
            import botocore.session
            from botocore.config import Config
        except ImportError:
            raise UsageError(
                "s3_queue_url needs the SQS client: pip install 'ingestd[sqs]' "
                "(or unset s3_queue_url; listings find every object within poll_s)"
            ) from None
        self.url = url
        parts = urlsplit(url)
        # botocore's DEBUG lines carry request headers (the session token, signatures):
        # never let them reach ingestd's log, whatever log_level says.
        for name in ("botocore", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = Config(
            connect_timeout=5,
            read_timeout=WAIT_S + 10,  # above the long poll, or every empty poll times out
            retries={"max_attempts": 2, "mode": "standard"},
        )
        session = botocore.session.get_session()
        where = {"region_name": _region(url), "endpoint_url": f"{parts.scheme}://{parts.netloc}"}
        self._client: Any = session.create_client("sqs", config=config, **where)
        # The check at start holds up the first listing: a queue that does not answer is
        # given seconds, not the long poll's read timeout twice.
        quick = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1})
        self._quick: Any = session.create_client("sqs", config=quick, **where)

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(QueueUrl=self.url, **kwargs)
        except ClientError as error:
            raise _sorted(error, what) from None
        except NoCredentialsError:
            raise PermissionError(f"{what}: no AWS credentials found") from None
        except BotoCoreError as error:
            # Connection refused, reset, timed out: botocore's text names the endpoint only.
            raise StorageUnavailableError(
                f"queue unavailable ({what}: {type(error).__name__})"
            ) from None

    def check(self) -> None:
        """One request that proves the queue exists and the credentials are accepted."""
        self._call("GetQueueAttributes", self._quick.get_queue_attributes,
                   AttributeNames=["QueueArn"])  # fmt: skip

    def receive(self, wait_s: int = WAIT_S) -> list[dict[str, Any]]:
        """Up to 10 messages; waits at most wait_s for the first (long poll)."""
        answer = self._call(
            "ReceiveMessage",
            self._client.receive_message,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=VISIBILITY_S,
        )
        return list(answer.get("Messages") or [])

    def delete(self, receipt: str) -> None:
        self._call("DeleteMessage", self._client.delete_message, ReceiptHandle=receipt)


def _sorted(error: Any, what: str) -> OSError | StorageUnavailableError:
    info = error.response.get("Error", {}) or {}
    code = str(info.get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = " ".join(dict.fromkeys(p for p in (str(status) if status else "", code) if p))
    if code in _MISSING:
        return FileNotFoundError(f"{what}: the queue does not exist ({detail})")
    if code in _REFUSED or status in (401, 403):
        return PermissionError(f"{what}: access denied ({detail})")
    return StorageUnavailableError(f"queue unavailable ({what}: {detail})")


@dataclass
class Arrival:
    """One message's objects to offer; `done()` deletes the message."""

    receipt: str
    handles: list[ObjectHandle]
    done: Callable[[], None] = field(repr=False)


class Notifications:
    """The receiver thread and the scanner's side of it."""

    def __init__(self, client: QueueClient, storage: S3Storage):
        self.client = client
        self.storage = storage
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._arrivals: asyncio.Queue[Arrival] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = threading.Semaphore(0)  # the thread receives again once a batch is taken
        self._ok: bool | None = None
        self._stopping: asyncio.Event | None = None

    def _stopped(self) -> bool:
        return self._stop.is_set() or (self._stopping is not None and self._stopping.is_set())

    def start(self, stopping: asyncio.Event) -> None:
        """Receive until stop() or `stopping` (read from the thread: a plain flag)."""
        self._stopping = stopping
        self._loop = asyncio.get_running_loop()
        # Its own daemon thread, not the loop's executor: a stop never waits for a long poll.
        self._thread = threading.Thread(target=self._run, name="ingestd-sqs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._open.release()

    async def next(self, timeout_s: float) -> Arrival | None:
        """The next arrival, or None after timeout_s."""
        try:
            return await asyncio.wait_for(self._arrivals.get(), max(timeout_s, 0.0))
        except TimeoutError:
            return None

    def taken(self) -> None:
        """The scanner has handled every arrival it was given: receive the next batch."""
        if self._arrivals.empty():
            self._open.release()

    async def delete(self, arrival: Arrival) -> None:
        """Delete the message (its objects are claimed or need nothing); a failure leaves
        it to come back after its visibility timeout, when it is offered (and skipped) again."""
        try:
            await asyncio.to_thread(arrival.done)
        except (StorageUnavailableError, OSError) as error:
            log.debug("s3_queue_delete_failed", extra={"reason": str(error)})

    def _run(self) -> None:
        failures = 0
        while not self._stopped():
            try:
                messages = self.client.receive()
            except (StorageUnavailableError, OSError) as error:
                failures += 1
                self._unreachable(error)
                self._stop.wait(min(_MAX_BACKOFF_S, 0.5 * 2 ** min(failures, 8)))
                continue
            failures = 0
            self._back()
            arrivals = [a for a in map(self._safe_arrival, messages) if a is not None]
            if not arrivals or self._loop is None:
                continue
            try:
                for arrival in arrivals:
                    self._loop.call_soon_threadsafe(self._arrivals.put_nowait, arrival)
            except RuntimeError:  # the loop closed: the process is stopping
                return
            while not self._open.acquire(timeout=1.0):
                if self._stopped() or self._loop.is_closed():
                    return

    def _safe_arrival(self, message: dict[str, Any]) -> Arrival | None:
        # One odd message must never end the receiver (notifications would stop silently).
        try:
            return self._arrival(message)
        except Exception as error:
            log.error(
                "internal_error",
                exc_info=error,
                extra={"error": f"{type(error).__name__} reading a queue message"},
            )
            return None

    def _arrival(self, message: dict[str, Any]) -> Arrival | None:
        receipt = str(message.get("ReceiptHandle", ""))
        event = parse(str(message.get("Body", "")), self.storage.bucket)
        handles: list[ObjectHandle] = []
        ignored = list(event.ignored)
        for key in event.keys:
            try:
                handle = self.storage.handle_for(key)
            except (StorageUnavailableError, OSError) as error:
                # Not deleted: it comes back after its visibility timeout (or a listing finds it).
                log.debug("s3_queue_lookup_failed", extra={"file": key, "reason": str(error)})
                return None
            except ValueError as error:  # a key the client refuses as a path: never loadable
                ignored.append(f"{key}: {error}")
                continue
            if handle is None:
                ignored.append(f"{key}: gone, ignored, or not under {self.storage.inbox}")
            else:
                handles.append(handle)
        if ignored:
            log.debug("s3_queue_ignored", extra={"reason": "; ".join(ignored)})

        def done() -> None:
            self.client.delete(receipt)

        if handles:
            return Arrival(receipt, handles, done)
        try:
            done()
        except (StorageUnavailableError, OSError) as error:
            log.debug("s3_queue_delete_failed", extra={"reason": str(error)})
        return None

    def _unreachable(self, error: BaseException) -> None:
        if self._ok is not False:
            log.warning(
                "s3_queue_unavailable",
                extra={
                    "queue": self.client.url,
                    "reason": str(error),
                    "action": "retried with backoff; new objects are found by listing "
                    "every poll_s meanwhile",
                },
            )
        self._ok = False

    def _back(self) -> None:
        if self._ok is False:
            log.info("s3_queue_back", extra={"queue": self.client.url})
        self._ok = True


def notifications_for(url: str, storage: object) -> Notifications:
    """The queue's notifications for an object-store inbox; a queue that does not exist or
    refuses the credentials is a UsageError (exit 2), one that does not answer is retried."""
    from ingestd.storage.s3 import S3Storage

    if not isinstance(storage, S3Storage):
        raise UsageError(f"s3_queue_url {url}: notifications are read for an s3:// inbox only")
    client = QueueClient(url)
    notes = Notifications(client, storage)
    try:
        client.check()
    except (FileNotFoundError, PermissionError) as error:
        raise UsageError(f"cannot use s3_queue_url {url}: {error}") from None
    except (StorageUnavailableError, OSError) as error:
        notes._unreachable(error)  # not answering is not a wrong URL: the thread retries
    return notes
