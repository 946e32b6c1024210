"""Discover candidate files: what the inbox lists that is not still being written.

The listing belongs to the storage (ingestd/storage/); these names stay importable here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ingestd.storage import Handle, Version, resolve
from ingestd.storage import local as _local
from ingestd.storage.base import IGNORED_SUFFIXES, is_ignored
from ingestd.storage.local import relative_name, scan
from ingestd.storage.local_settle import Settler, being_written

__all__ = [
    "IGNORED_SUFFIXES",
    "Settler",
    "being_written",
    "identity",
    "identity_now",
    "is_ignored",
    "relative_name",
    "scan",
]


def identity(handle: Handle) -> Version | None:
    """An entry's version now ((size, mtime_ns, inode) of a regular local file), or None if it is
    gone or not a regular entry; a store's handle asks its store."""
    if isinstance(handle, Path):
        return _local.identity(handle)
    return resolve(handle).identity(handle)


async def identity_now(handle: Handle) -> Version | None:
    """identity() from the event loop: a local file's is one stat, asked here; a store's
    may be a request, asked in a thread so that the loop never waits on the network."""
    if isinstance(handle, Path):
        return _local.identity(handle)
    return await asyncio.to_thread(identity, handle)
