"""Receive a request body straight from the socket in worker threads, bypassing the transport, in
one of two ways:

* splice(2): socket -> pipe -> file inside the kernel; the bytes never enter Python.
* read into a page-aligned buffer, and hand each full buffer to a consumer (hash, and/or write it
  with O_DIRECT: the buffers keep the alignment direct I/O needs).

The transport's reading is paused for the whole time, so uvloop never touches the socket while we
read it. A worker thread keeps reading while bytes keep coming, waiting for the socket itself
(poll) for up to GRACE; a client that pauses longer is waited for on the event loop instead, so
slow clients do not hold threads, and fast ones cost one hop to a thread per STEP_TIME, not one per
socket wake-up. An eventfd in the same poll wakes a waiting thread when the request is aborted.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import select
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Awaitable, Callable, Sequence, TypeVar

from .. import nativeio
from ..nativeio import Buffer

STEP_TIME = 0.5                 # seconds a worker thread spends on one body before others get a turn
GRACE = 0.02                    # seconds a worker thread waits for a quiet socket before handing back
WAIT_BUDGET = 0.05              # seconds of waiting per step: a slow, steady client hands back too
CALL = 8 * 1024 * 1024          # bytes per splice call: an abort is noticed at least this often
PIPE_SIZE = 1024 * 1024
BUFFER_SIZE = 2 * 1024 * 1024   # per body (two with overlap), page-aligned, from a pool
ALIGN = nativeio.DIRECT_IO_ALIGNMENT
FINAL_PART = 256 * 1024         # see _Reading._part_end
MIN_SPLICE = 256 * 1024         # smaller bodies are cheaper through the ordinary path
POOLED_BUFFERS = 64             # free buffers kept for reuse; more are let go
# A client that resets its connection mid-body ends the body as a close does: not a storage
# failure (503) and not an unhandled error.
_PEER_GONE = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT})
_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP

_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="tusfast-splice")
_consumers = ThreadPoolExecutor(max_workers=32, thread_name_prefix="tusfast-consume")
_local = threading.local()
_free_buffers: list[memoryview] = []
_free_lock = threading.Lock()

Stored = Callable[[int, int], None]     # (offset, count) -> None, called in the worker thread
# (bytes, their position in the body), in a worker thread. A consumer that returns a function has
# not finished with the bytes: the buffer stays untouched until that function has run (it is called
# before the next part is consumed, and before the body's end is reported).
Finish = Callable[[], None]
Consume = Callable[[memoryview, int], Finish | None]
Progress = Callable[[int], Awaitable[None]]     # (body bytes stored so far), on the event loop


class SpliceEnded(Exception):
    """The body stopped before `count` bytes: `reason` is 'eof', 'timeout' or 'aborted'. `moved`
    counts the bytes taken from the socket, all of them stored."""

    def __init__(self, moved: int, reason: str) -> None:
        super().__init__(reason)
        self.moved = moved
        self.reason = reason


class Reporting:
    """Where the bytes stored so far go while a body streams in, and how often (seconds)."""

    def __init__(self, progress: Progress, interval: float) -> None:
        self.progress = progress
        self.interval = interval


class _Socket:
    """One body's socket as the worker threads see it: a dup (the transport may close its own fd
    under us), a poll that also watches an eventfd, and the idle timeout."""

    def __init__(self, sock_fd: int, timeout: float) -> None:
        self.fd = os.dup(sock_fd)
        self.wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.aborted = False
        self.quiet = False              # the last step ended because the client paused
        self.waited = 0.0               # seconds the current step spent waiting for the socket
        self.return_at = float("inf")   # when the current step should end (fairness, progress)
        self.active_at = time.monotonic()   # when bytes last came: the idle timeout counts from here
        self.timeout = timeout
        self._poll = select.poll()
        self._poll.register(self.fd, _READABLE)
        self._poll.register(self.wake, select.POLLIN)

    def wait(self) -> str | None:
        """In a worker thread, block until the socket is readable: None; else 'quiet' (nothing
        within GRACE, or this step has waited WAIT_BUDGET: hand back to the event loop), 'due'
        (the step's time is up), 'timeout' (idle for too long) or 'aborted'."""
        now = time.monotonic()
        idle_at = self.active_at + self.timeout
        patience = min(GRACE, WAIT_BUDGET - self.waited)
        events = self._poll.poll(max(0.0, min(idle_at, self.return_at, now + patience) - now) * 1000)
        if self.aborted or any(fd == self.wake for fd, _ in events):
            return "aborted"
        later = time.monotonic()
        self.waited += later - now
        if events:
            return None
        if later >= idle_at:
            return "timeout"
        if later >= self.return_at:
            return "due"
        self.quiet = True
        return "quiet"

    def abort(self) -> None:
        """From the event loop: wake a waiting step and stop the next one."""
        if not self.aborted and self.wake >= 0:
            self.aborted = True
            os.eventfd_write(self.wake, 1)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.wake)
        self.wake = -1


class _Transfer:
    """How one body moves: step() in a worker thread until it returns (bytes taken from the
    socket), flush() to store whatever it holds when the body ends early, stored() for progress."""

    def step(self, sock: _Socket, most: int) -> int:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def stored(self, moved: int) -> int:
        return moved


async def splice_body(sock_fd: int, file_fd: int, offset: int, count: int, stored: Stored,
                      timeout: float, cancelled: "asyncio.Future[None]", reporting: Reporting | None = None) -> int:
    """Move exactly `count` body bytes into file_fd at offset; raises SpliceEnded if they never come."""
    return await _drive(_Socket(sock_fd, timeout), count, _Splicing(file_fd, offset, stored), cancelled, reporting)


async def read_body(sock_fd: int, count: int, consume: Consume, timeout: float,
                    cancelled: "asyncio.Future[None]", reporting: Reporting | None = None, phase: int = 0,
                    prefix: Sequence[Buffer] = (), overlap: bool = False) -> int:
    """Read exactly `count` body bytes into a buffer, handing it to `consume` whenever it is full
    (and at the end; in the body's last buffer also FINAL_PART before the end, so that the last
    part, which the reply waits for, stays small); the bytes of `prefix` (already read by the transport) go first. Every part
    starts at an address congruent to (phase + its position) modulo ALIGN, and all but the first
    and last end on such a boundary: pass the file offset as phase to write parts with O_DIRECT.
    Progress reports count the bytes consumed, prefix included. Returns the bytes read from the
    socket (prefix not included). `overlap`: consume in another thread while the next buffer
    fills, for consumers that cost CPU (hashing)."""
    reading = _Reading(consume, phase, prefix, overlap)
    try:
        return await _drive(_Socket(sock_fd, timeout), count, reading, cancelled, reporting)
    finally:
        reading.release()


async def _drive(sock: _Socket, count: int, transfer: _Transfer, cancelled: "asyncio.Future[None]",
                 reporting: Reporting | None) -> int:
    loop = asyncio.get_running_loop()
    abort = lambda _: sock.abort()      # noqa: E731
    cancelled.add_done_callback(abort)
    step_time = STEP_TIME if reporting is None else min(STEP_TIME, reporting.interval)
    moved = 0
    try:
        while moved < count:
            if cancelled.done():
                await _flush(loop, transfer, sock)
                raise SpliceEnded(moved, "aborted")
            sock.return_at, sock.quiet, sock.waited = time.monotonic() + step_time, False, 0.0
            try:
                moved += await _finished(loop.run_in_executor(_executor, transfer.step, sock, count - moved), sock)
            except SpliceEnded as ended:
                raise SpliceEnded(moved + ended.moved, ended.reason) from None
            except nativeio.SpliceError as error:
                error.stored += moved
                raise
            if reporting is not None:
                await reporting.progress(transfer.stored(moved))
            if sock.quiet and moved < count:
                reason = await _readable(loop, sock, cancelled)
                if reason is not None:
                    await _flush(loop, transfer, sock)
                    raise SpliceEnded(moved, reason)
        return moved
    finally:
        cancelled.remove_done_callback(abort)
        sock.close()


T = TypeVar("T")


async def _finished(job: "asyncio.Future[T]", sock: _Socket) -> T:
    """The job's result. If this task is cancelled meanwhile, the step is told to stop and waited
    for (it still uses the file, the socket and the buffer), then the cancellation goes on."""
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


async def _flush(loop: asyncio.AbstractEventLoop, transfer: _Transfer, sock: _Socket) -> None:
    """The body ended early: store what the transfer holds, in a worker thread."""
    await _finished(loop.run_in_executor(_executor, transfer.flush), sock)


async def _readable(loop: asyncio.AbstractEventLoop, sock: _Socket,
                    cancelled: "asyncio.Future[None]") -> str | None:
    """Wait on the event loop until the socket is readable: None, or 'timeout' / 'aborted'."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fd, wake)
    try:
        idle = max(0.0, sock.active_at + sock.timeout - time.monotonic())
        done, _ = await asyncio.wait([ready, cancelled], timeout=idle, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(sock.fd)
        ready.cancel()
    if cancelled in done:
        return "aborted"
    return None if done else "timeout"


class _Splicing(_Transfer):
    def __init__(self, file_fd: int, offset: int, stored: Stored) -> None:
        self._file = file_fd
        self._offset = offset
        self._stored = stored
        self._moved = 0

    def step(self, sock: _Socket, most: int) -> int:
        pipe_r, pipe_w = _pipe()
        moved = 0
        while moved < most:
            if sock.aborted:
                raise SpliceEnded(moved, "aborted")
            at = self._offset + self._moved
            try:
                n = nativeio.splice_to_file(sock.fd, pipe_r, pipe_w, self._file, at, min(CALL, most - moved))
            except BlockingIOError:
                reason = sock.wait()
                if reason in ("quiet", "due"):
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
            self._stored(at, n)
            self._moved += n
            moved += n
            sock.active_at = time.monotonic()
            if sock.active_at >= sock.return_at:
                break
        return moved


class _Reading(_Transfer):
    """A body read in steps into a buffer: the prefix still to hand out, the bytes held (until the
    buffer is full, the body ends or the client pauses). With
    `overlap`, a full buffer is consumed in another thread while the next one fills (for consumers
    that cost CPU, such as hashing); a consumer that finishes a part later (see Consume) gets the
    same without the thread. Parts are still consumed one at a time, in order."""

    def __init__(self, consume: Consume, phase: int, prefix: Sequence[Buffer], overlap: bool = False) -> None:
        self._consume = consume
        self._phase = phase
        self._overlap = overlap
        self._position = 0          # of the buffer's first byte in the body, prefix included
        self._consumed = 0          # body bytes consumed so far
        self._held = [memoryview(part).cast("B") for part in prefix if len(part)]
        self._buffers: list[memoryview] = []    # the one filling first; with overlap, a spare
        self._begin = self._filled = 0      # the filling buffer's bytes are [begin, filled)
        # The other buffer's consumption: in another thread (overlap), or finishing later (a
        # consumer that returned a function, with the body position it consumes up to).
        self._pending: Future[None] | tuple[Finish, int] | None = None

    def stored(self, moved: int) -> int:
        return self._consumed

    def step(self, sock: _Socket, most: int) -> int:
        """Fill the buffer (the prefix first, then the socket), consuming it whenever a part is
        complete (see _part_end) and once the body is; returns the bytes that came from the socket."""
        moved = 0
        while moved < most:
            buffer = self._filling()
            if self._filled == self._begin == 0:
                self._begin = self._filled = (self._phase + self._position) % ALIGN
            self._filled = _copy_held(self._held, buffer, self._filled, len(buffer))
            limit = self._part_end(len(buffer), most - moved)
            before = self._filled
            self._filled, reason = _fill(sock, buffer, self._filled, self._filled + min(limit - self._filled,
                                                                                        most - moved))
            moved += self._filled - before
            # A paused client gets what it sent stored now, and holds no buffer while it pauses.
            ended = moved == most or reason not in (None, "due")
            if self._filled == limit or ended:
                self._hand_out(final=ended)
            if reason == "quiet":
                _give_back(self._buffers)
                self._buffers = []
            if reason in ("quiet", "due"):
                break
            if reason is not None:
                raise SpliceEnded(moved, reason)
        return moved

    def flush(self) -> None:
        self._hand_out(final=True)

    def _part_end(self, size: int, unread: int) -> int:
        """Where the part being filled ends in a buffer of `size`. When the body ends within it, all
        but its last FINAL_PART bytes go first: that part is on its way to the disk while the rest
        arrives, and the consumer's last part (which the reply waits for) stays small."""
        end = self._filled + unread
        split = (end - FINAL_PART) // ALIGN * ALIGN
        return split if end <= size and split > self._filled else size

    def _hand_out(self, final: bool) -> None:
        """Consume what the filling buffer holds; `final`: also wait until everything is consumed."""
        if self._filled > self._begin:
            part, position = self._buffers[0][self._begin:self._filled], self._position
            self._position += len(part)
            self._wait()
            if self._overlap:
                self._pending = _consumers.submit(self._consume_part, part, position)
            elif (finish := self._consume(part, position)) is not None:
                self._pending = (finish, position + len(part))
            else:
                self._consumed = position + len(part)
            if self._pending is not None:       # the next part goes to the other buffer
                if len(self._buffers) == 1:
                    self._buffers.append(_take_buffer())
                self._buffers.reverse()
        self._begin = self._filled = 0
        if final:
            self._wait()

    def _consume_part(self, part: memoryview, position: int) -> None:
        finish = self._consume(part, position)
        if finish is not None:
            finish()
        self._consumed = position + len(part)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if isinstance(pending, Future):
            pending.result()
        elif pending is not None:
            finish, consumed = pending
            finish()
            self._consumed = consumed

    def _filling(self) -> memoryview:
        if not self._buffers:
            self._buffers.append(_take_buffer())
        return self._buffers[0]

    def release(self) -> None:
        """Back to the pool, once no thread uses the buffers any more."""
        buffers, self._buffers = self._buffers, []
        pending = self._pending
        if isinstance(pending, Future) and not pending.done():
            pending.add_done_callback(lambda _: _give_back(buffers))
            return
        if isinstance(pending, tuple):
            # Reading failed while a write was still taking the other buffer (every normal end
            # waits for it): wait here, a buffer's write at most. Its error adds nothing to the one
            # being reported, and the offset reported counts only bytes known to be written.
            try:
                self._wait()
            except Exception:
                pass
        _give_back(buffers)


def _take_buffer() -> memoryview:
    with _free_lock:
        if _free_buffers:
            return _free_buffers.pop()
    return nativeio.aligned_buffer(BUFFER_SIZE)


def _give_back(buffers: list[memoryview]) -> None:
    with _free_lock:
        _free_buffers.extend(buffers[:max(0, POOLED_BUFFERS - len(_free_buffers))])


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
        if sock.active_at >= sock.return_at:
            return filled, "due"
    return filled, None


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
