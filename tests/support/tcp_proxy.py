"""A TCP proxy on loopback that tests control, to take a real server away and bring it back.

Modes:
  forward    relay both ways (normal)
  refuse     every connection, new or open, is closed at once: a database that is down
  blackhole  connections are accepted but nothing is relayed, either way: a partition behind a
             proxy or load balancer (the kernel ACKs, nobody answers), the case no TCP timeout sees

Runs an asyncio loop in a daemon thread; `mode` can be changed from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "forward"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._connections: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    # -- control, from the test's thread ---------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def set_mode(self, mode: str) -> None:
        assert mode in ("forward", "refuse", "blackhole")
        self.mode = mode
        if mode == "refuse":
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _close_all(self) -> None:
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        self._connections.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._connections.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for side in (writer, up_writer):
            side.transport.abort()
            self._connections.discard(side)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            while self.mode == "blackhole":  # hold the bytes: nothing reaches the other side
                await asyncio.sleep(0.05)
            if self.mode == "refuse":
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


@contextlib.contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
