"""Settings and contracts: the frozen dataclasses every module receives.

Each setting's default, help text and checks are written once, on its field (`key`);
config.resolve, the --help text, the README's configuration table and the example config
are read from or checked against these fields (tests/unit/test_settings_reference.py).
"""

from __future__ import annotations

import fnmatch
import socket
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from ingestd.exceptions import UsageError

Mode = Literal["upsert", "append", "merge"]
FileType = Literal["csv", "ndjson", "parquet", "auto"]
SchemaEvolution = Literal["fail", "add", "ignore", "rescue"]
ColumnNames = Literal["strict", "normalize"]
MODES: tuple[Mode, ...] = ("upsert", "append", "merge")
FILE_TYPES: tuple[FileType, ...] = ("csv", "ndjson", "parquet", "auto")
DELIMITERS = {",": ",", ";": ";", "|": "|", "\t": "\t", "tab": "\t", "\\t": "\t"}

# Defaults other modules need without a Settings at hand (status, the manifest).
DEFAULT_METRICS_ADDR = "127.0.0.1:9108"
DEFAULT_MANIFEST = "ingestion_manifest"
DEFAULT_STATE_DIR = ".ingestd"
NewVersion = Literal["refuse", "append"]
DuplicateContent = Literal["skip", "load"]
NEW_VERSION_CHOICES: tuple[NewVersion, ...] = ("refuse", "append")
DUPLICATE_CONTENT_CHOICES: tuple[DuplicateContent, ...] = ("skip", "load")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV_PREFIX = "INGESTD_"
DAY_S = 86_400.0
# PostgreSQL's statement_timeout and lock_timeout are int milliseconds: 2147483647 at most.
PG_TIMEOUT_MAX_S = 2_147_483.0
MAX_CONCURRENCY = 256  # one connection each: far beyond what a server's max_connections allows


@dataclass(frozen=True)
class Key:
    """How a setting is given and documented (the metadata of its field)."""

    help: str
    minimum: float | None = None  # numbers: the smallest value allowed
    maximum: float | None = None  # numbers: the largest (a value beyond breaks something)
    limit: str = ""  # why the maximum, as the message says it: "a day", "PostgreSQL's limit"
    shown: str | None = None  # the default as a user reads it, when the field holds a stand-in
    metavar: str | None = None
    flag: bool = True  # --key-name on the command line
    env: bool = True  # INGESTD_KEY_NAME in the environment
    file: bool = True  # key_name in the config file


def key(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, **how: Any) -> Any:
    """A dataclass field that is a setting: its one default, help text and checks."""
    meta = {"key": Key(help, **how)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def setting_keys(cls: type) -> list[tuple[Field[Any], Key]]:
    """The fields of `cls` that are settings, in declaration order, with their metadata."""
    return [(f, f.metadata["key"]) for f in fields(cls) if "key" in f.metadata]


def default_of(f: Field[Any]) -> Any:
    """A field's default value (calling its factory if it has one)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TypeError(f"{f.name} has no default")  # required: a contract's name and table


def field_default(cls: type, name: str) -> Any:
    """The default of setting `name` of `cls`, for code that runs without a Settings."""
    return default_of(next(f for f in fields(cls) if f.name == name))


def shown_default(f: Field[Any]) -> str:
    """A setting's default as --help and the README show it."""
    meta: Key = f.metadata["key"]
    if meta.shown is not None:
        return meta.shown
    if f.default is MISSING and f.default_factory is MISSING:
        return ""  # required (a contract's table)
    value = default_of(f)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"  # a HOST:PORT
    return "" if value is None else str(value)


def env_name(name: str) -> str:
    """The environment variable of a setting: INGESTD_ and its key in upper case."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """The command-line flag of a setting."""
    return "--" + name.replace("_", "-")


def parse_metrics_addr(value: str) -> tuple[str, int] | None:
    """Parse HOST:PORT (or `off`) for the metrics endpoint."""
    if value.lower() in ("off", "none", "false", ""):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise UsageError(f"metrics address {value!r} must be HOST:PORT or off")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _host_name() -> str:
    return socket.gethostname() or "ingestd"


@dataclass(frozen=True)
class CsvOptions:
    """How a contract's CSV files are spelled (`csv.KEY` in the config file)."""

    delimiter: str = key(",", "CSV delimiter: , ; | or tab", metavar="C")
    quote: str = key('"', "CSV quote character", metavar="C")
    encoding: str = key(
        "utf-8",
        "CSV encoding, any Python codec name (e.g. latin-1); a UTF-8 BOM is skipped",
        metavar="E",
    )
    header: bool = key(True, "the first row names the columns")


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


_PER_CONTRACT = {"flag": False, "env": False}  # names one contract: no override for all


@dataclass(frozen=True)
class Contract:
    """Which files go to which table, and how (a `[[contracts]]` entry, or the flags)."""

    name: str = key(
        MISSING, "the contract's name (default: its table)", shown="table", **_PER_CONTRACT
    )
    table: str = key(MISSING, "target table", metavar="T")
    pattern: str = key(
        "*",
        "glob of the files it takes: by name, or by path in the inbox when it holds a /",
        metavar="GLOB",
    )
    schema: str | None = key(None, "target schema", shown="first on search_path", metavar="S")
    pk: tuple[str, ...] = key(
        (),
        "primary key column(s), comma-separated (needed by upsert and merge)",
        shown="",
        metavar="COL[,COL]",
    )
    headers: tuple[str, ...] | None = key(
        None,
        "columns to load, comma-separated (positional with --no-header)",
        shown="the header row",
        metavar="a,b,c",
    )
    types: tuple[tuple[str, str], ...] = key(
        (),
        "column types for tables ingestd creates, e.g. id:bigint,price:numeric(12,2)",
        shown="text",
        metavar="COL:TYPE,...",
    )
    file_type: FileType = key(
        "auto",
        "csv, ndjson, parquet, or auto: by suffix (.csv .tsv .txt .jsonl .ndjson, each also "
        "with .gz .zst .bz2 .xz .lz4; .parquet .pq .parq)",
    )
    mode: Mode = key("upsert", "upsert, append or merge (merge needs PostgreSQL 15+)")
    csv: CsvOptions = field(default_factory=CsvOptions)
    preserve_types: bool = key(False, "Parquet types become column types")
    tolerant: bool = key(False, "fill columns the file lacks instead of failing")
    tolerant_mode: Literal["null", "empty"] = key(
        "null", "what fills a missing column: null or empty"
    )
    schema_evolution: SchemaEvolution = key(
        "fail",
        "a file column the table lacks: fail the file, add it (ALTER TABLE), ignore it, "
        "or rescue its values into rescue_column",
    )
    rescue_column: str = key(
        "_rescued_data",
        "jsonb column that holds, per row, what schema_evolution = rescue keeps aside",
        metavar="COL",
    )
    column_names: ColumnNames = key(
        "strict",
        "strict: a name that is not an identifier fails the file; normalize: lower-case "
        "ASCII snake_case",
    )
    max_bad_rows: BadRows = key(
        help="rows that fail to cast or violate a constraint, set aside to ingestion_rejects "
        "before the file fails: N or a percentage such as 1%",
        factory=BadRows,
        metavar="N|N%",
    )
    create_partitions: Literal["day", "month"] | None = key(
        None,
        "create missing day or month partitions of a table range-partitioned on one date or "
        "timestamp column before loading a batch that needs them",
        shown="off",
    )

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
    files: tuple[Path, ...] = ()
    config_path: Path | None = None
    # Keys set by a flag, INGESTD_* or the config file (metrics_addr: by a flag or INGESTD_*
    # only, see config.resolve). None: built in code, where every value is deliberate (a
    # default chosen at start, such as concurrency's, must never replace one set there).
    given: frozenset[str] | None = None
    inbox: Path | str | None = key(
        None, "directory to watch (daemon) or drain (--once), or s3://BUCKET/PREFIX/", metavar="DIR"
    )
    once: bool = key(False, "process what is there, then exit", file=False)
    dry_run: bool = key(
        False,
        "read and validate every file, print what would happen; write nothing",
        file=False,
    )
    dsn: str | None = key(
        None,
        "PostgreSQL URL; a password here shows in ps: prefer INGESTD_DSN or password_file",
        shown="embedded PostgreSQL",
        metavar="DSN",
    )
    password_file: Path | None = key(
        None, "read the DSN's password from this file (container secrets)", metavar="FILE"
    )
    state_dir: Path = key(
        Path(DEFAULT_STATE_DIR), "where the embedded PostgreSQL keeps its data", metavar="DIR"
    )
    done_dir: Path | str | None = key(
        None,
        "where loaded files go (dated subfolders); not inside the inbox",
        shown="done/ beside the inbox",
        metavar="DIR",
    )
    failed_dir: Path | str | None = key(
        None,
        "where failed files and their .error.json go; not inside the inbox",
        shown="failed/ beside the inbox",
        metavar="DIR",
    )
    keep_files: bool = key(
        False, "leave files where they are (the manifest still prevents reloads)"
    )
    chunk_size: int = key(
        50_000, "rows per batch, one transaction each", minimum=1, maximum=10_000_000, metavar="N"
    )
    concurrency: int = key(
        4,
        "parallel workers, one connection and temp table each",
        shown="min(cores, max_connections/2, 8)",
        minimum=1,
        maximum=MAX_CONCURRENCY,
        limit="one connection each",
        metavar="N",
    )
    distributed_concurrency: int = key(
        2,
        "batches writing one distributed (Citus) table at once, across every instance "
        "(Citus spreads one COPY over all workers already)",
        minimum=1,
        maximum=MAX_CONCURRENCY,
        metavar="N",
    )
    max_retries: int = key(
        3, "retries of transient errors per file", minimum=0, maximum=1000, metavar="N"
    )
    retry_base_s: float = key(
        1.0,
        "first wait before a retry; it doubles per attempt (plus up to 0.5 s of jitter)",
        minimum=0.0,
        maximum=DAY_S,
        limit="a day",
        metavar="S",
    )
    retry_cap_s: float = key(
        30.0, "longest wait before a retry", minimum=0.0, maximum=DAY_S, limit="a day", metavar="S"
    )
    resume: bool = key(True, "skip files already loaded, continue partly loaded ones")
    metrics_addr: tuple[str, int] | None = key(
        parse_metrics_addr(DEFAULT_METRICS_ADDR),
        "HOST:PORT for /metrics, /healthz, /readyz, or off",
        metavar="HOST:PORT",
    )
    log_format: Literal["json", "text"] = key("json", "json or text")
    log_level: str = key("INFO", "DEBUG, INFO, WARNING or ERROR", metavar="LEVEL")
    manifest_table: str = key(DEFAULT_MANIFEST, "manifest table name", metavar="T")
    manifest_schema: str | None = key(
        None, "manifest schema", shown="first on search_path", metavar="S"
    )
    connect_timeout_s: float = key(
        10.0,
        "deadline for opening a connection",
        minimum=0.001,
        maximum=DAY_S,
        limit="a day",
        metavar="S",
    )
    statement_timeout_s: float = key(
        600.0,
        "server-side statement_timeout: no statement hangs longer",
        minimum=0.001,
        maximum=PG_TIMEOUT_MAX_S,
        limit="PostgreSQL's limit",
        metavar="S",
    )
    lock_timeout_s: float = key(
        30.0,
        "how long one statement waits for a lock another session holds before the "
        "attempt fails and is retried (0: no limit)",
        minimum=0.0,
        maximum=PG_TIMEOUT_MAX_S,
        limit="PostgreSQL's limit",
        metavar="S",
    )
    settle_s: float = key(
        0.2,
        "daemon: a file must hold still this long before it is claimed (raise it on "
        "network file systems)",
        minimum=0.0,
        maximum=DAY_S,
        limit="a day",
        metavar="S",
    )
    shutdown_grace_s: float = key(
        30.0,
        "SIGTERM: time for workers to finish their batch",
        minimum=0.001,
        maximum=DAY_S,
        limit="a day",
        metavar="S",
    )
    queue_size: int = key(
        0,
        "claimed files waiting for a worker (0: twice the concurrency)",
        minimum=0,
        maximum=100_000,
        metavar="N",
    )
    memory_limit_mb: int = key(
        256,
        "memory for one worker's batches in flight; wide rows shrink the batch, one "
        "CSV row may use half",
        minimum=16,
        maximum=1 << 20,
        limit="a terabyte",
        metavar="MB",
    )
    instance_id: str = key(
        help="this instance's name in the manifest (owner) and every log line; several "
        "instances on one host need one each",
        factory=_host_name,
        shown="host name",
        metavar="ID",
    )
    lease_s: float = key(
        30.0,
        "a claim's lease: another instance may take the file over once it runs out",
        minimum=1.0,
        maximum=DAY_S,
        limit="a day",
        metavar="S",
    )
    rescan_s: float = key(
        30.0,
        "daemon: full rescans of the inbox besides the watcher",
        minimum=0.1,
        maximum=DAY_S,
        limit="a day",
        metavar="S",
    )
    poll_s: float = key(
        5.0,
        "daemon, object-store inbox: how often the prefix is listed for new objects",
        minimum=0.1,
        maximum=DAY_S,
        limit="a day",
        metavar="S",
    )
    s3_endpoint_url: str | None = key(
        None,
        "S3-compatible server to use instead of AWS (also AWS_ENDPOINT_URL); http:// only "
        "when given explicitly",
        shown="AWS",
        metavar="URL",
    )
    s3_queue_url: str | None = key(
        None,
        "SQS-compatible queue URL receiving the bucket's object-created events: new keys "
        "load at once (listings still run; needs the sqs extra)",
        shown="off",
        metavar="URL",
    )
    raw_csv: bool = key(True, "CSV files that need no change go to COPY as their own bytes")
    binary_copy: bool = key(
        True, "Parquet batches whose types the target takes exactly go as binary COPY"
    )
    split_mb: float = key(
        32.0,
        "an append of a raw CSV file, or of a Parquet file of several row groups (their "
        "uncompressed data), at least twice this size is split into segments of at least "
        "this size, loaded by idle workers in parallel (0: never split)",
        minimum=0.0,
        maximum=1 << 20,
        limit="a terabyte",
        metavar="MB",
    )
    # Append mode, a new version of a file whose earlier version committed rows:
    # refuse (it fails, naming the rows and the clean-up) or append on top of them.
    on_new_version: NewVersion = key(
        "refuse",
        "append mode, a changed file whose earlier version committed rows: refuse "
        "(it fails, naming those rows and the clean-up) or append on top of them",
    )
    # Append mode, the same bytes under another name: skip (as a duplicate) or load again.
    on_duplicate_content: DuplicateContent = key(
        "skip", "append mode, the same bytes under another name: skip or load again"
    )
    backfill: bool = key(
        False,
        "--once only: drop the targets' secondary indexes before loading, rebuild them "
        "and ANALYZE after (needs the tables' owner; see Backfills)",
    )
    backfill_index_jobs: int = key(
        2,
        "backfill: indexes rebuilt at once, each on its own connection",
        minimum=1,
        maximum=64,
        metavar="N",
    )
    backfill_maintenance_work_mem_mb: int = key(
        512,
        "backfill: maintenance_work_mem of each session rebuilding an index",
        minimum=1,
        maximum=2_097_151,
        limit="PostgreSQL's limit",
        metavar="MB",
    )
    analyze_after_rows: int = key(
        1_000_000,
        "upsert and merge: ANALYZE a target once this many rows were written to it, and "
        "log its dead tuples (0: never)",
        minimum=0,
        maximum=10**15,
        metavar="N",
    )

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
    def done_path(self) -> Path | str | None:
        """Where loaded files go: done_dir, else done/ beside the inbox (None: not moved)."""
        return beside_inbox(self.done_dir, self.inbox, "done")

    @property
    def failed_path(self) -> Path | str | None:
        """Where failed files go: failed_dir, else failed/ beside the inbox."""
        return beside_inbox(self.failed_dir, self.inbox, "failed")

    def is_given(self, name: str) -> bool:
        """Whether key `name` was set by the user (always, for settings built in code)."""
        return self.given is None or name in self.given

    @property
    def effective_queue_size(self) -> int:
        """Bound of the work queue: enough to keep workers fed, small enough to stay flat."""
        return self.queue_size or 2 * self.concurrency


# What SIGHUP applies to a running service: the contracts (with every per-contract option,
# which each job carries from discovery on) and the log level. Every other key is read once
# by a part built at start (watcher, workers, pool, endpoint, manifest): applying it to
# some parts and not others is worse than not at all (a scanner on a new inbox beside a
# watcher on the old one), so it keeps its old value until a restart.
LIVE_ON_RELOAD = ("contracts", "log_level")


def reloaded(old: Settings, new: Settings) -> tuple[Settings, tuple[str, ...]]:
    """SIGHUP: `old` with the live keys of `new`, and the keys whose new value needs a
    restart (it was not applied)."""
    applied = replace(old, **{name: getattr(new, name) for name in LIVE_ON_RELOAD})
    names = [f.name for f, _ in setting_keys(Settings)]
    # A key set by neither file is not a change, even where the running value was chosen
    # at start (concurrency from the machine) and the new file's default is another.
    restart = tuple(
        name
        for name in names
        if name not in LIVE_ON_RELOAD
        and (old.is_given(name) or new.is_given(name))
        and getattr(old, name) != getattr(new, name)
    )
    return applied, restart


def beside_inbox(
    configured: Path | str | None, inbox: Path | str | None, kind: str
) -> Path | str | None:
    """A done/ or failed/ directory: as configured, else `kind` beside the inbox (an
    object-store inbox `s3://b/landing/inbox/`: `s3://b/landing/done/`)."""
    if configured is not None or inbox is None:
        return configured
    if isinstance(inbox, str):
        head, _, _ = inbox.rstrip("/").rpartition("/")
        return f"{head}/{kind}/" if not head.endswith(":/") else f"{inbox.rstrip('/')}/{kind}/"
    return inbox.parent / kind
