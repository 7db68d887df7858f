"""Mail throughput: how many mails a second one notifications process sends.

    python bench/mail.py [--n 1000] [--connections 1,4,8]

For each connection count: a throw-away database on 127.0.0.1:5432 with the notifications
migrations; the development SMTP sink (``lessonstream/smtp_sink.py``, which writes each
message to a file) in its own process; N course-completed mails queued in one transaction
as the consumer queues them (``store.enqueue``); then the mail sender
(``services/notifications/sender.py``) started with that many SMTP connections, timed from
its start to the last mail recorded ``sent``. Prints mails/s and the CPU of this process
(the sender: rendering, SMTP, bookkeeping) and of the sink, per mail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lessonstream import infra  # noqa: E402
from services.notifications import domain, store  # noqa: E402
from services.notifications.sender import MailSender  # noqa: E402
from services.notifications.settings import NotificationsSettings  # noqa: E402
from shared.db import create_pool, ensure_database, migrate_service, with_database  # noqa: E402
from shared.events import CourseCompleted, Topic  # noqa: E402

MIGRATIONS = ROOT / "services" / "notifications" / "migrations"


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cpu_s(pid: int) -> float:
    """User and system CPU time of a process so far, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def queue(pool: asyncpg.Pool, n: int, from_address: str) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        for i in range(n):
            event = CourseCompleted(
                user_id=f"bench-{i:06d}", course_id=1 + i % 40, completed_at=now,
                user_name=f"Learner {i}", user_email=f"learner{i}@learners.example",
                course_title="Practical Kafka", certificate_enabled=False,
            )
            mail = domain.plan(event, from_address=from_address, now=now, max_age=None)
            source = store.Source(Topic.COURSE_COMPLETED.value, 0, i, "notifications-bench", event.key())
            await store.enqueue(conn, mail, event.model_dump(mode="json"), source)


async def measure(pg_url: str, n: int, connections: int) -> None:
    database_url = with_database(pg_url, f"bench_mail_{os.getpid()}_{connections}")
    await ensure_database(database_url)
    port = infra.free_port()
    with tempfile.TemporaryDirectory() as mail_dir:
        sink = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lessonstream.smtp_sink", "--port", str(port), "--dir", mail_dir,
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        pool = None
        try:
            await migrate_service(database_url, "notifications", MIGRATIONS)
            settings = NotificationsSettings(
                database_url=database_url, smtp_host="127.0.0.1", smtp_port=port,
                smtp_connections=connections, mail_site_url="https://learn.example",
            )
            pool = await create_pool(database_url, max_size=connections + 4)
            await wait_for_port(port)
            await queue(pool, n, settings.mail_from_address)
            sender = MailSender(settings)
            mine, theirs = cpu_s(os.getpid()), cpu_s(sink.pid)
            started = time.perf_counter()
            await sender.start(pool)
            # The condition is in the database: polled, as a reader of the mail log would.
            while await pool.fetchval("SELECT count(*) FROM outgoing_mail WHERE status = 'sent'") < n:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            mine, theirs = cpu_s(os.getpid()) - mine, cpu_s(sink.pid) - theirs
            await sender.stop()
            files = await asyncio.to_thread(lambda: len(list(Path(mail_dir).glob("*.eml"))))
            out(f"{connections} connection(s): {n} mails in {elapsed:.2f} s = {n / elapsed:,.0f} mails/s; "
                f"CPU per mail: sender {mine / n * 1e6:,.0f} us, sink {theirs / n * 1e6:,.0f} us; "
                f"{files} messages stored")
        finally:
            if pool is not None:
                await pool.close()
            sink.terminate()
            await asyncio.wait_for(sink.wait(), 10)
            admin = await asyncpg.connect(with_database(pg_url, "postgres"))
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)')
            finally:
                await admin.close()


async def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="mails per measurement")
    parser.add_argument("--connections", default="1,4,8", help="SMTP connection counts, comma-separated")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    out(f"mails: {args.n} per measurement, course-completed, no attachment; SMTP sink writing files")
    for connections in (int(c) for c in args.connections.split(",")):
        await measure(args.pg, args.n, connections)


if __name__ == "__main__":
    asyncio.run(main())
