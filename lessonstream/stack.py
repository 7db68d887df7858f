"""The whole system as local processes: every service, the certificate worker, the gateway.

``lessonstream dev`` runs it on embedded defaults; the end-to-end tests run the same
thing against the test broker and database.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lessonstream import infra
from shared.bus import ensure_topics
from shared.db import with_database
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

    def port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = infra.free_port()
        return self.ports[name]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def database_url(self, service: str) -> str:
        return with_database(self.postgres_url, f"{self.db_prefix}{service}")

    def env_for(self, spec: ProcessSpec) -> dict[str, str]:
        return {
            "SERVICE_NAME": spec.name,
            "DATABASE_URL": self.database_url(spec.database),
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "KAFKA_TOPIC_PREFIX": self.topic_prefix,
            "PUBLIC_BASE_URL": self.gateway_url,
            "ENROLLMENT_INTERNAL_URL": f"http://127.0.0.1:{self.port('enrollment')}",
            "PROGRESS_INTERNAL_URL": f"http://127.0.0.1:{self.port('progress')}",
            "CERTIFICATES_INTERNAL_URL": f"http://127.0.0.1:{self.port('certificates')}",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_TLS": "none",
            **self.extra_env,
        }

    def gateway_env(self) -> dict[str, str]:
        return {
            "GATEWAY_PORT": str(self.gateway_port),
            "PROGRESS_UPSTREAM": f"127.0.0.1:{self.port('progress')}",
            "ENROLLMENT_UPSTREAM": f"127.0.0.1:{self.port('enrollment')}",
            "CERTIFICATES_UPSTREAM": f"127.0.0.1:{self.port('certificates')}",
            "NOTIFICATIONS_UPSTREAM": f"127.0.0.1:{self.port('notifications')}",
            "XDG_DATA_HOME": str(self.var_dir / "caddy"),
            "XDG_CONFIG_HOME": str(self.var_dir / "caddy"),
        }


class Stack:
    """Starts the service processes and the gateway; stops them in reverse order."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.processes: dict[str, infra.Process] = {}

    def start(self, ready_timeout: float = 120.0) -> None:
        cfg = self.config
        logs = cfg.var_dir / "logs"
        asyncio.run(
            ensure_topics(
                ServiceSettings(kafka_bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix)
            )
        )
        try:
            for spec in PROCESSES:
                self.processes[spec.name] = infra.spawn(
                    spec.name,
                    [sys.executable, "-m", "uvicorn", "--factory", spec.factory,
                     "--host", "127.0.0.1", "--port", str(cfg.port(spec.name)),
                     "--no-access-log", "--timeout-graceful-shutdown", "10"],
                    log_path=logs / f"{spec.name}.log",
                    env=cfg.env_for(spec),
                )
            self.processes["gateway"] = infra.start_caddy(cfg.gateway_env(), logs / "gateway.log")
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        cfg = self.config
        targets = {spec.name: f"http://127.0.0.1:{cfg.port(spec.name)}/ready" for spec in PROCESSES}
        targets.update({f"gateway:{s}": f"{cfg.gateway_url}/ready/{s}" for s in SERVICES})
        pending = dict(targets)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=3.0) as client:
            while pending and time.monotonic() < deadline:
                for name, url in list(pending.items()):
                    proc = self.processes.get(name.split(":")[0] if ":" not in name else "gateway")
                    if proc is not None and not proc.alive:
                        raise RuntimeError(f"{proc.name} exited while starting:\n{proc.log_tail()}")
                    try:
                        if client.get(url).status_code == 200:
                            del pending[name]
                    except httpx.HTTPError:
                        pass
                if pending:
                    time.sleep(0.25)
        if pending:
            details = "\n".join(f"--- {n}\n{p.log_tail(15)}" for n, p in self.processes.items())
            raise TimeoutError(f"not ready after {timeout:.0f}s: {', '.join(pending)}\n{details}")

    def dead(self) -> list[infra.Process]:
        return [p for p in self.processes.values() if not p.alive]

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        self.processes.clear()
