"""``python -m shared.serve``: uvicorn's command line with a server that ticks once a second
(not ten times) and still stops at once on a signal."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import uvicorn

from lessonstream import infra
from shared import serve
from tests.helpers import eventually


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def build() -> Any:
    """The factory the command-line test serves."""
    return hello


async def test_the_server_ticks_once_a_second_and_stops_at_once_on_a_signal() -> None:
    server = serve.Server(uvicorn.Config(hello, host="127.0.0.1", port=infra.free_port(), lifespan="off",
                                         log_config=None))
    ticks = 0
    own_tick = server.on_tick

    async def counted(counter: int) -> bool:
        nonlocal ticks
        ticks += 1
        return await own_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await eventually(started, timeout=10, what="the server started")
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{server.config.port}/")
    assert answer.text == "hello"
    assert abs(parsedate_to_datetime(answer.headers["date"]).timestamp() - time.time()) < 3
    ticks = 0
    await asyncio.sleep(3)
    assert 2 <= ticks <= 4, ticks  # uvicorn's own loop: about 30
    stopping = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    # uvicorn raises a captured signal again once it has stopped (its exit status says so):
    # not in the test's own process.
    server._captured_signals.clear()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - stopping < 0.5  # woken, not at the next tick


def test_the_command_line_is_uvicorns_and_sigterm_stops_it() -> None:
    port = infra.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.serve", "--factory", "tests.test_serve:build", "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log"],
        cwd=infra.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        infra.wait_until(lambda: infra.port_open("127.0.0.1", port), 20, what="the server listening")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "hello"
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # Stopped gracefully, then exits by the signal, as uvicorn does.
        assert process.wait(timeout=10) == -signal.SIGTERM
        assert time.monotonic() - stopping < 3
        assert process.stderr is not None and b"Finished server process" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
