"""The reviewer checklist, as far as a machine can check it (.github/pull_request_template.md).

Each test names the checklist item it enforces; the layering items are import-linter
contracts in pyproject.toml, run by `make check` (and, here, once against a deliberately
broken copy, to show that a broken rule fails with its name).
"""

from __future__ import annotations

import ast
import inspect
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestd import __version__
from ingestd.db import sql
from ingestd.db.sql import Target
from ingestd.identifiers import InvalidIdentifierError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ingestd"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def python_files(*tops: str) -> Iterator[Path]:
    for top in tops:
        yield from sorted((ROOT / top).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_psycopg2_anywhere() -> None:
    """'Library-only code contains no psycopg2 imports': nor do tests or the benchmark."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files("ingestd", "tests", "bench")
        if any(m.split(".")[0] in ("psycopg2", "psycopg") for m in imported_modules(path))
    ]
    assert offenders == []


# A string that begins like an SQL statement: an upper-case keyword then a name, or in any
# case the shape of a statement (keyword and the clause it needs).
_SQL_START = re.compile(
    r"\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|TRUNCATE|COPY|MERGE|WITH|LOCK|"
    r"GRANT|REVOKE|COMMENT ON|BEGIN|COMMIT|ROLLBACK|SET|SHOW|VACUUM|ANALYZE)\s+[\w\"*($]"
    r"|(?i:\s*(select\s.*\sfrom\s|insert\s+into\s|update\s+\S+\s+set\s|delete\s+from\s"
    r"|create\s+(temp\w*\s+|unique\s+)?(table|index|view|schema|role)\s|alter\s+(table|role)\s"
    r"|drop\s+(table|index|view|schema)\s|truncate\s+\S|copy\s+\S+\s.*\b(from|to)\s"
    r"|merge\s+into\s|grant\s.*\son\s))",
    re.S,
)


def sql_like_strings(path: Path) -> list[tuple[int, str]]:
    """Literal strings (and f-string parts) in `path` that read as SQL statements."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _SQL_START.match(node.value):
                found.append((node.lineno, node.value[:60]))
    return found


def test_sql_text_lives_only_in_ingestd_db() -> None:
    """'All SQL text is in db/': no module above the database layer spells a statement."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in python_files("ingestd")
        if "db" not in path.relative_to(PACKAGE).parts[:1]
        for line, text in sql_like_strings(path)
    ]
    assert offenders == []


def test_the_sql_check_sees_a_statement() -> None:
    """The check above can fail: it finds a statement written as a plain or f-string."""
    sample = ROOT / "tests" / "unit" / "test_review_checklist.py"
    lines = [text for _, text in sql_like_strings(sample)]
    assert any(text.startswith("SELECT 1") for text in lines)
    assert _SQL_START.match("DELETE FROM t") and not _SQL_START.match("Selected rows")
    assert _SQL_START.match("delete from t where true")
    assert _SQL_START.match("select a from t") and not _SQL_START.match("select the columns")


_PROBE = "SELECT 1 FROM probe"  # seen by test_the_sql_check_sees_a_statement

# Parameters of the builders in db/sql.py that carry a raw identifier into SQL text (a
# Target carries its schema, table, columns and key).
_IDENTIFIER_PARAMS = {"schema", "table", "stage", "constraint", "target"}
# Functions of db/sql.py that return names or parse text rather than build a statement.
_NOT_BUILDERS = {
    "stage_name",
    "manifest_status_check_name",
    "parse_rejects_comment",
    "stage_columns",  # names for copy_to_table(columns=...), which asyncpg quotes itself
    "text_stage_name",
    "optimistic_upsert",  # a yes or no about the target, no statement
}


def identifier_builders() -> list[tuple[str, Callable[..., object], list[str]]]:
    """Every public builder in db/sql.py with at least one raw-identifier parameter."""
    found = []
    for name, fn in vars(sql).items():
        if name.startswith("_") or name in _NOT_BUILDERS:
            continue
        if not inspect.isfunction(fn) or fn.__module__ != sql.__name__:
            continue
        params = list(inspect.signature(fn).parameters)
        if _IDENTIFIER_PARAMS & set(params):
            found.append((name, fn, params))
    return found


def test_the_builders_are_found() -> None:
    names = {name for name, _, _ in identifier_builders()}
    assert {"create_manifest", "create_rejects", "upsert", "merge", "drop_stage"} <= names


def _call(fn: Callable[..., object], params: list[str], ident: str) -> str:
    """Call a builder with `ident` for every identifier (a Target made of it as schema,
    table, column and key) and plain values for the rest."""
    args: list[object] = []
    kwargs: dict[str, object] = {}
    signature = inspect.signature(fn).parameters
    for p in params:
        if signature[p].kind is inspect.Parameter.KEYWORD_ONLY:
            default = signature[p].default
            kwargs[p] = True if default is inspect.Parameter.empty else default
        elif p == "target":
            args.append(Target(ident, ident, (ident, "v"), (ident,)))
        elif p in _IDENTIFIER_PARAMS:
            args.append(ident)
        elif p == "types":
            args.append(["text", "text"])
        elif p == "manifests":
            args.append(["ingestion_manifest"])
        elif p == "pg_type":
            args.append("text")
        elif p == "rescued":
            args.append([ident])
        elif p == "typed":
            args.append([(ident, "ingestd_cast")])
        elif p == "name":
            args.append('"m"')  # already quoted by the caller (the manifest's name)
        else:
            args.append("x")
    result = fn(*args, **kwargs)
    return "\n".join(result) if isinstance(result, list) else str(result)


_HOSTILE = st.one_of(
    st.sampled_from(['a"b', "x; DROP TABLE t; --", "a b", "", "é", "1a", "a" * 64, "a'b"]),
    st.text(max_size=70).filter(lambda s: not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s)),
)
# Valid names, made unlike any word the builders spell themselves (the zq prefix).
_PLAIN = st.from_regex(r"zq[A-Za-z0-9_]{0,40}", fullmatch=True)


@given(ident=_HOSTILE)
def test_a_name_that_is_not_an_identifier_is_refused_by_every_builder(ident: str) -> None:
    """'Identifiers are validated via quote_ident()': nothing else reaches SQL text."""
    for name, fn, params in identifier_builders():
        with pytest.raises(InvalidIdentifierError):
            _call(fn, params, ident)
            pytest.fail(f"{name} accepted {ident!r}")


@given(ident=_PLAIN)
def test_a_valid_name_appears_only_double_quoted(ident: str) -> None:
    for name, fn, params in identifier_builders():
        text = _call(fn, params, ident)
        assert f'"{ident}' in text, name
        assert ident not in re.sub(r'"[^"]*"', " ", text), name


# The flags the original design's checklist requires of the command line.
ORIGINAL_FLAGS = (
    "--dry-run", "--mode", "--preserve-types", "--resume", "--no-resume", "--max-retries",
    "--chunk-size", "--concurrency",
)  # fmt: skip


def test_the_original_design_flags_are_in_help() -> None:
    """'CLI flags include --dry-run, --mode, --preserve-types, --resume, --max-retries,
    --chunk-size and --concurrency'."""
    out = subprocess.run(
        [sys.executable, "-m", "ingestd", "--help"], capture_output=True, text=True, check=True
    ).stdout
    missing = [flag for flag in ORIGINAL_FLAGS if not re.search(rf"{flag}\b", out)]
    assert missing == []


def test_version_is_one_number_everywhere() -> None:
    """`ingestd --version`, the package and pyproject.toml say the same version, and the
    changelog has a section for it (or it is still unreleased)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = subprocess.run(
        [sys.executable, "-m", "ingestd", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == f"ingestd {project['version']}"
    assert __version__ == project["version"] == metadata.version("ingestd")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M)
    assert changelog.index("## [Unreleased]") < changelog.index(f"## [{__version__}]")


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed (.[dev])")
def test_a_broken_layering_rule_fails_with_its_name(tmp_path: Path) -> None:
    """'Only ingestd.db imports asyncpg': asyncpg imported in pipeline.py fails the check,
    and the message names the rule and the import."""
    shutil.copytree(PACKAGE, tmp_path / "ingestd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    clean = subprocess.run([LINT_IMPORTS], cwd=tmp_path, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout[-2000:]
    pipeline = tmp_path / "ingestd" / "pipeline.py"
    pipeline.write_text("import asyncpg  # noqa\n" + pipeline.read_text())
    broken = subprocess.run([LINT_IMPORTS], cwd=tmp_path, capture_output=True, text=True)
    assert broken.returncode != 0
    assert "Only ingestd.db talks to the database driver BROKEN" in broken.stdout
    assert "ingestd.pipeline -> asyncpg" in broken.stdout
