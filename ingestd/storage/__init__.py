"""Landing areas: the storage an inbox setting names (a local folder or an object-store
URL) and the storage behind a handle. See base.py for the interface."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ingestd.exceptions import UsageError
from ingestd.storage.base import (
    BoundSource,
    Handle,
    Source,
    Storage,
    StorageUnavailableError,
    StoreHandle,
    Version,
)
from ingestd.storage.local import LocalStorage

if TYPE_CHECKING:
    import pyarrow as pa

    from ingestd.settings import Settings

__all__ = [
    "BoundSource",
    "Handle",
    "LocalStorage",
    "Openable",
    "Source",
    "Storage",
    "StorageUnavailableError",
    "StoreHandle",
    "Version",
    "is_url",
    "open_bytes",
    "open_ranged",
    "resolve",
    "source_of",
    "storage_for",
]

# Whatever a reader can open: a local path, a store's handle, or a source (a zip member).
Openable = Handle | Source

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Paths have no area: what they are asked (open, identity) needs none. Their moves go to
# the folder the archive names (archive.Pending.dest_dir).
_PATHS = LocalStorage(None, None, None)


def is_url(location: object) -> bool:
    """True for `s3://bucket/prefix/` and other URLs, False for a local path."""
    return isinstance(location, str) and _URL.match(location) is not None


def resolve(handle: Handle) -> Storage:
    """The storage an entry's handle belongs to: a local path is a local file."""
    if isinstance(handle, Path):
        return _PATHS
    if isinstance(handle, StoreHandle):
        return handle.storage
    raise TypeError(f"not an entry handle: {type(handle).__name__}")


def source_of(entry: Handle | Source) -> Source:
    """What a reader opens for a handle; a source (BoundSource, a zip member) passes through."""
    if isinstance(entry, Path):
        return BoundSource(_PATHS, entry)
    if hasattr(entry, "open_stream") and hasattr(entry, "open_random"):
        return cast("Source", entry)
    return BoundSource(resolve(entry), entry)


def open_bytes(entry: Handle | Source) -> pa.NativeFile:
    """A new sequential stream of an entry (a local path, a store's handle, a source)."""
    return source_of(entry).open_stream()


def open_ranged(entry: Handle | Source) -> pa.NativeFile:
    """A new random-access file of an entry: size(), seek(), read_at()."""
    return source_of(entry).open_random()


def storage_for(settings: Settings) -> Storage:
    """The landing area the settings name: the inbox (with done/ and failed/) as a local
    folder, or an object store for a URL (ingestd.storage.s3). --files alone: local."""
    inbox: object = settings.inbox
    if is_url(inbox) or is_url(str(inbox)):
        return _object_store(settings)
    done, failed = settings.done_path, settings.failed_path
    return LocalStorage(
        # --files: each file's manifest name is its absolute path, inbox or not.
        inbox if isinstance(inbox, Path) and not settings.files else None,
        done if isinstance(done, Path) else None,
        failed if isinstance(failed, Path) else None,
    )


def _object_store(settings: Settings) -> Storage:
    # Imported on demand: only object-store users need the module and its client library.
    try:
        s3 = importlib.import_module("ingestd.storage.s3")
    except ImportError as exc:
        raise UsageError(
            f"inbox {settings.inbox}: object storage is not available in this build "
            f"({exc.msg}); use a local folder"
        ) from None
    return cast("Storage", s3.from_settings(settings))
