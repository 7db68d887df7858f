"""The README's first command: ``lessonstream dev`` brings every service and the gateway
to ready, routes each path to its owner, and stops everything on Ctrl-C."""

from __future__ import annotations

import importlib
import re
import signal
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage

import httpx
import pytest
from fastapi.routing import APIRoute

from lessonstream import infra
from lessonstream.stack import PROCESSES, SERVICES
from shared.auth import issue_token
from shared.settings import ServiceSettings
from tests.devstack import DevStack, running_dev_stack

pytestmark = pytest.mark.xdist_group("e2e")

NOT_ROUTED = ("/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/asyncapi.json", "/internal")


@pytest.fixture(scope="module")
def dev_stack(postgres_server: infra.Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with running_dev_stack(postgres_server.url, tmp_path_factory.mktemp("var")) as stack:
        yield stack


def test_every_service_is_ready_through_the_gateway(dev_stack: DevStack) -> None:
    for name in SERVICES:
        for kind in ("health", "ready"):
            response = httpx.get(f"{dev_stack.gateway}/{kind}/{name}", timeout=5)
            assert response.status_code == 200, (name, kind, response.text)
            assert response.headers["x-lessonstream-service"] == name
    worker = httpx.get(f"http://127.0.0.1:{dev_stack.ports['certificates-worker']}/ready", timeout=5)
    assert worker.status_code == 200


def declared_routes() -> dict[str, list[tuple[str, str]]]:
    """(method, concrete path) of every public route each service declares."""
    routes: dict[str, list[tuple[str, str]]] = {}
    for spec in PROCESSES:
        if not spec.routed:
            continue
        module_name, factory = spec.factory.split(":")
        app = getattr(importlib.import_module(module_name), factory)()
        for route in app.routes:
            if not isinstance(route, APIRoute) or route.path.startswith(NOT_ROUTED):
                continue
            path = re.sub(r"\{[^}:]+(:path)?\}", "1", route.path)
            for method in sorted(route.methods or ()):
                routes.setdefault(spec.name, []).append((method, path))
    return routes


# Paths of the seed documents and the design, and who owns them: checked even before a
# service declares the route (its own 404 still proves where the gateway sent it).
EXPECTED_OWNERS = {
    "/api/progress": "progress",
    "/api/courses/10/progress": "progress",
    "/api/courses/10/lessons/101/complete": "progress",
    "/api/courses/10/lessons/101/incomplete": "progress",
    "/api/admin/learners/abc/progress": "progress",
    "/api/admin/courses/10/analytics": "progress",
    "/api/courses/10/enroll": "enrollment",
    "/api/courses/10/unenroll": "enrollment",
    "/api/courses/10/students": "enrollment",
    "/api/courses/my-courses": "enrollment",
    "/api/courses/10": "enrollment",
    "/api/admin/courses": "enrollment",
    "/api/admin/courses/10/lessons/3": "enrollment",
    "/api/admin/erasures/abc": "enrollment",
    "/api/admin/exports/abc": "enrollment",
    "/api/courses/10/certificate": "certificates",
    "/certificates/verify/abc": "certificates",
    "/certificates/abc.pdf": "certificates",
    "/wp-json/fluent-community/v2/courses/10/progress": "progress",
    "/wp-json/fluent-community/v2/courses/10/enroll": "enrollment",
    "/wp-json/fluent-community/v2/courses/10/certificate": "certificates",
}


def test_every_declared_route_reaches_its_own_service(dev_stack: DevStack) -> None:
    with httpx.Client(base_url=dev_stack.gateway, timeout=10) as client:
        for service, routes in declared_routes().items():
            for method, path in routes:
                response = client.request(method, path)
                assert response.headers.get("x-lessonstream-service") == service, (method, path, response.text)
        for path, service in EXPECTED_OWNERS.items():
            response = client.get(path)
            assert response.headers.get("x-lessonstream-service") == service, (path, response.text)


def test_internal_and_unknown_paths_are_not_routed(dev_stack: DevStack) -> None:
    with httpx.Client(base_url=dev_stack.gateway, timeout=10) as client:
        for path in ("/internal/courses/1", "/api/internal/courses/1", "/metrics", "/asyncapi.json", "/nothing",
                     "/api/nothing"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "x-lessonstream-service" not in response.headers, path
            assert response.json() == {"code": "not_found", "message": "No such endpoint", "data": {"status": 404}}


def test_request_ids_cors_and_body_limit(dev_stack: DevStack) -> None:
    with httpx.Client(base_url=dev_stack.gateway, timeout=10) as client:
        kept = client.get("/health/progress", headers={"X-Request-ID": "req-42"})
        assert kept.headers["x-request-id"] == "req-42"
        made = client.get("/health/progress")
        assert re.fullmatch(r"[0-9a-f-]{36}", made.headers["x-request-id"])

        preflight = client.options(
            "/api/progress",
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        foreign = client.get("/health/progress", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers

        # A signed-in heartbeat, so the service reads the body and the gateway's limit bites.
        token = issue_token(ServiceSettings(), user_id="1")
        too_big = client.post(
            "/api/progress", content=b"x" * (2 * 1024 * 1024),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert too_big.status_code == 413
        assert too_big.json()["code"] == "payload_too_large"


def test_mail_sent_to_the_sink_is_kept_on_disk(dev_stack: DevStack) -> None:
    message = EmailMessage()
    message["From"] = "noreply@lessonstream.local"
    message["To"] = "ada@example.com"
    message["Subject"] = "Hello from the sink test"
    message.set_content("Body text")
    with smtplib.SMTP("127.0.0.1", dev_stack.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)
    mail_dir = dev_stack.var_dir / "mail"
    [stored_file] = infra.wait_until(lambda: list(mail_dir.glob("*.eml")), 10, interval=0.05, what="an .eml file")
    stored = stored_file.read_text()
    assert "Subject: Hello from the sink test" in stored and "X-Envelope-To: ada@example.com" in stored


def test_ctrl_c_stops_everything(dev_stack: DevStack) -> None:
    import psutil

    runner = psutil.Process(dev_stack.process.pid)
    descendants = runner.children(recursive=True)  # services, their render pools, broker, gateway
    assert len(descendants) >= 8
    dev_stack.process.send_signal(signal.SIGINT)
    assert dev_stack.process.wait(60) == 0
    text = dev_stack.output.read_text(errors="replace")
    assert "stopped." in text
    for port in [*dev_stack.ports.values(), int(dev_stack.gateway.rsplit(":", 1)[1]), dev_stack.smtp_port]:
        assert not infra.port_open("127.0.0.1", port), f"port {port} still answers"
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
