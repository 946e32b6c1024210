"""The Dockerfile, .dockerignore and the container's config (no container engine needed).

The real build and run are tests/deploy/test_image.py (`make test-image`, in CI). Here,
for `make test` on any machine: the builder stage's exact command builds a wheel from
exactly the files the build context holds, and the HEALTHCHECK command is run against a
real daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ingestd.config import load_config, resolve
from tests.daemon import Daemon
from tests.deploy.helpers import DEPLOY, ROOT, load_yaml

DOCKERFILE = ROOT / "Dockerfile"
CONTAINER_CONFIG = DEPLOY / "docker" / "ingestd.toml"
VOLUMES = ["/data/inbox", "/data/done", "/data/failed", "/data/state"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        word, _, args = line.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, args in instructions():
        if word == "FROM":
            name = args.split(" AS ")[-1] if " AS " in args else str(len(result))
            current = result.setdefault(name, [("FROM", args)])
        else:
            current.append((word, args))
    return result


def only(stage: list[tuple[str, str]], word: str) -> str:
    values = [a for w, a in stage if w == word]
    assert len(values) == 1, f"{word}: {values}"
    return values[0]


def makefile_wheel_cmd() -> str:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^WHEEL_CMD\s*:?=\s*(.+)$", text, re.M)
    assert match, "Makefile defines no WHEEL_CMD"
    recipe = re.search(r"^wheel:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe and "$(WHEEL_CMD)" in recipe.group(1), "make wheel does not run $(WHEEL_CMD)"
    return match.group(1).strip()


def builder_wheel_cmd() -> str:
    runs = [a for w, a in stages()["builder"] if w == "RUN" and " wheel " in f" {a} "]
    assert len(runs) == 1, runs
    return runs[0]


def test_two_stages_from_one_base_given_as_a_build_argument() -> None:
    # CI builds on a base made from Debian packages (make image-base): no registry there.
    first = instructions()[0]
    assert first == ("ARG", "BASE=python:3.11-slim")
    named = stages()
    assert list(named) == ["builder", "runtime"]
    assert named["builder"][0] == ("FROM", "${BASE} AS builder")
    assert named["runtime"][0] == ("FROM", "${BASE} AS runtime")


def test_builder_runs_exactly_the_make_wheel_command() -> None:
    assert builder_wheel_cmd() == makefile_wheel_cmd()
    assert builder_wheel_cmd() == "pip wheel --no-deps --no-build-isolation -w dist ."


def test_builder_installs_the_lock_then_the_wheel_alone() -> None:
    builder = stages()["builder"]
    runs = [a for w, a in builder if w == "RUN"]
    assert runs[0] == (
        "python3 -m venv /opt/ingestd "
        "&& pip install --require-hashes --no-deps -r requirements/image.txt "
        "-r requirements/build.txt"
    )
    last = runs[-1]
    assert last.startswith("pip install --no-deps dist/*.whl && pip check")
    assert "pip uninstall --yes pip setuptools" in last
    # The lock, not the wheel's open ranges, decides every version; no extras (the embedded
    # PostgreSQL stays out of the image).
    assert "[" not in last.split("&&")[0]
    assert ("ARG", "PIP_NO_INDEX") in builder and ("ARG", "PIP_FIND_LINKS") in builder


def test_runtime_copies_the_virtualenv_alone() -> None:
    runtime = stages()["runtime"]
    copies = [a for w, a in runtime if w == "COPY" and a.startswith("--from=builder")]
    assert copies == ["--from=builder /opt/ingestd/ /opt/ingestd/"]
    assert not [a for w, a in runtime if w == "RUN" and "pip " in a]
    assert "embedded" not in DOCKERFILE.read_text().split("AS runtime", 1)[1]
    assert not [a for w, a in runtime if w in ("COPY", "ADD") and "ingestd/" in a.split()[0]]
    env = " ".join(a for w, a in runtime if w == "ENV")
    assert "PATH=/opt/ingestd/bin:" in env


def test_runtime_user_volumes_and_process() -> None:
    runtime = stages()["runtime"]
    text = " ".join(a for w, a in runtime if w in ("RUN", "ARG"))
    assert "INGESTD_UID=10001" in text
    assert "useradd --system --uid ${INGESTD_UID} --gid ingestd" in text
    assert "groupadd --system --gid ${INGESTD_UID} ingestd" in text
    assert only(runtime, "USER") == "ingestd:ingestd"
    assert only(runtime, "WORKDIR") == "/data"
    assert json.loads(only(runtime, "VOLUME")) == VOLUMES
    # The directories exist and belong to ingestd before VOLUME (fresh volumes copy that).
    words = [w for w, _ in runtime]
    mkdir = next(i for i, (w, a) in enumerate(runtime) if w == "RUN" and "mkdir" in a)
    assert all(d in runtime[mkdir][1] for d in VOLUMES)
    assert "chown -R ingestd:ingestd /data" in runtime[mkdir][1]
    assert mkdir < words.index("VOLUME") and words.index("USER") < words.index("VOLUME")
    assert only(runtime, "EXPOSE") == "9108"
    assert only(runtime, "STOPSIGNAL") == "SIGTERM"
    assert json.loads(only(runtime, "ENTRYPOINT")) == ["ingestd"]
    assert json.loads(only(runtime, "CMD")) == ["--config", "/etc/ingestd/ingestd.toml"]
    assert (
        "COPY",
        "deploy/docker/ingestd.toml /etc/ingestd/ingestd.toml",
    ) in runtime


def healthcheck_command() -> list[str]:
    spec = only(stages()["runtime"], "HEALTHCHECK")
    options, _, command = spec.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv: list[str] = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "http://127.0.0.1:9108/healthz" in argv[2]
    return argv


def test_container_config_listens_everywhere_and_uses_the_volumes() -> None:
    config = load_config(CONTAINER_CONFIG)
    settings = resolve({}, env={}, config=config, config_path=Path("/etc/ingestd/ingestd.toml"))
    assert settings.metrics_addr == ("0.0.0.0", 9108)  # noqa: S104 - inside a container
    assert settings.inbox == Path("/data/inbox")
    assert settings.done_dir == Path("/data/done")
    assert settings.failed_dir == Path("/data/failed")
    assert settings.state_dir == Path("/data/state")
    assert settings.dsn is None  # from INGESTD_DSN, never baked into the image
    assert settings.shutdown_grace_s < 45


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then admit what the build needs"
    admitted = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for word, args in instructions():
        if word in ("COPY", "ADD") and not args.startswith("--from="):
            *sources, _dest = args.split()
            for source in sources:
                inside = {a for a in admitted if a == source.rstrip("/") or a.startswith(source)}
                assert inside, f"{source} is not in the build context"
                assert all((ROOT / a).exists() for a in inside), inside
    # The runtime lock and the build backend's; the dev lock stays out.
    assert {"requirements/image.txt", "requirements/build.txt"} <= admitted
    assert "requirements/dev.txt" not in admitted


@pytest.fixture
def build_context(tmp_path: Path) -> Path:
    """A copy of what `docker build .` sends: the files .dockerignore admits."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "ingestd", context / "ingestd", ignore=shutil.ignore_patterns("__pycache__")
    )
    return context


def test_the_builder_command_builds_a_complete_wheel_from_the_context(
    build_context: Path,
) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        builder_wheel_cmd().split(),
        cwd=build_context,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (build_context / "dist").glob("ingestd-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
        entry_points = zf.read(meta.replace("METADATA", "entry_points.txt")).decode()
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ingestd").rglob("*.py")}
    assert shipped <= names
    assert "ingestd/py.typed" in names
    assert "ingestd = ingestd.cli:main" in entry_points
    requires = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    hard = [r for r in requires if "extra ==" not in r]
    assert not [r for r in hard if "embedded" in r], hard


@pytest.fixture
def daemon(daemons: Callable[..., Daemon]) -> Daemon:
    config = 'inbox = "inbox"\n[[contracts]]\nname = "m"\npattern = "*.csv"\ntable = "t"\n'
    return daemons(config + 'pk = ["id"]\n')


def test_healthcheck_command_passes_against_a_live_daemon_and_fails_without_one(
    daemon: Daemon,
) -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    compose_check = compose["services"]["ingestd"]["healthcheck"]["test"]
    assert compose_check[:3] == ["CMD", "python", "-c"]
    codes = [healthcheck_command()[2], compose_check[3]]  # /healthz, /readyz
    codes = [c.replace("127.0.0.1:9108", f"127.0.0.1:{daemon.port}") for c in codes]
    for code in codes:
        ok = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    daemon.kill()
    for code in codes:
        down = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        assert down.returncode != 0
