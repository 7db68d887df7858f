"""A real learning record store for the xAPI tests: Ralph with its file system backend,
run from its own virtualenv (``make lrs`` makes ``.venv-lrs``; its pinned FastAPI and
uvicorn conflict with ours) as a subprocess on a free loopback port.

``LRS_VENV`` points at another virtualenv holding ``ralph-malph[cli,lrs]``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from lessonstream import infra

LRS_VENV = Path(os.environ.get("LRS_VENV", infra.ROOT / ".venv-lrs"))
USERNAME = "lessonstream"
# Ralph's server under uvicorn (no reloader), with one fix: its file system backend
# creates the statements file on the first write and refuses every later one ("already
# exists", a 500), so writes append instead (Ralph 5.1.0).
_SERVE = """
import sys
import uvicorn
from ralph.backends.data.base import BaseOperationType
from ralph.backends.data.fs import FSDataBackend
FSDataBackend.default_operation_type = BaseOperationType.APPEND
from ralph.api import app
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
START_TIMEOUT_S = 60.0  # Ralph imports a lot: about 5 s on an idle machine, slower under load


@dataclass(frozen=True)
class Lrs:
    url: str  # the xAPI endpoint's base, e.g. http://127.0.0.1:PORT/xAPI
    username: str
    password: str
    process: infra.Process

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)


def ralph() -> Path:
    executable = LRS_VENV / "bin" / "ralph"
    if not executable.exists():
        raise RuntimeError(f"no Ralph at {executable}: run `make lrs` (it makes {LRS_VENV.name})")
    return executable


@contextmanager
def running_lrs(workdir: Path) -> Iterator[Lrs]:
    """Ralph on a free port with one Basic account (scope ``all``), its statements in
    ``workdir``; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    password = os.urandom(12).hex()
    env = {
        **os.environ,
        "RALPH_APP_DIR": str(workdir / "app"),
        "RALPH_AUTH_FILE": str(workdir / "auth.json"),
        # Ralph reads its server backend at import, even for `ralph auth`.
        "RALPH_RUNSERVER_BACKEND": "fs",
        "RALPH_BACKENDS__DATA__FS__DEFAULT_DIRECTORY_PATH": str(workdir / "statements"),
    }
    (workdir / "statements").mkdir(exist_ok=True)
    subprocess.run(
        [str(ralph()), "auth", "-u", USERNAME, "-p", password, "-s", "all",
         "-A", USERNAME, "http://127.0.0.1", "-w"],
        env=env, check=True, capture_output=True, timeout=START_TIMEOUT_S,
    )
    port = infra.free_port()
    process = infra.spawn(
        "lrs", [str(LRS_VENV / "bin" / "python"), "-c", _SERVE, str(port)], log_path=workdir / "lrs.log", env=env,
        cwd=workdir,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not process.alive:
            raise RuntimeError(f"Ralph exited:\n{process.log_tail()}")
        try:
            return httpx.get(f"{base}/__heartbeat__", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        infra.wait_until(up, START_TIMEOUT_S, interval=0.2, what="the LRS (Ralph) to answer")
        yield Lrs(f"{base}/xAPI", USERNAME, password, process)
    finally:
        process.stop()
