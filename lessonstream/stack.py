"""The whole system as local, supervised processes: broker, SMTP sink, every service (with
replicas), the certificate workers and the gateway.

``lessonstream dev`` runs it on embedded defaults; the end-to-end and fault tests run the
same thing. A crash is one process's problem: ``Stack.supervise`` restarts whatever exited,
with a backoff per process, and only ``Stack.stop`` ends the stack. A restarted broker has
lost everything it held (the embedded broker keeps nothing), and Kafka clients do not
recover from that, so every process that talks to it is restarted after it; their outbox
relays then give the new broker every retained event again (``shared.outbox``).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lessonstream import infra
from shared.bus import ensure_topics
from shared.db import with_database
from shared.retry import Backoff, Delays
from shared.settings import ServiceSettings


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    factory: str  # uvicorn factory, "module:function"
    database: str  # which service's database it uses
    routed: bool  # reachable through the gateway as /health/{name}, /ready/{name}


PROCESSES: list[ProcessSpec] = [
    ProcessSpec("enrollment", "services.enrollment.app:build_app", "enrollment", True),
    ProcessSpec("progress", "services.progress.app:build_app", "progress", True),
    ProcessSpec("certificates", "services.certificates.app:build_app", "certificates", True),
    ProcessSpec("certificates-worker", "services.certificates.worker:build_app", "certificates", False),
    ProcessSpec("notifications", "services.notifications.app:build_app", "notifications", True),
]
SERVICES = [p.name for p in PROCESSES if p.routed]

# Restart backoff per process: doubled at each exit, back to the first step once the
# process has stayed up for STABLE_S.
FIRST_BACKOFF_S = 0.5
RESTART_BACKOFF = Backoff(first_s=FIRST_BACKOFF_S, max_s=30.0)
STABLE_S = 60.0
# The gateway's metrics listener (gateway/Caddyfile), by its name among the ports.
GATEWAY_METRICS = "gateway-metrics"
# The supervisor sleeps until a child exits or a restart is due, and at most this long.
SUPERVISE_MAX_WAIT_S = 1.0


@dataclass
class StackConfig:
    var_dir: Path
    postgres_url: str  # the server's maintenance database; each service gets its own
    kafka_bootstrap: str
    smtp_port: int
    gateway_port: int = 8080
    ports: dict[str, int] = field(default_factory=dict)
    db_prefix: str = "lessonstream_"
    topic_prefix: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    progress_replicas: int = 1
    certificate_workers: int = 1
    # When set, the stack runs and supervises these too (``lessonstream dev`` does; tests
    # may bring their own broker and mail server instead).
    own_broker: bool = False
    own_smtp_sink: bool = False

    def count(self, spec: ProcessSpec) -> int:
        if spec.name == "progress":
            return self.progress_replicas
        if spec.name == "certificates-worker":
            return self.certificate_workers
        return 1

    def instances(self) -> list[tuple[str, ProcessSpec]]:
        """Every service process as (instance name, spec): ``progress`` alone, or ``progress-1``, ..."""
        found = []
        for spec in PROCESSES:
            n = self.count(spec)
            found += [(spec.name if n == 1 else f"{spec.name}-{i}", spec) for i in range(1, n + 1)]
        return found

    def instances_of(self, kind: str) -> list[str]:
        return [name for name, spec in self.instances() if spec.name == kind]

    def port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = infra.free_port()
        return self.ports[name]

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.rsplit(":", 1)[1])

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def database_url(self, service: str) -> str:
        return with_database(self.postgres_url, f"{self.db_prefix}{service}")

    def env_for(self, spec: ProcessSpec) -> dict[str, str]:
        # Internal reads may go to any progress replica: they read the shared database.
        progress = self.instances_of("progress")[0]
        return {
            "SERVICE_NAME": spec.name,
            "DATABASE_URL": self.database_url(spec.database),
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "KAFKA_TOPIC_PREFIX": self.topic_prefix,
            "PUBLIC_BASE_URL": self.gateway_url,
            "ENROLLMENT_INTERNAL_URL": f"http://127.0.0.1:{self.port('enrollment')}",
            "PROGRESS_INTERNAL_URL": f"http://127.0.0.1:{self.port(progress)}",
            "CERTIFICATES_INTERNAL_URL": f"http://127.0.0.1:{self.port('certificates')}",
            "NOTIFICATIONS_INTERNAL_URL": f"http://127.0.0.1:{self.port('notifications')}",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_TLS": "none",
            # The development issuer key of the credentials: one per stack, kept with its data.
            "CERTIFICATE_SIGNING_KEY_FILE": str(self.var_dir / "certificates" / "signing-keys"),
            **self.extra_env,
        }

    @property
    def api_docs_dir(self) -> Path:
        """The contract's static site the gateway serves (lessonstream/contract.py)."""
        return self.var_dir / "api-docs"

    def upstreams(self, kind: str) -> str:
        """Caddy upstreams of a service: several are balanced (the Caddyfile says how)."""
        return " ".join(f"127.0.0.1:{self.port(name)}" for name in self.instances_of(kind))

    def prometheus_targets(self) -> list[dict[str, object]]:
        """Every service process as a Prometheus ``file_sd_configs`` entry: one target per
        process (each is its own exporter), labelled with its kind and instance name."""
        services: list[dict[str, object]] = [
            {"targets": [f"127.0.0.1:{self.port(name)}"], "labels": {"process": spec.name, "process_instance": name}}
            for name, spec in self.instances()
        ]
        gateway: dict[str, object] = {
            "targets": [f"127.0.0.1:{self.port(GATEWAY_METRICS)}"],
            "labels": {"process": "gateway", "process_instance": "gateway"},
        }
        return [*services, gateway]

    def gateway_env(self) -> dict[str, str]:
        return {
            "GATEWAY_PORT": str(self.gateway_port),
            "GATEWAY_METRICS_PORT": str(self.port(GATEWAY_METRICS)),
            "PROGRESS_UPSTREAM": self.upstreams("progress"),
            "ENROLLMENT_UPSTREAM": self.upstreams("enrollment"),
            "CERTIFICATES_UPSTREAM": self.upstreams("certificates"),
            "NOTIFICATIONS_UPSTREAM": self.upstreams("notifications"),
            # The gateway asks enrollment's internal API about HTTP Basic credentials
            # (forward_auth): the services' token, as they read it.
            "INTERNAL_TOKEN": self.extra_env.get("INTERNAL_TOKEN") or ServiceSettings().internal_token,
            "API_DOCS_DIR": str(self.api_docs_dir),
            "WEB_APP_DIR": str(infra.ROOT / "web"),  # the reference web app at /app/
            "XDG_DATA_HOME": str(self.var_dir / "caddy"),
            "XDG_CONFIG_HOME": str(self.var_dir / "caddy"),
        }


@dataclass
class Child:
    """One supervised process: how to start it, and its restart state."""

    name: str
    launch: Callable[[], infra.Process]
    uses_broker: bool
    proc: infra.Process | None = None
    restarts: int = 0
    delays: Delays = field(default_factory=lambda: Delays(RESTART_BACKOFF))
    restart_at: float | None = None  # monotonic time of a scheduled restart
    up_since: float = 0.0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    @property
    def pid(self) -> int | None:
        return self.proc.popen.pid if self.proc is not None else None


class Wakeups:
    """The supervisor's sleep, cut short when a child exits or a signal arrives, rather than
    a poll several times a second (an idle stack's runner was a tenth of its cost).

    Every signal with a Python handler writes its number to the wake-up pipe
    (``signal.set_wakeup_fd``); SIGCHLD gets a handler that does nothing else. Children
    start with the default disposition (exec resets handlers), so nothing changes for
    them. Main thread only, like every signal handler."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._previous = signal.set_wakeup_fd(self._write)

    def sleep(self, timeout: float) -> None:
        ready, _, _ = select.select([self._read], [], [], timeout)
        if ready:
            while True:
                try:
                    if not os.read(self._read, 512):
                        break
                except BlockingIOError:
                    break

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self._read)
        os.close(self._write)


class Stack:
    """Starts the processes, keeps them running, and stops them in reverse order."""

    def __init__(self, config: StackConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.children: dict[str, Child] = {}
        self._log = log or (lambda message: None)
        self._run_dir = config.var_dir / "run"

    # ------------------------------------------------------------ start
    def start(self, ready_timeout: float = 120.0) -> None:
        cfg = self.config
        logs = cfg.var_dir / "logs"
        # The contract is generated from the code while the rest starts: it imports every
        # service, in a process of its own, and only the gateway, which serves it, waits for it.
        contract = self._write_contract()
        try:
            if cfg.own_broker:
                self._add(Child("broker", lambda: infra.start_tansu(cfg.kafka_port, logs / "tansu.log"), False))
            if cfg.own_smtp_sink:
                self._add(Child(
                    "smtp-sink",
                    lambda: infra.start_smtp_sink(cfg.smtp_port, cfg.var_dir / "mail", logs / "smtp.log"),
                    False,
                ))
            self._create_topics()
            for name, spec in cfg.instances():
                self._add(Child(name, self._service_launcher(name, spec), True))
            self._write_prometheus_targets()
            if contract.wait(ready_timeout) != 0:
                raise RuntimeError(f"writing the API contract failed:\n{(logs / 'contract.log').read_text()[-3000:]}")
            self._add(Child("gateway", lambda: infra.start_caddy(cfg.gateway_env(), logs / "gateway.log"), False))
            self.wait_ready(ready_timeout)
        except BaseException:
            if contract.poll() is None:
                contract.kill()
                contract.wait()
            self.stop()
            raise

    def _write_contract(self) -> subprocess.Popen[bytes]:
        logs = self.config.var_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # A site already written from this code (LESSONSTREAM_CONTRACT_SITE: the tests write
        # one per run, rather than importing every service again for each stack) is copied.
        prebuilt = os.environ.get("LESSONSTREAM_CONTRACT_SITE", "")
        if prebuilt:
            copy = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)"
            command = [sys.executable, "-c", copy, prebuilt, str(self.config.api_docs_dir)]
        else:
            command = [sys.executable, "-m", "lessonstream.contract", "--out", str(self.config.api_docs_dir)]
        with open(logs / "contract.log", "wb") as out:
            return subprocess.Popen(command, cwd=infra.ROOT, stdout=out, stderr=subprocess.STDOUT)

    def _create_topics(self) -> None:
        cfg = self.config
        settings = ServiceSettings(kafka_bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix)
        asyncio.run(ensure_topics(settings))

    def _service_launcher(self, name: str, spec: ProcessSpec) -> Callable[[], infra.Process]:
        cfg = self.config

        def launch() -> infra.Process:
            return infra.spawn(
                name,
                [sys.executable, "-m", "shared.serve", "--factory", spec.factory,
                 "--host", "127.0.0.1", "--port", str(cfg.port(name)),
                 "--no-access-log", "--timeout-graceful-shutdown", "10",
                 # Longer than the gateway keeps an idle connection (gateway/Caddyfile).
                 "--timeout-keep-alive", "75"],
                log_path=cfg.var_dir / "logs" / f"{name}.log",
                env=cfg.env_for(spec),
            )

        return launch

    def _add(self, child: Child) -> None:
        self.children[child.name] = child
        self._launch(child)

    def _launch(self, child: Child) -> None:
        child.proc = child.launch()
        child.up_since = time.monotonic()
        child.restart_at = None
        self._write_pids()

    def _write_prometheus_targets(self) -> None:
        """``var/run/prometheus-targets.json``: for a Prometheus pointed at the local stack
        (``file_sd_configs``); the ports stay the same across restarts."""
        self._run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._run_dir / "prometheus-targets.json.tmp"
        tmp.write_text(json.dumps(self.config.prometheus_targets(), indent=2))
        tmp.replace(self._run_dir / "prometheus-targets.json")

    def _write_pids(self) -> None:
        """``var/run/processes.json``: who is running as which pid (for operators and fault tests)."""
        self._run_dir.mkdir(parents=True, exist_ok=True)
        pids = {name: c.pid for name, c in self.children.items() if c.alive}
        tmp = self._run_dir / "processes.json.tmp"
        tmp.write_text(json.dumps(pids, indent=2))
        tmp.replace(self._run_dir / "processes.json")

    def wait_ready(self, timeout: float) -> None:
        cfg = self.config
        targets = {name: f"http://127.0.0.1:{cfg.port(name)}/ready" for name, _ in cfg.instances()}
        targets.update({f"gateway:{s}": f"{cfg.gateway_url}/ready/{s}" for s in SERVICES})
        pending = dict(targets)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=3.0) as client:
            while pending and time.monotonic() < deadline:
                for name, url in list(pending.items()):
                    child = self.children.get(name.split(":")[0] if ":" not in name else "gateway")
                    if child is not None and child.proc is not None and not child.proc.alive:
                        raise RuntimeError(f"{name} exited while starting:\n{child.proc.log_tail()}")
                    try:
                        if client.get(url).status_code == 200:
                            del pending[name]
                    except httpx.HTTPError:
                        pass
                if pending:
                    time.sleep(0.25)
        if pending:
            details = "\n".join(
                f"--- {n}\n{c.proc.log_tail(15)}" for n, c in self.children.items() if c.proc is not None
            )
            raise TimeoutError(f"not ready after {timeout:.0f}s: {', '.join(pending)}\n{details}")

    # ------------------------------------------------------------ supervision
    def supervise(self) -> None:
        """One round: note what exited, restart what is due. Call it every fraction of a second."""
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.restart_at is None:
                if child.alive:
                    if now - child.up_since > STABLE_S:
                        child.delays.reset()
                    continue
                status = child.proc.popen.returncode if child.proc is not None else None
                tail = child.proc.log_tail(5) if child.proc is not None else ""
                if child.proc is not None:
                    child.proc.stop()  # closes its log file
                pause = child.delays.next()
                child.restart_at = now + pause
                self._log(f"{child.name} exited (status {status}); restarting in {pause:.1f}s"
                          + (f"\n{tail}" if tail else ""))
            elif now >= child.restart_at:
                self._restart(child)

    def until_due(self) -> float:
        """Seconds until the next restart is due (at most ``SUPERVISE_MAX_WAIT_S``)."""
        now = time.monotonic()
        due = [c.restart_at - now for c in self.children.values() if c.restart_at is not None]
        return max(0.0, min([SUPERVISE_MAX_WAIT_S, *due]))

    def _restart(self, child: Child) -> None:
        try:
            self._launch(child)
        except Exception as exc:
            pause = child.delays.next()
            child.restart_at = time.monotonic() + pause
            self._log(f"{child.name} did not start: {exc}; next try in {pause:.1f}s")
            return
        child.restarts += 1
        self._log(f"{child.name} restarted (restart {child.restarts}, pid {child.pid})")
        if child.name == "broker":
            self._after_broker_restart()

    def _after_broker_restart(self) -> None:
        """The new broker has no topics and no offsets, and Kafka clients connected to the old
        one do not recover: create the topics, then restart every process that uses it."""
        try:
            self._create_topics()
        except Exception as exc:
            self._log(f"could not create the topics on the new broker: {exc!r} (the services will)")
        clients = [c for c in self.children.values() if c.uses_broker and c.proc is not None]
        self._log(f"restarting {len(clients)} broker clients after the broker restart")
        infra.stop_all([c.proc for c in clients if c.proc is not None])
        for child in clients:
            self._launch(child)
            child.restarts += 1

    def child(self, name: str) -> Child:
        return self.children[name]

    def dead(self) -> list[str]:
        return [name for name, c in self.children.items() if not c.alive]

    # ------------------------------------------------------------ stop
    def stop(self) -> None:
        """Gateway first, then every service at once (each finishes its requests and flushes),
        then the mail sink and the broker."""
        order = list(self.children.values())
        gateway = [c for c in order if c.name == "gateway"]
        services = [c for c in order if c.uses_broker]
        rest = [c for c in reversed(order) if c not in gateway and c not in services]
        for group in (gateway, services, rest):
            infra.stop_all([c.proc for c in group if c.proc is not None])
        self.children.clear()
        (self._run_dir / "processes.json").unlink(missing_ok=True)
        (self._run_dir / "prometheus-targets.json").unlink(missing_ok=True)
