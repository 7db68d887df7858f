"""docker-compose.yml checked statically against the services, their settings and topics
(no Docker engine runs here)."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
import typing
import uuid
from typing import Any

import pytest
import yaml

from lessonstream.infra import ROOT
from lessonstream.stack import PROCESSES
from shared.events import COMPACTED_TOPICS, TOPIC_PARTITIONS, Topic
from shared.outbox import marker_topic
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
    dockerfile = ROOT / service["build"].get("dockerfile", "Dockerfile")
    assert dockerfile.exists()
    assert service["build"]["context"] == "."
    assert service["build"]["args"]["SERVICE"] == spec.database  # the worker runs the certificates image
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


def test_only_the_gateway_the_mail_inbox_and_grafana_publish_ports() -> None:
    published = {name for name, svc in SERVICES.items() if svc.get("ports")}
    assert published == {"gateway", "mailpit", "grafana"}


DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_one_dockerfile_is_slim_non_root_and_carries_only_the_service_it_is_built_for() -> None:
    assert re.search(r"^FROM python:3\.1[1-9]-slim", DOCKERFILE, re.M)
    assert re.search(r"^USER (?!root)\S+", DOCKERFILE, re.M)
    # shared/ and the one service named by the build argument; its extra only; its app.
    assert set(re.findall(r"^COPY services/(\S+) ", DOCKERFILE, re.M)) == {"__init__.py", "${SERVICE}"}
    assert '".[${SERVICE}]"' in DOCKERFILE
    assert "services.${SERVICE}.app:build_app" in DOCKERFILE
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {p.database for p in PROCESSES if p.name == p.database} <= set(extras)


@pytest.mark.parametrize("spec", [p for p in PROCESSES if p.name == p.database], ids=lambda s: s.name)
def test_each_service_image_is_built_for_that_service(spec: Any) -> None:
    build = SERVICES[spec.name]["build"]
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile" and build["context"] == "."
    assert build["args"]["SERVICE"] == spec.name
    app = importlib.import_module(f"services.{spec.name}.app")  # what the image's command runs
    assert callable(app.build_app)


GATEWAY_DOCKERFILE = (ROOT / "gateway" / "Dockerfile").read_text()


def test_the_gateway_image_carries_the_one_caddyfile_and_the_contract_generated_from_the_code() -> None:
    gateway = SERVICES["gateway"]
    assert gateway["build"] == {"context": ".", "dockerfile": "gateway/Dockerfile"}
    assert "volumes" not in gateway and "image" not in gateway  # nothing mounted over what the image holds
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", GATEWAY_DOCKERFILE, re.M)
    assert len(stages) == 2
    (python, builder), (caddy, _) = stages
    assert re.fullmatch(r"python:3\.1[1-9]-slim", python) and caddy == "caddy:2.8-alpine"
    # Stage 1: the project with every service, which writes the site (lessonstream/contract.py).
    for folder in ("shared", "services", "lessonstream"):
        assert re.search(rf"^COPY {folder} \./{folder}$", GATEWAY_DOCKERFILE, re.M), folder
    assert '".[contract]"' in GATEWAY_DOCKERFILE
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("fastapi-offline") for dep in extras["contract"])
    site = re.search(r"python -m lessonstream\.contract --out (\S+)", GATEWAY_DOCKERFILE)
    assert site is not None
    # Stage 2: Caddy with the Caddyfile and the site, where the Caddyfile looks for it.
    assert re.search(r"^COPY gateway/Caddyfile /etc/caddy/Caddyfile$", GATEWAY_DOCKERFILE, re.M)
    assert re.search(rf"^COPY --from={builder} {site[1]} {site[1]}$", GATEWAY_DOCKERFILE, re.M)
    assert gateway["environment"]["API_DOCS_DIR"] == site[1]
    # The reference web app (web/), where the Caddyfile looks for it.
    assert re.search(r"^COPY web /srv/app$", GATEWAY_DOCKERFILE, re.M)
    assert gateway["environment"]["WEB_APP_DIR"] == "/srv/app"
    assert "/etc/caddy/Caddyfile" in GATEWAY_DOCKERFILE.rsplit("FROM", 1)[1]


def test_gateway_uses_the_one_caddyfile_with_every_upstream_set() -> None:
    gateway = SERVICES["gateway"]
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


# -- Kafka authentication and ACLs ------------------------------------------------------------

# Each topic's one writer (the service that owns its events); any consumer may dead-letter.
OWNED_TOPICS: dict[str, set[Topic]] = {
    "enrollment": {Topic.COURSE_CATALOG, Topic.ENROLLMENT_CHANGED, Topic.RECERTIFICATION_SCHEDULED,
                   Topic.LEARNER_ERASED},
    "progress": {Topic.LESSON_COMPLETED, Topic.LESSON_REOPENED, Topic.COURSE_COMPLETED, Topic.PROGRESS_RECALCULATED,
                 Topic.VIDEO_SESSIONS},
    # The certificates API and its workers share one database, so one outbox and one principal.
    "certificates": {Topic.CERTIFICATE_ISSUED, Topic.CERTIFICATE_REQUESTED, Topic.CERTIFICATE_REVOKED},
    "notifications": set(),
}
PRINCIPAL = {spec.name: spec.database for spec in PROCESSES}  # certificates-worker -> certificates


def setup_script() -> str:
    return "\n".join(SERVICES["kafka-setup"]["command"])


def acl_lines(verb: str) -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2)) for m in re.finditer(rf"^\s*{verb} ([\w-]+) ([\w-]+)\s*$", setup_script(), re.M)}


def test_kafka_authenticates_every_client_and_authorises_with_acls() -> None:
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:admin"
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}  # no listener without authentication
    # One user per principal in the broker's JAAS, each with its own password variable.
    jaas = env["KAFKA_LISTENER_NAME_BROKER_PLAIN_SASL_JAAS_CONFIG"]
    users = dict(re.findall(r'user_(\w+)="\$\{(\w+):\?', jaas))
    assert users == {"admin": "KAFKA_ADMIN_PASSWORD",
                     **{p: f"KAFKA_{p.upper()}_PASSWORD" for p in OWNED_TOPICS}}


@pytest.mark.parametrize("spec", PROCESSES, ids=lambda s: s.name)
def test_each_service_connects_as_its_own_principal(spec: Any) -> None:
    env = SERVICES[spec.name]["environment"]
    principal = PRINCIPAL[spec.name]
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT" and env["KAFKA_SASL_MECHANISM"] == "PLAIN"
    assert env["KAFKA_SASL_USERNAME"] == principal
    assert env["KAFKA_SASL_PASSWORD"].startswith(f"${{KAFKA_{principal.upper()}_PASSWORD:?")


def test_each_producer_may_write_only_its_own_topics() -> None:
    granted: dict[str, set[str]] = {}
    for principal, topic in acl_lines("produce"):
        granted.setdefault(principal, set()).add(topic)
    expected = {p: {t.value for t in topics} | {Topic.DEAD_LETTER.value} for p, topics in OWNED_TOPICS.items()}
    assert granted == expected
    owned = [t for topics in OWNED_TOPICS.values() for t in topics]
    assert sorted(owned) == sorted(set(TOPIC_PARTITIONS) - {Topic.DEAD_LETTER})  # one writer per topic
    # Write is granted only through produce(), and nothing grants All or a wildcard write.
    script = setup_script()
    assert script.count("--operation Write") == 1
    assert "--operation All" not in script and "--allow-principal User:*" not in script


def test_each_consumer_may_read_what_it_subscribes_to_in_its_own_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every optional consumer on (notifications reads video-sessions only with an LRS set):
    # the grants must cover what an operator may switch on.
    monkeypatch.setenv("XAPI_LRS_URL", "https://lrs.example/xAPI")
    expected: dict[str, set[str]] = {p: set() for p in OWNED_TOPICS}
    for spec in PROCESSES:
        module_name, function = spec.factory.split(":")
        app = getattr(importlib.import_module(module_name), function)()
        for sub in app.state.runtime.spec.subscriptions:
            expected[PRINCIPAL[spec.name]].add(sub.topic.value)
            assert sub.consumer.startswith(PRINCIPAL[spec.name])  # covered by the prefixed group ACL
    granted: dict[str, set[str]] = {p: set() for p in OWNED_TOPICS}
    for principal, topic in acl_lines("consume"):
        granted[principal].add(topic)
    assert granted == expected
    loop = re.search(r"for user in ([\w ]+); do groups \"\$\$user\"; see_topics \"\$\$user\"; "
                     r"relay_marker \"\$\$user\"; done", setup_script())
    assert loop is not None and set(loop.group(1).split()) == set(OWNED_TOPICS)


def test_every_relay_may_create_its_marker_topic_and_nothing_else() -> None:
    script = setup_script()
    assert script.count("--operation Create") == 1
    grant = re.search(r"relay_marker\(\) \{ (.*) \}", script)
    assert grant is not None
    assert "--resource-pattern-type prefixed --topic lessonstream-relay." in grant.group(1)
    name = marker_topic(ServiceSettings(), uuid.uuid4())
    assert name.startswith("lessonstream-relay.")


# -- Metrics: Prometheus and Grafana ----------------------------------------------------------

PROMETHEUS_CONFIG: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())


def mounts(service: str) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts."""
    found = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = source
    return found


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_monitoring_images_are_pinned(name: str) -> None:
    image = SERVICES[name]["image"]
    repository, _, tag = image.partition(":")
    assert repository in {"prom/prometheus", "grafana/grafana"}
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{image}: pin a full version"


def test_prometheus_scrapes_every_service_process_with_its_rules() -> None:
    prometheus = SERVICES["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert mounts("prometheus")[config_path] == "./deploy/prometheus/prometheus.yml"
    for rule_file in PROMETHEUS_CONFIG["rule_files"]:
        assert mounts("prometheus")[rule_file] == "./deploy/prometheus/alerts.yml"
    # Each process is its own target (one exporter per process): every replica through DNS.
    scraped: dict[str, int] = {}
    for job in PROMETHEUS_CONFIG["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            scraped.update({name: sd["port"] for name in sd["names"]})
    assert scraped == {spec.name: 8000 for spec in PROCESSES}
    # The gateway's own figures: its metrics listener, on the Caddyfile's default port (not published).
    [gateway_job] = [job for job in PROMETHEUS_CONFIG["scrape_configs"] if job["job_name"] == "gateway"]
    [static] = gateway_job["static_configs"]
    caddyfile = (ROOT / "gateway" / "Caddyfile").read_text()
    port = re.search(r"\{\$GATEWAY_METRICS_PORT:(\d+)\}", caddyfile)
    assert port and static["targets"] == [f"gateway:{port.group(1)}"]
    assert "GATEWAY_METRICS_PORT" not in SERVICES["gateway"]["environment"]  # the default, as scraped
    assert re.search(r"^:\{\$GATEWAY_METRICS_PORT:\d+\} \{\n\tmetrics\n\}", caddyfile, re.M)
    assert "--port 8000" in DOCKERFILE  # where every service image listens
    worker = SERVICES["certificates-worker"]["command"]
    assert worker[worker.index("--port") + 1] == "8000"


def test_grafana_is_provisioned_with_the_data_source_and_dashboards() -> None:
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "lessonstream.yml").read_text())["providers"]
    assert grafana[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert "GF_SECURITY_ADMIN_PASSWORD" in SERVICES["grafana"]["environment"]
    assert "${GRAFANA_ADMIN_PASSWORD:?" in SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
