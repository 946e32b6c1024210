"""A `.zip` archive in the inbox is a folder: each member is an entry of its own.

A member is matched and recorded in the manifest as `ARCHIVE.zip/MEMBER`, hashed and read
as a stream decompressed from the archive (zipfile over the storage's random-access file:
never unpacked to disk, never inflated whole in memory). Its handle names a `ZipArchive`
as its storage, so the pipeline treats it like any stored entry; moving a member moves
nothing but tells the archive, which moves itself once every expected member has ended
(done/ when all loaded or skipped, failed/ with a sidecar naming the members that failed).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import lzma
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ingestd.exceptions import FileError
from ingestd.names import manifest_name
from ingestd.storage.base import Handle, Version, is_ignored

if TYPE_CHECKING:
    from ingestd.storage.base import Storage

ZIP_SUFFIX = ".zip"
_ENCRYPTED = 0x1
# Moves the archive itself (blocking): to done/ (no report) or failed/ with the sidecar;
# given by the scanner, which knows the destinations (archive.Pending).
Mover = Callable[[str, "dict[str, Any] | None"], "Path | str"]
# What zipfile raises for bytes it cannot inflate or check: the member's fault, not ours.
_BROKEN = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError)
# What macOS's Finder puts into every zip it makes: resource forks, never data.
_MACOS_FOLDER = "__MACOSX"
log = logging.getLogger(__name__)
# How many times a central directory was parsed (tests: once per archive version, not
# once per member).
directory_reads = 0


def ignored_member(member: str) -> bool:
    """True for a member the inbox would not pick up as a file: an ignored name (dot-names,
    *.tmp, *.part, *.partial, sidecars) in any part of its path, or under __MACOSX/."""
    parts = PurePosixPath(member).parts
    # "/" and ".." are only names here (nothing is written under them): such members load.
    named = [part for part in parts if part not in ("/", ".", "..")]
    return any(part == _MACOS_FOLDER or is_ignored(part) for part in named)


def is_archive(handle: object) -> bool:
    """True for an inbox entry named *.zip (a member named so is read as its contract says)."""
    name = getattr(handle, "name", "")
    return (
        isinstance(name, str)
        and name.lower().endswith(ZIP_SUFFIX)
        and not isinstance(handle, ZipMember)
    )


def is_member(entry: object) -> bool:
    """True for a zip member: a stream only (never raw COPY, never split)."""
    return isinstance(entry, ZipMember)


@dataclass(frozen=True)
class ZipMember:
    """One member of an archive, as its central directory listed it."""

    archive: ZipArchive = field(compare=True)
    member: str
    size: int  # uncompressed, as declared
    crc: int

    @property
    def name(self) -> str:
        return PurePosixPath(self.member).name

    @property
    def storage(self) -> ZipArchive:
        return self.archive


class _Archive:
    """The archive's random-access file as zipfile wants it: a seek before the start is an
    OSError (pyarrow raises ValueError), which zipfile takes as "no zip64 record"."""

    def __init__(self, raw: pa.NativeFile):
        self._raw = raw

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return int(self._raw.seek(offset, whence))
        except ValueError as exc:
            raise OSError(0, str(exc)) from None

    def tell(self) -> int:
        return int(self._raw.tell())

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._raw.read(None if size < 0 else size)
        return data

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _KnownZip(zipfile.ZipFile):
    """A ZipFile over a directory read before: opening one member of an archive of many
    must not parse its whole central directory again (that made a member's cost grow
    with the number of members). zipfile's own checks on the member's local header,
    flags and CRC all still apply."""

    def __init__(self, raw: _Archive, infos: list[zipfile.ZipInfo]):
        self._known = infos
        super().__init__(raw)

    def _RealGetContents(self) -> None:
        for info in self._known:
            self.filelist.append(info)
            self.NameToInfo[info.filename] = info


class _MemberStream:
    """A member's decompressed bytes as a file-like object for pa.PythonFile; inflate and
    CRC errors become one readable OSError."""

    def __init__(self, archive: ZipArchive, member: ZipMember):
        self._label = f"{archive.name}/{member.member}"
        infos = archive.directory()
        self._raw = archive.open_archive()
        try:
            self._zip = _KnownZip(self._raw, infos)
            info = self._zip.NameToInfo.get(member.member)
            if info is None:
                # The archive was replaced by one without this member: gone, as a file is.
                raise FileNotFoundError(0, f"{self._label} is no longer in its archive")
            if info.flag_bits & _ENCRYPTED:
                raise OSError(0, encrypted_reason(self._label))
            self._file = self._zip.open(info)
        except _BROKEN as exc:
            self.close()
            raise OSError(0, broken_reason(self._label, exc)) from None
        except BaseException:
            self.close()
            raise
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        try:
            return self._file.read(size)
        except _BROKEN as exc:
            raise OSError(0, broken_reason(self._label, exc)) from None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        for part in ("_file", "_zip", "_raw"):
            closing = getattr(self, part, None)
            if closing is not None:
                closing.close()


def encrypted_reason(label: str) -> str:
    return (
        f"{label} is an encrypted zip member, which ingestd cannot read: "
        "zip it again without a password"
    )


def unmatched_reason(label: str, patterns: list[str], empty: bool) -> str:
    """Why an archive none of whose members any contract takes fails (dry run and load)."""
    if empty:
        return f"{label} holds no files: nothing to load"
    return (
        f"no contract matches any member of {label} (patterns: {', '.join(patterns)}); add a "
        "contract with a pattern like ARCHIVE.zip/MEMBER"
    )


def broken_reason(label: str, exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return (
            f"{label} uses a zip compression method ingestd cannot read ({exc}): "
            "zip it again with deflate (zip's default)"
        )
    return f"{label} is corrupt in its zip archive ({exc or type(exc).__name__}); send it again"


class ZipArchive:
    """The members of one archive entry, as offered once, and their ends.

    `expect()` names the members that were offered (matched by a contract); when each of
    them has been moved (to_done/to_failed: loaded, skipped or failed), the archive moves.
    A member that never ends here (held by another instance, interrupted, keep_files)
    leaves the archive in the inbox; a later offer of it skips what is loaded and moves it.
    """

    settles = False

    def __init__(
        self,
        storage: Storage,
        handle: Handle,
        name: PurePosixPath,
        version: Version,
        mover: Mover,
        run_id: str = "",
    ):
        self.outer = storage
        self.handle = handle
        self.name = name
        self.version = version
        self._mover, self._run_id = mover, run_id
        self._lock = threading.Lock()
        self._expected: set[str] = set()
        self._ended: dict[str, str | None] = {}  # member -> why it failed (None: done)
        self._moved: str | None = None
        # The central directory as read at the archive's version (identity) then.
        self._directory: tuple[Version, list[zipfile.ZipInfo]] | None = None
        self._directory_lock = threading.Lock()

    def directory(self) -> list[zipfile.ZipInfo]:
        """The archive's central directory, parsed once per version of the archive: a
        changed archive (another identity) is read again. Raises zipfile/OSError errors."""
        global directory_reads
        now = self.outer.identity(self.handle)
        with self._directory_lock:
            if now is not None and self._directory is not None and self._directory[0] == now:
                return self._directory[1]
            with self.open_archive() as raw, zipfile.ZipFile(raw) as zf:
                infos = zf.infolist()
            directory_reads += 1
            if now is not None:
                self._directory = (now, infos)
            return infos

    def open_archive(self) -> _Archive:
        return _Archive(self.outer.open_random(self.handle))

    def members(self) -> list[ZipMember]:
        """Its file members in name order (folders left out); FileError for a corrupt archive."""
        try:
            infos = [i for i in self.directory() if not i.is_dir()]
        except (zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise FileError(
                f"{self.name} is not a readable zip archive ({exc}): send it again"
            ) from None
        # A name twice in one archive: zipfile reads the last entry, so that one is the member.
        last = {i.filename: i for i in infos}
        for member in [m for m in last if ignored_member(m)]:
            # As the inbox skips such files: never matched, never failing the archive.
            log.debug("zip_member_ignored", extra={"member": member, "status": "ignored"})
            del last[member]
        found = [ZipMember(self, i.filename, i.file_size, i.CRC) for i in last.values()]
        return sorted(found, key=lambda m: m.member)

    @property
    def moved(self) -> bool:
        """True once the archive itself has left the inbox (or was meant to: keep_files)."""
        return self._moved is not None

    def ended(self, member: ZipMember) -> bool:
        """True once this member was moved (its manifest row final: loaded, skipped, failed)."""
        with self._lock:
            return member.member in self._ended

    def expect(self, members: list[ZipMember]) -> None:
        with self._lock:
            self._expected = {m.member for m in members}

    # --- the Storage protocol, for members ---------------------------------------------

    def describe(self) -> str:
        return f"{self.outer.describe()}/{self.name}"

    def problem(self) -> str | None:
        return None

    def entries(
        self,
        on_refused: Callable[[Handle, str], None] | None = None,
        on_unreadable: Callable[[Handle, str], None] | None = None,
    ) -> Iterator[Handle]:
        yield from self.members()

    def name_of(self, handle: Handle) -> PurePosixPath:
        assert isinstance(handle, ZipMember)  # noqa: S101 - only members come here
        # A member's name is only a name (nothing is written under it): "/x" stays inside.
        return self.name / handle.member.lstrip("/")

    def identity(self, handle: Handle) -> Version | None:
        # The archive unchanged means the member is: no need to read its directory again.
        assert isinstance(handle, ZipMember)  # noqa: S101 - only members come here
        outer = self.outer.identity(self.handle)
        if outer is None:
            return None
        return (handle.size, handle.crc, *outer)

    def open_stream(self, handle: Handle) -> pa.NativeFile:
        assert isinstance(handle, ZipMember)  # noqa: S101 - only members come here
        return pa.PythonFile(_MemberStream(self, handle), mode="r")

    def open_random(self, handle: Handle) -> pa.NativeFile:
        # Only Parquet asks (CSV and NDJSON members are streams): its footer needs seeking.
        raise OSError(
            0,
            f"{self.name_of(handle)} is a zip member and can only be read as a stream "
            "(CSV, NDJSON); a Parquet file needs random access: put it in the inbox unzipped",
        )

    def to_done(self, handle: Handle, name: PurePosixPath, today: dt.date | None = None) -> str:
        return self._ended_as(handle, None)

    def to_failed(self, handle: Handle, name: PurePosixPath, sidecar: bytes) -> str:
        try:
            reason = str(json.loads(sidecar).get("reason") or "failed")
        except ValueError:
            reason = "failed"
        return self._ended_as(handle, reason)

    def delete(self, handle: Handle) -> None:
        return None  # a member leaves the inbox with its archive

    # --- the archive's own move ---------------------------------------------------------

    def _ended_as(self, handle: Handle, reason: str | None) -> str:
        """Blocking (the move's thread). Where the member went: with its archive, which
        moves when this was the last expected member to end; a failed archive move raises
        here, so the member's move is retried (and with it the archive's)."""
        assert isinstance(handle, ZipMember)  # noqa: S101 - only members come here
        with self._lock:
            self._ended[handle.member] = reason
            if not self._expected <= set(self._ended):
                return f"with {self.name} (members still loading)"
            if self._moved is None:
                self._moved = str(self._move())
            return self._moved

    def _move(self) -> Path | str:
        failed = {m: r for m, r in sorted(self._ended.items()) if r is not None}
        if not failed:
            return self._mover("done", None)
        return self._mover("failed", self.report(failed))

    def report(self, failed: dict[str, str]) -> dict[str, Any]:
        """The archive's sidecar (as archive.failure_report's): which members failed, why."""
        reason = f"{len(failed)} of {len(self._expected)} members failed: " + "; ".join(
            f"{m}: {r}" for m, r in failed.items()
        )
        return {
            "file": manifest_name(str(self.name)),
            "reason": reason,
            "row": None,
            "run_id": self._run_id,
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "attempts": 1,
            "members_failed": [{"member": m, "reason": r} for m, r in failed.items()],
        }
