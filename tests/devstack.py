"""``lessonstream dev`` as the tests run it: a real subprocess on free ports, stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lessonstream import infra
from lessonstream.stack import PROCESSES
from tests.conftest import RUN_ID


@dataclass
class DevStack:
    gateway: str
    smtp_port: int
    var_dir: Path
    ports: dict[str, int]
    process: subprocess.Popen[bytes]
    output: Path


def _free_block(count: int) -> int:
    for _ in range(200):
        base = infra.free_port()
        if base + count < 32000 and not any(infra.port_open("127.0.0.1", base + i) for i in range(count)):
            return base
    raise RuntimeError("no free block of ports")


@contextlib.contextmanager
def running_dev_stack(postgres_url: str, var_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[DevStack]:
    gateway, kafka, smtp = infra.free_port(), infra.free_port(), infra.free_port()
    base = _free_block(len(PROCESSES))
    output = var_dir / "dev-output.log"
    cmd = [
        sys.executable, "-m", "lessonstream.cli", "dev",
        "--gateway-port", str(gateway), "--kafka-port", str(kafka), "--smtp-port", str(smtp),
        "--base-port", str(base), "--var-dir", str(var_dir), "--db-prefix", f"t{RUN_ID}_{var_dir.name}_",
    ]
    with open(output, "wb") as out:
        process = subprocess.Popen(
            cmd, cwd=infra.ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "DATABASE_URL": postgres_url, **(extra_env or {})},
        )
    deadline = time.monotonic() + 180
    while "Lessonstream is ready at http" not in output.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"lessonstream dev did not become ready:\n{output.read_text(errors='replace')[-6000:]}")
        time.sleep(0.2)
    try:
        yield DevStack(
            f"http://127.0.0.1:{gateway}", smtp, var_dir,
            {p.name: base + i for i, p in enumerate(PROCESSES)}, process, output,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()  # its children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
                process.wait(10)
