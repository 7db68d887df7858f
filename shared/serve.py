"""``python -m shared.serve``: uvicorn's command line (same options), with a server whose
housekeeping tick runs once a second instead of ten times.

uvicorn's main loop wakes every 0.1 s to refresh its ``Date`` header (which changes once a
second anyway) and to see whether a signal asked it to stop. Measured on an idle process:
0.19 % of a core with uvicorn's loop, 0.04 % with a one-second tick; with five services
(and as many certificate workers as ops run) that was a third of an idle stack's cost. A
signal still stops the server at once: it wakes the loop rather than waiting for the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from types import FrameType
from typing import Any

import uvicorn

TICK_S = 1.0
# uvicorn counts ticks of 0.1 s: the Date header is refreshed when the count is a multiple of
# ten, so one of our ticks counts as ten of its own.
TICKS_PER_TICK = 10


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + TICKS_PER_TICK) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A Python signal handler runs on the main thread between bytecodes, possibly in the
        # middle of the loop's own work: hand the wake-up to the loop rather than set it here.
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)


def main() -> None:
    # uvicorn's ``run`` builds ``Server`` from its module's namespace: the command line, its
    # validation and every option stay uvicorn's own.
    # (``uvicorn.main`` as an attribute is the command, not the module.)
    cli: Any = importlib.import_module("uvicorn.main")
    cli.Server = Server
    cli.main()


if __name__ == "__main__":
    main()
