"""Request bodies outside h11: framing decoders and the stream an application reads from.

Bytes go from data_received through a decoder into RequestBody's buffer list and out to the
application without being copied (chunked bodies are sliced with memoryviews). When the buffer
passes the high-water mark, reading from the socket pauses until the application catches up.
"""

from __future__ import annotations

import asyncio
import re
from typing import Awaitable, Callable, Protocol, Sequence, Union

from . import splice
from .flow import FlowControl

Buffer = Union[bytes, memoryview]

MAX_CHUNK_LINE = 4096
BATCH_SIZE = 1024 * 1024    # wake the consumer once this much is buffered...
FLUSH_DELAY = 0.005         # ...or this long after the first unconsumed byte, whichever comes first
MAX_TRAILER_SIZE = 16 * 1024
# Extensions and trailers may not carry control characters (HTAB aside): a bare CR, which some
# parsers take for a line end, would let a proxy in front of us see a different body.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_TRAILER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TRAILER_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")


class BodyError(Exception):
    """The body could not be read to its end. `status` is what to answer if a reply is still possible."""
    status = 400


class MalformedBody(BodyError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.decoded: list[Buffer] = []     # bytes decoded before the defect: still the client's data


class ClientDisconnected(BodyError):
    pass


class BodyTimeout(BodyError):
    status = 408


class BodyAborted(BodyError):
    """The application (not the client) stopped reading, e.g. a newer request took over the upload."""


class Decoder(Protocol):
    done: bool
    leftover: bytes
    trailers: list[tuple[str, str]]

    def feed(self, data: bytes | memoryview) -> list[Buffer]: ...


class ContentLengthDecoder:
    def __init__(self, length: int) -> None:
        self._remaining = length
        self.done = length == 0
        self.leftover = b""
        self.trailers: list[tuple[str, str]] = []

    def feed(self, data: bytes | memoryview) -> list[Buffer]:
        if len(data) < self._remaining:
            self._remaining -= len(data)
            return [data]
        view = memoryview(data)
        part, self.leftover = view[:self._remaining], bytes(view[self._remaining:])
        self._remaining = 0
        self.done = True
        return [part] if len(part) else []

    @property
    def remaining(self) -> int:
        return self._remaining

    def skip(self, count: int) -> None:
        """`count` body bytes were consumed elsewhere (spliced straight from the socket)."""
        self._remaining -= count
        self.done = self._remaining == 0


class ChunkedDecoder:
    """RFC 9112 chunked coding, strict about CRLF (lenient parsers invite request smuggling)."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._remaining = 0
        self._state = self._size_line
        self._trailer_bytes = 0
        self.done = False
        self.leftover = b""
        self.trailers: list[tuple[str, str]] = []

    def feed(self, data: bytes | memoryview) -> list[Buffer]:
        view, pos = memoryview(data), 0
        parts: list[Buffer] = []
        try:
            while pos < len(view) and not self.done:
                if self._remaining:
                    take = min(self._remaining, len(view) - pos)
                    parts.append(view[pos:pos + take])
                    pos += take
                    self._remaining -= take
                    continue
                line, pos = self._take_line(view, pos)
                if line is None:
                    break
                self._state(line)
        except MalformedBody as exc:
            exc.decoded = parts
            raise
        if self.done:
            self.leftover = bytes(view[pos:])
        return parts

    def _take_line(self, view: memoryview, pos: int) -> tuple[bytes | None, int]:
        end = bytes(view[pos:pos + MAX_CHUNK_LINE + 2]).find(b"\n")
        if end < 0:
            self._line += view[pos:]
            if len(self._line) > MAX_CHUNK_LINE + 1:     # + 1: the CR may come before its LF
                raise MalformedBody("chunk line too long")
            return None, len(view)
        self._line += view[pos:pos + end + 1]
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r\n") or len(line) > MAX_CHUNK_LINE + 2:
            raise MalformedBody("chunk line must end with CRLF")
        return line[:-2], pos + end + 1

    def _size_line(self, line: bytes) -> None:
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise MalformedBody("invalid chunk size")
        size = int(match.group(1), 16)
        if size:
            self._remaining = size
            self._state = self._data_end
        else:
            self._state = self._trailer_line

    def _data_end(self, line: bytes) -> None:
        if line:
            raise MalformedBody("chunk data longer than its size")
        self._state = self._size_line

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        self._trailer_bytes += len(line)
        name, sep, value = line.partition(b":")
        if (not sep or self._trailer_bytes > MAX_TRAILER_SIZE or not _TRAILER_NAME.fullmatch(name)
                or not _TRAILER_VALUE.fullmatch(value)):
            raise MalformedBody("invalid trailer")
        self.trailers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))


class RequestBody:
    """The consumer end of a request body, fed by the connection.

    `read()` returns every buffer received so far (never an empty list until the body is complete);
    buffered bytes are always handed out before an error is raised, so nothing received is lost.
    """

    def __init__(self, size: int | None, decoder: Decoder, flow: FlowControl, high_water: int,
                 send_continue: Callable[[], None] | None = None, splice_from: int | None = None,
                 timeout: float = 60.0) -> None:
        self.size = size                    # None: chunked, length unknown
        self.received = 0
        self.spliced = 0                    # of `received`: taken straight from the socket
        self._decoder = decoder
        self._flow = flow
        self._high_water = high_water
        self._send_continue = send_continue
        self._chunks: list[Buffer] = []
        self._buffered = 0
        self._error: BodyError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._splice_from = splice_from     # the socket, when the body may be spliced from it
        self._timeout = timeout
        self._splicing: asyncio.Future[None] | None = None     # resolved to stop a splice

    @property
    def complete(self) -> bool:
        return self._decoder.done

    @property
    def open(self) -> bool:
        """Still wants bytes from the socket."""
        return not self._decoder.done and self._error is None

    @property
    def trailers(self) -> list[tuple[str, str]]:
        return self._decoder.trailers

    @property
    def continue_pending(self) -> bool:
        return self._send_continue is not None

    # -- producer side (the connection) --

    def feed(self, data: bytes | memoryview) -> bytes:
        """Take bytes from the socket; returns what lies beyond the body's end (the next request)."""
        if self._error is not None:     # aborted: the rest is read only to be dropped
            self._decoder.feed(data)    # MalformedBody goes to the connection, which closes
            return self._decoder.leftover
        try:
            parts = self._decoder.feed(data)
            error = None
        except MalformedBody as exc:
            parts, error = exc.decoded, exc
        for part in parts:
            self._chunks.append(part)
            self._buffered += len(part)
        self.received += sum(len(part) for part in parts)
        if error is not None:
            self.fail(error)
        if self._buffered >= self._high_water:
            self._flow.pause_reading()
        if self._buffered >= BATCH_SIZE or self._decoder.done:
            self._wake()
        elif self._flush is None and self._waiter is not None:
            # Few bytes: hand them over shortly rather than per socket read, so that storage
            # sees large batches (one thread hop and one pwritev per megabyte, not per 64 KiB).
            self._flush = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._wake)
        return self._decoder.leftover

    def fail(self, error: BodyError) -> None:
        if self._error is None and not self._decoder.done:
            self._error = error
            self._wake()
            if self._splicing is not None and not self._splicing.done():
                self._splicing.set_result(None)

    # -- consumer side (the application) --

    async def read(self) -> list[Buffer]:
        while True:
            if self._chunks:
                chunks, self._chunks, self._buffered = self._chunks, [], 0
                self._flow.resume_reading()
                return chunks
            if self._error is not None:
                raise self._error
            if self._decoder.done:
                return []
            self._request_body()
            self._flow.resume_reading()     # it may have been paused in case of a splice
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def abort(self, error: BodyError | None = None) -> None:
        """Stop reading: a pending or later read() raises once the buffered bytes are handed out."""
        self._flow.pause_reading()
        self.fail(error or BodyAborted("body reading was aborted"))

    # -- the splice path: the rest of the body straight from the socket into a file --

    @property
    def unread(self) -> int:
        """Body bytes of a known length not received yet (still in the socket)."""
        assert self.size is not None
        return self.size - self.received

    def can_splice(self) -> bool:
        decoder = self._decoder
        return (self._splice_from is not None and isinstance(decoder, ContentLengthDecoder)
                and decoder.remaining - self._buffered >= splice.MIN_SPLICE and self._error is None)

    def begin_splice(self) -> list[Buffer]:
        """Stop reading through the transport and hand out what it already delivered."""
        self._flow.pause_reading()
        self._request_body()
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        return chunks

    async def splice_into(self, fd: int, offset: int, stored: splice.Stored,
                          reporting: splice.Reporting | None = None) -> int:
        """Move the rest of the body into fd at offset; returns the bytes moved. Raises BodyError
        (after accounting for every byte stored) if the body does not arrive in full."""
        assert self._splice_from is not None
        sock = self._splice_from
        return await self._take_rest(lambda count, cancelled: splice.splice_body(
            sock, fd, offset, count, stored, self._timeout, cancelled, reporting))

    async def read_into(self, consume: splice.Consume, reporting: splice.Reporting | None = None,
                        phase: int = 0, prefix: Sequence[Buffer] = (), overlap: bool = False) -> int:
        """Like splice_into, but every part passes through `consume(part, position)` in a worker
        thread, from a reused page-aligned buffer: for bodies that are hashed on their way to
        storage, or written with O_DIRECT (see splice.read_body for the other arguments).
        Returns the bytes taken from the socket, prefix not included."""
        assert self._splice_from is not None
        sock = self._splice_from
        return await self._take_rest(lambda count, cancelled: splice.read_body(
            sock, count, consume, self._timeout, cancelled, reporting, phase, prefix, overlap))

    async def _take_rest(self, transfer: Callable[[int, "asyncio.Future[None]"], Awaitable[int]]) -> int:
        decoder = self._decoder
        assert isinstance(decoder, ContentLengthDecoder)
        self._splicing = asyncio.get_running_loop().create_future()
        if self._error is not None:
            self._splicing.set_result(None)
        moved = 0
        try:
            moved = await transfer(decoder.remaining, self._splicing)
        except splice.SpliceEnded as ended:
            moved = ended.moved
            raise self._error or _SPLICE_ERRORS[ended.reason]("body ended early") from None
        finally:
            decoder.skip(moved)
            self.received += moved
            self.spliced += moved
            self._splicing = None
            if decoder.done:
                self._flow.resume_reading()
        return moved

    def _request_body(self) -> None:
        if self._send_continue is not None:
            send, self._send_continue = self._send_continue, None
            send()

    def _wake(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_SPLICE_ERRORS: dict[str, type[BodyError]] = {
    "eof": ClientDisconnected, "timeout": BodyTimeout, "aborted": BodyAborted,
}
