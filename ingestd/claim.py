"""Claim a file: checksum it off the event loop and register the version in the manifest."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingestd.db.connection import Connection
from ingestd.db.manifest import Claim, FileVersion, Manifest
from ingestd.model import ManifestStatus
from ingestd.names import manifest_name
from ingestd.settings import Contract

_HASH_PIECE_BYTES = 1 << 20


@dataclass(frozen=True)
class Job:
    """A claimed file waiting for a worker."""

    path: Path
    name: PurePosixPath
    contract: Contract
    version: FileVersion
    claim: Claim
    identity: tuple[int, int]


@dataclass(frozen=True)
class Skip:
    """A file not to load now: loaded already (or skipped as a duplicate), and/or held by
    another live process."""

    loaded: bool
    held_elsewhere: bool


def sha256_file(path: Path) -> tuple[bytes, int]:
    """Streaming sha256 and size of a file (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    size = 0
    # Never follow a symlink swapped in after discovery, never block on a FIFO.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with os.fdopen(fd, "rb") as fh:
        while piece := fh.read(_HASH_PIECE_BYTES):
            digest.update(piece)
            size += len(piece)
    return digest.digest(), size


async def file_version(path: Path, name: PurePosixPath) -> FileVersion:
    """Checksum a file without blocking the event loop; the version carries the name's
    manifest form (names.manifest_name), which a text column can hold."""
    checksum, size = await asyncio.to_thread(sha256_file, path)
    return FileVersion(manifest_name(str(name)), checksum, size)


async def claim_file(
    conn: Connection,
    manifest: Manifest,
    *,
    path: Path,
    name: PurePosixPath,
    contract: Contract,
    version: FileVersion,
    identity: tuple[int, int],
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
