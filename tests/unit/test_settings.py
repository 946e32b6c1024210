"""Settings resolution: flag > environment > config file > default, and every usage error."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from ingestd.config import load_config, parse_metrics_addr, resolve
from ingestd.exceptions import UsageError
from ingestd.settings import Contract, CsvOptions, Settings

NO_ENV: dict[str, str] = {}

CONFIG = """
dsn = "postgresql://cfg@cfghost/cfgdb"
chunk_size = 1000
concurrency = 2

[defaults]
mode = "append"

[defaults.csv]
encoding = "latin-1"

[[contracts]]
name = "orders"
pattern = "orders_*.csv"
table = "orders"
schema = "sales"
pk = ["order_id"]
headers = ["order_id", "customer", "amount"]
types = { amount = "numeric(12,2)", order_id = "bigint" }
mode = "upsert"
csv = { delimiter = ";" }

[[contracts]]
name = "events"
pattern = "events/*.parquet"
table = "events"
file_type = "parquet"
preserve_types = true

[[contracts]]
name = "legacy"
pattern = "*.txt"
table = "legacy"
pk = "id,line"
headers = "id,line,text"
mode = "merge"
tolerant = true
tolerant_mode = "empty"
csv = { delimiter = "tab", header = false, quote = "'" }
"""


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "ingestd.toml"
    path.write_text(CONFIG)
    return path


def single(inbox: Path, **flags: Any) -> Settings:
    """Resolve single-contract flags against an existing inbox and an empty environment."""
    base: dict[str, Any] = {"table": "t", "pk": "id", "inbox": str(inbox)}
    return resolve({**base, **flags}, NO_ENV)


def from_config(
    path: Path, inbox: Path, env: dict[str, str] | None = None, **flags: Any
) -> Settings:
    return resolve({"inbox": str(inbox), **flags}, env or NO_ENV, load_config(path), path)


# --- defaults and precedence --------------------------------------------------------------


def test_defaults(inbox: Path) -> None:
    s = single(inbox)
    assert s.chunk_size == 50_000
    assert s.concurrency == 4
    assert s.max_retries == 3
    assert s.resume is True
    assert s.metrics_addr == ("127.0.0.1", 9108)
    assert s.dsn is None
    assert s.once is False
    assert s.manifest_table == "ingestion_manifest"
    assert s.effective_queue_size == 8
    (contract,) = s.contracts
    assert contract.mode == "upsert"
    assert contract.table == "t"
    assert contract.pk == ("id",)
    assert contract.pattern == "*"
    assert contract.file_type == "auto"
    assert contract.preserve_types is False
    assert contract.csv == CsvOptions(",", '"', "utf-8", True)


def test_flags_are_converted_and_kept(inbox: Path) -> None:
    s = single(
        inbox,
        chunk_size=10,
        concurrency=8,
        max_retries=0,
        resume=False,
        mode="append",
        pk=None,
        metrics_addr="192.0.2.1:9999",
    )
    assert (s.chunk_size, s.concurrency, s.max_retries) == (10, 8, 0)
    assert s.resume is False
    assert s.metrics_addr == ("192.0.2.1", 9999)
    assert s.contracts[0].mode == "append"
    assert s.contracts[0].pk == ()


def test_metrics_addr_off_disables_the_endpoint(inbox: Path) -> None:
    assert single(inbox, metrics_addr="off").metrics_addr is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("off", None),
        ("OFF", None),
        ("localhost:1234", ("localhost", 1234)),
        (":9108", ("127.0.0.1", 9108)),
        ("[::1]:9108", ("::1", 9108)),
    ],
)
def test_parse_metrics_addr(value: str, expected: tuple[str, int] | None) -> None:
    assert parse_metrics_addr(value) == expected


@pytest.mark.parametrize("value", ["localhost", "host:port", "host:70000", "host:-1"])
def test_parse_metrics_addr_rejects_garbage(value: str) -> None:
    with pytest.raises(UsageError, match="HOST:PORT or off"):
        parse_metrics_addr(value)


def test_dsn_flag_beats_env_beats_config(config_file: Path, inbox: Path) -> None:
    env = {"INGESTD_DSN": "postgresql://env@envhost/envdb"}
    flag = "postgresql://flag@flaghost/flagdb"
    assert from_config(config_file, inbox).dsn == "postgresql://cfg@cfghost/cfgdb"
    assert from_config(config_file, inbox, env).dsn == "postgresql://env@envhost/envdb"
    assert from_config(config_file, inbox, env, dsn=flag).dsn == flag


def test_password_file_injects_the_password(tmp_path: Path, inbox: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    env = {"INGESTD_DSN": "postgresql://u@h:5432/db", "INGESTD_PASSWORD_FILE": str(secret)}
    s = resolve({"table": "t", "pk": "id", "inbox": str(inbox)}, env)
    assert s.dsn == "postgresql://u:s3cret@h:5432/db"


def test_config_values_beat_defaults_and_flags_beat_config(config_file: Path, inbox: Path) -> None:
    s = from_config(config_file, inbox)
    assert (s.chunk_size, s.concurrency) == (1000, 2)
    s = from_config(config_file, inbox, chunk_size=7)
    assert (s.chunk_size, s.concurrency) == (7, 2)


def test_relative_paths_in_config_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = tmp_path / "c.toml"
    path.write_text(
        'inbox = "in"\ndone_dir = "out/done"\n[[contracts]]\ntable = "t"\nmode = "append"\n'
    )
    s = resolve({"once": True}, NO_ENV, load_config(path), path)
    assert s.inbox == tmp_path / "in"
    assert s.done_dir == tmp_path / "out" / "done"


# --- contracts from a config file ---------------------------------------------------------


def test_config_contracts(config_file: Path, inbox: Path) -> None:
    s = from_config(config_file, inbox)
    orders, events, legacy = s.contracts
    assert orders == Contract(
        name="orders",
        pattern="orders_*.csv",
        table="orders",
        schema="sales",
        pk=("order_id",),
        headers=("order_id", "customer", "amount"),
        types=(("amount", "numeric(12,2)"), ("order_id", "bigint")),
        mode="upsert",
        csv=CsvOptions(delimiter=";", encoding="latin-1"),
    )
    assert events.table == "events"
    assert events.mode == "append"  # from [defaults]
    assert events.pk == ()
    assert events.file_type == "parquet"
    assert events.preserve_types is True
    assert events.csv == CsvOptions(encoding="latin-1")
    assert legacy.pk == ("id", "line")
    assert legacy.headers == ("id", "line", "text")
    assert legacy.mode == "merge"
    assert legacy.tolerant is True
    assert legacy.tolerant_mode == "empty"
    assert legacy.csv == CsvOptions(delimiter="\t", quote="'", encoding="latin-1", header=False)


def test_flags_override_every_contract(config_file: Path, inbox: Path) -> None:
    s = from_config(
        config_file, inbox, mode="append", delimiter="|", encoding="utf-8", preserve_types=True
    )
    assert len(s.contracts) == 3
    for contract in s.contracts:
        assert contract.mode == "append"
        assert contract.csv.delimiter == "|"
        assert contract.csv.encoding == "utf-8"
        assert contract.preserve_types is True
    # What the flags do not name stays as the contract says.
    assert s.contracts[2].csv.quote == "'"
    assert s.contracts[2].csv.header is False


def test_table_flag_replaces_config_contracts(config_file: Path, inbox: Path) -> None:
    s = from_config(config_file, inbox, table="other", pk="k")
    (contract,) = s.contracts
    assert (contract.name, contract.table, contract.pk) == ("other", "other", ("k",))
    assert contract.mode == "append"  # [defaults] still apply
    assert contract.csv.encoding == "latin-1"


# --- --types ------------------------------------------------------------------------------


def test_types_flag_parsing(inbox: Path) -> None:
    s = single(inbox, types="id:bigint,price:numeric(12,2)")
    assert s.contracts[0].types == (("id", "bigint"), ("price", "numeric(12,2)"))


def test_types_flag_with_spaces_and_several_commas(inbox: Path) -> None:
    s = single(inbox, types="a: numeric(10, 3), b:text, c : Double Precision")
    assert s.contracts[0].types == (
        ("a", "numeric(10, 3)"),
        ("b", "text"),
        ("c", "double precision"),
    )


@pytest.mark.parametrize(
    ("types", "fragment"),
    [
        ("price", "must be col:pgtype"),
        ("id:foo", "not supported"),
        ("id:integer; drop table x", "not supported"),
        ("bad col:text", "not allowed"),
    ],
)
def test_bad_types_flag(inbox: Path, types: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        single(inbox, types=types)


def test_types_must_name_header_columns(inbox: Path) -> None:
    with pytest.raises(UsageError, match="column in types zz is not among the headers"):
        single(inbox, headers="id,a", types="zz:text")


# --- routing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "relative", "expected"),
    [
        ("*.csv", "a.csv", True),
        ("*.csv", "sub/dir/a.csv", True),  # a pattern without / looks at the basename
        ("*.csv", "a.csv.gz", False),
        ("*.csv", "A.CSV", False),  # case-sensitive
        ("orders_*.csv", "x/orders_1.csv", True),
        ("orders_*.csv", "orders.csv", False),
        ("sales/*.csv", "sales/a.csv", True),
        ("sales/*.csv", "a.csv", False),
        ("sales/*.csv", "other/sales/a.csv", False),
        ("sales/2024/*.parquet", "sales/2024/x.parquet", True),
    ],
)
def test_contract_matches(pattern: str, relative: str, expected: bool) -> None:
    contract = Contract(name="c", pattern=pattern, table="t")
    assert contract.matches(PurePosixPath(relative)) is expected


def test_contract_for_routes_to_the_first_match(config_file: Path, inbox: Path) -> None:
    s = from_config(config_file, inbox)

    def route(name: str) -> str | None:
        found = s.contract_for(PurePosixPath(name))
        return None if found is None else found.name

    assert route("orders_2024.csv") == "orders"
    assert route("deep/orders_2024.csv") == "orders"
    assert route("events/e1.parquet") == "events"
    assert route("e1.parquet") is None
    assert route("old.txt") == "legacy"
    assert route("misc.csv") is None


# --- sources ------------------------------------------------------------------------------


def test_files_imply_once_and_keep_files(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("id\n1\n")
    s = resolve({"table": "t", "pk": "id", "files": [str(f)]}, NO_ENV)
    assert s.files == (f,)
    assert s.once is True
    assert s.keep_files is True


def test_once_needs_an_existing_inbox(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist or is not a directory"):
        resolve({"table": "t", "pk": "id", "inbox": str(tmp_path / "nope"), "once": True}, NO_ENV)


def test_daemon_may_wait_for_an_inbox_to_appear(tmp_path: Path) -> None:
    s = resolve({"table": "t", "pk": "id", "inbox": str(tmp_path / "later")}, NO_ENV)
    assert s.inbox == tmp_path / "later"


# --- usage errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"mode": "replace"}, "--mode must be one of upsert, append, merge, not 'replace'"),
        ({"table": "bad table"}, "table name 'bad table' is not allowed"),
        ({"table": "t; drop table x"}, "table name"),
        ({"pk": "id;x"}, "primary key column"),
        ({"schema": "a b"}, "schema name"),
        ({"chunk_size": 0}, "--chunk-size must be at least 1, not 0"),
        ({"chunk_size": "many"}, "--chunk-size must be a whole number, not 'many'"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"max_retries": -1}, "--max-retries must be at least 0"),
        ({"headers": "a,b"}, "primary key column id is not among the headers"),
        ({"headers": "id,a,id"}, "headers name a column twice"),
        ({"headers": "id,bad col"}, "column 'bad col' is not allowed"),
        ({"pk": None}, "mode upsert needs a primary key"),
        ({"pk": None, "mode": "merge"}, "mode merge needs a primary key"),
        ({"delimiter": ":"}, "delimiter ':' is not one of"),
        ({"quote": "''"}, "quote must be one ASCII character"),
        ({"encoding": "klingon-8"}, "unknown encoding 'klingon-8'"),
        ({"metrics_addr": "nowhere"}, "metrics address 'nowhere'"),
        ({"header": False}, "files without a header row need --headers"),
        ({"tolerant_mode": "zero"}, "--tolerant-mode must be one of null, empty"),
        ({"file_type": "xlsx"}, "--file-type must be one of csv, ndjson, parquet, auto"),
        ({"log_level": "loud"}, "--log-level must be one of DEBUG, INFO"),
        ({"manifest_table": "my-manifest"}, "manifest table"),
        ({"pattern": "../outside/*.csv"}, "must be a relative glob inside the inbox"),
        ({"pattern": "/etc/*.csv"}, "must be a relative glob inside the inbox"),
    ],
)
def test_usage_errors(inbox: Path, flags: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        single(inbox, **flags)


def test_missing_files_flag_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist or is not a regular file"):
        resolve({"table": "t", "pk": "id", "files": [str(tmp_path / "gone.csv")]}, NO_ENV)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a regular file"):
        resolve({"table": "t", "pk": "id", "files": [str(tmp_path)]}, NO_ENV)


def test_no_table_at_all(inbox: Path) -> None:
    with pytest.raises(UsageError, match="no target table"):
        resolve({"inbox": str(inbox), "pk": "id"}, NO_ENV)


def test_nothing_to_do(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nothing to do"):
        resolve({"table": "t", "pk": "id"}, NO_ENV)


def test_unreadable_password_file(tmp_path: Path, inbox: Path) -> None:
    env = {"INGESTD_DSN": "postgresql://u@h/db", "INGESTD_PASSWORD_FILE": str(tmp_path / "no")}
    with pytest.raises(UsageError, match="cannot read password file"):
        resolve({"table": "t", "pk": "id", "inbox": str(inbox)}, env)


# --- config file errors -------------------------------------------------------------------


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('inbox = "x"\nchunksize = 5\n')
    with pytest.raises(UsageError, match="unknown setting\\(s\\) chunksize"):
        load_config(path)


def test_unknown_key_in_a_contract(tmp_path: Path, inbox: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[contracts]]\ntable = "t"\nmode = "append"\nprimary = "id"\n')
    with pytest.raises(UsageError, match="contract 1: unknown setting\\(s\\) primary"):
        resolve({"inbox": str(inbox)}, NO_ENV, load_config(path), path)


def test_unknown_csv_key_in_a_contract(tmp_path: Path, inbox: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[contracts]]\nname = "x"\ntable = "t"\nmode = "append"\ncsv = { sep = ";" }\n'
    )
    with pytest.raises(UsageError, match="contract x: unknown csv setting\\(s\\) sep"):
        resolve({"inbox": str(inbox)}, NO_ENV, load_config(path), path)


def test_duplicate_contract_names(tmp_path: Path, inbox: Path) -> None:
    path = tmp_path / "c.toml"
    block = '[[contracts]]\nname = "x"\ntable = "t"\nmode = "append"\n'
    path.write_text(block + block)
    with pytest.raises(UsageError, match="are both named"):
        resolve({"inbox": str(inbox)}, NO_ENV, load_config(path), path)


def test_contract_without_table(tmp_path: Path, inbox: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[contracts]]\nname = "x"\npattern = "*.csv"\n')
    with pytest.raises(UsageError, match="contract x: no table given"):
        resolve({"inbox": str(inbox)}, NO_ENV, load_config(path), path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("chunk_size = = 3\n")
    with pytest.raises(UsageError, match="is not valid TOML"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_pattern_with_dotdot_in_config(tmp_path: Path, inbox: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[contracts]]\ntable = "t"\nmode = "append"\npattern = "a/../../b/*.csv"\n')
    with pytest.raises(UsageError, match="relative glob inside the inbox"):
        resolve({"inbox": str(inbox)}, NO_ENV, load_config(path), path)


# --- settings that would loop -------------------------------------------------------------


@pytest.mark.parametrize(
    ("done", "failed", "fragment"),
    [
        ("inbox", None, "done_dir {d}/inbox is the inbox"),
        ("inbox/done", None, "done_dir {d}/inbox/done is inside the inbox"),
        (None, "inbox/sub/failed", "failed_dir {d}/inbox/sub/failed is inside the inbox"),
        (".", None, "the inbox {d}/inbox is inside done_dir {d}: files"),
        (None, ".", "the inbox {d}/inbox is inside failed_dir"),
    ],
)
def test_archive_folders_that_would_loop_are_refused(
    tmp_path: Path, inbox: Path, done: str | None, failed: str | None, fragment: str
) -> None:
    """Files moved there would be found again and reloaded on every rescan."""
    flags = {
        "done_dir": done and str(tmp_path / done),
        "failed_dir": failed and str(tmp_path / failed),
    }
    with pytest.raises(UsageError, match="would be found and loaded again") as err:
        single(inbox, **flags)
    assert fragment.format(d=tmp_path) in str(err.value)
    assert "\n" not in str(err.value)


def test_loops_are_found_through_symlinks(tmp_path: Path, inbox: Path) -> None:
    (tmp_path / "alias").symlink_to(inbox, target_is_directory=True)
    with pytest.raises(UsageError, match="is inside the inbox"):
        single(inbox, done_dir=str(tmp_path / "alias" / "done"))
    link_inbox = tmp_path / "link-inbox"
    link_inbox.symlink_to(tmp_path / "archive" / "in", target_is_directory=True)
    (tmp_path / "archive" / "in").mkdir(parents=True)
    with pytest.raises(UsageError, match="is inside failed_dir"):
        single(link_inbox, failed_dir=str(tmp_path / "archive"))


def test_defaults_and_separate_folders_do_not_loop(tmp_path: Path, inbox: Path) -> None:
    assert single(inbox).done_path == tmp_path / "done"  # beside the inbox
    s = single(inbox, done_dir=str(tmp_path / "inbox-done"), failed_dir=str(tmp_path / "f"))
    assert s.done_path == tmp_path / "inbox-done"  # a name that starts like the inbox's


def test_nothing_loops_when_files_are_kept(tmp_path: Path, inbox: Path) -> None:
    s = single(inbox, done_dir=str(inbox / "done"), keep_files=True)
    assert s.keep_files is True


def test_a_config_file_that_would_loop_is_refused_by_check_config(tmp_path: Path) -> None:
    from ingestd.commands import check_config

    (tmp_path / "in").mkdir()
    config = tmp_path / "ingestd.toml"
    config.write_text('inbox = "in"\ndone_dir = "in/done"\n[[contracts]]\ntable = "t"\npk = "id"\n')
    assert check_config([str(config)]) == 2


def test_an_inbox_that_is_a_file_is_refused_for_the_daemon_too(tmp_path: Path) -> None:
    (tmp_path / "inbox").write_text("not a folder")
    with pytest.raises(UsageError, match="is not a directory"):
        resolve({"table": "t", "pk": "id", "inbox": str(tmp_path / "inbox")}, NO_ENV)
