"""Receive a request body straight from the socket in worker threads, bypassing the transport, in
one of two ways:

* splice(2): socket -> pipe -> file inside the kernel; the bytes never enter Python.
* read into a reused page-aligned per-thread buffer, then hand each full buffer to a consumer
  (hash, and/or write it with O_DIRECT: the buffers keep the alignment direct I/O needs).

The transport's reading is paused for the whole time, so uvloop never touches the socket while we
read it. A worker thread moves up to STEP bytes per job and waits for the socket itself (poll), so
a body costs one hop to a thread per STEP bytes, not one per socket wake-up; an eventfd in the same
poll wakes it when the request is aborted. Each thread keeps one pipe and one buffer for reuse.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Sequence

from .. import nativeio
from ..nativeio import Buffer

STEP = 64 * 1024 * 1024         # bytes per worker-thread job; progress is reported between jobs
CALL = 8 * 1024 * 1024          # bytes per splice call: an abort is noticed at least this often
PIPE_SIZE = 1024 * 1024
BUFFER_SIZE = 2 * 1024 * 1024   # per-thread read buffer (page-aligned) of the reading path
ALIGN = nativeio.DIRECT_IO_ALIGNMENT
MIN_SPLICE = 256 * 1024         # smaller bodies are cheaper through the ordinary path
# A client that resets its connection mid-body ends the body as a close does: not a storage
# failure (503) and not an unhandled error.
_PEER_GONE = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT})
_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP

_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="tusfast-splice")
_local = threading.local()

Stored = Callable[[int, int], None]     # (offset, count) -> None, called in the worker thread
Consume = Callable[[memoryview, int], None]     # (bytes, their position in the body), in the worker thread
Step = Callable[[int, int], int]        # (bytes done, most to move now) -> moved; raises SpliceEnded
Progress = Callable[[int], Awaitable[None]]     # (bytes done so far), on the event loop after each step


class SpliceEnded(Exception):
    """The body stopped before `count` bytes: `reason` is 'eof', 'timeout' or 'aborted'."""

    def __init__(self, moved: int, reason: str) -> None:
        super().__init__(reason)
        self.moved = moved
        self.reason = reason


class _Socket:
    """One body's socket as the worker threads see it: a dup (the transport may close its own fd
    under us), a poll that also watches an eventfd, and the idle timeout."""

    def __init__(self, sock_fd: int, timeout: float) -> None:
        self.fd = os.dup(sock_fd)
        self.wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.aborted = False
        self.return_at = float("inf")   # a step ends early at this time.monotonic(), to report progress
        self.active_at = time.monotonic()   # when bytes last came: the idle timeout counts from here
        self._timeout = timeout
        self._poll = select.poll()
        self._poll.register(self.fd, _READABLE)
        self._poll.register(self.wake, select.POLLIN)

    def wait(self) -> str | None:
        """Block until the socket is readable: None; else 'due' (the step should end now, so that
        progress gets reported), 'timeout' (idle for too long) or 'aborted'."""
        idle_at = self.active_at + self._timeout
        until = min(idle_at, self.return_at)
        events = self._poll.poll(max(0.0, until - time.monotonic()) * 1000)
        if self.aborted or any(fd == self.wake for fd, _ in events):
            return "aborted"
        if events:
            return None
        return "timeout" if time.monotonic() >= idle_at else "due"

    def abort(self) -> None:
        """From the event loop: wake a waiting step and stop the next one."""
        if not self.aborted and self.wake >= 0:
            self.aborted = True
            os.eventfd_write(self.wake, 1)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.wake)
        self.wake = -1


class Reporting:
    """Where the bytes moved so far go while a body streams in, and how often (seconds)."""

    def __init__(self, progress: Progress, interval: float) -> None:
        self.progress = progress
        self.interval = interval


async def splice_body(sock_fd: int, file_fd: int, offset: int, count: int, stored: Stored,
                      timeout: float, cancelled: "asyncio.Future[None]", reporting: Reporting | None = None) -> int:
    """Move exactly `count` body bytes into file_fd at offset; raises SpliceEnded if they never come."""
    sock = _Socket(sock_fd, timeout)

    def step(done: int, most: int) -> int:
        return _splice_step(sock, file_fd, offset + done, most, stored)
    return await _drive(sock, count, step, cancelled, reporting)


async def read_body(sock_fd: int, count: int, consume: Consume, timeout: float,
                    cancelled: "asyncio.Future[None]", reporting: Reporting | None = None, phase: int = 0,
                    prefix: Sequence[Buffer] = ()) -> int:
    """Read exactly `count` body bytes into reused buffers, handing each to `consume`; the bytes
    of `prefix` (already read by the transport) go first, in the same buffers. Every part starts
    at an address congruent to (phase + its position) modulo ALIGN, and all but the first and last
    end on such a boundary: pass the file offset as phase to write parts with O_DIRECT.
    Returns the bytes read from the socket (prefix not included)."""
    sock = _Socket(sock_fd, timeout)
    reading = _Reading(consume, phase, prefix)

    def step(done: int, most: int) -> int:
        return _read_step(sock, reading, most)
    return await _drive(sock, count, step, cancelled, reporting)


async def _drive(sock: _Socket, count: int, step: Step, cancelled: "asyncio.Future[None]",
                 reporting: Reporting | None) -> int:
    loop = asyncio.get_running_loop()
    abort = lambda _: sock.abort()      # noqa: E731
    cancelled.add_done_callback(abort)
    moved = 0
    try:
        while moved < count:
            if cancelled.done():
                raise SpliceEnded(moved, "aborted")
            if reporting is not None:
                sock.return_at = time.monotonic() + reporting.interval
            job = loop.run_in_executor(_executor, step, moved, min(STEP, count - moved))
            try:
                n = await _finished(job, sock)
            except SpliceEnded as ended:
                raise SpliceEnded(moved + ended.moved, ended.reason) from None
            except nativeio.SpliceError as error:
                error.stored += moved
                raise
            moved += n
            if reporting is not None:
                await reporting.progress(moved)
        return moved
    finally:
        cancelled.remove_done_callback(abort)
        sock.close()


async def _finished(job: "asyncio.Future[int]", sock: _Socket) -> int:
    """The job's result. If this task is cancelled meanwhile, the step is told to stop and waited
    for (it still uses the file and the socket), then the cancellation goes on."""
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        sock.abort()
        while not job.done():
            try:
                await asyncio.wait([job])
            except asyncio.CancelledError:
                continue
        if not job.cancelled():
            job.exception()         # retrieved: the cancellation is what this task reports
        raise


def _splice_step(sock: _Socket, file_fd: int, offset: int, count: int, stored: Stored) -> int:
    pipe_r, pipe_w = _pipe()
    moved = 0
    while moved < count and not sock.aborted:
        try:
            n = nativeio.splice_to_file(sock.fd, pipe_r, pipe_w, file_fd, offset + moved,
                                        min(CALL, count - moved))
        except BlockingIOError:
            reason = sock.wait()
            if reason == "due":
                break
            if reason is not None:
                raise SpliceEnded(moved, reason) from None
            continue
        except nativeio.SpliceError as error:
            _discard_pipe()
            if error.errno in _PEER_GONE:       # from the socket, before this call moved anything
                raise SpliceEnded(moved, "eof") from None
            error.stored += moved
            raise
        except OSError as error:                # the pure-Python splice raises the socket's own error
            if error.errno in _PEER_GONE:
                _discard_pipe()
                raise SpliceEnded(moved, "eof") from None
            raise
        if n == 0:
            raise SpliceEnded(moved, "eof")
        stored(offset + moved, n)
        moved += n
        sock.active_at = time.monotonic()
        if sock.active_at >= sock.return_at:
            break
    if sock.aborted and moved < count:
        raise SpliceEnded(moved, "aborted")
    return moved


class _Reading:
    """A body being read in steps: where the next part goes, and the prefix still to hand out."""

    def __init__(self, consume: Consume, phase: int, prefix: Sequence[Buffer]) -> None:
        self.consume = consume
        self.phase = phase
        self.position = 0           # of the next part in the body, prefix included
        self.held = [memoryview(part).cast("B") for part in prefix if len(part)]


def _read_step(sock: _Socket, reading: _Reading, count: int) -> int:
    """Fill the thread's buffer (the prefix first, then the socket) and consume it, until count
    bytes came from the socket; returns that count."""
    buffer = _buffer()
    moved = 0
    while moved < count:
        begin = (reading.phase + reading.position) % ALIGN
        copied = _copy_held(reading.held, buffer, begin, len(buffer))
        filled, reason = _fill(sock, buffer, copied, copied + min(len(buffer) - copied, count - moved))
        moved += filled - copied
        if filled > begin:
            reading.consume(buffer[begin:filled], reading.position)
            reading.position += filled - begin
        if reason is not None and reason != "due":
            raise SpliceEnded(moved, reason)
        if reason == "due" or time.monotonic() >= sock.return_at:
            break
    return moved


def _copy_held(held: list[memoryview], buffer: memoryview, begin: int, end: int) -> int:
    """Copy held bytes into buffer[begin:end], dropping what was copied; returns where they end."""
    at = begin
    while held and at < end:
        part = held[0]
        n = min(len(part), end - at)
        buffer[at:at + n] = part[:n]
        at += n
        if n == len(part):
            held.pop(0)
        else:
            held[0] = part[n:]
    return at


def _fill(sock: _Socket, buffer: memoryview, begin: int, end: int) -> tuple[int, str | None]:
    """Read into buffer[begin:end] until it is full: (where the data ends, why it stopped early:
    see _Socket.wait, or 'eof')."""
    filled = begin
    while filled < end:
        if sock.aborted:
            return filled, "aborted"
        try:
            n = os.readv(sock.fd, [buffer[filled:end]])
        except BlockingIOError:
            reason = sock.wait()
            if reason is not None:
                return filled, reason
            continue
        except OSError as error:
            if error.errno not in _PEER_GONE:
                raise
            n = 0
        if n == 0:
            return filled, "eof"
        filled += n
        sock.active_at = time.monotonic()
    return filled, None


def _buffer() -> memoryview:
    buffer: memoryview | None = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = nativeio.aligned_buffer(BUFFER_SIZE)
    return buffer


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
