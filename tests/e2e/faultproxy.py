"""A TCP proxy whose link can be stalled or cut while a test runs.

`FaultProxy(target_port)` listens on 127.0.0.1 (a free port, or the one given) and forwards
every connection to 127.0.0.1:target_port. It runs an asyncio loop in its own thread, so a
synchronous test drives it with plain calls:

- `pass_()`: bytes flow both ways (the initial mode).
- `stall()`: no byte moves in either direction, but every socket stays open: what is sent is
  held (in the kernel's buffers and the proxy's) and delivered in order, with any end-of-file
  behind it, once the mode is `pass` again. Connections accepted meanwhile wait the same way.
  This is a network that stops carrying packets for a while without either end noticing.
- `cut()`: every open connection is reset (both ends get RST; whatever was held is lost) and
  new ones are reset as soon as they are accepted, until the mode changes again.

A mode change has taken effect when the call returns. Counters (`accepted`, `refused`,
`bytes_up` towards the target, `bytes_down` back, `open`) let a test see what crossed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

HOST = "127.0.0.1"
MODES = ("pass", "stall", "cut")
_CHUNK = 65536


def _reset(writer: asyncio.StreamWriter | None):
    """Closes a connection with RST instead of FIN: a broken link, not an orderly close."""
    if writer is None:
        return
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class _Conn:
    def __init__(self, client_w: asyncio.StreamWriter):
        self.client_w = client_w
        self.target_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.closed = False

    def reset(self):
        self.closed = True
        for t in self.tasks:
            t.cancel()
        _reset(self.client_w)
        _reset(self.target_w)


class FaultProxy:
    def __init__(self, target_port: int, listen_port: int = 0, host: str = HOST, target_host: str = HOST):
        self.host, self.target_host, self.target_port = host, target_host, target_port
        self._want_port = listen_port
        self.port: int | None = None
        self.mode = "pass"
        self.accepted = 0
        self.refused = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="faultproxy")
        self._server: asyncio.base_events.Server | None = None
        self._flow: asyncio.Event | None = None

    # -- control, from any thread

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._call(self._start())
        return self

    def set_mode(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        self._call(self._set_mode(mode))

    def pass_(self):
        self.set_mode("pass")

    def stall(self):
        self.set_mode("stall")

    def cut(self):
        self.set_mode("cut")

    @property
    def open(self) -> int:
        return len(self._conns)

    @property
    def addr(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def close(self):
        if not self._thread.is_alive():
            return
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- inside the loop

    async def _start(self):
        self._flow = asyncio.Event()
        self._flow.set()
        self._server = await asyncio.start_server(self._accept, self.host, self._want_port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: str):
        self.mode = mode
        if mode == "pass":
            self._flow.set()
        else:
            self._flow.clear()
        if mode == "cut":
            for c in list(self._conns):
                c.reset()
            self._conns.clear()

    async def _shutdown(self):
        await self._set_mode("cut")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.accepted += 1
        if self.mode == "cut":
            self.refused += 1
            _reset(writer)
            return
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            # A stalled network does not carry the SYN either: wait before dialling the target.
            await self._flow.wait()
            if conn.closed:
                return
            try:
                t_reader, t_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                conn.reset()
                return
            if conn.closed:
                _reset(t_writer)
                return
            conn.target_w = t_writer
            up = asyncio.ensure_future(self._pump(conn, reader, t_writer, "up"))
            down = asyncio.ensure_future(self._pump(conn, t_reader, writer, "down"))
            conn.tasks = [up, down]
            await asyncio.gather(up, down, return_exceptions=True)
            if not conn.closed:
                conn.closed = True
                writer.close()
                t_writer.close()
        finally:
            self._conns.discard(conn)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str):
        try:
            while True:
                await self._flow.wait()
                data = await reader.read(_CHUNK)
                # Stalled while the read was pending: hold these bytes until the link flows again.
                await self._flow.wait()
                if conn.closed:
                    return
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                if way == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            # One end broke: the other end sees the same break.
            if not conn.closed:
                conn.reset()
                self._conns.discard(conn)
