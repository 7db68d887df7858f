"""deploy/kubernetes checked offline: every object against the schemas of a declared
Kubernetes version (and KEDA's against its CRD), then against the code, as
tests/test_compose.py checks docker-compose.yml.

The manifests are rendered with kustomize when it is on the path (``kustomize build`` or
``kubectl kustomize``), else read from the files kustomization.yaml lists. Each check is a
function of the manifests; ``test_a_broken_manifest_fails`` breaks a copy in one way each
and expects some check to refuse it, so that no check passes by finding nothing to check.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from unittest import mock

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from lessonstream import infra
from lessonstream.infra import ROOT
from lessonstream.stack import PROCESSES
from services.certificates import handlers as certificate_handlers
from services.certificates.settings import WorkerSettings
from shared import inbox
from shared.events import TOPIC_PARTITIONS, Topic
from shared.settings import ServiceSettings
from tests.test_compose import SERVICES as COMPOSE_SERVICES
from tests.test_compose import databases_created, settings_class

KUBE = ROOT / "deploy" / "kubernetes"
SECRET_EXAMPLE = KUBE / "secret.example.yaml"
KEDA_SCHEMAS = ROOT / "tests" / "fixtures" / "keda"
# The Kubernetes version the manifests are written for (schemas of kubernetes-validate).
KUBERNETES_VERSION = "1.32"
CLUSTER_SCOPED = {"Namespace"}
GATEWAY = "gateway"
PRINCIPAL = {spec.name: spec.database for spec in PROCESSES}  # certificates-worker -> certificates

Obj = dict[str, Any]


# -- Loading ----------------------------------------------------------------------------------

def kustomization() -> Obj:
    loaded: Obj = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return loaded


def read_by_hand() -> list[Obj]:
    """What ``kustomize build`` gives for a kustomization of resources and a namespace."""
    k = kustomization()
    # Anything else (patches, generators, labels) would need kustomize itself.
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources"}, set(k)
    objects: list[Obj] = []
    for resource in k["resources"]:
        for obj in yaml.safe_load_all((KUBE / resource).read_text()):
            if obj is None:
                continue
            if "namespace" in k and obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
            objects.append(obj)
    return objects


def kustomize_command() -> list[str] | None:
    if found := shutil.which("kustomize"):
        return [found, "build", str(KUBE)]
    if found := shutil.which("kubectl"):
        return [found, "kustomize", str(KUBE)]
    return None


@cache
def rendered_text() -> str | None:
    command = kustomize_command()
    if command is None:
        return None
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout


def rendered() -> list[Obj]:
    text = rendered_text()
    if text is None:
        return read_by_hand()
    return [obj for obj in yaml.safe_load_all(text) if obj is not None]


def key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@dataclass
class Manifests:
    objects: list[Obj]
    secret: Obj  # the example Secret, outside the kustomization
    caddyfile: str = field(default_factory=lambda: (ROOT / "gateway" / "Caddyfile").read_text())

    def of(self, kind: str) -> dict[str, Obj]:
        return {o["metadata"]["name"]: o for o in self.objects if o["kind"] == kind}

    def get(self, kind: str, name: str) -> Obj:
        found = self.of(kind)
        assert name in found, f"no {kind} {name}"
        return found[name]

    def container(self, deployment: str) -> Obj:
        containers = self.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1, deployment
        container: Obj = containers[0]
        return container

    def env(self, deployment: str) -> dict[str, str]:
        """The container's environment as it starts: ConfigMaps and the example Secret resolved."""
        container = self.container(deployment)
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
        for var in container.get("env", []):
            env[var["name"]] = self.value(var)
        return env

    def value(self, var: Obj) -> str:
        if "value" in var:
            return str(var["value"])
        ref = var["valueFrom"]
        if "configMapKeyRef" in ref:
            data = self.get("ConfigMap", ref["configMapKeyRef"]["name"])["data"]
            assert ref["configMapKeyRef"]["key"] in data, ref
            return str(data[ref["configMapKeyRef"]["key"]])
        secret = ref["secretKeyRef"]
        assert secret["name"] == self.secret["metadata"]["name"], secret
        assert secret["key"] in self.secret["stringData"], f"the example Secret has no {secret['key']}"
        return str(self.secret["stringData"][secret["key"]])

    def secret_refs(self) -> set[str]:
        refs = set()
        for deployment in [*self.of("Deployment").values(), *self.of("Job").values()]:
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                for var in container.get("env", []):
                    if "secretKeyRef" in var.get("valueFrom", {}):
                        refs.add(var["valueFrom"]["secretKeyRef"]["key"])
        return refs


def load() -> Manifests:
    return Manifests(rendered(), yaml.safe_load(SECRET_EXAMPLE.read_text()))


def with_secrets_filled(env: dict[str, str]) -> dict[str, str]:
    """The environment with each placeholder of the example Secret replaced by a long secret."""
    return {k: re.sub(r"REPLACE_WITH_\w+", "s" * 40, v) for k, v in env.items()}


def accepted_variables(cls: type[ServiceSettings]) -> set[str]:
    """The environment variables a settings class reads (field names, or their aliases)."""
    names = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(name.upper())
    return names


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ, env, clear=True):
        yield


def listening_port(container: Obj) -> int:
    """The port the process listens on: its command's, else the image's (the Dockerfile's CMD)."""
    command = " ".join(container.get("command", []) + container.get("args", []))
    if not command:
        command = re.findall(r"^CMD (.*)$", (ROOT / "Dockerfile").read_text(), re.M)[-1]
    found = re.search(r"--port (\d+)", command)
    assert found, command
    return int(found[1])


def port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"no container port named {port}"
    return int(named[port])


# -- The checks -------------------------------------------------------------------------------

Check = Callable[[Manifests], None]
CHECKS: list[Check] = []


def check(function: Check) -> Check:
    CHECKS.append(function)
    return function


def strict(schema: Any) -> Any:
    """A CRD's schema as the API server applies it with strict field validation (kubectl's
    default): an object with declared properties admits no other field."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def keda_schema(kind: str) -> Obj:
    loaded: Obj = strict(yaml.safe_load((KEDA_SCHEMAS / f"{kind.lower()}-v1alpha1.schema.yaml").read_text()))
    return loaded


@check
def every_object_is_valid_for_its_schema(m: Manifests) -> None:
    for obj in [*m.objects, m.secret]:
        try:
            if obj["apiVersion"] == "keda.sh/v1alpha1":
                assert obj["kind"] in {"ScaledObject", "TriggerAuthentication"}, obj["kind"]
                jsonschema.validate(obj, keda_schema(obj["kind"]))
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
            error = getattr(e, "caught", e)  # kubernetes-validate wraps jsonschema's error
            where = "/".join(str(p) for p in error.absolute_path)
            raise AssertionError(f"{key(obj)} at {where}: {error.message}") from None


@check
def every_process_and_the_gateway_is_a_deployment(m: Manifests) -> None:
    assert set(m.of("Deployment")) == {spec.name for spec in PROCESSES} | {GATEWAY}
    for name, deployment in m.of("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name
    assert m.get("Namespace", kustomization()["namespace"])


@check
def each_process_runs_its_services_image(m: Manifests) -> None:
    for spec in PROCESSES:
        container = m.container(spec.name)
        # Built as compose builds it: the one Dockerfile with SERVICE=<the database's service>.
        assert container["image"].startswith(f"lessonstream-{spec.database}:"), spec.name
        assert COMPOSE_SERVICES[spec.name]["build"]["args"]["SERVICE"] == spec.database
        if spec.name != spec.database:  # the worker: the certificates image, its own command
            assert container["command"] == COMPOSE_SERVICES[spec.name]["command"]
            assert spec.factory in container["command"]
        else:
            assert "command" not in container and "args" not in container, spec.name
    assert m.container(GATEWAY)["image"].startswith("lessonstream-gateway:")


@check
def every_variable_a_service_sets_is_a_field_of_its_settings(m: Manifests) -> None:
    for spec in PROCESSES:
        cls = settings_class(spec.factory)
        env = m.env(spec.name)
        unknown = set(env) - accepted_variables(cls)
        assert not unknown, f"{spec.name} sets what {cls.__name__} does not read: {sorted(unknown)}"


@check
def every_service_starts_with_valid_production_settings(m: Manifests) -> None:
    for spec in PROCESSES:
        env = with_secrets_filled(m.env(spec.name))
        with environment(env):
            settings = settings_class(spec.factory)()
        assert settings.env == "production", spec.name
        assert settings.service_name == spec.name
        database = settings.database_url.rsplit("/", 1)[1]
        assert database == spec.database and database in databases_created(), spec.name
        # Its own Kafka user, with its own password: the broker's ACLs are per principal.
        principal = PRINCIPAL[spec.name]
        assert settings.kafka_sasl_username == principal, spec.name
        password = next(v for v in m.container(spec.name)["env"] if v["name"] == "KAFKA_SASL_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"]["key"] == f"KAFKA_{principal.upper()}_PASSWORD"
        assert settings.kafka_security_protocol.startswith("SASL")


@check
def the_gateway_sets_what_its_caddyfile_reads(m: Manifests) -> None:
    env = m.env(GATEWAY)
    read = set(re.findall(r"\{(?:\$|env\.)([A-Z_]+)", m.caddyfile))
    required = set(re.findall(r"\{\$([A-Z_]+)\}", m.caddyfile))  # placeholders without a default
    assert required <= set(env) <= read, (sorted(required - set(env)), sorted(set(env) - read))


@check
def ports_and_probes_match_what_each_process_serves(m: Manifests) -> None:
    for name in m.of("Deployment"):
        container = m.container(name)
        if name == GATEWAY:
            port = int(m.env(GATEWAY)["GATEWAY_PORT"])
            # Caddy answers /health itself (gateway/Caddyfile): the gateway's own probes.
            assert re.search(r"handle /health \{\s*\n[^}]*respond `[^`]*` 200", m.caddyfile)
            ready, alive = "/health", "/health"
        else:
            port = listening_port(container)
            ready, alive = "/ready", "/health"  # shared/service.py
        assert [p["containerPort"] for p in container["ports"]] == [port], name
        for probe, path in (("readinessProbe", ready), ("livenessProbe", alive), ("startupProbe", alive)):
            if probe == "startupProbe" and probe not in container:
                continue
            assert probe in container, (name, probe)
            get = container[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert port_number(container, get["port"]) == port, (name, probe)


@check
def every_deployment_requests_resources_and_bounds_its_memory(m: Manifests) -> None:
    for name in m.of("Deployment"):
        resources = m.container(name).get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
        assert "memory" in resources.get("limits", {}), name


@check
def services_reach_the_deployments_where_they_listen(m: Manifests) -> None:
    for name, service in m.of("Service").items():
        deployment = m.get("Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        container = m.container(name)
        for port in service["spec"]["ports"]:
            assert port_number(container, port["targetPort"]) in [p["containerPort"] for p in container["ports"]]
    # Every routed process has a Service; the workers have none (compose publishes nothing for them).
    assert set(m.of("Service")) == {spec.name for spec in PROCESSES if spec.routed} | {GATEWAY}


def service_address(m: Manifests, name: str) -> str:
    ports = m.get("Service", name)["spec"]["ports"]
    assert len(ports) == 1, name
    return f"{name}:{ports[0]['port']}"


@check
def the_gateway_and_the_internal_urls_name_the_services(m: Manifests) -> None:
    env = m.env(GATEWAY)
    for spec in PROCESSES:
        if spec.routed:
            assert env[f"{spec.name.upper()}_UPSTREAM"] == service_address(m, spec.name)
    for spec in PROCESSES:
        service_env = m.env(spec.name)
        for owner in ("enrollment", "progress", "certificates"):
            assert service_env[f"{owner.upper()}_INTERNAL_URL"] == f"http://{service_address(m, owner)}"


@check
def replicas_suit_each_process(m: Manifests) -> None:
    replicas = {name: d["spec"].get("replicas", 1) for name, d in m.of("Deployment").items()}
    assert replicas["progress"] >= 2 and replicas[GATEWAY] >= 2
    scaled = m.get("ScaledObject", "certificates-worker")["spec"]
    assert scaled["minReplicaCount"] <= replicas["certificates-worker"] <= scaled["maxReplicaCount"]


def fewest_replicas(m: Manifests, deployment: str) -> int:
    scaled = [s for s in m.of("ScaledObject").values() if s["spec"]["scaleTargetRef"]["name"] == deployment]
    if scaled:
        return int(scaled[0]["spec"].get("minReplicaCount", 0))
    return int(m.get("Deployment", deployment)["spec"].get("replicas", 1))


@check
def every_multi_replica_deployment_has_a_budget_selecting_its_pods(m: Manifests) -> None:
    covered = set()
    for name, budget in m.of("PodDisruptionBudget").items():
        selector = budget["spec"]["selector"]["matchLabels"]
        selected = [d for d, obj in m.of("Deployment").items()
                    if selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"PodDisruptionBudget {name} selects {selected}"
        covered.add(selected[0])
        # A budget that allows no eviction at all would block every node drain.
        if "minAvailable" in budget["spec"]:
            assert budget["spec"]["minAvailable"] < fewest_replicas(m, selected[0]), name
        else:
            assert budget["spec"]["maxUnavailable"] >= 1, name
    multi = {d for d in m.of("Deployment") if fewest_replicas(m, d) > 1}
    assert multi <= covered, sorted(multi - covered)


@check
def the_workers_scale_on_the_lag_of_their_own_groups(m: Manifests) -> None:
    scaled = m.get("ScaledObject", "certificates-worker")["spec"]
    target = scaled["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target["name"] == "certificates-worker"
    env = m.env("certificates-worker")
    with environment(with_secrets_filled(env)):
        settings = WorkerSettings()
    # The groups and topics as the code names them (the settings' prefix included).
    consumed = {(settings.group(s.consumer), settings.topic(s.topic.value)): s.topic
                for s in certificate_handlers.subscriptions(settings)}
    completions = (settings.group(certificate_handlers.COMPLETIONS_GROUP), settings.topic(Topic.COURSE_COMPLETED))
    assert completions in consumed
    triggers = scaled["triggers"]
    pairs = [(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in triggers]
    assert completions in pairs and set(pairs) <= set(consumed), pairs
    # One worker per partition: each is one group member, so no replica up to the maximum idles.
    assert scaled["maxReplicaCount"] == TOPIC_PARTITIONS[Topic.COURSE_COMPLETED]
    assert all(TOPIC_PARTITIONS[consumed[pair]] >= scaled["maxReplicaCount"] for pair in pairs)
    assert settings.consumer_count() == 1
    assert scaled["minReplicaCount"] >= 1  # the certificate-requested group must be served too
    security = (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"])
    sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    # As the consumers start in a group without offsets (shared/inbox.py).
    reset = re.search(r'auto_offset_reset="(\w+)"', inspect.getsource(inbox.subscribe))
    assert reset is not None
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert int(metadata["lagThreshold"]) > 0
        assert metadata["bootstrapServersFromEnv"] in env, metadata
        assert metadata["offsetResetPolicy"] == reset[1]
        assert metadata["sasl"] == (sasl[security[1]] if security[0].startswith("SASL") else "none")
        assert metadata["tls"] == ("enable" if security[0].endswith("SSL") else "disable")
        auth = m.get("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
        given = {e["parameter"]: (e.get("containerName"), e["name"]) for e in auth["env"]}
        container = m.container("certificates-worker")["name"]
        assert given == {"username": (container, "KAFKA_SASL_USERNAME"), "password": (container, "KAFKA_SASL_PASSWORD")}


def compose_setup_script_for_kubernetes() -> str:
    """compose's kafka-setup script as the Job runs it: the broker and the replication factor
    from the environment, and `$$` (compose's escape) as the shell's `$`."""
    script = "\n".join(COMPOSE_SERVICES["kafka-setup"]["command"]).replace("$$", "$")
    script = script.replace("kafka:9092", '"$KAFKA_BOOTSTRAP_SERVERS"')
    return script.replace("--replication-factor 1", '--replication-factor "$REPLICATION_FACTOR"')


@check
def the_topic_setup_job_runs_composes_script(m: Manifests) -> None:
    job = m.get("Job", "kafka-setup")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert container["image"] == COMPOSE_SERVICES["kafka-setup"]["image"]
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    assert script == compose_setup_script_for_kubernetes()
    assert "$(" not in script  # the kubelet would expand it
    env = {v["name"]: v for v in container["env"]}
    assert env["ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "KAFKA_ADMIN_PASSWORD"
    assert int(env["REPLICATION_FACTOR"]["value"]) >= 1
    bootstrap = m.value(env["KAFKA_BOOTSTRAP_SERVERS"])
    config = m.get("ConfigMap", "lessonstream")["data"]
    assert bootstrap == config["KAFKA_BOOTSTRAP_SERVERS"]
    # The script's client settings are the services'.
    assert f"security.protocol={config['KAFKA_SECURITY_PROTOCOL']}\\n" in script
    assert f"sasl.mechanism={config['KAFKA_SASL_MECHANISM']}\\n" in script
    assert job["restartPolicy"] in {"OnFailure", "Never"}


@check
def the_secret_is_an_example_of_placeholders_and_every_key_is_used(m: Manifests) -> None:
    assert not m.of("Secret"), "no Secret in the kustomization: it holds placeholders"
    assert SECRET_EXAMPLE.name not in kustomization()["resources"]
    values = m.secret["stringData"]
    assert all("REPLACE_WITH_" in v for v in values.values()), "the example holds a real value"
    assert "data" not in m.secret
    assert m.secret_refs() == set(values), (sorted(m.secret_refs() ^ set(values)))


@check
def no_container_runs_privileged_or_escalates(m: Manifests) -> None:
    for kind in ("Deployment", "Job"):
        for name, obj in m.of(kind).items():
            pod = obj["spec"]["template"]["spec"]
            for container in pod["containers"]:
                security = container.get("securityContext", {})
                assert security.get("allowPrivilegeEscalation") is False, name
                assert security.get("capabilities", {}).get("drop") == ["ALL"], name
                assert not security.get("privileged"), name
            if name != GATEWAY:  # Caddy's image runs as root
                assert pod["securityContext"]["runAsNonRoot"] is True, name


# -- The tests --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return load()


@pytest.mark.parametrize("check_", CHECKS, ids=lambda c: c.__name__)
def test_manifests(check_: Check, manifests: Manifests) -> None:
    check_(manifests)


def test_reading_by_hand_gives_what_kustomize_renders() -> None:
    if rendered_text() is None:
        pytest.skip("no kustomize or kubectl on the path: the manifests were read by hand")
    by_hand = sorted(read_by_hand(), key=key)
    assert by_hand == sorted(rendered(), key=key)


def set_env(m: Manifests, deployment: str, name: str, value: str) -> None:
    env = m.container(deployment).setdefault("env", [])
    env[:] = [v for v in env if v["name"] != name] + [{"name": name, "value": value}]


def drift_setup_script(m: Manifests) -> None:
    container = m.get("Job", "kafka-setup")["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [container["args"][0].replace("--partitions 12", "--partitions 6", 1)]


def trigger(m: Manifests, index: int = 0) -> Obj:
    t: Obj = m.get("ScaledObject", "certificates-worker")["spec"]["triggers"][index]
    return t


# One way each to break the manifests, and the check that must refuse it.
Mutation = tuple[Check, Callable[[Manifests], None]]
MUTATIONS: dict[str, Mutation] = {
    "misspelt probe field": (every_object_is_valid_for_its_schema, lambda m: m.container("progress")[
        "readinessProbe"].update(perodSeconds=3)),
    "unknown ScaledObject field": (every_object_is_valid_for_its_schema, lambda m: m.get(
        "ScaledObject", "certificates-worker")["spec"].update(maxReplicas=12)),
    "readiness on /health": (ports_and_probes_match_what_each_process_serves, lambda m: m.container(
        "enrollment")["readinessProbe"]["httpGet"].update(path="/health")),
    "liveness on the wrong port": (ports_and_probes_match_what_each_process_serves, lambda m: m.container(
        "notifications")["livenessProbe"]["httpGet"].update(port=8080)),
    "container port not the command's": (ports_and_probes_match_what_each_process_serves, lambda m: m.container(
        "certificates-worker")["ports"][0].update(containerPort=8001)),
    "variable no setting reads": (every_variable_a_service_sets_is_a_field_of_its_settings,
                                  lambda m: set_env(m, "progress", "HEARTBEAT_FLUSH_INTERVAL", "1")),
    "worker named as the API": (every_service_starts_with_valid_production_settings,
                                lambda m: set_env(m, "certificates-worker", "SERVICE_NAME", "certificates")),
    "development settings": (every_service_starts_with_valid_production_settings, lambda m: set_env(
        m, "enrollment", "INTERNAL_TOKEN", ServiceSettings().internal_token)),
    "another service's Kafka user": (every_service_starts_with_valid_production_settings,
                                     lambda m: set_env(m, "notifications", "KAFKA_SASL_USERNAME", "progress")),
    "gateway variable Caddy never reads": (the_gateway_sets_what_its_caddyfile_reads,
                                           lambda m: set_env(m, GATEWAY, "UPSTREAM_TIMEOUT", "5s")),
    "gateway upstream without its Service": (the_gateway_and_the_internal_urls_name_the_services,
                                             lambda m: set_env(m, GATEWAY, "PROGRESS_UPSTREAM", "progress-api:8000")),
    "no memory limit": (every_deployment_requests_resources_and_bounds_its_memory,
                        lambda m: m.container("certificates")["resources"].pop("limits")),
    "no requests": (every_deployment_requests_resources_and_bounds_its_memory,
                    lambda m: m.container(GATEWAY)["resources"].pop("requests")),
    "no readiness probe": (ports_and_probes_match_what_each_process_serves,
                           lambda m: m.container("progress").pop("readinessProbe")),
    "one progress replica": (replicas_suit_each_process,
                             lambda m: m.get("Deployment", "progress")["spec"].update(replicas=1)),
    "budget selecting no pods": (every_multi_replica_deployment_has_a_budget_selecting_its_pods, lambda m: m.get(
        "PodDisruptionBudget", "gateway")["spec"]["selector"].update(matchLabels={"app.kubernetes.io/name": "gw"})),
    "multi-replica deployment without a budget": (every_multi_replica_deployment_has_a_budget_selecting_its_pods,
                                                  lambda m: m.objects.remove(m.get("PodDisruptionBudget", "progress"))),
    "wrong consumer group": (the_workers_scale_on_the_lag_of_their_own_groups,
                             lambda m: trigger(m)["metadata"].update(consumerGroup="certificates")),
    "wrong topic": (the_workers_scale_on_the_lag_of_their_own_groups,
                    lambda m: trigger(m)["metadata"].update(topic="course-completed-v2")),
    "more workers than partitions": (the_workers_scale_on_the_lag_of_their_own_groups, lambda m: m.get(
        "ScaledObject", "certificates-worker")["spec"].update(maxReplicaCount=24)),
    "two group members per worker": (the_workers_scale_on_the_lag_of_their_own_groups,
                                     lambda m: set_env(m, "certificates-worker", "CERTIFICATE_WORKER_CONSUMERS", "2")),
    "lag read without SASL": (the_workers_scale_on_the_lag_of_their_own_groups,
                              lambda m: trigger(m)["metadata"].update(sasl="none")),
    "topic prefix the trigger ignores": (the_workers_scale_on_the_lag_of_their_own_groups, lambda m: m.get(
        "ConfigMap", "lessonstream")["data"].update(KAFKA_TOPIC_PREFIX="prod.")),
    "topic setup drifted from compose": (the_topic_setup_job_runs_composes_script, drift_setup_script),
    "real value in the example Secret": (the_secret_is_an_example_of_placeholders_and_every_key_is_used,
                                         lambda m: m.secret["stringData"].update(JWT_SECRET="x" * 40)),
    "secret key nobody uses": (the_secret_is_an_example_of_placeholders_and_every_key_is_used,
                               lambda m: m.secret["stringData"].update(UNUSED="REPLACE_WITH_NOTHING")),
    "secret key missing from the example": (every_service_starts_with_valid_production_settings,
                                            lambda m: m.secret["stringData"].pop("SMTP_PASSWORD")),
    "worker may escalate": (no_container_runs_privileged_or_escalates, lambda m: m.container(
        "certificates-worker")["securityContext"].update(allowPrivilegeEscalation=True)),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_broken_manifest_fails(name: str, manifests: Manifests) -> None:
    check_, mutate = MUTATIONS[name]
    broken = copy.deepcopy(manifests)
    mutate(broken)
    with pytest.raises((AssertionError, jsonschema.ValidationError, ValueError)):
        check_(broken)


def test_the_gateway_answers_its_own_probes_with_every_service_down() -> None:
    """The gateway's probes ask Caddy alone: a gateway whose services are all down stays ready
    (and answers for them with 503), rather than being restarted for their fault."""
    port = infra.free_port()
    nowhere = f"127.0.0.1:{infra.free_port()}"  # nothing listens there
    env = {**os.environ, "GATEWAY_PORT": str(port), "INTERNAL_TOKEN": "t",
           **{f"{s.upper()}_UPSTREAM": nowhere for s in ("progress", "enrollment", "certificates", "notifications")}}
    caddy = infra.start_caddy(env)
    try:
        deadline = time.monotonic() + 20
        while not infra.port_open("127.0.0.1", port):
            assert caddy.alive and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            health = client.get("/health")
            assert health.status_code == 200 and health.json() == {"status": "ok", "service": "gateway"}
            assert client.get("/health/progress").status_code == 503
    finally:
        caddy.stop()

