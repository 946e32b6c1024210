"""The Prometheus config and alert rules: promtool checks them and runs their unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.helpers import ALERTS, DEPLOY, alert_rules, load_yaml

PROM = DEPLOY / "prometheus"
TESTS = PROM / "alerts.test.yml"
REQUIRED_ALERTS = {
    "IngestdFilesFailing",
    "IngestdNoSuccessWhileFilesWait",
    "IngestdOldestFileTooOld",
    "IngestdDatabaseErrorsRising",
    "IngestdNotReady",
    "IngestdDown",
    "IngestdArchiveFailing",
}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)",
)


def promtool(*args: str | Path) -> str:
    done = subprocess.run(
        ["promtool", *map(str, args)], cwd=PROM, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@needs_promtool
def test_promtool_check_rules() -> None:
    assert f"SUCCESS: {len(REQUIRED_ALERTS)} rules found" in promtool("check", "rules", ALERTS)


@needs_promtool
def test_promtool_check_config() -> None:
    # Also loads the rule files the config names, relative to it, as Prometheus will.
    promtool("check", "config", PROM / "prometheus.yml")


@needs_promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    assert "SUCCESS" in promtool("test", "rules", TESTS)


def test_the_required_alerts_exist_with_severity_and_text() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    by_name = {r["alert"]: r for r in rules}
    assert by_name["IngestdDown"]["expr"] == 'up{job="ingestd"} == 0'
    assert by_name["IngestdDown"]["for"] == "2m"
    assert by_name["IngestdNotReady"]["expr"] == "ingest_ready == 0"
    assert by_name["IngestdNotReady"]["for"] == "5m"
    assert (
        "ingest_oldest_waiting_file_age_seconds > 900" in by_name["IngestdOldestFileTooOld"]["expr"]
    )


def test_every_alert_has_a_firing_and_a_quiet_unit_test_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires >= REQUIRED_ALERTS, f"no firing case for {REQUIRED_ALERTS - fires}"
    assert quiet >= REQUIRED_ALERTS, f"no non-firing case for {REQUIRED_ALERTS - quiet}"


def test_prometheus_scrapes_ingestd_and_loads_the_rules() -> None:
    config = load_yaml(PROM / "prometheus.yml")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for sc in jobs["ingestd"]["static_configs"] for t in sc["targets"]]
    assert targets == ["ingestd:9108"]
    assert jobs["ingestd"].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]
    assert (PROM / "alerts.yml").is_file()
