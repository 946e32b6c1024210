"""What a landing area must do (a local folder, an object-store prefix): the one seam
between the pipeline and where files live.

The pipeline never asks which kind it has: discovery lists handles, the claim hashes a
stream, readers open a stream or a random-access file, the archive moves a handle to
done/ or failed/. A handle is what the storage hands out for one entry: a `pathlib.Path`
for a local file (so --files, tests and dry runs pass plain paths), or the store's own
small, frozen, hashable type that names its store (`StoreHandle`).

Errors: an entry that is gone raises FileNotFoundError; a refused read or write raises
PermissionError (or another OSError with its errno, which names the archive metric's
reason); transient trouble of a remote store (5xx, throttling, a reset) raises
StorageUnavailableError, which the workers and the scanner retry with backoff like a
database outage. Nothing a storage raises or describes carries a secret.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ingestd.exceptions import RetryableError

if TYPE_CHECKING:
    import pyarrow as pa

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".error.json")


def is_ignored(name: str) -> bool:
    """Dot-names and half-written names (*.tmp, *.part, *.partial), and sidecars, are never
    picked up, in any storage."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


# The version of an entry: equal while its bytes cannot have changed. Its first item is
# the size in bytes. Local files: (size, mtime_ns); objects: (size, ETag or version id).
Version = tuple[Hashable, ...]


def size_of(version: Version) -> int:
    """The size in bytes a version holds (its first item)."""
    size = version[0]
    if not isinstance(size, int):
        raise TypeError(f"a version starts with its size, not {size!r}")
    return size


class StorageUnavailableError(RetryableError):
    """The store could not be reached or refused for now (5xx, throttling, a reset):
    retried with backoff, never blamed on the file."""


@runtime_checkable
class Handle(Protocol):
    """One entry of a landing area, as the storage that listed it knows it."""

    @property
    def name(self) -> str:
        """The last part of its name (as `Path.name`): suffixes, messages, metric labels."""
        ...


@runtime_checkable
class StoreHandle(Handle, Protocol):
    """A handle that is not a local path: it names the storage that made it."""

    @property
    def storage(self) -> Storage:
        """The storage that listed this entry; every operation on it goes there."""
        ...


class Source(Protocol):
    """What a reader opens: one entry's bytes (a handle bound to its storage)."""

    @property
    def name(self) -> str:
        """The entry's last name part, for suffixes and messages."""
        ...

    def open_stream(self) -> pa.NativeFile:
        """A new sequential stream of the bytes from the start (CSV, hashing)."""
        ...

    def open_random(self) -> pa.NativeFile:
        """A new random-access file: seek, size() and read_at() (Parquet, split segments)."""
        ...


class Storage(Protocol):
    """A landing area: an inbox, and the done/ and failed/ areas finished entries go to.

    Methods block (I/O): call them in a thread, as the pipeline does."""

    # True: entries are written in place and complete only once they hold still and no
    # writer has them open (local folders: settle_s, the open-writer check, a watcher);
    # the scanner then uses the storage's LocalDiscovery capability. False: an entry is
    # complete as soon as it is listed (S3 writes are atomic): discovery just lists.
    settles: bool

    def describe(self) -> str:
        """Where this is, for logs and status (`/srv/inbox`, `s3://bucket/in/`): no secrets."""
        ...

    def problem(self) -> str | None:
        """Why the inbox cannot be used now ("it does not exist", "access denied"), or None.
        A missing or refused inbox at start is one usage error; later, not ready."""
        ...

    def entries(
        self,
        on_refused: Callable[[Handle, str], None] | None = None,
        on_unreadable: Callable[[Handle, str], None] | None = None,
    ) -> Iterator[Handle]:
        """Every candidate entry under the inbox (name order within a folder): not the
        done/ and failed/ areas, no ignored names (is_ignored: dot-names, *.tmp, *.part,
        *.partial, sidecars), no folder placeholders. Entries it will not read are told to
        `on_refused` (a symlink, a FIFO), parts of the inbox it cannot list to
        `on_unreadable`, with the reason; neither stops the listing."""
        ...

    def name_of(self, handle: Handle) -> PurePosixPath:
        """The entry's manifest name: relative to the inbox (`sub/a.csv`, the key after the
        prefix); an absolute name when it lies outside the inbox (--files)."""
        ...

    def identity(self, handle: Handle) -> Version | None:
        """The entry's version now, or None if it is gone or not a regular entry."""
        ...

    def open_stream(self, handle: Handle) -> pa.NativeFile:
        """A sequential stream of the entry's bytes (never a whole download). Raises
        FileNotFoundError if gone, OSError if it cannot be read (a symlink swapped in, a
        FIFO: refused, never followed or blocked on)."""
        ...

    def open_random(self, handle: Handle) -> pa.NativeFile:
        """A random-access file of the entry (ranged reads for a remote store)."""
        ...

    def to_done(self, handle: Handle, name: PurePosixPath, today: dt.date | None = None) -> str:
        """Move the entry to done/YYYY-MM-DD/NAME (a free variant of NAME if taken; the same
        bytes there already count as done); returns where it went."""
        ...

    def to_failed(self, handle: Handle, name: PurePosixPath, sidecar: bytes) -> str:
        """Move the entry to failed/NAME with NAME.error.json beside it, the sidecar in place
        first; returns where the entry went."""
        ...

    def delete(self, handle: Handle) -> None:
        """Remove the entry from the inbox (gone already: nothing to do)."""
        ...


class BoundSource:
    """A handle and its storage, as readers open it."""

    def __init__(self, storage: Storage, handle: Handle):
        self.storage = storage
        self.handle = handle

    @property
    def name(self) -> str:
        return self.handle.name

    def open_stream(self) -> pa.NativeFile:
        """A new sequential stream of the entry."""
        return self.storage.open_stream(self.handle)

    def open_random(self) -> pa.NativeFile:
        """A new random-access file of the entry."""
        return self.storage.open_random(self.handle)

    def __repr__(self) -> str:
        return f"BoundSource({self.storage.describe()!r}, {self.handle.name!r})"
