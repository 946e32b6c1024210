"""The object-store client (obstore over Rust's object_store) as the storage needs it:
one client per bucket built the AWS way, errors sorted into gone / refused / transient with
no secret in their text, and GET bodies as pyarrow files (a forward stream, ranged reads).
"""

from __future__ import annotations

import configparser
import datetime as dt
import errno
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import (
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from ingestd.exceptions import FileError, UsageError
from ingestd.storage.base import StorageUnavailableError

RANGE_MIN = 1 << 20  # ranged reads fetch at least this much (Parquet asks in small pieces)
STREAM_CHUNK = 1 << 20
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
# Transient by S3's own codes (throttling answers 503 SlowDown, sometimes 400/429).
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                    "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}  # fmt: skip
_REFUSED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                  "ExpiredToken", "InvalidToken", "AllAccessDisabled"}  # fmt: skip


class ObjectGoneError(FileNotFoundError, FileError):
    """The version a handle names is gone (deleted, or replaced by a new upload): at a
    claim, "vanished"; in the middle of a load, a FileError the pipeline turns into
    "changed/disappeared while it was being loaded" (the new version comes with the next
    listing) instead of an internal error or a blamed file."""

    # OSError's constructor runs, not FileError's: its attributes, as FileError sets them.
    row: int | None = None
    sqlstate: str | None = None
    error_class: str | None = None

    def __init__(self, message: str):
        OSError.__init__(self, errno.ENOENT, message)

    def __str__(self) -> str:
        return str(self.strerror)


def translate(error: BaseException, what: str) -> OSError | StorageUnavailableError:
    """The storage error for a client error: gone, refused, changed, or transient.

    The client's own text (multi-line, with the request) is reduced to the status and S3's
    error code, so no header, signature or secret ever reaches a message."""
    text = str(error)
    status_match, code_match = _STATUS.search(text), _CODE.search(text)
    status = int(status_match[1]) if status_match else 0
    code = code_match[1] if code_match else ""
    detail = " ".join(p for p in (str(status) if status else "", code) if p) or "no answer"
    if isinstance(error, PreconditionError) or status == 412:
        return ObjectGoneError(f"{what}: replaced since it was listed")
    if code == "NoSuchBucket":
        return FileNotFoundError(errno.ENOENT, f"{what}: the bucket does not exist")
    if isinstance(error, NotFoundError) or status == 404:
        return ObjectGoneError(f"{what}: no such object")
    if code in _TRANSIENT_CODES or status >= 500 or status == 429 or status == 0:
        # status 0: no answer at all (refused, reset, timed out): the store is away.
        return StorageUnavailableError(f"object store unavailable ({what}: {detail})")
    if (
        isinstance(error, PermissionDeniedError | UnauthenticatedError)
        or code in _REFUSED_CODES
        or status in (401, 403)
    ):
        return PermissionError(errno.EACCES, f"{what}: access denied ({detail})")
    return OSError(errno.EIO, f"{what}: object store error ({detail})")


def call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except BaseError as error:
        raise translate(error, what) from None


class Stream(io.RawIOBase):
    """A GET's body as a file: pieces arrive as the reader asks, never the whole object.

    Not seekable, but it knows its size: pyarrow asks for it (seek to the end, then back)
    before a read of "everything"."""

    def __init__(self, chunks: Iterator[Any], what: str, size: int):
        self._chunks = chunks
        self._what = what
        self._size = size
        self._pos = 0
        self._asked_size = False
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size if self._asked_size else self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END and offset == 0:
            self._asked_size = True
            return self._size
        target = offset if whence == io.SEEK_SET else self.tell() + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target != self._pos:
            raise io.UnsupportedOperation("an object stream reads forward only")
        self._asked_size = False
        return self._pos

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(bytes(next(self._chunks)))
            except StopIteration:
                return 0
            except BaseError as error:
                raise translate(error, self._what) from None
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray(size)
        n = 0
        while n < size:
            got = self.readinto(memoryview(out)[n:])
            if not got:
                break
            n += got
        return bytes(out[:n])


class Ranges(io.RawIOBase):
    """Random access through ranged GETs pinned to one ETag (Parquet footers, row groups,
    split segments); a small read-ahead keeps many small reads from costing a request each."""

    def __init__(self, store: S3Store, key: str, etag: str, size: int, what: str):
        self._store = store
        self._key, self._etag, self._size, self._what = key, etag, size, what
        self._pos = 0
        self._buffer_at = 0
        self._buffer = b""
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            end = self._size if size is None or size < 0 else self._pos + size
            end = min(end, self._size)
            if end <= self._pos:
                return b""
            start = self._pos
            if end - start >= RANGE_MIN:
                # A batch-sized read is fetched as asked and not kept: holding it as the
                # read-ahead too would double every raw batch in memory.
                self._buffer = b""
                data = self._get(start, end)
                self._pos = start + len(data)
                return data
            buffered_end = self._buffer_at + len(self._buffer)
            if not (self._buffer_at <= start and end <= buffered_end):
                fetch_end = min(self._size, max(end, start + RANGE_MIN))
                self._buffer = self._get(start, fetch_end)
                self._buffer_at = start
            offset = start - self._buffer_at
            data = self._buffer[offset : offset + (end - start)]
            self._pos = start + len(data)
            return data

    def _get(self, start: int, end: int) -> bytes:
        options: dict[str, Any] = {"range": (start, end)}
        if self._etag:
            options["if_match"] = self._etag
        result = call(self._what, obstore.get, self._store, self._key, options=options)
        return bytes(call(self._what, result.bytes))


# Building a client reads the environment and files: once per process and location.
_STORES: dict[tuple[str | None, ...], S3Store] = {}
_CREDENTIAL_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                         "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION")  # fmt: skip
_LOCK = threading.Lock()


def _profile_config() -> dict[str, str]:
    """Static keys and region of AWS_PROFILE (or `default`) from the shared files, as the
    AWS CLI reads them, when the environment names no keys (the client library itself
    reads AWS_* variables, web identity and instance roles)."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return {}
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path.home() / ".aws"
    found: dict[str, str] = {}
    credentials = configparser.ConfigParser(interpolation=None)
    credentials.read(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / "credentials")
    config = configparser.ConfigParser(interpolation=None)
    config.read(os.environ.get("AWS_CONFIG_FILE") or home / "config")
    section = profile if profile == "default" else f"profile {profile}"
    sources = [credentials[profile] if credentials.has_section(profile) else {},
               config[section] if config.has_section(section) else {}]  # fmt: skip
    for source in sources:
        for ours, theirs in (("access_key_id", "aws_access_key_id"),
                             ("secret_access_key", "aws_secret_access_key"),
                             ("session_token", "aws_session_token"),
                             ("region", "region")):  # fmt: skip
            if theirs in source and ours not in found:
                found[ours] = source[theirs]
    return found


def store_for(bucket: str, endpoint: str | None) -> S3Store:
    """The client for a bucket (one per process): AWS_* variables, the profile's keys,
    web identity or the instance role, as the AWS tools find them."""
    with _LOCK:
        # Keyed by the credentials' variables too: a process that changes them (a test)
        # gets a client that uses the new ones.
        key = (bucket, endpoint, *(os.environ.get(v) for v in _CREDENTIAL_VARIABLES))
        cached = _STORES.get(key)
        if cached is not None:
            return cached
        config: dict[str, Any] = dict(_profile_config())
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        if endpoint:
            config["endpoint"] = endpoint
        if not os.environ.get("AWS_REGION") and "region" not in config:
            config["region"] = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        client = {"allow_http": bool(endpoint and endpoint.startswith("http://")),
                  "connect_timeout": dt.timedelta(seconds=5),
                  "timeout": dt.timedelta(seconds=300)}  # fmt: skip
        # A few quick retries inside a request; longer outages are the pipeline's backoff
        # (StorageUnavailableError), which stays interruptible and visible.
        retry = {"max_retries": 3, "retry_timeout": dt.timedelta(seconds=10),
                 "backoff": {"init_backoff": dt.timedelta(milliseconds=100),
                             "max_backoff": dt.timedelta(seconds=2), "base": 2}}  # fmt: skip
        try:
            # TypedDicts built from parts: mypy cannot follow the keys.
            store = S3Store(bucket, config=config, client_options=client, retry_config=retry)  # type: ignore[arg-type]
        except BaseError as error:
            raise UsageError(str(translate(error, f"s3://{bucket}/ configuration"))) from None
        _STORES[key] = store
        return store
