"""A small proxy in front of PostgreSQL that a test can cut and restore.

It listens on TCP or on a Unix socket (as ``/dir/.s.PGSQL.<port>``, where libpq and
asyncpg look for it) and forwards bytes to the real server. ``cut()`` resets every open
connection and stops listening, so that new connections are refused (TCP) or find no
socket file (Unix: ``FileNotFoundError``); ``starting()`` answers every new connection
as a server still starting up does (``57P03``); ``restore()`` forwards again;
``end_session_after_prepare(sql)`` ends the next session that prepares ``sql`` the way an
administrator's ``pg_terminate_backend`` can land: right after the server described the
statement, before it is executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from urllib.parse import urlsplit, urlunsplit

from lessonstream import infra

_SSL_REQUEST = 80877103


def _error_response(code: str, message: str) -> bytes:
    fields = b"SFATAL\0VFATAL\0C" + code.encode() + b"\0M" + message.encode() + b"\0\0"
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


class PgProxy:
    def __init__(self, target_url: str, unix_dir: str | None = None) -> None:
        parts = urlsplit(target_url)
        self.target_url = target_url
        self.target_host = parts.hostname or "127.0.0.1"
        self.target_port = parts.port or 5432
        self.unix_dir = unix_dir
        self.port = infra.free_port()
        self.mode = "forward"
        self.sessions_ended = 0
        self._end_after_prepare: bytes | None = None
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def socket_path(self) -> str:
        assert self.unix_dir is not None
        return os.path.join(self.unix_dir, f".s.PGSQL.{self.port}")

    def url(self, database_url: str) -> str:
        """``database_url`` (same user, password and database) through this proxy."""
        parts = urlsplit(database_url)
        auth = parts.netloc.rpartition("@")[0]
        if self.unix_dir is None:
            return urlunsplit((parts.scheme, f"{auth}@127.0.0.1:{self.port}", parts.path, "", ""))
        return urlunsplit((parts.scheme, f"{auth}@", parts.path, f"host={self.unix_dir}&port={self.port}", ""))

    async def start(self) -> None:
        if self.unix_dir is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        else:
            self._server = await asyncio.start_unix_server(self._serve, self.socket_path)

    async def restore(self) -> None:
        self.mode = "forward"
        if self._server is None:
            await self.start()

    async def starting(self) -> None:
        """New connections are told "the database system is starting up"; open ones are reset."""
        self._reset_all()
        self.mode = "starting"
        if self._server is None:
            await self.start()

    def end_session_after_prepare(self, sql: str) -> None:
        """The server's answer to the next Parse of ``sql`` (ParseComplete, the parameter
        and row descriptions) is followed, in the same write, by FATAL ``57P01``
        "terminating connection due to administrator command", and that connection is
        closed. One session only; the others, and later ones, are forwarded."""
        self._end_after_prepare = sql.encode()

    async def cut(self) -> None:
        """Stop listening (refused, or no socket file) and reset every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
            if self.unix_dir is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path)
        self._reset_all()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _reset_all(self) -> None:
        for writer in list(self._open):
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                # Linger 0: close with a RST, as a crashed server or a broken network does.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._open.add(writer)
        try:
            if self.mode == "starting":
                await self._answer_starting(reader, writer)
                return
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            self._open.add(up_writer)
            parsed = asyncio.Event()  # this session sent the Parse of the statement to end it after
            await asyncio.gather(
                self._pump(reader, up_writer, parsed, answers=False),
                self._pump(up_reader, writer, parsed, answers=True),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _answer_starting(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length, code = struct.unpack("!II", await reader.readexactly(8))
        if code == _SSL_REQUEST:
            writer.write(b"N")
            length = struct.unpack("!I", await reader.readexactly(4))[0]
            await reader.readexactly(length - 4)
        else:
            await reader.readexactly(length - 8)
        writer.write(_error_response("57P03", "the database system is starting up"))
        await writer.drain()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parsed: asyncio.Event, *, answers: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                sql = self._end_after_prepare
                if not answers and sql is not None and data.startswith(b"P") and sql in data:
                    self._end_after_prepare = None
                    parsed.set()
                # The answer to that Parse (asyncpg sends Parse, Describe, Flush) is one
                # chunk that starts with ParseComplete.
                if answers and parsed.is_set() and data.startswith(b"1\0\0\0\x04"):
                    self.sessions_ended += 1
                    writer.write(data + _error_response("57P01", "terminating connection due to administrator command"))
                    await writer.drain()
                    return
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
