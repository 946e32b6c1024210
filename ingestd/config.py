"""Resolve settings: flag beats environment beats config file beats default, in one place."""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ingestd.exceptions import UsageError
from ingestd.identifiers import InvalidIdentifierError, validate_identifier, validate_pg_type
from ingestd.settings import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_MANIFEST,
    DEFAULT_MAX_RETRIES,
    DEFAULT_METRICS_ADDR,
    DEFAULT_STATE_DIR,
    DELIMITERS,
    DUPLICATE_CONTENT_CHOICES,
    FILE_TYPES,
    MODES,
    NEW_VERSION_CHOICES,
    Contract,
    CsvOptions,
    Settings,
    parse_bad_rows,
)

# Keys a contract accepts in the config file, and the flag names that override them.
_CONTRACT_KEYS = {
    "max_bad_rows",
    "name",
    "pattern",
    "table",
    "schema",
    "pk",
    "headers",
    "types",
    "file_type",
    "mode",
    "csv",
    "preserve_types",
    "tolerant",
    "tolerant_mode",
}
_CSV_KEYS = {"delimiter", "quote", "encoding", "header"}
_GLOBAL_KEYS = {
    "memory_limit_mb",
    "raw_csv",
    "split_mb",
    "instance_id",
    "lease_s",
    "rescan_s",
    "dsn",
    "inbox",
    "state_dir",
    "done_dir",
    "failed_dir",
    "keep_files",
    "chunk_size",
    "concurrency",
    "max_retries",
    "resume",
    "metrics_addr",
    "log_format",
    "log_level",
    "manifest_table",
    "manifest_schema",
    "connect_timeout_s",
    "statement_timeout_s",
    "settle_s",
    "shutdown_grace_s",
    "queue_size",
    "contracts",
    "defaults",
    "password_file",
    "lock_timeout_s",
    "on_new_version",
    "on_duplicate_content",
}


def load_config(path: Path) -> dict[str, Any]:
    """Read a TOML config file, or raise UsageError saying what is wrong with it."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - _GLOBAL_KEYS
    if unknown:
        raise UsageError(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return data


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Build Settings from flags (only those the user gave), environment and config file."""
    env = os.environ if env is None else env
    config = config or {}

    def pick(key: str, default: Any = None) -> Any:
        if flags.get(key) is not None:
            return flags[key]
        return config.get(key, default)

    def pick_env(key: str, default: Any = None) -> Any:
        # flag beats INGESTD_KEY beats config file beats default
        if flags.get(key) is not None:
            return flags[key]
        return env.get("INGESTD_" + key.upper(), config.get(key, default))

    def pick_path(key: str) -> Path | None:
        return path_setting(key, flags, config, config_path)

    dsn = resolve_dsn(flags.get("dsn"), env, config)
    inbox = pick_path("inbox")
    files = tuple(Path(f) for f in flags.get("files") or ())
    once = bool(flags.get("once"))
    if files:
        once = True
    contracts = _contracts(flags, config)
    settings = Settings(
        contracts=contracts,
        dsn=dsn,
        inbox=inbox,
        files=files,
        once=once,
        config_path=config_path,
        state_dir=pick_path("state_dir") or Path(DEFAULT_STATE_DIR),
        done_dir=pick_path("done_dir"),
        failed_dir=pick_path("failed_dir"),
        keep_files=bool(pick("keep_files", False)) or bool(files),
        chunk_size=_int(pick("chunk_size", DEFAULT_CHUNK_SIZE), "chunk size", minimum=1),
        concurrency=_int(pick("concurrency", DEFAULT_CONCURRENCY), "concurrency", minimum=1),
        max_retries=_int(pick("max_retries", DEFAULT_MAX_RETRIES), "max retries", minimum=0),
        resume=bool(pick("resume", True)),
        dry_run=bool(flags.get("dry_run")),
        metrics_addr=parse_metrics_addr(str(pick("metrics_addr", DEFAULT_METRICS_ADDR))),
        log_format=_choice(pick("log_format", "json"), ("json", "text"), "log format"),
        log_level=_log_level(str(pick("log_level", "INFO"))),
        manifest_table=_ident(pick("manifest_table", DEFAULT_MANIFEST), "manifest table"),
        manifest_schema=_opt_ident(pick("manifest_schema"), "manifest schema"),
        connect_timeout_s=_float(pick("connect_timeout_s", 10.0), "connect timeout"),
        statement_timeout_s=_float(pick("statement_timeout_s", 600.0), "statement timeout"),
        settle_s=_float(pick("settle_s", 0.2), "settle interval", minimum=0.0),
        shutdown_grace_s=_float(pick("shutdown_grace_s", 30.0), "shutdown grace"),
        queue_size=_int(pick("queue_size", 0), "queue size", minimum=0),
        memory_limit_mb=_int(pick("memory_limit_mb", 256), "memory limit (MB)", minimum=16),
        instance_id=_instance_id(
            flags.get("instance_id") or env.get("INGESTD_INSTANCE_ID") or config.get("instance_id")
        ),
        lease_s=_float(pick("lease_s", 30.0), "lease", minimum=1.0),
        rescan_s=_float(pick("rescan_s", 30.0), "rescan interval", minimum=0.1),
        raw_csv=bool(pick("raw_csv", True)),
        split_mb=_float(pick("split_mb", 32.0), "split size", minimum=0.0, unit="MB"),
        lock_timeout_s=_float(
            pick_env("lock_timeout_s", DEFAULT_LOCK_TIMEOUT_S), "lock timeout", minimum=0.0
        ),
        on_new_version=_choice(
            pick_env("on_new_version", "refuse"), NEW_VERSION_CHOICES, "on_new_version"
        ),
        on_duplicate_content=_choice(
            pick_env("on_duplicate_content", "skip"),
            DUPLICATE_CONTENT_CHOICES,
            "on_duplicate_content",
        ),
    )
    _check_sources(settings)
    check_no_loop(settings)
    return settings


def path_setting(
    key: str, flags: Mapping[str, Any], config: Mapping[str, Any], config_path: Path | None
) -> Path | None:
    """A directory setting: relative paths in a config file are relative to the file, on
    the command line to the working directory."""
    if flags.get(key) is not None:
        return Path(str(flags[key])).expanduser()
    if config.get(key) is None:
        return None
    path = Path(str(config[key])).expanduser()
    if config_path is not None and not path.is_absolute():
        return Path(config_path).parent / path
    return path


def resolve_dsn(flag: str | None, env: Mapping[str, str], config: Mapping[str, Any]) -> str | None:
    """--dsn, else INGESTD_DSN, else the config's dsn; with the password from password_file
    (or INGESTD_PASSWORD_FILE) when one is set. None: use the embedded server."""
    dsn = flag or env.get("INGESTD_DSN") or config.get("dsn")
    if not dsn:
        return None
    from ingestd.db.dsn import check_dsn

    try:
        check_dsn(str(dsn))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    password_file = config.get("password_file") or env.get("INGESTD_PASSWORD_FILE")
    if password_file:
        return _with_password_from_file(str(dsn), Path(password_file))
    return str(dsn)


def _check_sources(settings: Settings) -> None:
    for f in settings.files:
        if not f.is_file():
            raise UsageError(f"file {f} does not exist or is not a regular file")
    if not settings.files and settings.inbox is None:
        raise UsageError("nothing to do: give --inbox DIR (or inbox in the config) or --files")
    if not settings.files and settings.inbox is not None and not settings.inbox.is_dir():
        if settings.once or settings.inbox.exists():  # the daemon waits for a missing one
            raise UsageError(f"inbox {settings.inbox} does not exist or is not a directory")


def check_no_loop(settings: Settings) -> None:
    """Refuse a done/ or failed/ directory that is the inbox or inside it, or an inbox inside
    one of them: archived files would be discovered and loaded again (symlinks resolved)."""
    inbox = settings.inbox
    if inbox is None or settings.files or settings.keep_files:
        return  # nothing is moved anywhere
    inbox_real = inbox.resolve()
    for key, folder in (("done_dir", settings.done_path), ("failed_dir", settings.failed_path)):
        if folder is None:
            continue
        real = folder.resolve()
        if real == inbox_real:
            where = f"{key} {folder} is the inbox {inbox}"
        elif real.is_relative_to(inbox_real):
            where = f"{key} {folder} is inside the inbox {inbox}"
        elif inbox_real.is_relative_to(real):
            where = f"the inbox {inbox} is inside {key} {folder}"
        else:
            continue
        raise UsageError(
            f"{where}: files moved there would be found and loaded again; "
            f"put {key} outside the inbox (default: beside it)"
        )


def _contracts(flags: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[Contract, ...]:
    defaults = dict(config.get("defaults", {}))
    overrides = {k: flags[k] for k in _CONTRACT_KEYS if flags.get(k) is not None}
    csv_overrides = {k: flags[k] for k in _CSV_KEYS if flags.get(k) is not None}
    if "table" in overrides or not config.get("contracts"):
        # Single-contract flags replace the file's contracts: the common, config-less case.
        if "table" not in overrides:
            raise UsageError("no target table: give --table (or contracts in a config file)")
        raw = [{"name": overrides["table"], "pattern": "*", **defaults}]
    else:
        raw = [{**defaults, **c} for c in config["contracts"]]
    out = []
    for i, item in enumerate(raw):
        merged = {**item, **overrides}
        merged["csv"] = {**defaults.get("csv", {}), **item.get("csv", {}), **csv_overrides}
        out.append(_contract(merged, where=f"contract {item.get('name', i + 1)}"))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise UsageError("contract names must be unique")
    return tuple(out)


def _contract(raw: Mapping[str, Any], *, where: str) -> Contract:
    unknown = set(raw) - _CONTRACT_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    csv_raw = raw.get("csv", {})
    unknown = set(csv_raw) - _CSV_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown csv setting(s) {', '.join(sorted(unknown))}")
    if "table" not in raw:
        raise UsageError(f"{where}: no table given")
    try:
        table = validate_identifier(str(raw["table"]), what="table name")
        schema = _opt_ident(raw.get("schema"), "schema name")
        pk = tuple(validate_identifier(c, what="primary key column") for c in _names(raw, "pk"))
        headers_raw = _names(raw, "headers")
        headers = tuple(validate_identifier(h, what="column") for h in headers_raw) or None
        types = tuple(
            (validate_identifier(col, what="column in types"), validate_pg_type(str(t)))
            for col, t in _types(raw.get("types")).items()
        )
    except InvalidIdentifierError as exc:
        raise UsageError(f"{where}: {exc}") from None
    mode = _choice(raw.get("mode", "upsert"), MODES, "mode")
    if mode in ("upsert", "merge") and not pk:
        raise UsageError(f"{where}: mode {mode} needs a primary key: give --pk COL[,COL]")
    if headers is not None:
        _check_subset(pk, headers, where, "primary key column")
        _check_subset(tuple(c for c, _ in types), headers, where, "column in types")
        if len(set(headers)) != len(headers):
            raise UsageError(f"{where}: headers name a column twice")
    csv = _csv_options(csv_raw, where)
    if not csv.header and headers is None:
        raise UsageError(f"{where}: files without a header row need --headers a,b,c")
    return Contract(
        name=str(raw.get("name", table)),
        pattern=_pattern(str(raw.get("pattern", "*")), where),
        table=table,
        schema=schema,
        pk=pk,
        headers=headers,
        types=types,
        file_type=_choice(raw.get("file_type", "auto"), FILE_TYPES, "file type"),
        mode=mode,
        csv=csv,
        preserve_types=bool(raw.get("preserve_types", False)),
        tolerant=bool(raw.get("tolerant", False)),
        tolerant_mode=_choice(raw.get("tolerant_mode", "null"), ("null", "empty"), "tolerant mode"),
        max_bad_rows=parse_bad_rows(raw.get("max_bad_rows", 0)),
    )


def _csv_options(raw: Mapping[str, Any], where: str) -> CsvOptions:
    delimiter = str(raw.get("delimiter", ","))
    if delimiter not in DELIMITERS:
        raise UsageError(f"{where}: delimiter {delimiter!r} is not one of , ; | tab")
    quote = str(raw.get("quote", '"'))
    if len(quote) != 1 or quote == DELIMITERS[delimiter] or quote in "\r\n":
        raise UsageError(f"{where}: quote must be one character other than the delimiter")
    encoding = str(raw.get("encoding", "utf-8"))
    try:
        "".encode(encoding)
    except LookupError:
        raise UsageError(f"{where}: unknown encoding {encoding!r} (try utf-8 or latin-1)") from None
    return CsvOptions(DELIMITERS[delimiter], quote, encoding, bool(raw.get("header", True)))


def _pattern(pattern: str, where: str) -> str:
    if not pattern or pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
        raise UsageError(f"{where}: pattern {pattern!r} must be a relative glob inside the inbox")
    return pattern


def _check_subset(cols: tuple[str, ...], headers: tuple[str, ...], where: str, what: str) -> None:
    missing = [c for c in cols if c not in headers]
    if missing:
        raise UsageError(f"{where}: {what} {', '.join(missing)} is not among the headers")


def _names(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    return [str(v) for v in value]


def _types(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in str(value).split(","):
        # numeric(12,2) holds a comma: glue the scale back onto its type.
        if ":" not in item and out:
            last = next(reversed(out))
            out[last] += "," + item
            continue
        col, sep, typ = item.partition(":")
        if not sep:
            raise UsageError(f"--types entry {item!r} must be col:pgtype")
        out[col.strip()] = typ.strip()
    return out


def parse_metrics_addr(value: str) -> tuple[str, int] | None:
    """Parse HOST:PORT (or `off`) for the metrics endpoint."""
    if value.lower() in ("off", "none", "false", ""):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"metrics address {value!r} must be HOST:PORT or off")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _with_password_from_file(dsn: str, path: Path) -> str:
    from ingestd.db.dsn import with_password

    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from None
    return with_password(dsn, password)


def _int(value: Any, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise UsageError(f"{what} must be a whole number, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise UsageError(f"{what} must be at least {minimum}, not {value!r}")
    return number


def _float(value: Any, what: str, *, minimum: float = 0.001, unit: str = "s") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        units = "seconds" if unit == "s" else unit
        raise UsageError(f"{what} must be a number of {units}, not {value!r}") from None
    if number < minimum:
        raise UsageError(f"{what} must be at least {minimum:g} {unit}")
    return number


def _choice(value: Any, allowed: tuple[Any, ...], what: str) -> Any:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r}: use one of {', '.join(map(str, allowed))}")
    return value


def _instance_id(value: Any) -> str:
    """A given id, else the host name: the instance's name in the manifest (owner) and logs.
    Claims belong to a process (a token beside the id), so two processes sharing an id
    never take each other's files; a dead process's files are taken back at once by any
    instance. Several instances on one host should each have their own id all the same."""
    if value is None:
        return socket.gethostname() or "ingestd"
    text = str(value).strip()
    if not text or len(text) > 100 or not text.isprintable():
        raise UsageError(f"instance id {text[:40]!r} must be 1-100 printable characters")
    return text


def _log_level(value: str) -> str:
    level = value.upper()
    return str(_choice(level, ("DEBUG", "INFO", "WARNING", "ERROR"), "log level"))


def _ident(value: Any, what: str) -> str:
    try:
        return validate_identifier(str(value), what=what)
    except InvalidIdentifierError as exc:
        raise UsageError(str(exc)) from None


def _opt_ident(value: Any, what: str) -> str | None:
    return None if value is None else _ident(value, what)
