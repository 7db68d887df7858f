"""The Grafana dashboards and Prometheus alert rules, checked offline: each dashboard is
structurally valid for the Grafana schemaVersion it declares, names the provisioned data
source, and every expression it or an alert rule holds is well formed and names metrics.
(That those metrics exist is checked against live scrapes: tests/e2e/test_metrics_scrape.py.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lessonstream.infra import ROOT
from tests.promql import ALERTS, alert_rules, dashboards, expressions, metric_names, panels

DATASOURCES = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
                             .read_text())["datasources"]
DATASOURCE_UIDS = {d["uid"]: d["type"] for d in DATASOURCES}

# What a dashboard of each declared schemaVersion must carry (Grafana 10.x/11.x schema 36-39:
# panels with ids and gridPos on a 24-column grid, datasources as {type, uid} references,
# targets with refIds). A version not listed here is refused until checked.
SCHEMA_VERSIONS = {36, 37, 38, 39}
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "text", "row", "heatmap", "piechart"}
GRID_COLUMNS = 24

DASHBOARD_FILES = dashboards()


def test_one_dashboard_per_concern() -> None:
    assert set(DASHBOARD_FILES) == {"ingest.json", "events.json", "certificates.json", "delivery.json"}
    uids = [d["uid"] for d in DASHBOARD_FILES.values()]
    titles = [d["title"] for d in DASHBOARD_FILES.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", sorted(DASHBOARD_FILES))
def test_dashboard_is_valid_for_its_schema_version(name: str) -> None:
    dashboard = DASHBOARD_FILES[name]
    assert isinstance(dashboard.get("schemaVersion"), int), "schemaVersion must be declared"
    assert dashboard["schemaVersion"] in SCHEMA_VERSIONS
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])  # Grafana's uid limit
    assert dashboard["title"] and isinstance(dashboard["panels"], list) and dashboard["panels"]
    assert dashboard.get("id") is None  # provisioned: Grafana assigns the database id
    ids = [panel["id"] for panel in panels(dashboard)]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"panel ids not unique: {ids}"
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        where = f"{name} panel {panel['id']}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel.get("title"), where
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("h", "w", "x", "y")), where
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] + grid["w"] <= GRID_COLUMNS, where
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"{where} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        _check_datasource(panel["datasource"], where)
        targets = panel["targets"]
        assert targets, f"{where} has no query"
        refs = [t["refId"] for t in targets]
        assert len(set(refs)) == len(refs), f"{where}: refIds not unique"
        for target in targets:
            _check_datasource(target.get("datasource", panel["datasource"]), where)
            assert target["expr"].strip(), where


def _check_datasource(reference: Any, where: str) -> None:
    assert isinstance(reference, dict), f"{where}: datasource must be a {{type, uid}} reference"
    assert reference.get("uid") in DATASOURCE_UIDS, f"{where}: unknown datasource uid {reference.get('uid')}"
    assert reference.get("type") == DATASOURCE_UIDS[reference["uid"]], where


def _balanced(expr: str) -> bool:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


@pytest.mark.parametrize("where", sorted(expressions()))
def test_every_expression_is_well_formed_and_names_our_metrics(where: str) -> None:
    expr = expressions()[where]
    assert _balanced(expr), f"{where}: unbalanced brackets in {expr}"
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr}"
    # Ours, Prometheus's own, and the gateway's (Caddy's built-in metrics).
    assert all(n.startswith(("lessonstream_", "caddy_http_")) or n == "up" for n in names), names


def test_alert_rules_say_what_they_mean() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names)
    # The alerts the operations page explains: lag growing, the outbox stuck, dead letters, 5xx.
    assert {"LessonstreamConsumerLagGrowing", "LessonstreamOutboxStuck", "LessonstreamDeadLetters",
            "LessonstreamHttp5xx"} <= set(names)
    operations = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", "0s"))), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert f"`{rule['alert']}`" in operations, f"{rule['alert']} is not explained in docs/operations.md"


def test_the_parser_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, service) (rate(a_bucket{route=~"/api/{id}", s="5.."}[5m:1m])))'
        " / on (service) group_left (x) b offset 5m > bool 0.5 and c unless up"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "up"}
    assert metric_names("sum without (instance) (rate(d_total[1h]))") == {"d_total"}


# Prometheus's own checker (Debian's ``prometheus`` package; ``make system-deps`` installs it).
# Required in CI; skipped on a machine without it.
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"),
                                    reason="promtool is not installed (make system-deps)")


def promtool(*args: str, cwd: Path | None = None) -> str:
    assert PROMTOOL is not None, "promtool is not installed: make system-deps"
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_prometheus_loads_the_configuration_and_its_rules(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    # Where compose mounts the rules, here: the repository's file.
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert f"SUCCESS: {len(alert_rules())} rules found" in promtool("check", "rules", str(ALERTS))


@needs_promtool
def test_each_alert_fires_on_what_it_means_and_not_before() -> None:
    """``tests/fixtures/alerts_test.yml``: series in, alerts (labels and rendered annotations) out."""
    tested = yaml.safe_load((ROOT / "tests" / "fixtures" / "alerts_test.yml").read_text())
    covered = {case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"]}
    assert covered == {rule["alert"] for rule in alert_rules()}
    promtool("test", "rules", "alerts_test.yml", cwd=ROOT / "tests" / "fixtures")
