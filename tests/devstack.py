"""``lessonstream dev`` as the tests run it: a real subprocess on free ports, stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lessonstream import infra
from lessonstream.stack import StackConfig
from tests.conftest import RUN_ID


def published_course(
    client: httpx.Client, headers: dict[str, str], title: str,
    lessons: Sequence[tuple[str, bool] | tuple[str, bool, str]], *, duration_seconds: int = 600, **fields: object,
) -> tuple[int, list[int]]:
    """A course with certificates (and any other course ``fields``) and lessons of
    ``duration_seconds`` (``(title, required)``, video, or ``(title, required, kind)``),
    published through the gateway's admin API; its id and its lessons' ids."""
    created = client.post("/api/admin/courses", headers=headers,
                          json={"title": title, "certificate_enabled": True, **fields})
    assert created.status_code == 201, created.text
    course_id: int = created.json()["data"]["id"]
    lesson_ids = []
    for name, required, *kind in lessons:
        added = client.post(f"/api/admin/courses/{course_id}/lessons", headers=headers, json={
            "title": name, "is_required": required, "duration_seconds": duration_seconds,
            "kind": kind[0] if kind else "video"})
        assert added.status_code == 201, added.text
        lesson_ids.append(added.json()["data"]["lesson"]["id"])
    assert client.post(f"/api/admin/courses/{course_id}/publish", headers=headers).status_code == 200
    return course_id, lesson_ids


def issued_certificate(
    client: httpx.Client, course_id: int, headers: dict[str, str], *, what: str = "the certificate",
    other_than: str | None = None, timeout: float = 60,
) -> dict[str, Any]:
    """The learner's certificate of the course once issued (``other_than``: a certificate id
    to wait past, a later attempt's); meanwhile the answer may only be 202, pending."""
    def issued() -> dict[str, Any] | None:
        response = client.get(f"/api/courses/{course_id}/certificate", headers=headers)
        assert response.status_code in (200, 202), response.text
        if response.status_code != 200:
            return None
        data: dict[str, Any] = response.json()["data"]
        return data if data["certificate_id"] != other_than else None

    return infra.wait_until(issued, timeout, interval=0.2, what=what)


@dataclass
class DevStack:
    gateway: str
    smtp_port: int
    var_dir: Path
    ports: dict[str, int]
    process: subprocess.Popen[bytes]
    output: Path
    kafka_port: int = 0
    db_prefix: str = ""  # of the per-service database names (``--db-prefix``)

    def pids(self) -> dict[str, int]:
        """The runner's own record of its children (``var/run/processes.json``)."""
        path = self.var_dir / "run" / "processes.json"
        try:
            found: dict[str, int] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return found

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


_CONTRACT_SITE: Path | None = None


def contract_site() -> Path:
    """The contract's site written once per test process from this code: every stack of the
    run copies it (``LESSONSTREAM_CONTRACT_SITE``) instead of importing every service again."""
    global _CONTRACT_SITE
    if _CONTRACT_SITE is None:
        site = Path(tempfile.mkdtemp(prefix="lessonstream-contract-")) / "site"
        subprocess.run([sys.executable, "-m", "lessonstream.contract", "--out", str(site)],
                       cwd=infra.ROOT, check=True, capture_output=True)
        _CONTRACT_SITE = site
    return _CONTRACT_SITE


@contextlib.contextmanager
def running_dev_stack(
    postgres_url: str,
    var_dir: Path,
    extra_env: dict[str, str] | None = None,
    *,
    progress_replicas: int = 1,
    certificate_workers: int = 1,
    ports: tuple[int, int, int, int] | None = None,
) -> Iterator[DevStack]:
    """``lessonstream dev`` in a subprocess until the block ends (then Ctrl-C).

    ``ports`` (gateway, broker, SMTP, first service port) lets a test start a runner
    again on the addresses of one it killed; by default they are free ones.
    """
    shape = StackConfig(var_dir, "", "", 0, progress_replicas=progress_replicas,
                        certificate_workers=certificate_workers)
    instances = [name for name, _ in shape.instances()]
    if ports is None:
        ports = (infra.free_port(), infra.free_port(), infra.free_port(), infra.free_port_block(len(instances)))
    gateway, kafka, smtp, base = ports
    output = var_dir / "dev-output.log"
    db_prefix = f"t{RUN_ID}_{var_dir.name}_"
    cmd = [
        sys.executable, "-m", "lessonstream.cli", "dev",
        "--gateway-port", str(gateway), "--kafka-port", str(kafka), "--smtp-port", str(smtp),
        "--base-port", str(base), "--var-dir", str(var_dir), "--db-prefix", db_prefix,
        "--progress-replicas", str(progress_replicas), "--certificate-workers", str(certificate_workers),
    ]
    started_at = output.stat().st_size if output.exists() else 0
    with open(output, "ab") as out:
        process = subprocess.Popen(
            cmd, cwd=infra.ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "DATABASE_URL": postgres_url, "LESSONSTREAM_CONTRACT_SITE": str(contract_site()),
                 **(extra_env or {})},
        )

    def said() -> str:
        with open(output, "rb") as f:
            f.seek(started_at)
            return f.read().decode(errors="replace")

    deadline = time.monotonic() + 180
    while "Lessonstream is ready at http" not in said():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"lessonstream dev did not become ready:\n{said()[-6000:]}")
        time.sleep(0.2)
    try:
        yield DevStack(
            f"http://127.0.0.1:{gateway}", smtp, var_dir,
            {name: base + i for i, name in enumerate(instances)}, process, output, kafka, db_prefix,
        )
    finally:
        infra.stop_runner(process)
