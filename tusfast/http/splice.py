"""Receive a request body straight from the socket, bypassing the transport, in one of two ways:

* splice(2): socket -> pipe -> file inside the kernel; the bytes never enter Python.
* read into a reused per-thread buffer, then hand the buffer to a consumer (hash, then write):
  for bodies that must be looked at, still without allocating per chunk.

The transport's reading is paused for the whole time, so uvloop never touches the socket while we
read it. Readiness is awaited on the event loop (on a dup of the socket: uvloop refuses add_reader
on a socket its transport owns); the steps themselves run in worker threads, because storing into
the page cache can block on the disk. Each thread keeps one pipe and one buffer for reuse.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable

from .. import nativeio

STEP = 8 * 1024 * 1024          # bytes per worker-thread step
PIPE_SIZE = 1024 * 1024
BUFFER_SIZE = 4 * 1024 * 1024   # per-thread read buffer of the consuming path
MIN_SPLICE = 256 * 1024         # smaller bodies are cheaper through the ordinary path
# A client that resets its connection mid-body ends the body as a close does: not a storage
# failure (503) and not an unhandled error.
_PEER_GONE = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT})

_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="tusfast-splice")
_local = threading.local()

Stored = Callable[[int, int], None]     # (offset, count) -> None, called in the worker thread
Consume = Callable[[memoryview, int], None]     # (bytes, their position in the body), in the worker thread
Step = Callable[[int, int], int]        # (bytes done, most to move now) -> moved; 0 = end of stream
Progress = Callable[[int], Awaitable[None]]     # (bytes done so far), on the event loop after each step


class SpliceEnded(Exception):
    """The body stopped before `count` bytes: `reason` is 'eof', 'timeout' or 'aborted'."""

    def __init__(self, moved: int, reason: str) -> None:
        super().__init__(reason)
        self.moved = moved
        self.reason = reason


async def splice_body(sock_fd: int, file_fd: int, offset: int, count: int, stored: Stored,
                      timeout: float, cancelled: "asyncio.Future[None]", progress: Progress | None = None) -> int:
    """Move exactly `count` body bytes into file_fd at offset; raises SpliceEnded if they never come."""
    def step(done: int, most: int) -> int:
        return _splice_step(sock_fd, file_fd, offset + done, most, stored)
    return await _drive(sock_fd, count, step, timeout, cancelled, progress)


async def read_body(sock_fd: int, count: int, consume: Consume, timeout: float,
                    cancelled: "asyncio.Future[None]") -> int:
    """Read exactly `count` body bytes into reused buffers, handing each to `consume`."""
    def step(done: int, most: int) -> int:
        return _read_step(sock_fd, most, consume, done)
    return await _drive(sock_fd, count, step, timeout, cancelled)


async def _drive(sock_fd: int, count: int, step: Step, timeout: float, cancelled: "asyncio.Future[None]",
                 progress: Progress | None = None) -> int:
    loop = asyncio.get_running_loop()
    watched = os.dup(sock_fd)
    moved = 0
    try:
        while moved < count:
            if cancelled.done():
                raise SpliceEnded(moved, "aborted")
            try:
                n = await loop.run_in_executor(_executor, step, moved, min(STEP, count - moved))
            except BlockingIOError:
                await _readable(loop, watched, timeout, cancelled, moved)
                continue
            except nativeio.SpliceError as error:
                error.stored += moved
                raise
            if n == 0:
                raise SpliceEnded(moved, "eof")
            moved += n
            if progress is not None:
                await progress(moved)
        return moved
    finally:
        os.close(watched)


def _read_step(sock_fd: int, count: int, consume: Consume, done: int) -> int:
    """Fill the thread's buffer from the socket (up to count), then consume it in one go."""
    buffer = _buffer()
    limit, filled = min(count, len(buffer)), 0
    while filled < limit:
        try:
            n = os.readv(sock_fd, [buffer[filled:limit]])
        except BlockingIOError:
            if filled:
                break
            raise
        except OSError as error:
            if error.errno not in _PEER_GONE:
                raise
            n = 0
        if n == 0:
            break
        filled += n
    if filled:
        consume(buffer[:filled], done)
    return filled


def _buffer() -> memoryview:
    buffer: memoryview | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = memoryview(bytearray(BUFFER_SIZE))
    return buffer


def _splice_step(sock_fd: int, file_fd: int, offset: int, count: int, stored: Stored) -> int:
    pipe_r, pipe_w = _pipe()
    try:
        n = nativeio.splice_to_file(sock_fd, pipe_r, pipe_w, file_fd, offset, count)
    except nativeio.SpliceError as error:
        _discard_pipe()
        if error.errno in _PEER_GONE:       # from the socket, before this step moved anything
            return 0
        raise
    except OSError as error:                # the pure-Python splice raises the socket's own error
        if error.errno in _PEER_GONE:
            _discard_pipe()
            return 0
        raise
    if n:
        stored(offset, n)
    return n


def _pipe() -> tuple[int, int]:
    pipe: tuple[int, int] | None = getattr(_local, "pipe", None)
    if pipe is None:
        pipe = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass        # a smaller pipe only means more steps
        _local.pipe = pipe
    return pipe


def _discard_pipe() -> None:
    pipe = getattr(_local, "pipe", None)
    if pipe is not None:
        os.close(pipe[0])
        os.close(pipe[1])
        _local.pipe = None


async def _readable(loop: asyncio.AbstractEventLoop, fd: int, timeout: float,
                    cancelled: "asyncio.Future[None]", moved: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        done, _ = await asyncio.wait([ready, cancelled], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
        ready.cancel()
    if cancelled in done:
        raise SpliceEnded(moved, "aborted")
    if not done:
        raise SpliceEnded(moved, "timeout")
