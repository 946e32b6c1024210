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

import contextlib
import datetime as dt
import errno
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import obstore
import pyarrow as pa
from obstore.exceptions import BaseError, InvalidPathError
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
    changed_how = "replaced: its ETag changed"  # how load.check_unchanged words a change

    def __init__(
        self,
        store: S3Store,
        inbox: Location,
        done: Location | None,
        failed: Location | None,
        rescan_s: float = 30.0,
        endpoint: str | None = None,
    ):
        self.store = store
        # Named in "no answer" errors: scheme, host and port only (no user:password@).
        self.endpoint = _shown_endpoint(endpoint)
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
            # Keys the client cannot name are the listing's to report, not an outage.
            self._list(offset=None, chunk_size=1, first_page_only=True, bad_keys=[])
        except (StorageUnavailableError, OSError) as error:
            return self.explain(error)
        return None

    def explain(self, error: BaseException) -> str:
        """What is wrong with the inbox and what to do, for a listing's error (the daemon's
        inbox_missing reason says what --once's one line says)."""
        if isinstance(error, FileNotFoundError):
            return f"bucket {self.bucket} does not exist (create it, or fix inbox)"
        if isinstance(error, PermissionError):
            return (
                f"{self._reason(error)}: check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, "
                f"the instance role) and s3:ListBucket on {self.bucket}"
            )
        reason = self._reason(error)
        if isinstance(error, StorageUnavailableError) and "no answer" in reason:
            return (
                f"{reason} from {self.endpoint}: check s3_endpoint_url (or AWS_ENDPOINT_URL), "
                "the region and the network"
            )
        return reason

    def _reason(self, error: BaseException) -> str:
        # The caller names the inbox already: say only what is wrong with it.
        text = (error.strerror if isinstance(error, OSError) else None) or str(error)
        return text.replace(f"{self.inbox}: ", "")

    def _skipped_prefixes(self) -> tuple[str, ...]:
        # done/ and failed/ inside the inbox prefix are never listed as new work.
        return tuple(
            a.prefix for a in (self.done, self.failed)
            if a is not None and a.prefix.startswith(self.inbox.prefix)
            and len(a.prefix) > len(self.inbox.prefix)
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
        bad: list[str] = []
        metas = self._list(offset=offset, chunk_size=_PAGE, bad_keys=bad)
        for key in bad:
            if on_refused is not None:
                on_refused(ObjectHandle(self, key, "", 0), _BAD_KEY)
        # The client drops a "folder" key's trailing "/": an empty object that other
        # listed keys sit under is a console's folder placeholder, whatever its name.
        folders = {
            path[:i] for path in (str(m["path"]) for m in metas)
            for i, c in enumerate(path) if c == "/"
        }  # fmt: skip
        found = {h.key: h for h in (self._entry(m, folders) for m in metas) if h is not None}
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
        self,
        offset: str | None,
        chunk_size: int,
        first_page_only: bool = False,
        bad_keys: list[str] | None = None,
    ) -> list[Any]:
        """The listing under the inbox prefix after offset. A key the client cannot name
        (`a//b`, `a/./b`, `a/../b`, control characters: S3 allows them) fails its whole
        page: it goes to bad_keys (or, without that list, is one UsageError naming it),
        and the keys around it are listed again without it (_around)."""
        metas: list[Any] = []
        prefix = self.inbox.prefix
        while True:
            try:
                self._list_into(metas, prefix, offset, chunk_size, first_page_only)
                return metas
            except InvalidPathError as error:
                key = _bad_key(error)
                if key is None or not key.startswith(prefix) or bad_keys is None:
                    raise UsageError(
                        f"cannot use the inbox {self.inbox}: the object "
                        f"{key!r} has a key the client cannot name ({_BAD_KEY})"
                    ) from None
                if key in bad_keys:
                    raise UsageError(f"{self.inbox}: the listing repeats {key!r}") from None
                bad_keys.append(key)
                done = {str(m["path"]) for m in metas}
                low = offset if not metas else max(offset or "", max(done))
                metas.extend(m for m in self._around(key, low, bad_keys) if m["path"] not in done)
                offset = _after(key)
                if offset is None:
                    return metas
                # start-after leaves out the offset's own key: look for it alone.
                if offset.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        metas.append(call(offset, obstore.head, self.store, offset))

    def _list_into(
        self, metas: list[Any], prefix: str, offset: str | None, chunk_size: int,
        first_page_only: bool,
    ) -> None:  # fmt: skip
        # The listing is lazy: its requests (and errors) happen while it is iterated.
        try:
            pages = obstore.list(self.store, prefix, offset=offset, chunk_size=chunk_size)
            for page in pages:
                metas.extend(page)
                if first_page_only:
                    break
        except InvalidPathError:
            raise
        except BaseError as error:
            raise translate(error, str(self.inbox)) from None

    def _around(self, bad: str, low: str | None, bad_keys: list[str]) -> list[Any]:
        """Keys after low and before the bad key, which shared its failed page: folder by
        folder (a listing with a delimiter) down to the bad key's folder. Keys beside the
        bad one in the folder whose listing names it wait until it is renamed."""
        found: list[Any] = []
        level = self.inbox.prefix
        while True:
            try:
                result = obstore.list_with_delimiter(self.store, level.rstrip("/") or None)
            except InvalidPathError as error:
                key = _bad_key(error)
                # A folder's name ("a/./") is the bad key's own part, reported with it.
                if key is not None and key not in bad_keys and not key.endswith("/"):
                    bad_keys.append(key)
                return found
            except BaseError as error:
                raise translate(error, str(self.inbox)) from None
            found += [
                m for m in result["objects"]
                if (low is None or m["path"] > low) and m["path"] < bad
            ]  # fmt: skip
            deeper = None
            for folder in (f"{p}/" for p in result["common_prefixes"]):
                if bad.startswith(folder):
                    deeper = folder
                elif folder < bad and (low is None or low < folder or low.startswith(folder)):
                    since = low if low is not None and low.startswith(folder) else None
                    try:
                        self._list_into(found, folder.rstrip("/"), since, _PAGE, False)
                    except InvalidPathError as error:  # a second bad key: its folder waits
                        key = _bad_key(error)
                        if key is not None and key not in bad_keys:
                            bad_keys.append(key)
            if deeper is None:
                return found
            level = deeper

    def _entry(
        self, meta: Any, folders: set[str] | frozenset[str] = frozenset()
    ) -> ObjectHandle | None:
        key: str = meta["path"]
        relative = key[len(self.inbox.prefix) :]
        if not relative or key.endswith("/") or key.startswith(self._skipped_prefixes()):
            return None  # a "folder" placeholder, or done/ and failed/ themselves
        if int(meta["size"]) == 0 and (key in folders or "." not in relative.rpartition("/")[2]):
            # The client drops the trailing "/" of a console's "folder" key: an empty
            # object other keys sit under (`in/v1.2/`), or an empty one without a
            # suffix (an empty folder), is taken for one.
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
        remove it from the inbox. The same version there already (a copy whose sidecar or
        delete failed) counts as placed. The copy comes before the sidecar: a refused copy
        leaves no sidecar behind to take the name from the retry."""
        try:
            return self._place_at(h, dest, sidecar)
        except ValueError as exc:
            # The client refuses a key it cannot name (`//`, `.`/`..`, control characters):
            # config refuses such prefixes at start, so only a name built from an odd file
            # name lands here; an archive failure to retry, never a bug that kills the move.
            raise OSError(
                errno.EINVAL,
                f"s3://{self.bucket}/{dest}: the S3 client cannot name this key ({exc}); "
                "give done_dir/failed_dir a prefix without empty, . or .. parts",
            ) from None

    def _place_at(self, h: ObjectHandle, dest: str, sidecar: bytes | None) -> str:
        target = self._free_name(h, dest, ".error.json" if sidecar is not None else "")
        if not self._holds(target, h):
            if not self._is_current(h):
                raise FileNotFoundError(errno.ENOENT, f"{h}: replaced or gone before its move")
            call(str(h), obstore.copy, self.store, h.key, target)
        if sidecar is not None:
            call(target, obstore.put, self.store, f"{target}.error.json", sidecar)
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


_BAD_KEY = (
    "its key has an empty part (//), a . or .. part, or a control character, which the "
    "S3 client cannot read; rename the object (objects beside it in its folder wait "
    "until then)"
)
_BAD_KEY_TEXT = re.compile(
    r'(?:Error parsing )?Path "(?P<key>.*?)"(?:: Encountered| contained)', re.S
)


def _bad_key(error: BaseException) -> str | None:
    """The key an InvalidPathError names (the client's first line quotes it as it is)."""
    match = _BAD_KEY_TEXT.search(str(error))
    return match["key"] if match else None


def _control(c: str) -> bool:
    # ASCII controls are what the client refuses; C1 controls are stepped over too, so
    # an offset built from them is never refused in its turn.
    return ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F


def _first_bad(key: str) -> int:
    """Index of the first character from which no key starting with key[:index + 1] can be
    named: the second / of //, the . of a ./ or ../ part, a control character."""
    parts = key.split("/")
    at = 0
    for n, part in enumerate(parts):
        bad_char = next((i for i, c in enumerate(part) if _control(c)), None)
        if bad_char is not None:
            return at + bad_char
        if part == "" and 0 < n < len(parts) - 1:
            return at  # the second / of //
        if part in (".", ".."):
            return at
        at += len(part) + 1
    return len(key) - 1


def _after(key: str) -> str | None:
    """The smallest key the client can name that sorts after every key starting with the
    bad key's bad part, as the listing's offset (start-after)."""
    i = _first_bad(key)
    nxt = ord(key[i]) + 1
    while nxt < 0x110000 and (_control(chr(nxt)) or chr(nxt) == "/"):
        nxt += 1
    return key[:i] + chr(nxt) if nxt < 0x110000 else None


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
    endpoint = settings.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    return S3Storage(store, inbox, done, failed, rescan_s=settings.rescan_s, endpoint=endpoint)


def _shown_endpoint(endpoint: str | None) -> str:
    if not endpoint:
        return "the AWS S3 endpoint of AWS_REGION"
    try:
        parts = urllib.parse.urlsplit(endpoint)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured endpoint"
    return f"{parts.scheme}://{parts.hostname}{port}"
