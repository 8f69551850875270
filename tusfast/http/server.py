"""Listening sockets, the set of live connections, limits, timeouts and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from typing import Any, Callable, Coroutine, Protocol

from .connection import HttpConnection
from .limits import HttpLimits
from .messages import App, Headers, HttpRequest

ErrorCallback = Callable[[Exception, HttpRequest], None]

log = logging.getLogger("tusfast.http")

TICK = 1.0   # seconds between timeout sweeps
# Connections the kernel queues for accept(). create_server() calls listen() again, with its own
# default of 100 unless told: a burst of reconnecting clients then loses SYNs and stalls for seconds.
BACKLOG = 1024


class ConnectionObserver(Protocol):
    """Told about connections and bytes on the wire (e.g. for metrics). Optional; knows no tus."""

    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def bytes_received(self, count: int) -> None: ...
    def bytes_sent(self, count: int) -> None: ...
    def request_refused(self, status: int) -> None:
        """A request the HTTP layer answered itself (unparsable head, limits, timeouts, overload)."""


class ServerState:
    """What every connection of one server shares."""

    def __init__(self, app: App, limits: HttpLimits, default_headers: Headers,
                 on_error: ErrorCallback | None = None) -> None:
        self.app = app
        self.on_error = on_error        # told about exceptions the app did not handle (the 500 path)
        self.limits = limits
        self.default_headers = default_headers
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.refused: set[HttpConnection] = set()       # answered 503 and lingering; not counted
        self.per_address: dict[str, int] = {}           # open connections per client IP (with the limit on)
        self.tasks: set[asyncio.Task[None]] = set()
        self.observer: ConnectionObserver | None = None     # None: no per-connection cost at all

    def register(self, connection: HttpConnection, address: str) -> str | None:
        """Admit a new connection, or say why not. `address` is the client IP ("" for a Unix socket,
        which the per-IP limit exempts: its peers are local and have no address to tell apart)."""
        if len(self.connections) >= self.limits.max_connections:
            return self._refuse(connection, "too many connections")
        per_ip = self.limits.max_connections_per_ip
        if per_ip and address:
            if self.per_address.get(address, 0) >= per_ip:
                return self._refuse(connection, "too many connections from your address")
            self.per_address[address] = self.per_address.get(address, 0) + 1
        self.connections.add(connection)
        if self.observer is not None:
            self.observer.connection_opened()
        return None

    def _refuse(self, connection: HttpConnection, reason: str) -> str:
        self.refused.add(connection)    # still ticked, so its linger ends even if the client never closes
        return reason

    def unregister(self, connection: HttpConnection, address: str) -> None:
        self.refused.discard(connection)
        if connection in self.connections:
            self.connections.discard(connection)
            if self.limits.max_connections_per_ip and address:
                count = self.per_address.pop(address, 0) - 1
                if count > 0:
                    self.per_address[address] = count
            if self.observer is not None:
                self.observer.connection_closed()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class HttpServer:
    def __init__(self, app: App, limits: HttpLimits | None = None, default_headers: Headers | None = None,
                 ssl_context: ssl.SSLContext | None = None, on_error: ErrorCallback | None = None) -> None:
        self._app = app
        self._on_error = on_error
        self._limits = limits or HttpLimits()
        self._default_headers = default_headers or []
        self._ssl = ssl_context
        self._state: ServerState | None = None
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self.observer: ConnectionObserver | None = None     # set before listen()

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server else []

    async def listen(self, sock: socket.socket) -> None:
        """Serve on a bound, listening socket (see bind_tcp / bind_unix)."""
        self._state = ServerState(self._app, self._limits, self._default_headers, self._on_error)
        state = self._state
        state.observer = self.observer
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(lambda: HttpConnection(state), sock=sock, ssl=self._ssl,
                                                   backlog=BACKLOG)
        else:
            server = await loop.create_server(lambda: HttpConnection(state), sock=sock, ssl=self._ssl,
                                              backlog=BACKLOG)
        self._server = server
        self._tick()

    def _tick(self) -> None:
        assert self._state is not None
        now = self._state.loop.time()
        for connection in [*self._state.connections, *self._state.refused]:
            connection.check_timeouts(now)
        self._ticker = self._state.loop.call_later(TICK, self._tick)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to `timeout`), then close the rest."""
        if self._server is None or self._state is None:
            return
        timeout = self._limits.shutdown_timeout if timeout is None else timeout
        self._server.close()
        state = self._state
        for connection in list(state.connections):
            connection.shutdown()
        if state.tasks:
            done, pending = await asyncio.wait(list(state.tasks), timeout=timeout)
            if pending:
                log.warning("%d requests still running after %.0fs; closing them", len(pending), timeout)
        for connection in [*state.connections, *state.refused]:
            connection.abort()
        if state.tasks:     # aborted bodies end at once; give handlers a moment to store what they got
            await asyncio.wait(list(state.tasks), timeout=5.0)
        for task in list(state.tasks):
            task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        await self._server.wait_closed()
        self._server = None


def bind_tcp(host: str, port: int, reuse_port: bool = False, backlog: int = BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def bind_unix(path: str, backlog: int = BACKLOG) -> socket.socket:
    if os.path.exists(path) and not os.path.isfile(path):
        os.unlink(path)     # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
