"""A TCP proxy in front of PostgreSQL that drops or stalls connections on command."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

Trigger = Callable[[bytes, int], bool]  # (chunk client->server, bytes so far) -> act now?


@dataclass
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    sent: int = 0
    frozen: bool = False


@dataclass
class Fault:
    """What to do to the first connection whose traffic matches `when`."""

    action: str  # "drop" (close both ends) or "stall" (forward nothing more, close nothing)
    when: Trigger
    after_forwarding: bool = True  # act after passing the matching chunk on (e.g. a COMMIT)
    fired: threading.Event = field(default_factory=threading.Event)


class Proxy:
    """Listens on 127.0.0.1:port and forwards to a PostgreSQL unix socket, in its own thread."""

    def __init__(self, socket_path: str):
        self._socket_path = socket_path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._pairs: list[_Pair] = []
        self._faults: list[Fault] = []
        self.port = 0

    def start(self) -> Proxy:
        self._thread.start()
        self.port = self._call(self._start())
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def add_fault(self, fault: Fault) -> Fault:
        self._loop.call_soon_threadsafe(self._faults.append, fault)
        return fault

    def _call(self, coro: object) -> object:
        future: Future[object] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return future.result(10)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close_all(self) -> None:
        self._server.close()
        for pair in self._pairs:
            pair.client.close()
            pair.upstream.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # let the transports finish closing their sockets

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self._socket_path)
        pair = _Pair(writer, up_writer)
        self._pairs.append(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, pair, upstream=True),
                self._pump(up_reader, writer, pair, upstream=False),
                return_exceptions=True,
            )
        finally:
            writer.close()
            up_writer.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, pair: _Pair, *, upstream: bool
    ) -> None:
        while True:
            chunk = await src.read(65536)
            if pair.frozen:
                if not chunk:
                    await asyncio.sleep(3600)  # a partition: the other side never hears of it
                continue
            if not chunk:
                dst.close()
                return
            fault = self._match(chunk, pair) if upstream else None
            if fault is not None and not fault.after_forwarding:
                self._act(fault, pair)
                continue
            dst.write(chunk)
            await dst.drain()
            if upstream:
                pair.sent += len(chunk)
            if fault is not None:
                self._act(fault, pair)

    def _match(self, chunk: bytes, pair: _Pair) -> Fault | None:
        for fault in self._faults:
            if not fault.fired.is_set() and fault.when(chunk, pair.sent + len(chunk)):
                return fault
        return None

    def _act(self, fault: Fault, pair: _Pair) -> None:
        fault.fired.set()
        if fault.action == "drop":
            pair.client.close()
            pair.upstream.close()
        else:
            pair.frozen = True


def commit_number(n: int) -> Trigger:
    """Fires on the n-th COMMIT this trigger sees (across connections)."""
    seen = [0]

    def when(chunk: bytes, _sent: int) -> bool:
        if b"COMMIT" in chunk:
            seen[0] += 1
            return seen[0] == n
        return False

    return when


def after_bytes(limit: int) -> Trigger:
    """Fires once a connection has sent `limit` bytes to the server (mid-COPY of a big batch)."""
    return lambda _chunk, sent: sent >= limit
