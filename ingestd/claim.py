"""Claim a file: checksum it off the event loop and register the version in the manifest."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd.db.connection import Connection
from ingestd.db.manifest import Claim, FileVersion, Manifest
from ingestd.model import ManifestStatus
from ingestd.names import manifest_name
from ingestd.settings import Contract
from ingestd.storage import Handle, Version, resolve
from ingestd.storage.local import open_regular, sha256_of


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


async def file_version(path: Handle, name: PurePosixPath) -> FileVersion:
    """Checksum an entry without blocking the event loop; the version carries the name's
    manifest form (names.manifest_name), which a text column can hold."""
    checksum, size = await asyncio.to_thread(sha256_entry, path)
    return FileVersion(manifest_name(str(name)), checksum, size)


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
