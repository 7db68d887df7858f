"""What an idle ``lessonstream dev`` stack costs: CPU of every process of the stack while
nothing happens, as a percentage of one core.

One run:
  1. ``lessonstream dev`` is started as the tests start it (``tests/devstack.py``: a
     subprocess on free ports, PostgreSQL from DATABASE_URL or the server on
     127.0.0.1:5432, fresh databases under a prefix of their own), or ``--attach PID`` names
     the runner of a stack already running (with ``--db-prefix`` for its databases).
  2. Once it is ready, --settle seconds pass (consumer groups join, relays meet the broker,
     the first loop ticks), then the clock runs for --seconds.
  3. Counted: utime + stime (``/proc/<pid>/stat``) of the runner and every process under it
     (services, certificate workers and their render pool, the gateway, the broker, the SMTP
     sink), and of every PostgreSQL backend connected to the stack's databases (found in
     ``pg_stat_activity`` by database name; the bench's own connection is left out). With a
     stack's own embedded PostgreSQL (``--attach`` with ``--var-dir`` on a stack without
     DATABASE_URL), the server found by ``<var>/postgres/postmaster.pid`` (it runs detached
     from the runner) and every process under it: its background processes and the
     stack's backends.
     Processes are listed every few seconds; one that ended during the window is counted up
     to its last listing.

    python bench/idle.py [--seconds 60] [--settle 20] [--attach PID --db-prefix lessonstream_]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lessonstream import infra  # noqa: E402
from lessonstream.stack import StackConfig  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
LIST_EVERY_S = 5.0


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may hold spaces: fields count from after it.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children[ppid].append(int(entry.name))
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def label_of(pid: int, names: dict[int, str]) -> str:
    """A readable name: the runner's own name for its child, else what the command says."""
    if pid in names:
        return names[pid]
    cmd = command_of(pid)
    if "postgres" in cmd:
        return "postgres server process"
    if "multiprocessing" in cmd or "spawn_main" in cmd:
        return "render pool process"
    return cmd[:60]


@dataclass
class Tracked:
    label: str
    first: float
    last: float


def embedded_postmaster(var_dir: Path | None) -> int | None:
    """The pid of the stack's own embedded PostgreSQL server, if it runs one."""
    if var_dir is None:
        return None
    try:
        pid = int((var_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if cpu_seconds(pid) is not None else None


def embedded_label(pid: int, db_prefix: str) -> str:
    cmd = command_of(pid)
    # A backend's title: "postgres: <user> <database> <client> <state>".
    words = cmd.split()
    if len(words) > 2 and words[2].startswith(db_prefix):
        return f"postgres backend {words[2].removeprefix(db_prefix)}"
    return "embedded postgres server"


@dataclass
class Sampler:
    runner: int
    postgres_url: str | None
    db_prefix: str
    postmaster: int | None = None  # an embedded PostgreSQL server, counted with all under it
    names: dict[int, str] = field(default_factory=dict)
    tracked: dict[int, Tracked] = field(default_factory=dict)
    own_backend: int = 0

    async def backends(self, conn: asyncpg.Connection | None) -> dict[int, str]:
        if conn is None:
            return {}
        rows = await conn.fetch(
            "SELECT pid, datname, coalesce(application_name, '') AS app, backend_type FROM pg_stat_activity "
            "WHERE datname LIKE $1 AND pid <> pg_backend_pid()",
            self.db_prefix.replace("_", r"\_") + "%",
        )
        return {r["pid"]: f"postgres backend {r['datname'].removeprefix(self.db_prefix)}" for r in rows}

    async def list_processes(self, conn: asyncpg.Connection | None) -> None:
        """Start tracking any new process; bring every tracked one's figure up to date."""
        pids: dict[int, str] = {pid: label_of(pid, self.names) for pid in descendants(self.runner)}
        pids.update(await self.backends(conn))
        if self.postmaster is not None:
            pids.update({pid: embedded_label(pid, self.db_prefix) for pid in descendants(self.postmaster)})
        for pid, label in pids.items():
            seconds = cpu_seconds(pid)
            if seconds is None:
                continue
            if pid in self.tracked:
                self.tracked[pid].last = seconds
            else:
                # A process that appears during the window counts from its listing.
                self.tracked[pid] = Tracked(label, seconds, seconds)
        for pid, entry in self.tracked.items():
            if pid not in pids:
                continue
            seconds = cpu_seconds(pid)
            if seconds is not None:
                entry.last = seconds


def processes_json(var_dir: Path) -> dict[int, str]:
    try:
        found: dict[str, int] = json.loads((var_dir / "run" / "processes.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {pid: name for name, pid in found.items() if pid}


def start_stack(postgres_url: str, var_dir: Path, db_prefix: str) -> subprocess.Popen[bytes]:
    base = infra.free_port_block(len(StackConfig(var_dir, "", "", 0).instances()))
    cmd = [
        sys.executable, "-m", "lessonstream.cli", "dev",
        "--gateway-port", str(infra.free_port()), "--kafka-port", str(infra.free_port()),
        "--smtp-port", str(infra.free_port()), "--base-port", str(base),
        "--var-dir", str(var_dir), "--db-prefix", db_prefix,
    ]
    output = open(var_dir / "dev-output.log", "ab")  # noqa: SIM115 - the child writes it while it runs
    return subprocess.Popen(cmd, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                            env={**os.environ, "DATABASE_URL": postgres_url})


def wait_ready(process: subprocess.Popen[bytes], var_dir: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    log = var_dir / "dev-output.log"
    while "Lessonstream is ready at http" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"lessonstream dev did not become ready:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


async def measure(sampler: Sampler, seconds: float, var_dir: Path | None) -> float:
    conn = await asyncpg.connect(sampler.postgres_url) if sampler.postgres_url else None
    try:
        if var_dir is not None:
            sampler.names = processes_json(var_dir)
        sampler.names[sampler.runner] = "runner (lessonstream dev)"
        started = time.monotonic()
        await sampler.list_processes(conn)
        while (left := seconds - (time.monotonic() - started)) > 0:
            await asyncio.sleep(min(LIST_EVERY_S, left))
            await sampler.list_processes(conn)
        return time.monotonic() - started
    finally:
        if conn is not None:
            await conn.close()


def report(sampler: Sampler, elapsed: float) -> float:
    by_label: dict[str, list[float]] = defaultdict(list)
    for entry in sampler.tracked.values():
        by_label[entry.label].append(entry.last - entry.first)
    rows = sorted(((sum(v), label, len(v)) for label, v in by_label.items()), reverse=True)
    total = sum(r[0] for r in rows)
    out(f"\nCPU over {elapsed:.0f} s, % of one core (processes: {len(sampler.tracked)})")
    for seconds, label, n in rows:
        out(f"  {100 * seconds / elapsed:6.2f} %  {label}" + (f"  (x{n})" if n > 1 else ""))
    out(f"  {100 * total / elapsed:6.2f} %  TOTAL")
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measurement")
    parser.add_argument("--settle", type=float, default=20.0, help="wait after ready before measuring")
    parser.add_argument("--attach", type=int, default=0, help="pid of a running `lessonstream dev`")
    parser.add_argument("--db-prefix", default="", help="database prefix of the stack (with --attach)")
    parser.add_argument("--var-dir", type=Path, default=None, help="var dir of the stack (with --attach)")
    args = parser.parse_args()
    postgres_url = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    if args.attach:
        postmaster = embedded_postmaster(args.var_dir)
        # The stack's databases are on its embedded server if it runs one, else on DATABASE_URL's.
        shared_server = postgres_url if postmaster is None and infra.postgres_reachable(postgres_url) else None
        sampler = Sampler(args.attach, shared_server, args.db_prefix or "lessonstream_", postmaster)
        embedded = f" and its embedded PostgreSQL (pid {postmaster})" if postmaster else ""
        out(f"attached to pid {args.attach}{embedded}; settling {args.settle:.0f} s")
        time.sleep(args.settle)
        report(sampler, asyncio.run(measure(sampler, args.seconds, args.var_dir)))
        return
    if not infra.postgres_reachable(postgres_url):
        raise SystemExit(f"no PostgreSQL at {postgres_url} (set DATABASE_URL)")
    var_dir = Path(tempfile.mkdtemp(prefix="lessonstream-idle-"))
    db_prefix = f"idle{os.getpid()}_"
    out(f"starting lessonstream dev (var {var_dir}, databases {db_prefix}*)")
    process = start_stack(postgres_url, var_dir, db_prefix)
    try:
        wait_ready(process, var_dir)
        out(f"ready; settling {args.settle:.0f} s, then measuring {args.seconds:.0f} s")
        time.sleep(args.settle)
        sampler = Sampler(process.pid, postgres_url, db_prefix)
        report(sampler, asyncio.run(measure(sampler, args.seconds, var_dir)))
    finally:
        infra.stop_runner(process)
        asyncio.run(drop_databases(postgres_url, db_prefix))


async def drop_databases(url: str, prefix: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for row in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                    prefix.replace("_", r"\_") + "%"):
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
