"""A locker for several processes on one host (`--workers N`, or two servers on one directory).

Exclusion: flock(2) on `<dir>/<id>.lock`; the kernel drops the lock when its holder dies, so a
kill -9 never leaves an upload locked. Release requests: the holder writes its pid into the lock
file, and every process listens on an abstract Unix datagram socket named after the lock directory
and its pid; a waiter sends the upload id there. Within one process, MemoryLocker does the work.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import os
import socket
from pathlib import Path
from typing import Callable

from .base import LockTimeout
from .memory import MemoryLock, MemoryLocker

log = logging.getLogger("tusfast.locking")

POLL_INTERVAL = 0.02


class FileLock:
    def __init__(self, local: MemoryLock, fd: int, path: str) -> None:
        self._local = local
        self._fd = fd
        self._path = path

    async def release(self) -> None:
        try:
            os.unlink(self._path)      # while still locked, so no one else has it open-and-locked
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)         # closing drops the flock
            await self._local.release()


class FileLocker:
    def __init__(self, directory: str | os.PathLike[str], timeout: float = 20.0) -> None:
        self.directory = Path(directory).absolute()
        self.timeout = timeout
        self._local = MemoryLocker(timeout)
        self._channel: socket.socket | None = None
        self._channel_pid = 0
        digest = hashlib.sha1(str(self.directory).encode()).hexdigest()[:16]
        self._address_prefix = f"\0tusfast-locks-{digest}-"

    async def acquire(self, upload_id: str, on_release_requested: Callable[[], None]) -> FileLock:
        self._listen()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        local = await self._local.acquire(upload_id, on_release_requested)
        try:
            fd, path = await self._lock_file(upload_id, deadline)
        except BaseException:
            await local.release()
            raise
        return FileLock(local, fd, path)

    async def _lock_file(self, upload_id: str, deadline: float) -> tuple[int, str]:
        path = str(self.directory / f"{upload_id}.lock")
        asked = False
        while True:
            fd = self._try_lock(path)
            if fd is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd, path
            if not asked:
                self._ask_holder(path, upload_id)
                asked = True
            if asyncio.get_running_loop().time() > deadline:
                raise LockTimeout(upload_id)
            await asyncio.sleep(POLL_INTERVAL)

    def _try_lock(self, path: str) -> int | None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)        # the previous holder removed the file as we opened it: try a fresh one
        return None

    def _ask_holder(self, path: str, upload_id: str) -> None:
        try:
            with open(path, "rb") as stream:
                pid = int(stream.read(32).strip() or b"0")
        except (OSError, ValueError):
            return
        if pid <= 0:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.setblocking(False)
                sender.sendto(upload_id.encode(), self._address_prefix + str(pid))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):
                log.debug("could not ask process %d to release %s: %s", pid, upload_id, exc)

    def _listen(self) -> None:
        """Bind this process's release-request socket (again after a fork)."""
        if self._channel is not None and self._channel_pid == os.getpid():
            return
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        channel.setblocking(False)
        channel.bind(self._address_prefix + str(os.getpid()))
        asyncio.get_running_loop().add_reader(channel.fileno(), self._on_release_request)
        self._channel, self._channel_pid = channel, os.getpid()

    def _on_release_request(self) -> None:
        assert self._channel is not None
        while True:
            try:
                upload_id = self._channel.recv(256).decode("ascii", "replace")
            except (BlockingIOError, InterruptedError):
                return
            self._local.request_release(upload_id)

    def close(self) -> None:
        if self._channel is not None and self._channel_pid == os.getpid():
            try:
                asyncio.get_running_loop().remove_reader(self._channel.fileno())
            except RuntimeError:
                pass
            self._channel.close()
        self._channel = None


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
