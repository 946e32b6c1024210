"""Resolve settings: flag beats environment beats config file beats default, in one place.

The keys, their defaults and their checks are the fields of Settings, Contract and
CsvOptions (settings.key); nothing here repeats a default. Every value is checked for
its type before use, and a wrong one is a UsageError naming the key and where it came
from (the flag, the INGESTD_* variable, or the config file).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from ingestd.exceptions import UsageError
from ingestd.identifiers import InvalidIdentifierError, validate_identifier, validate_pg_type
from ingestd.settings import (
    DELIMITERS,
    ENV_PREFIX,
    LOG_LEVELS,
    Contract,
    CsvOptions,
    Key,
    Settings,
    default_of,
    env_name,
    flag_name,
    parse_bad_rows,
    parse_metrics_addr,
    setting_keys,
)

__all__ = [
    "check_no_loop",
    "file_keys",
    "load_config",
    "parse_metrics_addr",
    "resolve",
    "resolve_dsn",
    "resolve_keys",
    "unknown_environment",
]

_T = TypeVar("_T")
MAX_CONFIG_BYTES = 1 << 20  # thousands of contracts; a bigger file is a mistake
_COMMANDS = ("status", "check-config", "retry")  # cli's subcommands, for one message
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_SETTINGS = {f.name: (f, meta) for f, meta in setting_keys(Settings)}
_CONTRACT = {f.name: (f, meta) for f, meta in setting_keys(Contract)}
_CSV = {f.name: (f, meta) for f, meta in setting_keys(CsvOptions)}
_CONTRACT_KEYS = {*_CONTRACT, "csv"}


def file_keys() -> set[str]:
    """The keys a config file may hold at its top level."""
    return {name for name, (_, meta) in _SETTINGS.items() if meta.file} | {
        "contracts",
        "defaults",
    }


@dataclass(frozen=True)
class Given:
    """A value and where it came from, for the message if it is wrong."""

    value: Any
    origin: str  # "--chunk-size", "INGESTD_CHUNK_SIZE", "config file F: chunk_size"
    text: bool  # a string to parse (flag, environment) rather than a TOML value
    base: Path | None = None  # relative paths from a config file are relative to it


def load_config(path: Path) -> dict[str, Any]:
    """Read a TOML config file, or raise UsageError saying what is wrong with it."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would hang the read, /dev/zero never end
            raise UsageError(f"config file {path} is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise UsageError(
                f"config file {path} is {info.st_size:,} bytes: at most {MAX_CONFIG_BYTES:,}"
            )
        raw = path.read_bytes()
        if raw.startswith(b"\xef\xbb\xbf"):
            raise UsageError(
                f"config file {path} starts with a byte-order mark: save it as UTF-8 without BOM"
            )
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - file_keys()
    if unknown:
        raise UsageError(f"config file {path}: unknown setting(s) {_keys(unknown)}{_hint(unknown)}")
    return data


def _hint(unknown: set[str]) -> str:
    """Where keys that are known elsewhere belong."""
    contract = sorted(unknown & _CONTRACT_KEYS)
    top = sorted(unknown & set(file_keys()))
    if contract:
        return f" ({', '.join(contract)}: in each [[contracts]] entry, or in [defaults])"
    if top:
        return f" ({', '.join(top)}: at the top of the file, before the first [[contracts]])"
    return ""


class _Sources:
    """Where a key's value is looked up, in order: flag, environment, config file."""

    def __init__(
        self,
        flags: Mapping[str, Any],
        env: Mapping[str, str],
        config: Mapping[str, Any],
        config_path: Path | None,
    ):
        self.flags, self.env, self.config = flags, env, config
        self.path = config_path
        self.file = f"config file {config_path}" if config_path else "the config file"

    def override(self, name: str, meta: Key) -> Given | None:
        """The flag, else the environment variable (what beats the config file)."""
        if meta.flag and self.flags.get(name) is not None:
            value = self.flags[name]
            return Given(value, flag_name(name), isinstance(value, str))
        if meta.env and self.env.get(env_name(name)):  # an empty variable counts as unset
            return Given(self.env[env_name(name)], env_name(name), True)
        return None

    def given(self, name: str, meta: Key) -> Given | None:
        """A top-level setting from the flag, environment or config file; None: default."""
        found = self.override(name, meta)
        if found is None and meta.file and self.config.get(name) is not None:
            base = self.path.parent if self.path else None
            found = Given(self.config[name], f"{self.file}: {name}", False, base)
        return found


def resolve(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Build Settings from flags (only those the user gave), environment and config file."""
    sources = _Sources(flags, os.environ if env is None else env, config or {}, config_path)
    values: dict[str, Any] = {}
    standing: set[str] = set()  # keys only the config file gives
    for name, (_, meta) in _SETTINGS.items():
        given = sources.given(name, meta)
        if given is not None:
            values[name] = _convert(name, _HINTS[name], given, meta)
            if given.origin.startswith(sources.file):
                standing.add(name)
    files = tuple(Path(f) for f in flags.get("files") or ())
    if files:  # exactly these files: a run that ends, and leaves them where they are
        values["once"] = values["keep_files"] = True
    dsn = values.pop("dsn", None)
    values["dsn"] = _dsn_with_password(dsn, values.get("password_file"))
    # A metrics address from the config file is the standing address of the daemon that
    # file configures: a --once run sharing the file (a backfill in the daemon's container)
    # treats it like the default and goes on without the endpoint if the daemon holds it;
    # one given by a flag or INGESTD_METRICS_ADDR for this run must bind.
    settings = Settings(
        contracts=_contracts(sources),
        files=files,
        config_path=config_path,
        given=frozenset(
            k
            for k in values
            if (k != "dsn" or dsn is not None) and not (k == "metrics_addr" and k in standing)
        ),
        **values,
    )
    _check_sources(settings)
    check_no_loop(settings)
    return settings


def unknown_environment(env: Mapping[str, str]) -> list[str]:
    """INGESTD_* variables that name no setting but nearly spell one (a typo in an env
    file would otherwise be ignored without a word), each with the setting it resembles.
    Others (INGESTD_IMAGE, INGESTD_TEST_DSN: build and test tools) are not ours to judge."""
    known = [
        env_name(name) for name, (_, meta) in (_SETTINGS | _CONTRACT | _CSV).items() if meta.env
    ]
    out = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith("INGESTD_TEST"):
            continue
        prefix = len(ENV_PREFIX)  # compare what follows it: the prefix alone looks alike
        suffixes = [k[prefix:] for k in known]
        close = difflib.get_close_matches(name[prefix:], suffixes, n=1, cutoff=0.85)
        if close:
            out.append(f"{name} (did you mean {ENV_PREFIX}{close[0]}?)")
    return out


def resolve_keys(
    names: tuple[str, ...],
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config: Mapping[str, Any],
    config_path: Path | None = None,
) -> dict[str, Any]:
    """Some top-level settings by resolve's rules (for subcommands that need only those):
    {name: value}, the field's default where no source gives one."""
    sources = _Sources(flags, env, config, config_path)
    out = {}
    for name in names:
        f, meta = _SETTINGS[name]
        given = sources.given(name, meta)
        out[name] = default_of(f) if given is None else _convert(name, _HINTS[name], given, meta)
    return out


def resolve_dsn(
    flag: str | None,
    env: Mapping[str, str],
    config: Mapping[str, Any],
    config_path: Path | None = None,
    password_flag: str | None = None,
) -> str | None:
    """--dsn, else INGESTD_DSN, else the config's dsn; with the password from
    --password-file, INGESTD_PASSWORD_FILE or password_file when one is set. None: use the
    embedded server."""
    sources = _Sources({"dsn": flag, "password_file": password_flag}, env, config, config_path)
    dsn = sources.given("dsn", _SETTINGS["dsn"][1])
    password = sources.given("password_file", _SETTINGS["password_file"][1])
    return _dsn_with_password(
        None if dsn is None else _convert("dsn", str | None, dsn, _SETTINGS["dsn"][1]),
        None if password is None else _path(password),
    )


def _dsn_with_password(dsn: str | None, password_file: Path | None) -> str | None:
    if not dsn:
        return None
    from ingestd.db.dsn import check_dsn, with_password

    try:
        check_dsn(dsn)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if password_file is None:
        return dsn
    try:
        password = password_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise UsageError(f"cannot read password file {password_file}: {reason}") from None
    if not password or "\n" in password:
        what = "is empty" if not password else "holds more than one line"
        raise UsageError(f"password file {password_file} {what}: put the password alone in it")
    return with_password(dsn, password)


def _check_sources(settings: Settings) -> None:
    if settings.backfill and not (settings.once or settings.dry_run):
        raise UsageError(
            "backfill is for --once runs (it drops the targets' secondary indexes while it "
            "loads): add --once, or take backfill out of the daemon's settings"
        )
    for f in settings.files:
        if not _looked_at(f, Path.is_file):
            raise UsageError(f"file {f} does not exist or is not a regular file")
    inbox = settings.inbox
    if not settings.files and inbox is None:
        raise UsageError("nothing to do: give --inbox DIR (or inbox in the config) or --files")
    # An object-store inbox is checked by listing it, at start (storage.problem()).
    if not settings.files and isinstance(inbox, Path) and not _looked_at(inbox, Path.is_dir):
        if settings.once or _looked_at(inbox, Path.exists):  # the daemon waits for one
            raise UsageError(f"inbox {inbox} does not exist or is not a directory")


def _looked_at(path: Path, test: Callable[[Path], _T]) -> _T:
    try:
        return test(path)
    except OSError as exc:  # a name too long, a folder on the way not searchable
        raise UsageError(f"cannot look at {str(path)[:200]}: {exc.strerror}") from None
    except RuntimeError:  # Path.resolve before 3.13 on a loop of symbolic links
        raise UsageError(
            f"cannot look at {str(path)[:200]}: a symbolic link loop (too many levels of "
            "symbolic links); fix the link"
        ) from None


def check_no_loop(settings: Settings) -> None:
    """Refuse a done/ or failed/ directory that is the inbox or inside it, or an inbox inside
    one of them: archived files would be discovered and loaded again (symlinks resolved)."""
    inbox = settings.inbox
    if inbox is None or settings.files:
        return
    if isinstance(inbox, str) and settings.keep_files:
        # Objects stay, but failed/ is still skipped by the listing: not the inbox itself.
        _check_no_prefix_loop(inbox, (("failed_dir", settings.failed_path),))
    if settings.keep_files:
        return  # nothing is moved anywhere
    areas = (("done_dir", settings.done_path), ("failed_dir", settings.failed_path))
    for key, folder in areas:
        if folder is not None and isinstance(folder, str) != isinstance(inbox, str):
            raise UsageError(
                f"{key} {folder} and the inbox {inbox} must both be local folders or both "
                "s3:// locations (files move within one storage)"
            )
    if isinstance(inbox, str):
        _check_no_prefix_loop(inbox, areas)
        return
    inbox_real = _looked_at(inbox, Path.resolve)
    for key, folder in areas:
        if folder is None or isinstance(folder, str):
            continue
        real = _looked_at(folder, Path.resolve)
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


def _check_no_prefix_loop(inbox: str, areas: tuple[tuple[str, object], ...]) -> None:
    """An object store skips done/ and failed/ prefixes INSIDE the inbox prefix; the inbox's
    own prefix (every object would be skipped, exit 0), an inbox inside one of them, or
    done/ and failed/ inside each other is refused."""

    def norm(url: object) -> str:
        # Compared as the client will use them (settings built in code skip _location's
        # refusal): the bucket exactly, the prefix folded and resolved.
        text = str(url)
        body = text.partition("://")[2] if "://" in text else text.partition(":/")[2]
        bucket, _, prefix = body.strip("/").partition("/")
        return "".join(f"{part}/" for part in [bucket, *_resolved(prefix.split("/"))])

    given = [(f"{key} {folder}", norm(folder)) for key, folder in areas if folder is not None]
    where = ""
    for name, prefix in given:
        if prefix == norm(inbox):
            where = f"{name} is the inbox {inbox}"
        elif norm(inbox).startswith(prefix):
            where = f"the inbox {inbox} is inside {name}"
    if len(given) == 2 and not where:
        (a_name, a), (b_name, b) = given
        if a == b:
            where = f"{b_name} is {a_name}"
        elif a.startswith(b) or b.startswith(a):
            inner, outer = (a_name, b_name) if a.startswith(b) else (b_name, a_name)
            where = f"{inner} is inside {outer}"
    if where:
        raise UsageError(
            f"{where}: objects there would be hidden from the inbox or mixed up; give "
            "done_dir and failed_dir prefixes of their own (default: beside the inbox)"
        )


# --- contracts ------------------------------------------------------------------------------

Layer = dict[str, Given]


def _contracts(sources: _Sources) -> tuple[Contract, ...]:
    config = sources.config
    defaults = _table(config.get("defaults", {}), f"{sources.file}: [defaults]")
    entries = config.get("contracts")
    if entries is not None and not isinstance(entries, list):
        raise UsageError(
            f"{sources.file}: contracts must be a list of [[contracts]] tables, not {entries!r}"
        )
    overrides: Layer = {}
    for name, (_, meta) in (_CONTRACT | _CSV).items():
        given = sources.override(name, meta)
        if given is not None:
            overrides[name] = given
    if "name" in defaults:  # one name for several contracts would be no name at all
        raise UsageError(
            f"{sources.file}: [defaults]: name is per contract; set it in each [[contracts]]"
        )
    base = _layer(defaults, f"{sources.file}: [defaults]")
    if "table" in overrides or not entries:
        # Single-contract flags replace the file's contracts: the common, config-less case.
        if "table" not in overrides and "table" in defaults:
            raise UsageError(
                f"{sources.file}: [defaults] has a table but there is no [[contracts]] entry: "
                "add one ([[contracts]] with its pattern), or move table to the top of a "
                "contract"
            )
        if "table" not in overrides:
            raise UsageError("no target table: give --table (or contracts in a config file)")
        layers = [("contract " + _keys([str(overrides["table"].value)]), {**base, **overrides})]
    else:
        layers = []
        for i, entry in enumerate(entries):
            label = _entry_label(entry, i)
            where = f"{sources.file}: {label}"
            own = _layer(_table(entry, where), where)
            layers.append((where, {**base, **own, **overrides}))
    out = [_contract(layer, where=label) for label, layer in layers]
    names = [c.name for c in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            first = names.index(name)
            raise UsageError(
                f"{sources.file}: contracts {first + 1} and {i + 1} are both named "
                f'{name!r}: give each a name = "..." of its own'
            )
    return tuple(out)


def _entry_label(entry: Any, i: int) -> str:
    name = entry.get("name") if isinstance(entry, Mapping) else None
    return f"contract {_keys([name]) if isinstance(name, str) else i + 1}"


def _keys(names: Any) -> str:
    """Names for a one-line message: as written, or quoted when they hold odd characters."""
    return ", ".join(
        n if n.isprintable() and n.strip() == n and n else repr(n) for n in sorted(names)
    )


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UsageError(f"{where} must be a table (key = value lines), not {value!r}")
    return value


def _layer(raw: Mapping[str, Any], where: str) -> Layer:
    """One level of a contract's settings (the [defaults], or one [[contracts]] entry)."""
    unknown = set(raw) - _CONTRACT_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown setting(s) {_keys(unknown)}{_hint(unknown)}")
    layer = {k: Given(v, f"{where}: {k}", False) for k, v in raw.items() if k != "csv"}
    if "csv" in raw:
        csv = _table(raw["csv"], f"{where}: csv")
        unknown = set(csv) - set(_CSV)
        if unknown:
            raise UsageError(f"{where}: unknown csv setting(s) {_keys(unknown)}")
        layer |= {k: Given(v, f"{where}: csv.{k}", False) for k, v in csv.items()}
    return layer


def _contract(layer: Layer, *, where: str) -> Contract:
    if "table" not in layer:
        raise UsageError(f"{where}: no table given")
    got = {
        name: _convert(name, _HINTS[name], layer[name], meta)
        for name, (_, meta) in (_CONTRACT | _CSV).items()
        if name in layer
    }

    def origin(name: str) -> str:
        """Where a value came from, for a check after its type's (the variable, the flag,
        or the file and key); the contract when it was not given."""
        return layer[name].origin if name in layer else where

    csv = _csv_options({k: got.pop(k) for k in list(got) if k in _CSV}, origin)
    checking = "table"
    try:
        table = validate_identifier(got["table"], what="table name")
        checking = "schema"
        schema = _opt_ident(got.get("schema"), "schema name")
        checking = "pk"
        pk = tuple(validate_identifier(c, what="primary key column") for c in got.get("pk", ()))
        checking = "headers"
        headers_raw = got.get("headers") or ()
        headers = tuple(validate_identifier(h, what="column") for h in headers_raw) or None
        checking = "types"
        types = tuple(
            (validate_identifier(col, what="column in types"), validate_pg_type(t))
            for col, t in got.get("types", ())
        )
        if "rescue_column" in got:
            checking = "rescue_column"
            validate_identifier(got["rescue_column"], what="rescue column")
    except InvalidIdentifierError as exc:
        hint = _normalized_hint(got, checking)
        raise UsageError(f"{_in(where, origin(checking))}: {exc}{hint}") from None
    mode = got.get("mode", default_of(_CONTRACT["mode"][0]))
    if mode in ("upsert", "merge") and not pk:
        raise UsageError(f"{where}: mode {mode} needs a primary key: give --pk COL[,COL]")
    if headers is not None:
        _check_subset(pk, headers, where, "primary key column")
        _check_subset(tuple(c for c, _ in types), headers, where, "column in types")
        if len(set(headers)) != len(headers):
            raise UsageError(f"{where}: headers name a column twice")
    if not csv.header and headers is None:
        raise UsageError(f"{where}: files without a header row need --headers a,b,c")
    if "pattern" in got:
        _check_pattern(got["pattern"], _in(where, origin("pattern")))
    if "name" in got:
        name = got["name"]
        if not name or len(name) > 100 or not name.isprintable() or name.strip() != name:
            raise UsageError(
                f"{origin('name')}: contract name {name[:40]!r} must be 1-100 printable "
                "characters, without spaces at its start or end"
            )
    got.setdefault("name", table)
    got.update(table=table, schema=schema, pk=pk, headers=headers, types=types, csv=csv)
    return Contract(**got)


def _normalized_hint(got: Mapping[str, Any], checking: str) -> str:
    """Under column_names = normalize, pk, headers and types name the columns as they load:
    say which names those are (a file's own name is ambiguous once suffixes exist)."""
    if got.get("column_names") != "normalize" or checking not in ("pk", "headers", "types"):
        return ""
    from ingestd.read.columns import normalize_name  # pyarrow: loaded only on this error

    names = {
        "pk": got.get("pk", ()),
        "headers": got.get("headers") or (),
        "types": [c for c, _ in got.get("types", ())],
    }[checking]
    pairs = [f"{normalize_name(n)} (for {n!r})" for n in names if normalize_name(n) != n]
    return f"; under column_names = normalize name the columns as they load: {', '.join(pairs)}"


def _in(where: str, origin: str) -> str:
    """`origin` (a variable, a flag, [defaults]) with the contract it applies to."""
    if origin.startswith(where):
        return origin
    return f"{origin} (in {where.rpartition(': ')[2]})"


def _csv_options(got: dict[str, Any], origin: Callable[[str], str]) -> CsvOptions:
    options = CsvOptions(**got)
    if options.delimiter not in DELIMITERS:
        raise UsageError(
            f"{origin('delimiter')}: delimiter {options.delimiter!r} is not one of , ; | tab"
        )
    delimiter = DELIMITERS[options.delimiter]
    quote = options.quote
    # The CSV readers take one ASCII byte: anything else would fail every good file.
    if len(quote) != 1 or not quote.isascii() or quote == delimiter or quote in "\r\n":
        raise UsageError(
            f"{origin('quote')} must be one ASCII character other than the delimiter "
            f"and a line break, not {quote!r}"
        )
    try:
        "".encode(options.encoding)
    except (LookupError, ValueError):  # ValueError: a name with a NUL in it
        raise UsageError(
            f"{origin('encoding')}: unknown encoding {options.encoding!r} (try utf-8 or latin-1)"
        ) from None
    return CsvOptions(delimiter, quote, options.encoding, options.header)


def _check_pattern(pattern: str, where: str) -> None:
    if not pattern or pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
        raise UsageError(f"{where}: pattern {pattern!r} must be a relative glob inside the inbox")
    # Contract.matches compares segment by segment: a '.' or empty one never equals a
    # path part, and a stray space never matches a file name. No file would ever match.
    if pattern.strip() != pattern or any(part in ("", ".") for part in pattern.split("/")):
        raise UsageError(
            f"{where}: pattern {pattern!r} can never match: write it without ./, a trailing "
            "/, // or spaces at its ends (e.g. *.csv or sales/*.csv)"
        )


def _check_subset(cols: tuple[str, ...], headers: tuple[str, ...], where: str, what: str) -> None:
    missing = [c for c in cols if c not in headers]
    if missing:
        raise UsageError(f"{where}: {what} {', '.join(missing)} is not among the headers")


# --- one value: its type, then its checks ---------------------------------------------------

_HINTS: dict[str, Any] = {
    **typing.get_type_hints(Settings),
    **typing.get_type_hints(Contract),
    **typing.get_type_hints(CsvOptions),
}


def _convert(name: str, hint: Any, given: Given, meta: Key) -> Any:
    """A value of the field's type, or UsageError naming where the wrong one came from."""
    special = _SPECIAL.get(name)
    if special is not None:
        return special(given)
    args = typing.get_args(hint)
    if type(None) in args:  # X | None: a given value is an X
        (hint,) = (a for a in args if a is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return _choice(given, typing.get_args(hint))
    if hint is bool:
        return _bool(given)
    if hint is int:
        return _int(given, meta)
    if hint is float:
        return _float(given, meta)
    if hint is Path:
        return _path(given)
    if hint is str:
        return _str(given)
    raise TypeError(f"no conversion for {name}: {hint}")  # pragma: no cover - a new field


def _wrong(given: Given, expected: str, value: Any = None) -> UsageError:
    shown = given.value if value is None else value
    return UsageError(f"{given.origin} must be {expected}, not {shown!r}")


def _str(given: Given) -> str:
    if not isinstance(given.value, str):
        raise _wrong(given, "a string (in quotes)")
    return given.value


def _bool(given: Given) -> bool:
    value = given.value
    if isinstance(value, bool):
        return value
    if given.text and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if given.text and value in _COMMANDS:  # `ingestd --once status`: the flag took it
        raise UsageError(
            f"{given.origin} took {value!r} as its value: options go after the command "
            f"(`ingestd {value} OPTION ...`)"
        )
    if given.text:
        raise _wrong(given, "true or false (or 1/0, yes/no)")
    raise _wrong(given, "true or false" + (" (without quotes)" if isinstance(value, str) else ""))


def _int(given: Given, meta: Key) -> int:
    value = given.value
    if given.text and isinstance(value, str):
        try:
            # ASCII digits only, as for ports: int() would take ١٢ and 1_000 too.
            if not value.strip().isascii() or "_" in value:
                raise ValueError(value)
            value = int(value.strip())
        except ValueError:
            raise _wrong(given, "a whole number") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(given, "a whole number")
    _check_range(given, value, meta)
    return value


def _float(given: Given, meta: Key) -> float:
    value = given.value
    if given.text and isinstance(value, str):
        try:
            if not value.strip().isascii() or "_" in value:
                raise ValueError(value)
            value = float(value.strip())
        except ValueError:
            raise _wrong(given, "a number") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _wrong(given, "a number")
    _check_range(given, value, meta)
    return float(value)


def _check_range(given: Given, value: float, meta: Key) -> None:
    if meta.minimum is not None and value < meta.minimum:
        raise _wrong(given, f"at least {meta.minimum:g}", value)
    if meta.maximum is not None and value > meta.maximum:
        limit = f" ({meta.limit})" if meta.limit else ""
        shown = int(meta.maximum) if float(meta.maximum).is_integer() else meta.maximum
        raise _wrong(given, f"at most {shown}{limit}", value)


def _choice(given: Given, allowed: tuple[Any, ...]) -> Any:
    value = given.value
    if not isinstance(value, str) or value not in allowed:
        raise _wrong(given, "one of " + ", ".join(map(str, allowed)))
    return value


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _location(given: Given) -> Path | str:
    """A local folder (a Path), or an object-store URL kept as written (`s3://b/prefix/`:
    a Path would fold its `//`)."""
    text = _str(given)
    if not _URL.match(text):
        return _path(given)
    scheme = text.partition("://")[0].lower()
    if scheme != "s3" or not text[5:].strip("/") or text != text.strip():
        raise _wrong(given, "a folder or s3://BUCKET/PREFIX/ (S3 and S3-compatible stores)")
    bucket, _, prefix = text[5:].strip("/").partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
        raise UsageError(
            f"{given.origin}: {bucket!r} in {text!r} is not an S3 bucket name: lower-case "
            "letters, digits, dots and hyphens, starting and ending with a letter or digit"
        )
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") or any(_control(c) for c in p) for p in parts):
        # The S3 client folds `//`, `.` and `..` away and cannot name control characters:
        # the prefix it uses would not be the one written, and the done/failed-vs-inbox
        # check below would compare a different prefix than the one archived into.
        instead = "/".join([bucket, *_resolved(_printable(p) for p in parts)])
        raise UsageError(
            f"{given.origin}: {text!r} has an empty, . or .. part or a control character in "
            f"its prefix, which the S3 client does not keep as written: write "
            f"'s3://{instead}/' (or the prefix you meant)"
        )
    return f"s3://{text[5:].strip('/')}/"


_BUCKET = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def _control(char: str) -> bool:
    # What the S3 client refuses in a key (storage/s3.py steps over C1 controls too).
    return ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F


def _resolved(parts: typing.Iterable[str]) -> list[str]:
    """Prefix parts as the S3 client takes them: empty and `.` parts dropped, `..` resolved."""
    kept: list[str] = []
    for part in parts:
        if part == "..":
            if kept:
                kept.pop()
        elif part not in ("", "."):
            kept.append(part)
    return kept


def _printable(part: str) -> str:
    return "".join(c for c in part if not _control(c))


def _path(given: Given) -> Path:
    text = _str(given)
    if not text or "\0" in text:  # the file system cannot name it
        raise _wrong(given, "a path")
    if text != text.strip():
        # `KEY= /srv/inbox` in an env file or compose keeps the space: a folder named " "
        # in the working directory would be made and watched, silently.
        raise _wrong(given, "a path without spaces at its start or end")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~user of a user that does not exist
        raise _wrong(given, "a path (~ names no known user)") from None
    if given.base is not None and not path.is_absolute():
        return given.base / path
    return path


def _names(given: Given) -> tuple[str, ...]:
    """`a,b` or (in a config file) a list of strings."""
    value = given.value
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(","))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _wrong(given, 'a list of column names such as ["a", "b"] or "a,b"')


def _types(given: Given) -> tuple[tuple[str, str], ...]:
    value = given.value
    if isinstance(value, Mapping):
        if not all(isinstance(v, str) for v in value.values()):
            raise _wrong(given, 'a table of column = "pgtype"')
        return tuple((str(k), v) for k, v in value.items())
    if not isinstance(value, str):
        raise _wrong(given, 'a table of column = "pgtype" or "col:pgtype,..."')
    out: dict[str, str] = {}
    for item in value.split(","):
        # numeric(12,2) holds a comma: glue the scale back onto its type.
        if ":" not in item and out:
            last = next(reversed(out))
            out[last] += "," + item
            continue
        col, sep, typ = item.partition(":")
        if not sep:
            raise UsageError(f"{given.origin}: entry {item!r} must be col:pgtype")
        if col.strip() in out:  # `id:int,id:text`: the last one won, silently
            raise UsageError(f"{given.origin}: column {col.strip()!r} is given twice")
        out[col.strip()] = typ.strip()
    return tuple(out.items())


def _bad_rows(given: Given) -> Any:
    value = given.value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _wrong(given, 'a whole number or a percentage such as "1%"')
    try:
        return parse_bad_rows(value)
    except UsageError as exc:
        raise UsageError(f"{given.origin}: {exc}") from None


def _metrics_addr(given: Given) -> tuple[str, int] | None:
    if given.value is False:  # metrics_addr = false
        return None
    try:
        return parse_metrics_addr(_str(given))
    except UsageError as exc:
        if given.origin in str(exc):
            raise
        raise UsageError(f"{given.origin}: {exc}") from None


def _dsn(given: Given) -> str:
    """Never echo a wrong DSN value: it may hold a password in a form no mask knows
    (a TOML table, a list)."""
    if not isinstance(given.value, str):
        raise UsageError(
            f"{given.origin} must be a string in quotes such as "
            f'"postgresql://user@host:5432/db" (value not shown: it may hold a password)'
        )
    from ingestd.db.dsn import check_dsn

    try:
        return check_dsn(given.value)
    except ValueError as exc:  # the message never holds the DSN itself
        raise UsageError(f"{given.origin}: {exc}") from None


def _log_level(given: Given) -> str:
    level = _str(given).upper()
    if level not in LOG_LEVELS:
        raise _wrong(given, "one of " + ", ".join(LOG_LEVELS))
    return level


def _identifier(what: str) -> Callable[[Given], str]:
    def check(given: Given) -> str:
        try:
            return validate_identifier(_str(given), what=what)
        except InvalidIdentifierError as exc:
            raise UsageError(f"{given.origin}: {exc}") from None

    return check


def _instance_id(given: Given) -> str:
    """Claims belong to a process (a token beside the id), so two processes sharing an id
    never take each other's files; several instances on one host should each have their
    own id all the same."""
    text = _str(given).strip()
    if not text or len(text) > 100 or not text.isprintable():
        raise UsageError(
            f"{given.origin}: instance id {text[:40]!r} must be 1-100 printable characters"
        )
    return text


_SPECIAL: dict[str, Callable[[Given], Any]] = {
    "inbox": _location,
    "done_dir": _location,
    "failed_dir": _location,
    "dsn": _dsn,
    "metrics_addr": _metrics_addr,
    "log_level": _log_level,
    "manifest_table": _identifier("manifest table"),
    "manifest_schema": _identifier("manifest schema"),
    "instance_id": _instance_id,
    "pk": _names,
    "headers": _names,
    "types": _types,
    "max_bad_rows": _bad_rows,
}


def _opt_ident(value: str | None, what: str) -> str | None:
    return None if value is None else validate_identifier(value, what=what)
