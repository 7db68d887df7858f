"""The runner's supervision on real child processes: what exits is started again with a
growing backoff, a process that stays up is left alone, and a broker restart restarts
every broker client. (The fault suite drives the same code through ``lessonstream dev``.)"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

from lessonstream import infra, stack
from lessonstream.stack import Child, Stack, StackConfig
from shared.bus import admin_client
from shared.events import TOPIC_PARTITIONS
from shared.settings import ServiceSettings


def python(code: str, tmp_path: Path, name: str) -> infra.Process:
    return infra.spawn(name, [sys.executable, "-c", code], log_path=tmp_path / f"{name}.log")


def test_a_child_that_keeps_exiting_is_restarted_with_a_growing_backoff(tmp_path: Path) -> None:
    messages: list[str] = []
    supervised = Stack(StackConfig(tmp_path, "", "127.0.0.1:1", 0), log=messages.append)
    starts: list[float] = []

    def launch() -> infra.Process:
        starts.append(time.monotonic())
        return python("import sys; print('giving up'); sys.exit(3)", tmp_path, "flaky")

    supervised._add(Child("flaky", launch, uses_broker=False))
    steady = Child("steady", lambda: python("import time; time.sleep(60)", tmp_path, "steady"), uses_broker=False)
    supervised._add(steady)
    steady_pid = steady.pid
    def four_starts() -> bool:
        supervised.supervise()
        return len(starts) >= 4

    try:
        infra.wait_until(four_starts, 20, interval=0.02, what="four starts")
    finally:
        supervised.stop()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.5 s, 1 s, 2 s (each gap also holds the time it took the child to exit).
    assert gaps[0] >= stack.FIRST_BACKOFF_S
    assert gaps[1] >= 2 * stack.FIRST_BACKOFF_S and gaps[2] >= 4 * stack.FIRST_BACKOFF_S
    assert any("flaky exited (status 3); restarting in 0.5s" in m for m in messages), messages
    assert any("giving up" in m for m in messages), "the log tail of the exited process is shown"
    assert any("flaky restarted (restart 3" in m for m in messages), messages
    assert steady_pid is not None and not any("steady" in m for m in messages)


def test_the_supervisor_sleeps_until_a_child_exits_or_a_restart_is_due(tmp_path: Path) -> None:
    """The runner's loop (``lessonstream dev``) does not poll: it wakes when a child exits
    (SIGCHLD), and otherwise when the next restart is due, at most once a second."""
    messages: list[str] = []
    supervised = Stack(StackConfig(tmp_path, "", "127.0.0.1:1", 0), log=messages.append)
    wakeups = stack.Wakeups()
    try:
        supervised._add(Child("short", lambda: python("import time; time.sleep(0.3)", tmp_path, "short"), False))
        assert supervised.until_due() == stack.SUPERVISE_MAX_WAIT_S  # nothing due: the longest sleep
        started = time.monotonic()
        wakeups.sleep(30)  # cut short by the child's exit
        assert time.monotonic() - started < 5
        infra.wait_until(lambda: not supervised.child("short").alive, 5, what="the child reaped")
        supervised.supervise()
        assert any("short exited (status 0)" in m for m in messages), messages
        # Its restart is due in FIRST_BACKOFF_S: the sleep is that long, not a second.
        assert supervised.until_due() <= stack.FIRST_BACKOFF_S
    finally:
        wakeups.close()
        supervised.stop()


def test_a_restarted_broker_restarts_every_broker_client(tmp_path: Path) -> None:
    port = infra.free_port()
    messages: list[str] = []
    config = StackConfig(tmp_path, "", f"127.0.0.1:{port}", 0)
    supervised = Stack(config, log=messages.append)
    supervised._add(Child("broker", lambda: infra.start_tansu(port, tmp_path / "tansu.log"), uses_broker=False))
    client = Child("client", lambda: python("import time; time.sleep(60)", tmp_path, "client"), uses_broker=True)
    bystander = Child("bystander", lambda: python("import time; time.sleep(60)", tmp_path, "other"),
                      uses_broker=False)
    supervised._add(client)
    supervised._add(bystander)
    before = (client.pid, bystander.pid)
    try:
        supervised.child("broker").proc.popen.kill()  # type: ignore[union-attr]

        def restarted() -> bool:
            supervised.supervise()
            return supervised.child("broker").restarts == 1 and supervised.child("broker").alive

        infra.wait_until(restarted, 20, interval=0.05, what="the broker restarted")
        assert infra.port_open("127.0.0.1", port)
        assert client.pid != before[0] and client.alive and client.restarts == 1
        assert bystander.pid == before[1]
        assert any("restarting 1 broker clients" in m for m in messages), messages
        # The new broker got every topic before the clients came back.
        async def topics() -> set[str]:
            async with admin_client(ServiceSettings(kafka_bootstrap_servers=config.kafka_bootstrap)) as admin:
                return set(await admin.list_topics())

        assert {t.value for t in TOPIC_PARTITIONS} <= asyncio.run(topics())
    finally:
        supervised.stop()
