"""Settings and contracts: the frozen dataclasses every module receives."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from ingestd.exceptions import UsageError

Mode = Literal["upsert", "append", "merge"]
FileType = Literal["csv", "parquet", "auto"]
MODES: tuple[Mode, ...] = ("upsert", "append", "merge")
FILE_TYPES: tuple[FileType, ...] = ("csv", "parquet", "auto")
DELIMITERS = {",": ",", ";": ";", "|": "|", "\t": "\t", "tab": "\t", "\\t": "\t"}

DEFAULT_CHUNK_SIZE = 50_000
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_RETRIES = 3
DEFAULT_METRICS_ADDR = "127.0.0.1:9108"
DEFAULT_MANIFEST = "ingestion_manifest"
DEFAULT_STATE_DIR = ".ingestd"
DEFAULT_LOCK_TIMEOUT_S = 30.0
NewVersion = Literal["refuse", "append"]
DuplicateContent = Literal["skip", "load"]
NEW_VERSION_CHOICES: tuple[NewVersion, ...] = ("refuse", "append")
DUPLICATE_CONTENT_CHOICES: tuple[DuplicateContent, ...] = ("skip", "load")


@dataclass(frozen=True)
class CsvOptions:
    """How a contract's CSV files are spelled."""

    delimiter: str = ","
    quote: str = '"'
    encoding: str = "utf-8"
    header: bool = True


@dataclass(frozen=True)
class BadRows:
    """How many rows of a file may be set aside (to ingestion_rejects) before it fails."""

    count: int = 0
    ratio: float | None = None  # e.g. 0.01 for "1%": of the rows read so far

    def allowed(self, rows_read: int) -> int:
        """Rejects allowed once `rows_read` rows of the file have been read."""
        if self.ratio is not None:
            return int(self.ratio * rows_read)
        return self.count

    def __str__(self) -> str:
        return f"{self.ratio * 100:g}%" if self.ratio is not None else str(self.count)


def parse_bad_rows(value: object) -> BadRows:
    """`N` or `N%` (from a flag or the config file)."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            ratio = float(text[:-1]) / 100
            if not 0 <= ratio <= 1:
                raise ValueError(text)
            return BadRows(ratio=ratio)
        count = int(text)
        if count < 0:
            raise ValueError(text)
        return BadRows(count=count)
    except ValueError:
        raise UsageError(
            f"max bad rows must be a whole number or a percentage such as 1%, not {text!r}"
        ) from None


@dataclass(frozen=True)
class Contract:
    """Which files go to which table, and how."""

    name: str
    pattern: str
    table: str
    schema: str | None = None
    pk: tuple[str, ...] = ()
    headers: tuple[str, ...] | None = None
    types: tuple[tuple[str, str], ...] = ()
    file_type: FileType = "auto"
    mode: Mode = "upsert"
    csv: CsvOptions = field(default_factory=CsvOptions)
    preserve_types: bool = False
    tolerant: bool = False
    tolerant_mode: Literal["null", "empty"] = "null"
    max_bad_rows: BadRows = field(default_factory=BadRows)

    def matches(self, relative: PurePosixPath) -> bool:
        """True if the file (path relative to the inbox) falls under this contract."""
        if "/" not in self.pattern:
            return fnmatch.fnmatchcase(relative.name, self.pattern)
        # Segment by segment, so `*` never crosses a folder: sales/*.csv is not sales/a/b.csv.
        parts = self.pattern.split("/")
        return len(parts) == len(relative.parts) and all(
            fnmatch.fnmatchcase(name, part)
            for name, part in zip(relative.parts, parts, strict=True)
        )


@dataclass(frozen=True)
class Settings:
    """Everything a run needs, validated; built once by `resolve`."""

    contracts: tuple[Contract, ...]
    dsn: str | None = None
    inbox: Path | None = None
    files: tuple[Path, ...] = ()
    once: bool = False
    config_path: Path | None = None
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    done_dir: Path | None = None
    failed_dir: Path | None = None
    keep_files: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    max_retries: int = DEFAULT_MAX_RETRIES
    resume: bool = True
    dry_run: bool = False
    metrics_addr: tuple[str, int] | None = ("127.0.0.1", 9108)
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    manifest_table: str = DEFAULT_MANIFEST
    manifest_schema: str | None = None
    connect_timeout_s: float = 10.0
    statement_timeout_s: float = 600.0
    settle_s: float = 0.2
    shutdown_grace_s: float = 30.0
    queue_size: int = 0  # 0: twice the concurrency
    memory_limit_mb: int = 256  # one worker's batches in flight; a CSV row may use half
    instance_id: str = "ingestd"  # shown in the manifest (owner) and every log line
    lease_s: float = 30.0  # a claim another instance may take over once it runs out
    rescan_s: float = 30.0  # daemon: full rescans of the inbox besides the watcher
    raw_csv: bool = True  # CSV files that need no change go to COPY as their own bytes
    split_mb: float = 32.0  # appends of raw CSV files this large are split across workers
    retry_base_s: float = 1.0
    retry_cap_s: float = 30.0
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S  # a wait for a lock held by someone else
    # Append mode, a new version of a file whose earlier version committed rows:
    # refuse (it fails, naming the rows and the clean-up) or append on top of them.
    on_new_version: NewVersion = "refuse"
    # Append mode, the same bytes under another name: skip (as a duplicate) or load again.
    on_duplicate_content: DuplicateContent = "skip"

    def contract_for(self, relative: PurePosixPath) -> Contract | None:
        """The first contract whose pattern matches, or None."""
        return next((c for c in self.contracts if c.matches(relative)), None)

    @property
    def memory_limit_bytes(self) -> int:
        return self.memory_limit_mb << 20

    @property
    def split_bytes(self) -> int:
        """Segment size below which a file is not split (0: never split)."""
        return int(self.split_mb * (1 << 20))

    @property
    def done_path(self) -> Path | None:
        """Where loaded files go: done_dir, else done/ beside the inbox (None: not moved)."""
        return beside_inbox(self.done_dir, self.inbox, "done")

    @property
    def failed_path(self) -> Path | None:
        """Where failed files go: failed_dir, else failed/ beside the inbox."""
        return beside_inbox(self.failed_dir, self.inbox, "failed")

    @property
    def effective_queue_size(self) -> int:
        """Bound of the work queue: enough to keep workers fed, small enough to stay flat."""
        return self.queue_size or 2 * self.concurrency


def beside_inbox(configured: Path | None, inbox: Path | None, kind: str) -> Path | None:
    """A done/ or failed/ directory: as configured, else `kind` beside the inbox."""
    if configured is not None or inbox is None:
        return configured
    return inbox.parent / kind
