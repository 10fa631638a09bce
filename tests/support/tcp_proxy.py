"""A TCP proxy on 127.0.0.1 that can cut, stall and restore the network between the service and
its database: the tests' and the reliability benchmark's "database cut".

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = postgres_url.set(port=proxy.port)   # the service connects through the proxy
        proxy.cut()       # every connection closed, new ones refused (the server went away)
        proxy.stall()     # connections accepted and kept, but no byte passes (a partition)
        proxy.restore()   # traffic flows again on the same port

The proxy runs its own asyncio loop in a background thread, so that it keeps forwarding while the
caller's own thread blocks. The methods are called from that thread and return once the change
has taken effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
_CHUNK = 65536
# Bounds every hand-over to the proxy's thread, so a wedged proxy fails the test, not hangs it.
_CONTROL_TIMEOUT_SECONDS = 10.0

T = TypeVar("T")


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Cleared while stalled: pipes hold their data and new connections wait, none is closed.
        self._flowing: asyncio.Event | None = None
        # Set from the start of a cut to the restore. A connection the listener took just before
        # the cut may start its handler after it, when the cut no longer sees it: the handler
        # checks this and drops it, else it would carry traffic through the whole cut.
        self._refusing = False
        self.port = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._call(self._cut())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CONTROL_TIMEOUT_SECONDS)
            self._loop.close()

    def cut(self) -> None:
        """Close every connection and refuse new ones, as a stopped database server does."""
        self._call(self._cut())

    def stall(self) -> None:
        """Keep connections open (and accept new ones) but pass no data: a network partition, where
        only the client's own timeouts end the wait."""
        self._call(self._stall())

    def restore(self) -> None:
        """Forward again: listen again after a cut, release held data after a stall."""
        self._call(self._restore())

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(_CONTROL_TIMEOUT_SECONDS)

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        # The same port after a cut, so the service's configured URL stays valid.
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        self._refusing = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for stream in list(self._streams):
            stream.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._streams.clear()

    async def _stall(self) -> None:
        assert self._flowing is not None
        self._flowing.clear()

    async def _restore(self) -> None:
        assert self._flowing is not None
        self._refusing = False
        if self._server is None:
            await self._listen()
        self._flowing.set()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        assert self._flowing is not None
        if self._refusing:
            client.transport.abort()
            return
        self._tasks.add(task)
        self._streams.add(client)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()
            upstream_reader, upstream = await asyncio.open_connection(*self._target)
            self._streams.add(upstream)
            if self._refusing:  # cut while connecting upstream, and missed by the cut
                return
            await asyncio.gather(
                self._pipe(client_reader, upstream), self._pipe(upstream_reader, client)
            )
        # Either side went away, or cut() ended the connection: it ends as on a real network.
        # A cancelled connection ends quietly here, since asyncio reports the exception of a
        # connection handler that ends with one.
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            for stream in (client, upstream):
                if stream is not None:
                    stream.transport.abort()
                    self._streams.discard(stream)
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while data := await reader.read(_CHUNK):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        # One side closed: half-close the other, so the peer sees the end of the stream.
        with contextlib.suppress(OSError):
            writer.write_eof()
