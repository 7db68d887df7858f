"""The ``lessonstream`` command's subcommands that need no running stack (seed-demo against one:
tests/e2e/test_seed_demo.py)."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from lessonstream.cli import SAMPLE_VIDEO_SECONDS, app
from lessonstream.infra import free_port
from lessonstream.stack import PROCESSES
from shared.auth import TokenVerifier
from shared.db import with_database
from shared.settings import ServiceSettings
from tests.helpers import TestEnv

runner = CliRunner()


async def test_token_prints_only_a_token_the_services_accept() -> None:
    result = runner.invoke(
        app, ["token", "--user", "17", "--name", "Grace Hopper", "--email", "grace@example.com",
              "--role", "instructor", "--role", "admin"],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    user = await TokenVerifier(ServiceSettings()).verify(token)
    assert (user.id, user.name, user.email) == ("17", "Grace Hopper", "grace@example.com")
    assert user.roles == ["instructor", "admin"]


def test_credential_key_adds_a_signing_key_and_keeps_the_earlier_ones() -> None:
    from services.certificates import credentials

    first = runner.invoke(app, ["credential-key", "--kid", "2026-a"], env={"CERTIFICATE_SIGNING_KEYS": ""})
    assert first.exit_code == 0, first.output
    [key] = credentials.parse_keys(first.stdout.strip())
    assert key.kid == "2026-a"
    rotated = runner.invoke(app, ["credential-key", "--kid", "2027-a", "--keep", first.stdout.strip()])
    assert rotated.exit_code == 0, rotated.output
    assert [k.kid for k in credentials.parse_keys(rotated.stdout.strip())] == ["2026-a", "2027-a"]
    assert credentials.parse_keys(rotated.stdout.strip())[0] == key
    clash = runner.invoke(app, ["credential-key", "--kid", "2026-a", "--keep", first.stdout.strip()])
    assert clash.exit_code != 0


def test_token_refuses_an_unknown_role() -> None:
    result = runner.invoke(app, ["token", "--user", "1", "--role", "superuser"])
    assert result.exit_code != 0
    assert "unknown role" in result.output


def test_migrate_creates_and_migrates_every_service_database(test_env: TestEnv) -> None:
    prefix = f"{test_env.prefix}cli_"
    args = ["migrate", "--database-url", test_env.postgres_url, "--db-prefix", prefix]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert "up to date" in again.output

    async def components(database: str) -> set[str]:
        conn = await asyncpg.connect(with_database(test_env.postgres_url, prefix + database))
        try:
            return {r["component"] for r in await conn.fetch("SELECT DISTINCT component FROM schema_migrations")}
        finally:
            await conn.close()

    for database in {p.database for p in PROCESSES}:
        assert "shared" in asyncio.run(components(database))


def test_regenerate_certificates_queues_work_for_the_workers(test_env: TestEnv) -> None:
    prefix = f"{test_env.prefix}cli_"
    result = runner.invoke(
        app,
        ["regenerate-certificates", "--course", "41", "--course", "42",
         "--database-url", test_env.postgres_url, "--db-prefix", prefix],
    )
    assert result.exit_code == 0, result.output
    assert "course 41: regeneration" in result.stdout and "queued for 0 certificates" in result.stdout
    assert "course 42: regeneration" in result.stdout


def test_app_password_create_list_and_revoke(test_env: TestEnv) -> None:
    database = ["--database-url", test_env.postgres_url, "--db-prefix", f"{test_env.prefix}cli_"]
    made = runner.invoke(app, ["app-password", "create", "--user", "17", "--name", "Grace Hopper", "--email",
                               "grace@example.com", "--role", "instructor", "--label", "Fluent app", *database])
    assert made.exit_code == 0, made.output
    [line] = made.stdout.splitlines()  # USER:PASSWORD alone on standard output
    user, _, password = line.partition(":")
    assert user == "17" and len(password) == 24 and password.isalnum()
    assert "shown once" in made.stderr

    listed = runner.invoke(app, ["app-password", "list", "--user", "17", *database])
    assert listed.exit_code == 0, listed.output
    [row] = listed.stdout.splitlines()
    fields = row.split("\t")
    assert fields[1:4] == ["17", "Fluent app", "instructor"] and fields[-1] == "live"
    assert password not in listed.output

    revoked = runner.invoke(app, ["app-password", "revoke", fields[0], *database])
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(app, ["app-password", "list", *database])
    assert again.stdout.splitlines()[0].split("\t")[-1].startswith("revoked ")
    unknown = runner.invoke(app, ["app-password", "revoke", "99999", *database])
    assert unknown.exit_code == 1 and "no application password 99999" in unknown.stderr
    colon = runner.invoke(app, ["app-password", "create", "--user", "a:b", *database])
    assert colon.exit_code != 0


def test_sample_video_is_a_short_vp9_webm(tmp_path: Path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "media" / "sample.webm"
    result = runner.invoke(app, ["sample-video", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert 20_000 < out.stat().st_size < 500_000
    # `ffmpeg -i` alone describes the input (and exits 1: no output was named).
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)],
                           capture_output=True, text=True).stderr
    assert "Input #0, matroska,webm" in probe
    found = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", probe)
    assert found is not None, probe
    hours, minutes, seconds = found.groups()
    assert abs(int(hours) * 3600 + int(minutes) * 60 + float(seconds) - SAMPLE_VIDEO_SECONDS) < 0.1
    assert re.search(r"Video: vp[89].*640x360", probe), probe


def test_seed_demo_reports_an_unreachable_gateway() -> None:
    result = runner.invoke(app, ["seed-demo", "--gateway", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "cannot reach the gateway" in result.output
