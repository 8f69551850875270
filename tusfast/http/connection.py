"""One asyncio Protocol per TCP connection: it pumps bytes into h11 (heads) or a RequestBody (bodies),
runs the application once per request, and writes responses in order. It knows no tus."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import TYPE_CHECKING

import h11

from .body import BodyTimeout, ClientDisconnected, MalformedBody
from .exchange import BadFraming, Exchange, reason_phrase
from .flow import FlowControl
from .messages import FileBody, HttpResponse, StreamBody
from .sendfile import send_file

if TYPE_CHECKING:
    from .server import ServerState

log = logging.getLogger("tusfast.http")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_QUOTED_INPUT = re.compile(r":? (?:bytearray\(|b['\"])")
_BLANK_LINE = re.compile(b"\n\r?\n")      # h11's end of a head
RETRY_AFTER = 5     # seconds, on a 503 for too many connections: long enough for others to finish


def _protocol_error_reason(exc: h11.RemoteProtocolError) -> str:
    """h11's message without the bytes it quotes (up to a whole head): a reason, not an echo of the
    client's input into our response."""
    return _QUOTED_INPUT.split(str(exc), maxsplit=1)[0]


def _has_obs_fold(head: bytes) -> bool:
    """A header line continued on the next (obs-fold, RFC 9112 5.2). h11 unfolds it, but a proxy in
    front of us may read it as a line of its own: two views of one head is how smuggling starts, so
    refuse it (400), as the RFC allows. A line feed followed by blank space occurs nowhere else in a head."""
    return b"\n " in head or b"\n\t" in head


def _head_length(tail: bytes, data: bytes) -> int:
    """How many bytes of data complete a request head that so far ends with `tail` (its last two
    bytes), or -1 if the head goes on past data. The head ends at its first blank line, as in h11."""
    if tail:
        across = _BLANK_LINE.search(tail + data[:2])
        if across is not None and across.end() > len(tail):
            return across.end() - len(tail)
    match = _BLANK_LINE.search(data)
    return -1 if match is None else match.end()


class HttpConnection(asyncio.Protocol):
    def __init__(self, state: "ServerState") -> None:
        self._state = state
        self._limits = state.limits
        self._loop = state.loop
        self._transport: asyncio.Transport | None = None
        self._flow: FlowControl | None = None
        self._parser = self._new_parser()
        self._exchange: Exchange | None = None
        self._pending = bytearray()         # pipelined bytes that arrived while a request was served
        self._last_activity = self._loop.time()
        self._head_started: float | None = None
        self._head_bytes = 0                # fed to the parser for the current head
        self._head_tail = b""               # last byte of the previous part of the head (obs-fold check)
        self._write_stalled = False         # pipelined requests wait until the client reads its responses
        self._linger_until: float | None = None
        self._closing = False
        self._eof = False
        self._sending_file = False          # the send has its own timeout
        self._scheme = "http"
        self._client = ""
        self._socket_fd: int | None = None
        self._observer = state.observer

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check here.
        self._transport = transport  # type: ignore[assignment]
        self._flow = FlowControl(transport)  # type: ignore[arg-type]
        self._scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        sock = transport.get_extra_info("socket")
        # Bodies can be spliced from plain TCP sockets only (TLS needs the transport to decrypt).
        self._socket_fd = sock.fileno() if sock is not None and self._scheme == "http" else None
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) else ""
        refusal = self._state.register(self, self._client)
        if refusal is not None:
            self._reject(503, refusal, [("Retry-After", str(RETRY_AFTER))])

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.unregister(self, self._client)
        self._closing = True
        if self._exchange is not None:
            self._exchange.body.fail(ClientDisconnected("client disconnected"))
        if self._flow is not None:
            self._flow.resume_writing()     # wake anyone waiting to write; writes now go nowhere

    def eof_received(self) -> bool:
        self._eof = True
        exchange = self._exchange
        if exchange is not None and exchange.body.open:
            exchange.body.fail(ClientDisconnected("client closed its side mid-body"))
        if exchange is not None and exchange.responded and not self._sending_file:
            return False    # we were dropping the rest of a body after an early reply: none will come
        # Keep the socket for the response to a request in progress; otherwise close.
        return exchange is not None

    def pause_writing(self) -> None:
        assert self._flow is not None
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        assert self._flow is not None
        self._flow.resume_writing()
        if self._write_stalled and self._exchange is None and not self._closing:
            self._write_stalled = False
            self._serve_pending()

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        if self._observer is not None:
            self._observer.bytes_received(len(data))
        exchange = self._exchange
        if exchange is not None:
            if exchange.body.open:
                self._pending += exchange.body.feed(data)
            elif exchange.responded:
                self._discard(exchange, data)
            else:
                self._hold(data)
        elif self._linger_until is None:
            self._receive_head(data)

    # ---- heads ------------------------------------------------------------------------------

    def _new_parser(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_head_size)

    def _hold(self, data: bytes) -> None:
        """A pipelined request arrived before the current response went out: keep it for later."""
        assert self._flow is not None
        self._pending += data
        if len(self._pending) > self._limits.max_head_size:
            self._flow.pause_reading()

    def _receive_head(self, data: bytes) -> None:
        if self._head_started is None:
            self._head_started = self._loop.time()
        # Only the head goes into h11: it would copy the body bytes behind it twice.
        end = _head_length(self._head_tail, data)
        head, rest = (data, b"") if end < 0 else (data[:end], memoryview(data)[end:])
        self._head_bytes += len(head)
        try:
            self._parser.receive_data(head)
            event = self._parser.next_event()
        except h11.RemoteProtocolError as exc:
            self._reject(exc.error_status_hint, _protocol_error_reason(exc))
            return
        if _has_obs_fold(self._head_tail + head):
            self._reject(400, "obsolete line folding in the request head is not accepted")
            return
        self._head_tail = head[-2:]
        if isinstance(event, h11.Request):      # the rest of `data` is body or the next request
            self._start(event, rest)
        elif event is not h11.NEED_DATA:
            self._reject(400, "unexpected data")

    def _start(self, event: h11.Request, rest: bytes | memoryview) -> None:
        assert self._flow is not None
        self._head_started = None
        self._head_tail = b""
        trailing, _ = self._parser.trailing_data     # empty: h11 got the head alone
        leftover = trailing + rest if trailing else rest
        head_size, self._head_bytes = self._head_bytes - len(trailing), 0
        # h11 bounds only heads still incomplete; one that arrived in a single read is checked here.
        if head_size > self._limits.max_head_size:
            self._reject(431, "request head too large")
            return
        if len(event.headers) > self._limits.max_headers:
            self._reject(431, "too many header fields")
            return
        try:
            exchange = Exchange.begin(self._parser, event, self._flow, self._limits.high_water,
                                      self._scheme, self._client, self._send_continue, self._socket_fd,
                                      self._limits.body_timeout)
        except BadFraming as exc:
            self._reject(400, str(exc))
            return
        self._exchange = exchange
        if leftover:
            self._pending += exchange.body.feed(leftover) if exchange.body.open else leftover
        if exchange.body.can_splice():
            # Leave the body in the socket until the application chooses how to take it:
            # whatever the transport reads now would miss the splice path.
            self._flow.pause_reading()
        self._state.spawn(self._serve(exchange))

    def _send_continue(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._write(CONTINUE)

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)
        if self._observer is not None:
            self._observer.bytes_sent(len(data))

    # ---- running a request ------------------------------------------------------------------

    async def _serve(self, exchange: Exchange) -> None:
        try:
            response = await self._state.app(exchange.request)
        except Exception as exc:
            log.exception("unhandled error serving %s %s", exchange.request.method, exchange.request.target)
            response = HttpResponse(500, [("Content-Type", "text/plain")], b"internal server error\n")
            if self._state.on_error is not None:
                try:
                    self._state.on_error(exc, exchange.request)
                except Exception:
                    log.exception("error callback failed")
        if self._observer is not None and exchange.body.spliced:
            self._observer.bytes_received(exchange.body.spliced)    # bytes data_received never saw
        try:
            if self._transport is not None and not self._transport.is_closing():
                await self._respond(exchange, response)
        finally:
            if isinstance(response.file, FileBody):
                os.close(response.file.fd)
            elif response.file is not None:
                await response.file.close()

    async def _respond(self, exchange: Exchange, response: HttpResponse) -> None:
        assert self._transport is not None
        unread = exchange.unread_body()
        drain = unread is not None and unread <= self._limits.drain_limit and not exchange.body.continue_pending
        close = self._closing or not (unread == 0 or drain)
        try:
            parts = exchange.encode_response(response, self._state.default_headers, close)
        except h11.LocalProtocolError:
            log.exception("invalid response %s for %s", response.status, exchange.request.target)
            self._transport.abort()
            return
        for part in parts:
            if isinstance(part, (FileBody, StreamBody)):
                if not await self._send_file(part):
                    return
            else:
                self._write(part)
        if exchange.body.complete:
            self._next(exchange)
        elif drain and self._eof:
            self._transport.close()     # the client has sent all it will: no rest of a body to drop
        elif drain:
            exchange.body.abort()
            # Bytes held since the body was aborted are the rest of it (and maybe the next request):
            # they must pass through the body's framing, or it would count the next request as body.
            held, self._pending = bytes(self._pending), bytearray()
            assert self._flow is not None
            self._flow.resume_reading()     # read the rest of the body and drop it
            if held:
                self._discard(exchange, held)
        else:
            self._linger()

    async def _send_file(self, body: FileBody | StreamBody) -> bool:
        assert self._transport is not None and self._flow is not None
        self._sending_file = True
        try:
            await send_file(self._transport, self._flow, body, self._limits.body_timeout)
            if self._observer is not None:
                self._observer.bytes_sent(body.count)
            return True
        except (OSError, TimeoutError) as exc:
            log.debug("download to %s ended early: %s", self._client, exc)
            self._transport.abort()
            return False
        finally:
            self._sending_file = False
            self._last_activity = self._loop.time()

    def _discard(self, exchange: Exchange, data: bytes) -> None:
        """After an early reply: drop body bytes until the body ends, then serve what follows."""
        try:
            leftover = exchange.body.feed(data) if not exchange.body.complete else data
        except MalformedBody:
            assert self._transport is not None
            self._transport.close()
            return
        if exchange.body.complete:
            self._pending += leftover
            self._next(exchange)

    def _next(self, exchange: Exchange) -> None:
        """The response is out: keep the connection for the next request, or close it."""
        assert self._transport is not None and self._flow is not None
        self._exchange = None
        if not exchange.keep_alive or self._closing or self._eof:
            self._transport.close()
            return
        self._parser = self._new_parser()
        self._last_activity = self._loop.time()
        if not self._flow.writable:
            # The client sends requests but does not read the responses: answering more would only
            # pile them up in memory. Wait until it reads (or the idle timeout closes the connection).
            self._flow.pause_reading()
            self._write_stalled = True
            return
        self._serve_pending()

    def _serve_pending(self) -> None:
        """Go on with pipelined bytes. Read more only once the backlog is down to one head's worth:
        each request re-parses the backlog, so an unbounded one would cost time quadratic in its size."""
        assert self._flow is not None
        pending, self._pending = bytes(self._pending), bytearray()
        if len(pending) <= self._limits.max_head_size:
            self._flow.resume_reading()
        if pending:
            self._receive_head(pending)

    def _reject(self, status: int, reason: str, extra: list[tuple[str, str]] | None = None) -> None:
        """Answer a request we could not even parse (or a connection over a limit), then close."""
        assert self._transport is not None
        log.debug("rejecting connection from %s: %s %s", self._client, status, reason)
        if self._observer is not None:
            self._observer.request_refused(status)
        body = reason.encode("latin-1", "replace") + b"\n"
        head = [f"HTTP/1.1 {status} {reason_phrase(status).decode()}", "Content-Type: text/plain",
                f"Content-Length: {len(body)}", "Connection: close",
                *(f"{name}: {value}" for name, value in [*(extra or []), *self._state.default_headers])]
        self._write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        self._linger()

    def _linger(self) -> None:
        """Close without losing the response: a close with unread input makes the kernel send RST,
        which can destroy the response in flight. Shut our side, read and drop input for a while."""
        assert self._transport is not None and self._flow is not None
        self._exchange = None
        self._linger_until = self._loop.time() + self._limits.linger
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._flow.resume_reading()

    # ---- timeouts and shutdown (driven by the server's ticker) ------------------------------

    def check_timeouts(self, now: float) -> None:
        assert self._transport is not None and self._flow is not None
        limits = self._limits
        exchange = self._exchange
        if self._linger_until is not None:
            if now > self._linger_until:
                self._close_now()
        elif exchange is None:
            if self._head_started is not None and now - self._head_started > limits.head_timeout:
                self._reject(408, "request head took too long")
            elif now - self._last_activity > limits.idle_timeout:
                self._close_now()
        elif now - self._last_activity <= limits.body_timeout or self._sending_file:
            return
        elif exchange.responded:        # discarding the rest of a body, which stopped coming
            self._close_now()
        elif exchange.body.open and not self._flow.read_paused and not exchange.body.continue_pending:
            exchange.body.fail(BodyTimeout("no body data within the read timeout"))

    def _close_now(self) -> None:
        """Close at a timeout. A client that left our last bytes unread gets an abort: a close would
        wait for it to read them, and it may never do so (a slow-reading client holding the socket)."""
        assert self._transport is not None
        if self._transport.get_write_buffer_size():
            self._transport.abort()
        else:
            self._transport.close()

    def shutdown(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their response."""
        self._closing = True
        if self._exchange is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

