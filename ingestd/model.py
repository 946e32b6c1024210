"""The types the steps of a load share: statuses, how a file ended, and a run's results."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

# The manifest's statuses belong to the database layer (its table checks them); shared here.
from ingestd.db.sql import ManifestStatus as ManifestStatus

if TYPE_CHECKING:
    from ingestd import archive
    from ingestd.db.connection import Connection
    from ingestd.db.manifest import Manifest
    from ingestd.metrics import Metrics
    from ingestd.progress import Progress
    from ingestd.settings import Settings
    from ingestd.upkeep import Upkeep


class Outcome(StrEnum):
    """How one file ended in this run (FileResult.status): the summary and exit status."""

    SUCCESS = "success"  # loaded (or its rows all committed) and recorded
    SKIPPED = "skipped"  # loaded already, or a duplicate of loaded bytes
    FAILED = "failed"  # permanent: recorded failed, moved to failed/
    RETRYING = "retrying"  # transient and out of retries: stays in the inbox
    INTERRUPTED = "interrupted"  # a stop, or the manifest gone: stays pending, resumes
    HELD = "held"  # --once: another live instance has it (a lease), not loaded here
    HANDED_OVER = "handed_over"  # another instance took it over (our lease ran out)
    INTERNAL_ERROR = "internal_error"  # a bug in ingestd: stays pending in the inbox


# Outcomes that make --once exit 1: the file did not load and is not someone else's (an
# interrupted one resumes on the next run, but this run did not complete).
UNFINISHED = frozenset(
    {Outcome.FAILED, Outcome.RETRYING, Outcome.INTERNAL_ERROR, Outcome.INTERRUPTED}
)


@dataclass(frozen=True)
class FileResult:
    """How one file ended, for the summary and the exit status."""

    name: str
    table: str
    status: Outcome
    rows: int = 0
    error: str | None = None
    row: int | None = None
    seconds: float = 0.0
    file_type: str = ""
    attempts: int = 1
    stay: bool = False  # leave the file in the inbox (transient failure, file changed)
    archive: archive.Pending | None = None  # its move out of the inbox failed: retried
    rows_before: int = 0  # of `rows`, committed by an earlier run (a resumed file)

    @property
    def rows_this_run(self) -> int:
        """The rows this run committed: a resumed file's earlier rows are not this run's."""
        return max(0, self.rows - self.rows_before)


@dataclass
class Results:
    """Outcomes of a run, appended by workers and the scanner (single event loop: no lock)."""

    files: list[FileResult] = field(default_factory=list)
    on_result: Callable[[FileResult], None] | None = None

    def add(self, result: FileResult) -> None:
        """Record one file's outcome and tell whoever listens (scanner, progress line)."""
        self.files.append(result)
        if self.on_result is not None:
            self.on_result(result)


def internal_error_text(exc: BaseException) -> str:
    """The summary's reason for a file that met a bug: what happened and what to do."""
    return (
        f"internal error (a bug in ingestd): {type(exc).__name__}: {exc}; the file stays "
        "pending in the inbox; the internal_error log line has the traceback to report"
    )


class Helpable(Protocol):
    """A file several workers load at once (split.SplitLoad, relay.Relay)."""

    async def help(self, conn: Connection, worker_id: str) -> bool:
        """Load parts of it on this connection; False if the connection may be unusable."""
        ...


@dataclass(frozen=True)
class Help:
    """A work-queue item: take part in loading this file (segments of a split file, or
    turns at the batches of a relayed one), if any are left."""

    split: Helpable


@dataclass(frozen=True)
class LoadContext:
    """What every worker shares: read-only settings and the run's books."""

    settings: Settings
    manifest: Manifest
    metrics: Metrics
    run_id: str
    server_version: int
    stopping: asyncio.Event  # the service's one stop (Service.stopping)
    progress: Progress | None = None  # --once on a terminal
    # Asks idle workers to help with a split file (False: the queue is full, nobody is idle).
    offer: Callable[[Help], bool] | None = None
    upkeep: Upkeep | None = None  # dead tuples after each file, ANALYZE after large upserts
