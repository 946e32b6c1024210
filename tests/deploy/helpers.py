"""Shared helpers of the deploy checks: repository paths and PromQL metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "ingestd.json"

# Words of PromQL that look like metric names but are not.
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w$:.])([A-Za-z_:][A-Za-z0-9_:]*)(?!\w)(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, labels, keywords left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)  # label matchers: {job=~"$job"}
    text = _RANGE.sub("", text)  # [5m], [$__rate_interval], [15m:1m]
    text = _GROUPING.sub("", text)  # by (le), on (job, instance)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables outside matchers
    names = set(_IDENT.findall(text)) - _KEYWORDS
    return {n for n in names if not re.fullmatch(r"\d+[smhdwy]?", n)}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return out


def dashboard_exprs() -> list[str]:
    """Every PromQL text in the dashboard: panel targets and template variable queries."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            exprs.append(inner.group(1) if inner else query)
    return exprs
