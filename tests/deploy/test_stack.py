"""deploy/compose.yaml brought up for real with podman-compose (`make test-image` runs it).

No image registry is reachable here, so the stack runs what the machine can build: the
ingestd image under test (INGESTD_IMAGE) and INGESTD_STACK_IMAGE, Debian's PostgreSQL and
Prometheus on the local base (tests/deploy/stack.Containerfile). The test copies the compose
file and changes only what that forces: the images, and every service on the host's
network (loopback only) with its own free port instead of the service names. The config
and rule files it mounts, the environment, volumes, start order and stop timeouts are the
file's own. Grafana is left out: Debian has no package of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon import free_port, wait_for
from tests.deploy.engine import ENGINE, IMAGE, engine_name
from tests.deploy.helpers import DEPLOY, ROOT, alert_rules, load_yaml

STACK_IMAGE = os.environ.get("INGESTD_STACK_IMAGE", "")
BASE_IMAGE = os.environ.get("INGESTD_BASE_IMAGE", "")
COMPOSE = os.environ.get("INGESTD_COMPOSE") or shutil.which("podman-compose")

pytestmark = [
    pytest.mark.skipif(
        not (IMAGE and STACK_IMAGE and BASE_IMAGE), reason="runs under `make test-image`"
    ),
    pytest.mark.skipif(
        ENGINE is None or engine_name() != "podman" or COMPOSE is None,
        reason="needs podman and podman-compose (make test-image installs it)",
    ),
]


def http_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 - http://127.0.0.1 only
            return json.loads(r.read())
    except OSError:
        return None


def local_compose(work: Path, ports: dict[str, int]) -> dict[str, Any]:
    """deploy/compose.yaml for this machine: local images, host network, free ports."""
    compose: dict[str, Any] = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    del services["grafana"]
    landing = work / "landing"
    for service in services.values():
        service["network_mode"] = "host"
        service.pop("ports", None)
        volumes = []
        for volume in service.get("volumes", []):
            source, _, rest = volume.partition(":")
            if source.startswith("./landing/"):
                source = str(landing / source.removeprefix("./landing/"))
            elif source.startswith("./"):
                source = str(DEPLOY / source)
            volumes.append(f"{source}:{rest}")
        service["volumes"] = volumes
    pg, ingestd, prom = services["postgres"], services["ingestd"], services["prometheus"]
    port = ports["postgres"]
    # Debian's server in the stack image, set up as the postgres image's entrypoint would.
    pg["image"] = STACK_IMAGE
    pg["user"] = "postgres"
    pg["volumes"] = []
    pg["entrypoint"] = ["sh", "-c"]
    pg["command"] = [
        'echo "$$POSTGRES_PASSWORD" > /tmp/pw && /usr/lib/postgresql/15/bin/initdb -D /tmp/pg'
        ' -U "$$POSTGRES_USER" --pwfile=/tmp/pw --auth=scram-sha-256 >/dev/null'
        ' && echo "CREATE DATABASE $$POSTGRES_DB" | /usr/lib/postgresql/15/bin/postgres --single'
        " -D /tmp/pg postgres >/dev/null"
        f" && exec /usr/lib/postgresql/15/bin/postgres -D /tmp/pg -h 127.0.0.1 -p {port}"
        " -k /tmp -c fsync=off"
    ]
    pg["healthcheck"]["test"] = ["CMD-SHELL", f"pg_isready -h 127.0.0.1 -p {port} -U ingestd"]
    services["landing-init"]["image"] = BASE_IMAGE
    ingestd.pop("build")
    ingestd["image"] = IMAGE
    dsn = ingestd["environment"]["INGESTD_DSN"]
    ingestd["environment"]["INGESTD_DSN"] = dsn.replace("@postgres:5432/", f"@127.0.0.1:{port}/")
    ingestd["environment"]["INGESTD_METRICS_ADDR"] = f"127.0.0.1:{ports['ingestd']}"
    prom["image"] = STACK_IMAGE
    prom["entrypoint"] = ["prometheus"]
    prom["command"] = [
        *prom["command"], f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
    ]  # fmt: skip
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [
                f"127.0.0.1:{ports['ingestd']}" if t == "ingestd:9108" else t.replace(
                    "localhost:9090", f"127.0.0.1:{ports['prometheus']}")
                for t in static["targets"]
            ]  # fmt: skip
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom["volumes"] = [
        f"{work / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro" if ":/etc/prometheus/"
        "prometheus.yml" in v else v
        for v in prom["volumes"]
    ]  # fmt: skip
    prom["healthcheck"]["test"] = ["CMD-SHELL", "true"]  # the stack image has no wget
    return compose


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int], list[str]]]:
    ports = {name: free_port() for name in ("postgres", "ingestd", "prometheus")}
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text(yaml.safe_dump(local_compose(tmp_path, ports)))
    assert COMPOSE and ENGINE
    base = [
        COMPOSE, "--podman-path", ENGINE, "-p", f"ingestd-stack-{os.getpid()}",
        "--in-pod", "false", "-f", str(compose_file),
    ]  # fmt: skip
    if shutil.which("runc"):
        base += ["--podman-args", "--runtime runc"]
    run_args = "--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
    up = subprocess.run(
        [*base, "--podman-run-args", run_args, "up", "--detach", "--no-build"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield tmp_path / "landing", ports, base
    finally:
        subprocess.run([*base, "down", "--volumes", "--timeout", "45"],
                       capture_output=True, timeout=300, cwd=ROOT)  # fmt: skip


def prometheus_value(port: int, query: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    answer = http_json(url)
    if not answer or answer.get("status") != "success" or not answer["data"]["result"]:
        return None
    return float(answer["data"]["result"][0]["value"][1])


def test_a_dropped_file_shows_up_in_prometheus(
    stack: tuple[Path, dict[str, int], list[str]],
) -> None:
    landing, ports, base = stack

    def logs() -> str:
        done = subprocess.run([*base, "logs"], capture_output=True, text=True, timeout=60)
        return done.stdout[-4000:] + done.stderr[-4000:]

    ready = f"http://127.0.0.1:{ports['ingestd']}/readyz"
    try:
        wait_for(lambda: _status(ready) == 200, 120, "ingestd's /readyz")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{logs()}") from None
    inbox = landing / "inbox"
    shutil.copy(ROOT / "examples" / "inbox" / "companies.csv", inbox / ".companies.csv.part")
    (inbox / ".companies.csv.part").rename(inbox / "companies.csv")
    query = 'sum(ingest_files_processed_total{job="ingestd", status="success"})'
    try:
        wait_for(lambda: prometheus_value(ports["prometheus"], query) == 1, 120, query)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{logs()}") from None
    assert [p.name for p in (landing / "done").rglob("*.csv")] == ["companies.csv"]
    assert prometheus_value(ports["prometheus"], 'up{job="ingestd"}') == 1
    rules = http_json(f"http://127.0.0.1:{ports['prometheus']}/api/v1/rules")
    names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert {r["alert"] for r in alert_rules()} <= names


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 - http://127.0.0.1 only
            return int(r.status)
    except OSError:
        return 0
