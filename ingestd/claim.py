"""Claim a file: checksum it off the event loop and register the version in the manifest."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd.db.connection import Connection
from ingestd.db.manifest import Claim, FileVersion, Manifest
from ingestd.model import ManifestStatus
from ingestd.names import manifest_name
from ingestd.settings import Contract
from ingestd.storage import Handle, Version, resolve
from ingestd.storage.local import open_regular, sha256_of

# A local file this small is hashed on the event loop: the hop to a thread and back cost
# ~0.1 ms of CPU a file (2,000 x 10 KB: 140 us a file through a thread, 35 us here), more
# than reading and hashing it. Its stat is asked on the loop already (identity_now); the
# read is bounded, so a file that grew meanwhile blocks the loop for no more than this.
INLINE_HASH_BYTES = 64 << 10


@dataclass(frozen=True)
class Job:
    """A claimed file waiting for a worker."""

    path: Handle  # a local file's Path, or a store's handle (ingestd.storage)
    name: PurePosixPath
    contract: Contract
    version: FileVersion
    claim: Claim
    identity: Version


@dataclass(frozen=True)
class Skip:
    """A file not to load now: loaded already (or skipped as a duplicate), and/or held by
    another live process."""

    loaded: bool
    held_elsewhere: bool


def sha256_file(path: Path) -> tuple[bytes, int]:
    """Streaming sha256 and size of a local file (blocking: run it in a thread). Never
    follows a symlink swapped in after discovery, never blocks on a FIFO."""
    return sha256_of(open_regular(path))


def sha256_entry(handle: Handle) -> tuple[bytes, int]:
    """Streaming sha256 and size of an entry's bytes, from its storage (blocking)."""
    return sha256_of(resolve(handle).open_stream(handle))


def sha256_small(path: Path, limit: int) -> tuple[bytes, int] | None:
    """sha256 and size of a local file of at most `limit` bytes, read at once; None if it
    has more (then sha256_entry, in a thread). Opens it as sha256_entry does
    (open_regular: no symlink followed, no FIFO waited on)."""
    with open_regular(path) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        return None
    return hashlib.sha256(data).digest(), len(data)


async def file_version(path: Handle, name: PurePosixPath, size: int | None = None) -> FileVersion:
    """Checksum an entry without blocking the event loop for long (a local file the
    discovery saw at `size` <= INLINE_HASH_BYTES is hashed here, any other in a thread);
    the version carries the name's manifest form (names.manifest_name), which a text
    column can hold."""
    found: tuple[bytes, int] | None = None
    if isinstance(path, Path) and size is not None and size <= INLINE_HASH_BYTES:
        found = sha256_small(path, INLINE_HASH_BYTES)
    if found is None:
        found = await asyncio.to_thread(sha256_entry, path)
    checksum, read = found
    return FileVersion(manifest_name(str(name)), checksum, read)


async def claim_file(
    conn: Connection,
    manifest: Manifest,
    *,
    path: Handle,
    name: PurePosixPath,
    contract: Contract,
    version: FileVersion,
    identity: Version,
    run_id: str,
    resume: bool,
) -> Job | Skip:
    """A Job for this file version, or why not: loaded already, or another instance has it.

    The claim comes first (one statement for a new file, the common case); only a claim
    refused asks the manifest why.
    """
    label = f"{contract.schema}.{contract.table}" if contract.schema else contract.table
    claim = await manifest.claim(conn, version, label, run_id, resume=resume)
    if claim is not None:
        return Job(path, name, contract, version, claim, identity)
    seen = await manifest.lookup(conn, version, label)
    loaded = seen is not None and seen.status in (ManifestStatus.SUCCESS, ManifestStatus.SKIPPED)
    return Skip(loaded=loaded, held_elsewhere=seen is None or seen.leased)
