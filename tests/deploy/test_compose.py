"""deploy/compose.yaml: the local stack's services, wiring, and the files it mounts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ingestd.config import load_config, resolve
from tests.deploy.helpers import DEPLOY, ROOT, load_yaml

COMPOSE = DEPLOY / "compose.yaml"
LONG_RUNNING = ("postgres", "ingestd", "prometheus", "grafana")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_services_images_and_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(LONG_RUNNING) <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["ingestd"]["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (COMPOSE.parent / ".." / "Dockerfile").resolve().is_file()
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    ports = {name: s.get("ports", []) for name, s in services.items()}
    assert "127.0.0.1:9108:9108" in ports["ingestd"]
    assert "127.0.0.1:9090:9090" in ports["prometheus"]
    assert "127.0.0.1:3000:3000" in ports["grafana"]


def test_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert services[name]["restart"] == "unless-stopped", name
    assert "/readyz" in " ".join(services["ingestd"]["healthcheck"]["test"])
    assert "127.0.0.1:9108" in " ".join(services["ingestd"]["healthcheck"]["test"])
    depends = {n: s.get("depends_on", {}) for n, s in services.items()}
    assert depends["ingestd"]["postgres"] == {"condition": "service_healthy"}
    assert depends["ingestd"]["landing-init"] == {"condition": "service_completed_successfully"}
    assert depends["prometheus"]["ingestd"] == {"condition": "service_started"}
    assert depends["grafana"]["prometheus"] == {"condition": "service_healthy"}


def test_ingestd_gets_its_config_database_and_landing_dirs(compose: dict[str, Any]) -> None:
    ingestd = compose["services"]["ingestd"]
    assert ingestd["environment"]["INGESTD_DSN"].startswith("postgresql://")
    assert "@postgres:5432/" in ingestd["environment"]["INGESTD_DSN"]
    targets = {v.split(":")[1]: v.split(":")[0] for v in ingestd["volumes"]}
    assert targets["/etc/ingestd/ingestd.toml"] == "./docker/ingestd.toml"
    assert targets["/data/inbox"] == "./landing/inbox"
    assert targets["/data/done"] == "./landing/done"
    assert targets["/data/failed"] == "./landing/failed"
    assert targets["/data/state"] == "ingestd-state"
    assert set(compose["volumes"]) >= {"pgdata", "ingestd-state", "prometheus-data", "grafana-data"}
    # Stopping waits longer than ingestd's own shutdown grace.
    config = load_config(DEPLOY / "docker" / "ingestd.toml")
    settings = resolve({}, env={}, config=config, config_path=DEPLOY / "docker" / "ingestd.toml")
    assert _seconds(ingestd["stop_grace_period"]) > settings.shutdown_grace_s
    assert ingestd["stop_signal"] == "SIGTERM"
    # The landing dirs are made writable for the image's user before ingestd starts.
    init = compose["services"]["landing-init"]
    assert sorted(init["volumes"]) == sorted(
        v for v in ingestd["volumes"] if v.startswith("./landing/")
    )


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_every_mounted_file_exists_in_the_repository(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                continue  # a named volume
            path = (COMPOSE.parent / source).resolve()
            assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
            if source.startswith("./landing/"):
                continue  # data directories, created on first start
            assert path.exists(), f"{name} mounts {source}, which does not exist"
            assert volume.endswith(":ro"), f"{name}: mount config read-only: {volume}"


def test_prometheus_mounts_the_config_and_rules_it_names(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    targets = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert targets["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert targets[f"/etc/prometheus/{rule_file}"] == f"./prometheus/{rule_file}"
    scrape = [
        t
        for job in config["scrape_configs"]
        if job["job_name"] == "ingestd"
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    host, port = scrape[0].split(":")
    assert host in compose["services"] and port == "9108"


def test_grafana_is_provisioned(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["grafana"]["volumes"]
    provisioning = [m for m in mounts if ":/etc/grafana/provisioning/" in m]
    assert {m.split(":")[1] for m in provisioning} == {
        "/etc/grafana/provisioning/datasources",
        "/etc/grafana/provisioning/dashboards",
    }
    for mount in provisioning:
        files = list((COMPOSE.parent / mount.split(":")[0]).glob("*.yaml"))
        assert files, f"nothing to provision in {mount}"
