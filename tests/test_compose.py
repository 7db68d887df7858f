"""docker-compose.yml checked statically against the services, their settings and topics
(no Docker engine runs here)."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from typing import Any

import pytest
import yaml

from lessonstream.infra import ROOT
from lessonstream.stack import PROCESSES
from shared.events import COMPACTED_TOPICS, TOPIC_PARTITIONS
from shared.settings import ServiceSettings

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def interpolate(value: str) -> str:
    """Resolve ${VAR:?msg} and ${VAR:-default} as compose would, with VAR set to a long secret."""
    value = re.sub(r"\$\{([A-Z_]+):-([^}]*)\}", r"\2", value)
    return re.sub(r"\$\{([A-Z_]+)(:\?[^}]*)?\}", lambda m: f"{m.group(1).lower()}-" + "s" * 40, value)


def settings_class(factory: str) -> type[ServiceSettings]:
    """The settings class the process's factory takes (``build_app(settings: X | None)``)."""
    module_name, function = factory.split(":")
    hints = typing.get_type_hints(getattr(importlib.import_module(module_name), function))
    classes = [a for a in typing.get_args(hints["settings"]) if inspect.isclass(a) and issubclass(a, ServiceSettings)]
    assert len(classes) == 1, f"{factory}: expected one settings class"
    return classes[0]


def databases_created() -> set[str]:
    sql = (ROOT / "deploy" / "postgres" / "init-databases.sql").read_text()
    return set(re.findall(r"CREATE DATABASE (\w+);", sql))


@pytest.mark.parametrize("spec", PROCESSES, ids=lambda s: s.name)
def test_every_process_is_a_service_with_valid_production_settings(spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    service = SERVICES[spec.name]
    dockerfile = ROOT / service["build"]["dockerfile"]
    assert dockerfile.exists()
    assert service["build"]["context"] == "."
    env = {k: interpolate(str(v)) for k, v in service["environment"].items()}
    assert env["LESSONSTREAM_ENV"] == "production"
    assert env["SERVICE_NAME"] == spec.name
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    database = env["DATABASE_URL"].rsplit("/", 1)[1]
    assert database == spec.database and database in databases_created()
    # The settings must load in production from exactly this environment: every required
    # variable is set and none of the refused development defaults is left.
    for key in list(__import__("os").environ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_class(spec.factory)()
    assert settings.env == "production"
    assert settings.service_name == spec.name
    depends = service["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["kafka-setup"]["condition"] == "service_completed_successfully"


def test_the_worker_scales_out() -> None:
    worker = SERVICES["certificates-worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "services.certificates.worker:build_app" in worker["command"]
    assert worker["deploy"]["replicas"] >= 1
    assert worker["build"] == SERVICES["certificates"]["build"]


def test_only_the_gateway_and_the_mail_inbox_publish_ports() -> None:
    published = {name for name, svc in SERVICES.items() if svc.get("ports")}
    assert published == {"gateway", "mailpit"}


@pytest.mark.parametrize("spec", [p for p in PROCESSES if p.name == p.database], ids=lambda s: s.name)
def test_dockerfiles_are_slim_non_root_and_carry_only_their_own_service(spec: Any) -> None:
    text = (ROOT / "services" / spec.name / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]-slim", text, re.M)
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    copied = set(re.findall(r"^COPY services/(\w+) ", text, re.M))
    assert copied == {spec.name}
    assert f"services.{spec.name}.app:build_app" in text


def test_gateway_uses_the_one_caddyfile_with_every_upstream_set() -> None:
    gateway = SERVICES["gateway"]
    assert "./gateway/Caddyfile:/etc/caddy/Caddyfile:ro" in gateway["volumes"]
    caddyfile = (ROOT / "gateway" / "Caddyfile").read_text()
    required = set(re.findall(r"\{\$([A-Z_]+)\}", caddyfile))  # placeholders without a default
    assert required <= set(gateway["environment"])
    for name in ("progress", "enrollment", "certificates", "notifications"):
        assert gateway["environment"][f"{name.upper()}_UPSTREAM"] == f"{name}:8000"


def test_kafka_runs_in_kraft_mode_with_a_healthcheck() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert kafka["healthcheck"]["test"]
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_topic_setup_creates_every_topic_with_its_partitions() -> None:
    script = "\n".join(SERVICES["kafka-setup"]["command"])
    created = {
        m.group(1): (int(m.group(2)), m.group(3) or "")
        for m in re.finditer(r"create --topic ([\w-]+) --partitions (\d+)(.*)", script)
    }
    assert set(created) == {t.value for t in TOPIC_PARTITIONS}
    for topic, partitions in TOPIC_PARTITIONS.items():
        count, rest = created[topic.value]
        assert count == partitions, topic
        assert ("cleanup.policy=compact" in rest) == (topic in COMPACTED_TOPICS), topic


def test_notifications_send_through_mailpit() -> None:
    env = SERVICES["notifications"]["environment"]
    assert env["SMTP_HOST"] == "mailpit"
    assert str(env["SMTP_PORT"]) == "1025"


def test_compose_file_names_no_path_that_does_not_exist() -> None:
    for svc in SERVICES.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
