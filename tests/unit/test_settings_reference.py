"""Defaults live once, on the Settings, Contract and CsvOptions fields: --help, the README's
configuration table and config/ingestd.example.toml are checked against them here."""

from __future__ import annotations

import re
import tomllib
from dataclasses import Field
from pathlib import Path
from typing import Any

import pytest

from ingestd.cli import _parser
from ingestd.config import file_keys
from ingestd.settings import (
    Contract,
    CsvOptions,
    Key,
    Settings,
    default_of,
    env_name,
    flag_name,
    setting_keys,
    shown_default,
)

REPO = Path(__file__).resolve().parents[2]
CLASSES = ((Settings, ""), (Contract, ""), (CsvOptions, "csv."))


def all_keys() -> list[tuple[str, Field[Any], Key]]:
    """(key as the config file spells it, field, metadata) of every setting."""
    return [(prefix + f.name, f, meta) for cls, prefix in CLASSES for f, meta in setting_keys(cls)]


def readme_rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Configuration reference") :]
    section = section[: section.index("\n## ", 3)]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("| ---"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append(cells)
    return rows


def test_the_readme_table_lists_every_setting_with_its_flag_variable_and_default() -> None:
    header, *rows = readme_rows()
    assert header[:4] == ["config key", "flag", "environment", "default"]
    by_name: dict[str, list[str]] = {}
    for key, flag, env, default, _meaning in rows:
        name = key.strip("`") or flag.strip("`").split()[0]
        assert name not in by_name, f"README: {name} twice"
        by_name[name] = [key.strip("`"), flag.strip("`").split(" ")[0], env.strip("`"), default]
    expected: dict[str, list[str]] = {
        "--config": ["", "--config", "", ""],
        "--files": ["", "--files", "", ""],
    }
    for key, f, meta in all_keys():
        name = key if meta.file else flag_name(f.name)
        expected[name] = [
            key if meta.file else "",
            flag_name(f.name) if meta.flag else "",
            env_name(f.name) if meta.env else "",
            shown_default(f),
        ]
    got = {name: [*cells[:3], cells[3].strip("`")] for name, cells in by_name.items()}
    assert got == expected


def test_help_shows_every_flag_with_its_default_and_variable() -> None:
    actions = {s: a for a in _parser()._actions for s in a.option_strings}
    for _key, f, meta in all_keys():
        if not meta.flag:
            assert flag_name(f.name) not in actions
            continue
        text = " ".join(str(actions[flag_name(f.name)].help).split()).replace("%%", "%")
        default = shown_default(f)
        assert meta.help in text
        assert f"env {env_name(f.name)})" in text
        if default:
            assert f"(default {default}; " in text


def test_config_keys_are_the_fields() -> None:
    assert file_keys() == {f.name for f, meta in setting_keys(Settings) if meta.file} | {
        "contracts",
        "defaults",
    }


def example_lines() -> dict[str, tuple[str, bool]]:
    """Top-level `key = value` lines of the example, commented out or not, before its
    first [section]: {key: (value text, commented)}."""
    text = (REPO / "config" / "ingestd.example.toml").read_text()
    found: dict[str, tuple[str, bool]] = {}
    for line in text.split("\n[", 1)[0].splitlines():
        match = re.match(r"^(#\s*)?([a-z0-9_]+)\s*=\s*(.+?)(\s+#.*)?$", line)
        if match:
            found[match.group(2)] = (match.group(3), bool(match.group(1)))
    return found


def as_written(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"
    return value


def test_the_example_config_names_every_key_and_shows_the_defaults() -> None:
    lines = example_lines()
    fields = {f.name: f for f, meta in setting_keys(Settings) if meta.file}
    assert set(fields) - set(lines) == set(), "keys missing from the example"
    assert set(lines) - set(fields) == set(), "keys in the example that are not settings"
    for name, (text, _commented) in lines.items():
        f = fields[name]
        default = as_written(default_of(f)) if f.metadata["key"].shown is None else None
        if default is None or name == "inbox":
            continue  # an example value (a path, a DSN, the host name)
        written = tomllib.loads(f"v = {text}")["v"]
        assert written == default, f"example {name} = {text}, default {default!r}"


@pytest.mark.parametrize("section", ["defaults"])
def test_the_example_defaults_section_shows_contract_defaults(section: str) -> None:
    data = tomllib.loads((REPO / "config" / "ingestd.example.toml").read_text())
    contract = {f.name: f for f, _ in setting_keys(Contract)}
    for name, value in data[section].items():
        assert str(default_of(contract[name])) == str(value), name
