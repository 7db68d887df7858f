"""A development SMTP server that keeps every message it receives as an ``.eml`` file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

log = logging.getLogger("smtp-sink")


class MaildirHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.eml"
        header = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        tmp = self.directory / f".{name}.tmp"
        # Written whole, then renamed: a reader never sees half a message.
        tmp.write_bytes(header + envelope.original_content)
        tmp.rename(self.directory / name)
        log.info("stored %s for %s", name, ", ".join(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, default=Path("var/mail"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s smtp-sink %(message)s")
    controller = Controller(MaildirHandler(args.dir), hostname=args.host, port=args.port)
    controller.start()
    log.info("listening on %s:%d, keeping mail in %s", args.host, args.port, args.dir)

    async def wait_for_signal() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait_for_signal())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
