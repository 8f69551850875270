"""A locker for several processes on one host (`--workers N`, or two servers on one directory).

Exclusion: one shared file, `<dir>/uploads.lock`, and a POSIX record lock on one byte of it per
upload, at an offset taken from the upload id (60 random bits: distinct uploads do not collide in
practice). No file per upload, so locking costs two fcntl calls and no file system journal work.
The kernel drops a dead process's record locks, so a kill -9 never leaves an upload locked.

Release requests: F_GETLK names the process holding a byte. Every process listens on an abstract
Unix datagram socket named after the lock directory and its pid; a waiter sends the upload id there.

Record locks belong to a process, not a file descriptor, so two requests of one process never
exclude each other through them: MemoryLocker does that part. And a process loses all its record
locks when it closes any descriptor of the file: the file is opened once per process and never closed.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Callable

from ..core.model import SERVER_UPLOAD_ID
from .base import LockTimeout
from .memory import MemoryLock, MemoryLocker

log = logging.getLogger("tusfast.locking")

POLL_INTERVAL = 0.02
LOCK_FILE = "uploads.lock"
# struct flock on Linux/x86_64 and aarch64: short type, short whence, off_t start, off_t len, pid_t pid.
_FLOCK = struct.Struct("hhxxxxqqixxxx")


def lock_offset(upload_id: str) -> int:
    """60 bits: the id's own random hex digits, or a hash of an id a hook chose."""
    if SERVER_UPLOAD_ID.fullmatch(upload_id):
        return int(upload_id[:15], 16)
    return int.from_bytes(hashlib.blake2b(upload_id.encode(), digest_size=8).digest()) >> 4


class FileLock:
    def __init__(self, local: MemoryLock, fd: int, offset: int) -> None:
        self._local = local
        self._fd = fd
        self._offset = offset

    async def release(self) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._offset, os.SEEK_SET)
        finally:
            await self._local.release()


class FileLocker:
    def __init__(self, directory: str | os.PathLike[str], timeout: float = 20.0) -> None:
        self.directory = Path(directory).absolute()
        self.timeout = timeout
        self._local = MemoryLocker(timeout)
        self._fd = -1
        self._channel: socket.socket | None = None
        self._pid = 0
        digest = hashlib.sha1(str(self.directory).encode()).hexdigest()[:16]
        self._address_prefix = f"\0tusfast-locks-{digest}-"

    async def acquire(self, upload_id: str, on_release_requested: Callable[[], None]) -> FileLock:
        self._open()
        deadline = asyncio.get_running_loop().time() + self.timeout
        local = await self._local.acquire(upload_id, on_release_requested)
        try:
            await self._lock_range(upload_id, deadline)
        except BaseException:
            await local.release()
            raise
        return FileLock(local, self._fd, lock_offset(upload_id))

    async def forget(self, upload_id: str) -> None:
        return None     # nothing is kept per upload

    async def _lock_range(self, upload_id: str, deadline: float) -> None:
        offset = lock_offset(upload_id)
        asked = False
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not asked:
                self._ask_holder(offset, upload_id)
                asked = True
            if asyncio.get_running_loop().time() > deadline:
                raise LockTimeout(upload_id)
            await asyncio.sleep(POLL_INTERVAL)

    def _ask_holder(self, offset: int, upload_id: str) -> None:
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        try:
            kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(self._fd, fcntl.F_GETLK, query))
        except OSError:
            return
        if kind == fcntl.F_UNLCK or pid <= 0:
            return      # released meanwhile: the next try gets it
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.setblocking(False)
                sender.sendto(upload_id.encode(), self._address_prefix + str(pid))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):
                log.debug("could not ask process %d to release %s: %s", pid, upload_id, exc)

    def _open(self) -> None:
        """Open the lock file and bind the release-request socket, once per process (after a fork too)."""
        if self._pid == os.getpid() and self._channel is not None:
            return
        if self._pid != os.getpid():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        channel.setblocking(False)
        channel.bind(self._address_prefix + str(os.getpid()))
        asyncio.get_running_loop().add_reader(channel.fileno(), self._on_release_request)
        self._channel, self._pid = channel, os.getpid()

    def _on_release_request(self) -> None:
        assert self._channel is not None
        while True:
            try:
                upload_id = self._channel.recv(256).decode("ascii", "replace")
            except (BlockingIOError, InterruptedError):
                return
            self._local.request_release(upload_id)

    def close(self) -> None:
        """Stop listening for release requests. The lock file stays open: closing it would drop
        every record lock this process holds."""
        if self._channel is not None and self._pid == os.getpid():
            try:
                asyncio.get_running_loop().remove_reader(self._channel.fileno())
            except RuntimeError:
                pass
            self._channel.close()
        self._channel = None
