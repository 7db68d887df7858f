"""Every metric a dashboard panel or an alert rule uses is exposed by the real processes.

Scrapes each process of the shared end-to-end stack (``lessonstream dev``: every service,
two progress replicas, a certificate worker) on its own port, as Prometheus does (one
exporter per process), and checks every metric name of every dashboard expression and
alert rule (``deploy/``) against what was scraped: a metric renamed in the code or in a
dashboard breaks this test. The gateway is scraped too (Caddy's metrics listener), and
counts what it answered itself. Also: each consumer process reports the lag of each of its
consumer groups, and the outbox figures of its database, read at that scrape."""

from __future__ import annotations

import importlib
import json
import time

import httpx
import pytest

from lessonstream.stack import PROCESSES
from shared.auth import issue_token
from shared.settings import ServiceSettings
from tests.devstack import DevStack
from tests.promql import PROMETHEUS_OWN, exposed_names, sample_sum, used_metric_names

pytestmark = pytest.mark.xdist_group("e2e")


def subscriptions_of(kind: str) -> set[tuple[str, str]]:
    """(group, topic) of every subscription of a process kind, and of the other processes'
    groups it reports too, from its composition root."""
    spec = next(p for p in PROCESSES if p.name == kind)
    module_name, function = spec.factory.split(":")
    service = getattr(importlib.import_module(module_name), function)().state.runtime.spec
    return ({(sub.consumer, sub.topic.value) for sub in service.subscriptions}
            | {(w.group, w.topic.value) for w in service.also_watched})


def test_every_metric_of_the_dashboards_and_alerts_is_scraped(e2e_stack: DevStack) -> None:
    """Scraped as a Prometheus would, from the targets the runner writes for it."""
    targets = json.loads((e2e_stack.var_dir / "run" / "prometheus-targets.json").read_text())
    assert sorted(t["labels"]["process_instance"] for t in targets) == sorted([*e2e_stack.ports, "gateway"])
    assert {t["labels"]["process"] for t in targets} == {p.name for p in PROCESSES} | {"gateway"}
    with httpx.Client(timeout=15) as client:  # the gateway has answered something of its own
        assert client.get(f"{e2e_stack.gateway}/ready/enrollment").status_code == 200
    scraped: dict[str, str] = {}
    with httpx.Client(timeout=15) as client:
        for target in targets:
            [address] = target["targets"]
            answer = client.get(f"http://{address}/metrics")
            assert answer.status_code == 200, target
            scraped[target["labels"]["process_instance"]] = answer.text

    exposed = set().union(*(exposed_names(text) for text in scraped.values()))
    missing = {name: sorted(where) for name, where in used_metric_names().items()
               if name not in exposed and name not in PROMETHEUS_OWN}
    assert not missing, f"used by dashboards or alerts but exposed by no process: {missing}"


def test_the_gateway_counts_what_it_answered_itself(e2e_stack: DevStack) -> None:
    """A body over the gateway's limit is cut off by the gateway, which answers 413 itself
    (the service never saw a whole request): only the gateway's figures can show it."""
    targets = json.loads((e2e_stack.var_dir / "run" / "prometheus-targets.json").read_text())
    [gateway] = [t["targets"][0] for t in targets if t["labels"]["process"] == "gateway"]

    def refused() -> float:
        text = httpx.get(f"http://{gateway}/metrics", timeout=15).text
        # Counted once per handler passed: at the body limit, as the dashboards count.
        return sample_sum(text, "caddy_http_request_duration_seconds_count", server="gateway",
                          handler="request_body", code="413") or 0.0

    before = refused()
    # Signed in, so the service reads the body and the gateway's limit bites.
    token = issue_token(ServiceSettings(), user_id="1")
    answer = httpx.post(f"{e2e_stack.gateway}/api/progress", content=b"x" * (2 * 1024 * 1024),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                        timeout=15)
    assert answer.status_code == 413
    assert answer.json()["code"] == "payload_too_large"
    assert refused() == before + 1


def test_each_process_reports_its_groups_lag_and_its_outbox(e2e_stack: DevStack) -> None:
    """Read at that scrape: a reading that missed its bound on a loaded machine leaves the lag
    out of that one answer (never a stale figure), so each process is asked until it has one."""
    from prometheus_client.parser import text_string_to_metric_families

    with httpx.Client(timeout=15) as client:
        for name in e2e_stack.ports:
            kind = next(p.name for p in PROCESSES if name == p.name
                        or (name.startswith(f"{p.name}-") and name.removeprefix(f"{p.name}-").isdigit()))
            expected = subscriptions_of(kind)
            deadline = time.monotonic() + 30
            while True:
                text = client.get(f"{e2e_stack.url(name)}/metrics").text
                families = {f.name: f for f in text_string_to_metric_families(text)}
                lag = {(s.labels["group"], s.labels["topic"]): s.value
                       for s in families["lessonstream_consumer_lag_messages"].samples}
                if set(lag) == expected or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert set(lag) == expected, name
            assert all(value >= 0 for value in lag.values()), (name, lag)
            outbox = families["lessonstream_outbox_pending"].samples
            assert [s.labels["service"] for s in outbox] == [kind], name
