"""What the dashboards and alert rules ask Prometheus for, and what the services expose.

``metric_names`` finds the metric names in a PromQL expression without a full parser: string
literals, label matchers (``{...}``), ranges and subqueries (``[5m]``), and the label lists
of ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right`` are removed; what
is left that looks like an identifier, is not called (a function or an aggregation), and is
not a keyword or a number, is a metric name. ``exposed_names`` turns a ``/metrics`` answer
into every sample name its families can expose, samples or not yet (a labelled counter no
code path has touched is still declared by its ``# TYPE`` line)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from lessonstream.infra import ROOT

DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "atan2", "inf", "nan", "start", "end",
}
# Series Prometheus makes itself for every target, not a service's.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, called = match.group(1), match.group(2)
        if called or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def exposed_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def sample_sum(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples called ``name`` in a ``/metrics`` answer whose labels include
    ``labels``; None when there is none."""
    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]
    return sum(values) if values else None


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def expressions() -> dict[str, str]:
    """Every PromQL expression shipped: each dashboard target and each alert rule, by where."""
    found: dict[str, str] = {}
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                found[f"{name} panel {panel['id']} {target['refId']}"] = target["expr"]
    for rule in alert_rules():
        found[f"alert {rule['alert']}"] = rule["expr"]
    return found


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where it is used."""
    used: dict[str, set[str]] = {}
    for where, expr in expressions().items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def path_of(name: str) -> Path:
    return DASHBOARDS / name
