"""A small round-robin TCP load balancer on 127.0.0.1 for the scale-out tests, like HAProxy
`mode tcp` or an nginx `stream` upstream: each client connection goes to the next backend in turn
and stays there; bytes are piped both ways unchanged (half-close kept, backpressure respected).

A backend whose connect fails is skipped for `fail_timeout` seconds (nginx's passive health check,
`max_fails=1`) and the connection is tried on the next one, so a killed instance stops getting
traffic and a restarted one gets it again. `remove`/`add` take a backend out of or into the pool
as an operator would. Every connection is recorded (`connections`) so a test can see which
backend served it and which backends refused it.

The proxy runs its own asyncio loop in a daemon thread, so it works from synchronous tests:

    with RoundRobinProxy() as proxy:
        proxy.add(port_a); proxy.add(port_b)
        requests.get(proxy.url("/files/"))
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

CHUNK = 64 * 1024
CONNECT_TIMEOUT = 2.0


@dataclass
class Backend:
    port: int
    in_pool: bool = True
    down_until: float = 0.0       # monotonic time until which a failed backend is skipped


@dataclass
class ConnectionRecord:
    backend: int | None = None            # index of the backend that served it (None: none could)
    refused_by: list[int] = field(default_factory=list)     # backends whose connect failed first
    bytes_up: int = 0                     # client -> backend
    bytes_down: int = 0                   # backend -> client
    open: bool = True


class RoundRobinProxy:
    def __init__(self, fail_timeout: float = 1.0) -> None:
        self.fail_timeout = fail_timeout
        self.port = 0
        self.backends: list[Backend] = []
        self.connections: list[ConnectionRecord] = []
        self._next = 0
        self._lock = threading.Lock()     # backends and records are read from the test's thread
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="round-robin-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ control (test thread)

    def start(self) -> RoundRobinProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, port: int) -> int:
        with self._lock:
            self.backends.append(Backend(port))
            return len(self.backends) - 1

    def remove(self, index: int) -> None:
        """Out of the pool for new connections; connections it serves go on."""
        with self._lock:
            self.backends[index].in_pool = False

    def restore(self, index: int) -> None:
        with self._lock:
            self.backends[index].in_pool = True
            self.backends[index].down_until = 0.0

    def served(self) -> Counter[int]:
        """How many connections each backend index served."""
        with self._lock:
            return Counter(record.backend for record in self.connections if record.backend is not None)

    def refused(self) -> Counter[int]:
        """How many connect attempts each backend index refused."""
        with self._lock:
            return Counter(index for record in self.connections for index in record.refused_by)

    def records(self) -> list[ConnectionRecord]:
        with self._lock:
            return list(self.connections)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> RoundRobinProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop's side

    async def _listen(self) -> asyncio.base_events.Server:
        return await asyncio.start_server(self._accepted, "127.0.0.1", 0)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accepted(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(client_reader, client_writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _candidates(self) -> list[int]:
        """Backends in round-robin order from the next one; healthy ones first, those that
        failed recently last (when all failed, trying them beats refusing the client)."""
        with self._lock:
            count = len(self.backends)
            order = [(self._next + step) % count for step in range(count)]
            self._next = (self._next + 1) % max(count, 1)
            now = time.monotonic()
            pool = [index for index in order if self.backends[index].in_pool]
            return ([index for index in pool if self.backends[index].down_until <= now]
                    + [index for index in pool if self.backends[index].down_until > now])

    async def _connect(self, record: ConnectionRecord) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for index in self._candidates():
            port = self.backends[index].port
            try:
                streams = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT)
            except (TimeoutError, OSError):
                with self._lock:
                    record.refused_by.append(index)
                    self.backends[index].down_until = time.monotonic() + self.fail_timeout
                continue
            with self._lock:
                record.backend = index
            return streams
        return None

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        record = ConnectionRecord()
        with self._lock:
            self.connections.append(record)
        writers = [client_writer]
        clean = False
        try:
            streams = await self._connect(record)
            if streams is None:
                return
            backend_reader, backend_writer = streams
            writers.append(backend_writer)
            up = asyncio.ensure_future(self._pipe(client_reader, backend_writer, record, "bytes_up"))
            down = asyncio.ensure_future(self._pipe(backend_reader, client_writer, record, "bytes_down"))
            clean = await self._until_both_done(up, down)
        finally:
            with self._lock:
                record.open = False
            for writer in writers:
                if clean:
                    writer.close()
                else:       # RST both ways, so nobody takes a cut stream for a clean end
                    writer.transport.abort()

    @staticmethod
    async def _until_both_done(up: asyncio.Future[bool], down: asyncio.Future[bool]) -> bool:
        """A clean EOF in one direction is forwarded and the other goes on (half-close). An error
        in either (a killed backend resets its side) ends both: False."""
        try:
            pending: set[asyncio.Future[bool]] = {up, down}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if not all(task.result() for task in done):
                    return False
            return True
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: ConnectionRecord,
                    counter: str) -> bool:
        """Copy until EOF, then half-close the other side (True), or until an error (False)."""
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()        # backpressure: never buffer more than the socket takes
                with self._lock:
                    setattr(record, counter, getattr(record, counter) + len(data))
            if writer.can_write_eof():
                writer.write_eof()
            return True
        except OSError:
            return False
