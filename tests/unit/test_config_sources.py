"""Every setting from every source: INGESTD_<KEY> for each key, flag > environment > config
file > default, and a config value of the wrong type is one UsageError naming the key."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.config import file_keys, load_config, resolve
from ingestd.exceptions import UsageError
from ingestd.settings import (
    BadRows,
    Contract,
    CsvOptions,
    Settings,
    default_of,
    env_name,
    setting_keys,
)

# A value other than the default for every key: (as text, as resolved). A key added to
# Settings, Contract or CsvOptions without a row here fails test_samples_cover_every_key.
SAMPLES: dict[str, tuple[str, Any]] = {
    "inbox": ("{tmp}/other-inbox", Path("{tmp}/other-inbox")),
    "once": ("true", True),
    "dry_run": ("yes", True),
    "dsn": ("postgresql://env@envhost:5433/envdb", "postgresql://env@envhost:5433/envdb"),
    "password_file": ("{tmp}/pw", Path("{tmp}/pw")),
    "state_dir": ("{tmp}/state", Path("{tmp}/state")),
    "done_dir": ("{tmp}/archive/done", Path("{tmp}/archive/done")),
    "failed_dir": ("{tmp}/archive/failed", Path("{tmp}/archive/failed")),
    "keep_files": ("1", True),
    "chunk_size": ("7", 7),
    "concurrency": ("2", 2),
    "distributed_concurrency": ("3", 3),
    "max_retries": ("0", 0),
    "retry_base_s": ("0.5", 0.5),
    "retry_cap_s": ("5", 5.0),
    "resume": ("no", False),
    "metrics_addr": ("192.0.2.1:1234", ("192.0.2.1", 1234)),
    "log_format": ("text", "text"),
    "log_level": ("debug", "DEBUG"),
    "manifest_table": ("other_manifest", "other_manifest"),
    "manifest_schema": ("ops", "ops"),
    "connect_timeout_s": ("3", 3.0),
    "statement_timeout_s": ("60", 60.0),
    "lock_timeout_s": ("0", 0.0),
    "settle_s": ("1.5", 1.5),
    "shutdown_grace_s": ("5", 5.0),
    "queue_size": ("3", 3),
    "memory_limit_mb": ("64", 64),
    "instance_id": ("box-7", "box-7"),
    "lease_s": ("9", 9.0),
    "rescan_s": ("2", 2.0),
    "poll_s": ("0.5", 0.5),
    "s3_endpoint_url": ("http://127.0.0.1:8333", "http://127.0.0.1:8333"),
    "s3_queue_url": ("http://127.0.0.1:4566/q", "http://127.0.0.1:4566/q"),
    "raw_csv": ("false", False),
    "split_mb": ("0", 0.0),
    "on_new_version": ("append", "append"),
    "on_duplicate_content": ("load", "load"),
    "backfill": ("true", True),
    "binary_copy": ("false", False),
    "backfill_index_jobs": ("3", 3),
    "backfill_maintenance_work_mem_mb": ("64", 64),
    "analyze_after_rows": ("0", 0),
    # contract keys (flags and INGESTD_* apply to every contract)
    "table": ("envtable", "envtable"),
    "pattern": ("*.csv", "*.csv"),
    "schema": ("sales", "sales"),
    "pk": ("id,v", ("id", "v")),
    "headers": ("id,v", ("id", "v")),
    "types": ("id:bigint,v:numeric(12,2)", (("id", "bigint"), ("v", "numeric(12,2)"))),
    "file_type": ("csv", "csv"),
    "mode": ("append", "append"),
    "preserve_types": ("true", True),
    "tolerant": ("TRUE", True),
    "tolerant_mode": ("empty", "empty"),
    "create_partitions": ("month", "month"),
    "schema_evolution": ("rescue", "rescue"),
    "rescue_column": ("kept_aside", "kept_aside"),
    "column_names": ("normalize", "normalize"),
    "max_bad_rows": ("1%", BadRows(ratio=0.01)),
    "delimiter": ("tab", "\t"),
    "quote": ("'", "'"),
    "encoding": ("latin-1", "latin-1"),
    "header": ("false", False),
}
# What a key needs beside it to be valid (files without a header row name their columns).
NEEDS = {"header": {"headers": "id"}, "backfill": {"once": "true"}}
BASE = {"table": "t", "pk": "id"}


def env_keys() -> list[tuple[type, str]]:
    """Every key that has an INGESTD_* variable, with the class whose field it is."""
    return [
        (cls, f.name)
        for cls in (Settings, Contract, CsvOptions)
        for f, meta in setting_keys(cls)
        if meta.env
    ]


def sample(name: str, tmp: Path) -> tuple[str, Any]:
    text, expected = SAMPLES[name]
    text = text.format(tmp=tmp)
    if isinstance(expected, Path):
        expected = Path(str(expected).format(tmp=tmp))
    return text, expected


def resolved(cls: type, name: str, s: Settings) -> Any:
    if cls is Settings:
        return getattr(s, name)
    (contract,) = s.contracts
    return getattr(contract.csv if cls is CsvOptions else contract, name)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    for folder in ("inbox", "other-inbox"):
        (tmp_path / folder).mkdir()
    (tmp_path / "pw").write_text("secret\n")
    return tmp_path


def flags_for(name: str, tmp: Path, **more: Any) -> dict[str, Any]:
    """Flags for a valid run that leave `name` to the other sources."""
    base = {"inbox": str(tmp / "inbox"), **BASE}
    return {**{k: v for k, v in base.items() if k != name}, **NEEDS.get(name, {}), **more}


def field_default(cls: type, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    try:
        return default_of(f)
    except TypeError:
        return None  # required (a contract's table)


def test_samples_cover_every_key() -> None:
    assert {name for _, name in env_keys()} == set(SAMPLES)


@pytest.mark.parametrize(("cls", "name"), env_keys(), ids=lambda v: getattr(v, "__name__", v))
def test_every_key_is_read_from_its_environment_variable(cls: type, name: str, tmp: Path) -> None:
    text, expected = sample(name, tmp)
    assert field_default(cls, name) != expected, f"{name}: the sample must not be the default"
    env = {env_name(name): text}
    if name == "password_file":
        env["INGESTD_DSN"] = "postgresql://u@h/db"
    got = resolve(flags_for(name, tmp), env)
    assert resolved(cls, name, got) == expected
    assert name in got.given or cls is not Settings


@pytest.mark.parametrize(("cls", "name"), env_keys(), ids=lambda v: getattr(v, "__name__", v))
def test_a_flag_beats_the_environment(cls: type, name: str, tmp: Path) -> None:
    """The variable holds a value that is wrong for every key: read, it would fail."""
    text, expected = sample(name, tmp)
    env = {env_name(name): "\x00 not a value"}
    if name == "password_file":
        env["INGESTD_DSN"] = "postgresql://u@h/db"
    got = resolve(flags_for(name, tmp, **{name: text}), env)
    assert resolved(cls, name, got) == expected


def toml_value(value: Any) -> Any:
    """A default as it would be written in a config file."""
    if isinstance(value, Path | BadRows):
        return str(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple):
        return list(value)
    return value


@pytest.mark.parametrize(("cls", "name"), env_keys(), ids=lambda v: getattr(v, "__name__", v))
def test_the_environment_beats_the_config_file(cls: type, name: str, tmp: Path) -> None:
    f = next(f for f in fields(cls) if f.name == name)
    meta = f.metadata["key"]
    if not meta.file or name in ("table", "pattern"):
        pytest.skip(f"{name} is not a key of the file's [defaults]")
    try:
        in_file = toml_value(default_of(f))
    except TypeError:
        pytest.skip(f"{name} has no default")
    if in_file is None:
        pytest.skip(f"{name}'s default cannot be written in TOML")
    if cls is Settings:
        config: dict[str, Any] = {name: in_file}
    elif cls is Contract:
        config = {"defaults": {name: in_file}}
    else:
        config = {"defaults": {"csv": {name: in_file}}}
    text, expected = sample(name, tmp)
    env = {env_name(name): text}
    if name == "password_file":
        env["INGESTD_DSN"] = "postgresql://u@h/db"
    got = resolve(flags_for(name, tmp), env, config, tmp / "ingestd.toml")
    assert resolved(cls, name, got) == expected


def test_the_file_beats_the_default_and_an_empty_variable_counts_as_unset(tmp: Path) -> None:
    config = {"chunk_size": 10, "settle_s": 1, "defaults": {"mode": "append"}}
    got = resolve(flags_for("x", tmp), {"INGESTD_CHUNK_SIZE": ""}, config, tmp / "c.toml")
    assert (got.chunk_size, got.settle_s, got.contracts[0].mode) == (10, 1.0, "append")
    assert "chunk_size" in got.given and "concurrency" not in got.given


@pytest.mark.parametrize("text", ["true", "True", "1", "yes", "YES", "on"])
def test_true_from_the_environment(text: str, tmp: Path) -> None:
    assert resolve(flags_for("x", tmp), {"INGESTD_DRY_RUN": text}).dry_run is True


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no", "off"])
def test_false_from_the_environment(text: str, tmp: Path) -> None:
    assert resolve(flags_for("x", tmp), {"INGESTD_RESUME": text}).resume is False


@pytest.mark.parametrize("text", ["maybe", "2", "tru", "-1"])
def test_a_boolean_variable_that_is_neither_is_one_line_naming_it(text: str, tmp: Path) -> None:
    with pytest.raises(UsageError) as err:
        resolve(flags_for("x", tmp), {"INGESTD_KEEP_FILES": text})
    assert str(err.value) == (
        f"INGESTD_KEEP_FILES must be true or false (or 1/0, yes/no), not {text!r}"
    )


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("INGESTD_CONCURRENCY", "two", "INGESTD_CONCURRENCY must be a whole number, not 'two'"),
        ("INGESTD_CONCURRENCY", "0", "INGESTD_CONCURRENCY must be at least 1, not 0"),
        ("INGESTD_SETTLE_S", "soon", "INGESTD_SETTLE_S must be a number, not 'soon'"),
        ("INGESTD_MODE", "replace", "INGESTD_MODE must be one of upsert, append, merge"),
        ("INGESTD_METRICS_ADDR", "nowhere", "INGESTD_METRICS_ADDR: metrics address 'nowhere'"),
        ("INGESTD_TABLE", "a b", "table name 'a b' is not allowed"),
    ],
)
def test_a_wrong_variable_is_one_line_naming_it(
    variable: str, text: str, message: str, tmp: Path
) -> None:
    name = variable.removeprefix("INGESTD_").lower()
    with pytest.raises(UsageError, match=message.replace("(", r"\(")) as err:
        resolve(flags_for(name, tmp), {variable: text})
    assert "\n" not in str(err.value)


def test_unknown_ingestd_variables_are_ignored(tmp: Path) -> None:
    """The test suite's own (INGESTD_TEST_DSN...) and other tools' share the prefix."""
    s = resolve(flags_for("x", tmp), {"INGESTD_TEST_DSN": "x", "INGESTD_NOT_A_KEY": "1"})
    assert s.dsn is None


# --- the config file: every value type-checked, one line naming the key and the file ----------

BAD_FILES = [
    ('[[contracts]]\ntable = "t"\npk = 5\n', "contract 1: pk must be a list of column names"),
    ('contracts = "x"\n', "contracts must be a list of [[contracts]] tables, not 'x'"),
    ("contracts = [1]\n", "contract 1 must be a table"),
    ('[defaults]\ncsv = 5\n[[contracts]]\ntable = "t"\npk = "id"\n', "[defaults]: csv must be"),
    ("defaults = 3\n", "[defaults] must be a table"),
    (
        '[[contracts]]\ntable = "t"\npk = "id"\npattern = 7\n',
        "contract 1: pattern must be a string",
    ),
    ('chunk_size = "1000"\n', "chunk_size must be a whole number, not '1000'"),
    ("concurrency = 2.5\n", "concurrency must be a whole number, not 2.5"),
    ('resume = "false"\n', "resume must be true or false (without quotes), not 'false'"),
    ("lease_s = true\n", "lease_s must be a number, not True"),
    ("metrics_addr = 9108\n", "metrics_addr must be a string (in quotes), not 9108"),
    ("inbox = 5\n", "inbox must be a string (in quotes), not 5"),
    ("log_level = 5\n", "log_level must be a string (in quotes), not 5"),
    ('log_format = "xml"\n', "log_format must be one of json, text, not 'xml'"),
    ('[[contracts]]\ntable = ["a"]\n', "contract 1: table must be a string (in quotes)"),
    ('[[contracts]]\ntable = "t"\npk = "id"\ntypes = [1]\n', "contract 1: types must be a table"),
    ('[[contracts]]\ntable = "t"\npk = "id"\nmax_bad_rows = 1.5\n', "max_bad_rows must be"),
    ('[[contracts]]\ntable = "t"\npk = "id"\ncsv = { header = "no" }\n', "csv.header must be"),
    ('[[contracts]]\nname = 3\ntable = "t"\npk = "id"\n', "contract 1: name must be a string"),
    ('[[contracts]]\ntable = "t"\npk = "id"\ntolerant = 1\n', "tolerant must be true or false"),
    ('[[contracts]]\ntable = "t"\nmode = "append"\npk = [1, 2]\n', "pk must be a list of column"),
    ("statement_timeout_s = nan\n", "statement_timeout_s must be a number, not nan"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_FILES)
def test_a_wrong_value_in_the_config_file_is_one_line_naming_key_and_file(
    text: str, fragment: str, tmp: Path
) -> None:
    path = tmp / "ingestd.toml"
    path.write_text(text if text.startswith("inbox") else f'inbox = "inbox"\n{text}')
    with pytest.raises(UsageError) as err:
        resolve({}, {}, load_config(path), path)
    message = str(err.value)
    assert fragment in message
    assert f"config file {path}" in message and "\n" not in message


def test_file_keys_are_the_settings_with_a_file_key() -> None:
    keys = file_keys()
    assert {"chunk_size", "password_file", "retry_base_s", "contracts", "defaults"} <= keys
    assert not {"once", "dry_run", "files", "config_path", "given"} & keys


# Any TOML value at all, in any key: a UsageError or valid Settings, never another error.
toml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.datetimes()
    | st.sampled_from(["", "*", "a,b", "id:int", "1%", "tab", "off", "1.5", "true"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
GLOBAL_KEYS = sorted(file_keys())
CONTRACT_KEYS = sorted([f.name for f, _ in setting_keys(Contract)] + ["csv"])
CSV_KEYS = sorted(f.name for f, _ in setting_keys(CsvOptions))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config-fuzz")
    (path / "inbox").mkdir()
    return path


def _fuzz(folder: Path, config: Mapping[str, Any]) -> None:
    try:
        resolve({}, {}, config, folder / "ingestd.toml")
    except UsageError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(GLOBAL_KEYS), value=toml_values)
def test_any_value_of_a_global_key_is_settings_or_a_usage_error(
    folder: Path, key: str, value: Any
) -> None:
    contract = {"table": "t", "pk": "id"}
    config: dict[str, Any] = {"inbox": "inbox", "contracts": [contract], key: value}
    if value is None:
        config.pop(key)  # TOML has no null
    _fuzz(folder, config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(CONTRACT_KEYS),
    csv_key=st.sampled_from(CSV_KEYS),
    value=toml_values,
    where=st.sampled_from(["contract", "defaults", "csv"]),
)
def test_any_value_of_a_contract_key_is_settings_or_a_usage_error(
    folder: Path, key: str, csv_key: str, value: Any, where: str
) -> None:
    contract: dict[str, Any] = {"table": "t", "pk": "id"}
    config: dict[str, Any] = {"inbox": "inbox", "contracts": [contract]}
    if value is None:
        pass
    elif where == "contract":
        contract[key] = value
    elif where == "defaults":
        config["defaults"] = {key: value}
    else:
        contract["csv"] = {csv_key: value}
    _fuzz(folder, config)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from([name for _, name in env_keys()]), text=st.text(max_size=20))
def test_any_environment_value_is_settings_or_a_usage_error(
    folder: Path, key: str, text: str
) -> None:
    try:
        resolve({"inbox": str(folder / "inbox"), **BASE}, {env_name(key): text})
    except UsageError as exc:
        assert "\n" not in str(exc) or "\n" in text


def test_example_values_parse_as_toml() -> None:
    """toml_value writes defaults the way the example config and README show them."""
    assert tomllib.loads('max_bad_rows = "0"')["max_bad_rows"] == toml_value(BadRows())


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"inbox": "a" * 5000, "once": True}, "cannot look at aaa"),
        ({"files": ["b" * 5000]}, "cannot look at bbb"),
        ({"metrics_addr": "host:²"}, "metrics address 'host:²' must be HOST:PORT or off"),
        ({"settle_s": "inf"}, "--settle-s must be a number, not 'inf'"),
        ({"encoding": "utf\x008"}, "unknown encoding"),
        ({"state_dir": "~no_such_user_here/x"}, "~ names no known user"),
    ],
)
def test_odd_values_found_by_fuzzing_are_usage_errors(
    flags: dict[str, Any], fragment: str, tmp: Path
) -> None:
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        resolve({**flags_for("x", tmp), **flags}, {})


def test_infinity_in_the_config_file_is_refused(tmp: Path) -> None:
    with pytest.raises(UsageError, match="statement_timeout_s must be a number, not inf"):
        resolve(flags_for("x", tmp), {}, {"statement_timeout_s": float("inf")}, tmp / "c.toml")
