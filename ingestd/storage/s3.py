"""Object-store landing areas: an inbox that is an S3 (or S3-compatible) prefix.

Objects are complete once listed (S3 writes are atomic), so nothing settles. A handle names
one version of one key (its ETag from the listing): every read is a GET with If-Match on
it, so the bytes hashed at the claim are the bytes loaded, and a re-upload in between reads
as "that version is gone" (s3_client.ObjectGoneError), never as a bad file. Moves are a server-side
copy, then a delete. The client is obstore (Rust object_store): listings carry ETags,
reads take conditions, retries of 5xx and resets have backoff built in. Why that library:
README, "Object storage".
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import obstore
import pyarrow as pa
from obstore.exceptions import BaseError
from obstore.store import S3Store

from ingestd.exceptions import UsageError
from ingestd.storage.base import Handle, StorageUnavailableError, Version, is_ignored
from ingestd.storage.local_moves import fit_name
from ingestd.storage.s3_client import STREAM_CHUNK, Ranges, Stream, call, store_for, translate

if TYPE_CHECKING:
    from ingestd.settings import Settings

log = logging.getLogger(__name__)
SCHEME = "s3://"
_KEY_MAX = 1024
_URL = re.compile(r"^s3:/+(?P<bucket>[^/]+)/?(?P<prefix>.*)$")
# One LIST page holds 1,000 keys: listing a prefix that fits costs the same request as a
# listing after the last key seen, so only larger inboxes take the cheap path.
_PAGE = 1000


@dataclass(frozen=True)
class Location:
    """`s3://BUCKET/PREFIX/`: PREFIX is empty or ends in `/`."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> Location:
        # A URL that went through Path() has lost one slash ("s3:/b/in"): take it back.
        match = _URL.match(text)
        if match is None or not text.lower().startswith("s3:"):
            raise UsageError(f"{text}: an object-store location is s3://BUCKET/PREFIX/")
        prefix = match["prefix"].strip("/")
        return cls(match["bucket"], f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    def beside(self, kind: str) -> Location:
        """done/ or failed/ next to this prefix (s3://b/landing/inbox/ -> s3://b/landing/done/)."""
        parent = self.prefix.rstrip("/").rpartition("/")[0]
        return Location(self.bucket, f"{parent}/{kind}/" if parent else f"{kind}/")


@dataclass(frozen=True)
class ObjectHandle:
    """One version of one object, as a listing saw it."""

    storage: S3Storage = field(repr=False, compare=False)
    key: str
    etag: str
    size: int
    version: str | None = None

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    def __str__(self) -> str:
        return f"{SCHEME}{self.storage.bucket}/{self.key}"


def _handle(handle: Handle) -> ObjectHandle:
    if not isinstance(handle, ObjectHandle):
        raise TypeError(f"not an object handle: {handle!r}")
    return handle


class S3Storage:
    """An inbox prefix in one bucket, with its done/ and failed/ prefixes in that bucket."""

    settles = False

    def __init__(
        self,
        store: S3Store,
        inbox: Location,
        done: Location | None,
        failed: Location | None,
        rescan_s: float = 30.0,
    ):
        self.store = store
        self.inbox = inbox
        self.bucket = inbox.bucket
        self.done = done
        self.failed = failed
        self.rescan_s = rescan_s
        self._last_full = -float("inf")
        self._last_count = 0
        self._max_key = ""
        self._seen: dict[str, ObjectHandle] = {}
        self._seen_lock = threading.Lock()  # listings and moves run in different threads
        for area in (done, failed):
            if area is not None and area.bucket != inbox.bucket:
                raise UsageError(
                    f"{area}: done/ and failed/ must be in the inbox's bucket "
                    f"{inbox.bucket} (objects move by server-side copy)"
                )

    def describe(self) -> str:
        return str(self.inbox)

    def problem(self) -> str | None:
        try:
            self._list(offset=None, chunk_size=1, first_page_only=True)
        except FileNotFoundError:
            return f"bucket {self.bucket} does not exist (create it, or fix inbox)"
        except PermissionError as error:
            return (
                f"{self._reason(error)}: check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, "
                f"the instance role) and s3:ListBucket on {self.bucket}"
            )
        except (StorageUnavailableError, OSError) as error:
            return self._reason(error)
        return None

    def _reason(self, error: Exception) -> str:
        # The caller names the inbox already: say only what is wrong with it.
        text = (error.strerror if isinstance(error, OSError) else None) or str(error)
        return text.replace(f"{self.inbox}: ", "")

    def _skipped_prefixes(self) -> tuple[str, ...]:
        # done/ and failed/ inside the inbox prefix are never listed as new work.
        return tuple(
            a.prefix for a in (self.done, self.failed)
            if a is not None and a.prefix.startswith(self.inbox.prefix) and a.prefix
        )  # fmt: skip

    def entries(
        self,
        on_refused: Callable[[Handle, str], None] | None = None,
        on_unreadable: Callable[[Handle, str], None] | None = None,
    ) -> Iterator[Handle]:
        now = time.monotonic()
        full = now - self._last_full >= self.rescan_s or self._last_count <= _PAGE
        # A large inbox between full listings: only keys after the last one seen are
        # listed (keys often grow: dates, sequence numbers); the rest is what the last
        # full listing saw, so the caller still gets the whole inbox.
        offset = None if full or not self._max_key else self._max_key
        metas = self._list(offset=offset, chunk_size=_PAGE)
        found = {h.key: h for h in map(self._entry, metas) if h is not None}
        with self._seen_lock:
            if full:
                self._last_full, self._last_count = now, len(metas)
                self._seen = found
            else:
                self._seen.update(found)
            if found:
                self._max_key = max(self._max_key, *found)
            return iter(sorted(self._seen.values(), key=lambda h: h.key))

    def _list(
        self, offset: str | None, chunk_size: int, first_page_only: bool = False
    ) -> list[Any]:
        # The listing is lazy: its requests (and errors) happen while it is iterated.
        metas: list[Any] = []
        try:
            pages = obstore.list(self.store, self.inbox.prefix, offset=offset,
                                 chunk_size=chunk_size)  # fmt: skip
            for page in pages:
                metas.extend(page)
                if first_page_only:
                    break
        except BaseError as error:
            raise translate(error, str(self.inbox)) from None
        return metas

    def _entry(self, meta: Any) -> ObjectHandle | None:
        key: str = meta["path"]
        relative = key[len(self.inbox.prefix) :]
        if not relative or key.endswith("/") or key.startswith(self._skipped_prefixes()):
            return None  # a "folder" placeholder, or done/ and failed/ themselves
        if int(meta["size"]) == 0 and "." not in relative.rpartition("/")[2]:
            # The client drops the trailing "/" of a console's "folder" key: an empty
            # object without a suffix is taken for one.
            return None
        if any(is_ignored(part) for part in relative.split("/")):
            return None
        etag = meta.get("e_tag") or ""
        return ObjectHandle(self, key, etag, int(meta["size"]), meta.get("version"))

    def handle_for(self, key: str) -> ObjectHandle | None:
        """The handle a listing would give for key now (one HEAD), or None when it is gone,
        outside the inbox prefix, or a name the listing ignores (a notification's key)."""
        if not key.startswith(self.inbox.prefix):
            return None
        try:
            meta = call(f"{SCHEME}{self.bucket}/{key}", obstore.head, self.store, key)
        except FileNotFoundError:
            return None
        return self._entry(meta)

    def name_of(self, handle: Handle) -> PurePosixPath:
        key = _handle(handle).key
        if key.startswith(self.inbox.prefix):
            return PurePosixPath(key[len(self.inbox.prefix) :])
        return PurePosixPath(key)

    def listed_identity(self, handle: Handle) -> Version:
        """The version the listing saw (no request): what identity() returned then."""
        h = _handle(handle)
        return (h.size, h.etag, h.version)

    def identity(self, handle: Handle) -> Version | None:
        h = _handle(handle)
        try:
            meta = call(str(h), obstore.head, self.store, h.key)
        except FileNotFoundError:
            return None
        # The key's version now, which may be newer than the handle's: the pipeline then
        # sees "changed" (and reads pinned to the handle's ETag fail rather than mix).
        return (int(meta["size"]), meta.get("e_tag") or "", meta.get("version"))

    def _is_current(self, h: ObjectHandle) -> bool:
        """The key still holds the handle's version (not deleted, not re-uploaded)."""
        now = self.identity(h)
        return now is not None and now[:2] == (h.size, h.etag) if h.etag else now is not None

    def open_stream(self, handle: Handle) -> pa.NativeFile:
        h = _handle(handle)
        options: dict[str, Any] = {"if_match": h.etag} if h.etag else {}
        result = call(str(h), obstore.get, self.store, h.key, options=options)
        chunks = iter(result.stream(min_chunk_size=STREAM_CHUNK))
        return pa.PythonFile(Stream(chunks, str(h), int(result.meta["size"])), mode="r")

    def open_random(self, handle: Handle) -> pa.NativeFile:
        h = _handle(handle)
        return pa.PythonFile(Ranges(self.store, h.key, h.etag, h.size, str(h)), mode="r")

    def to_done(self, handle: Handle, name: PurePosixPath, today: dt.date | None = None) -> str:
        if self.done is None:
            raise OSError(errno.EINVAL, "no done prefix configured")
        day = (today or dt.datetime.now(dt.UTC).date()).isoformat()
        return self._place(_handle(handle), f"{self.done.prefix}{day}/{name}", None)

    def to_failed(self, handle: Handle, name: PurePosixPath, sidecar: bytes) -> str:
        if self.failed is None:
            raise OSError(errno.EINVAL, "no failed prefix configured")
        return self._place(_handle(handle), f"{self.failed.prefix}{name}", sidecar)

    def delete(self, handle: Handle) -> None:
        h = _handle(handle)
        if not self._is_current(h):
            return  # gone, or replaced by a newer upload that is not ours to remove
        call(str(h), obstore.delete, self.store, h.key)
        with self._seen_lock:
            if self._seen.get(h.key) == h:
                del self._seen[h.key]

    def _place(self, h: ObjectHandle, dest: str, sidecar: bytes | None) -> str:
        """Place the object at dest (or a free variant of it) by a server-side copy, then
        remove it from the inbox. The same version there already (a copy whose delete
        failed) counts as placed."""
        target = self._free_name(h, dest, ".error.json" if sidecar is not None else "")
        if sidecar is not None:
            call(target, obstore.put, self.store, f"{target}.error.json", sidecar)
        if not self._holds(target, h):
            if not self._is_current(h):
                raise FileNotFoundError(errno.ENOENT, f"{h}: replaced or gone before its move")
            call(str(h), obstore.copy, self.store, h.key, target)
        self.delete(h)
        return f"{SCHEME}{self.bucket}/{target}"

    def _holds(self, key: str, h: ObjectHandle) -> bool:
        try:
            meta = call(key, obstore.head, self.store, key)
        except FileNotFoundError:
            return False
        return int(meta["size"]) == h.size and (not h.etag or meta.get("e_tag") == h.etag)

    def _free_name(self, h: ObjectHandle, dest: str, sidecar_suffix: str) -> str:
        folder, _, name = dest.rpartition("/")
        # S3 keys are at most 1,024 bytes: a long name is shortened as local names are
        # (stem cut, a hash of the whole name, the extension kept) so the sidecar fits too.
        room = _KEY_MAX - len(folder.encode()) - 1
        for n in range(10_000):
            variant = fit_name(name, n, len(sidecar_suffix), room)
            key = f"{folder}/{variant}" if folder else variant
            if self._holds(key, h):
                return key
            taken = self._exists(key) or (sidecar_suffix and self._exists(key + sidecar_suffix))
            if not taken:
                return key
        raise OSError(errno.EEXIST, f"{dest}: no free name after 10,000 tries")

    def _exists(self, key: str) -> bool:
        try:
            call(key, obstore.head, self.store, key)
        except FileNotFoundError:
            return False
        return True


def from_settings(settings: Settings) -> S3Storage:
    """The object-store landing area an `s3://` inbox setting names."""
    inbox = Location.parse(str(settings.inbox))

    def area(configured: object, kind: str) -> Location:
        return Location.parse(str(configured)) if configured else inbox.beside(kind)

    keep = getattr(settings, "keep_files", False)
    done = None if keep else area(settings.done_dir, "done")
    failed = area(settings.failed_dir, "failed")
    store = store_for(inbox.bucket, settings.s3_endpoint_url)
    # s3_queue_url is read by the daemon's discovery (ingestd.storage.sqs), not here.
    return S3Storage(store, inbox, done, failed, rescan_s=settings.rescan_s)
