"""The in-process locker: enough for one server process (tusd's memorylocker semantics)."""

from __future__ import annotations

import asyncio
from typing import Callable

from .base import LockTimeout


class _Holder:
    def __init__(self, on_release_requested: Callable[[], None]) -> None:
        self._on_release_requested: Callable[[], None] | None = on_release_requested
        self.released = asyncio.Event()

    def request_release(self) -> None:
        callback, self._on_release_requested = self._on_release_requested, None
        if callback is not None:
            callback()


class MemoryLock:
    def __init__(self, locker: "MemoryLocker", upload_id: str, holder: _Holder) -> None:
        self._locker = locker
        self._upload_id = upload_id
        self._holder = holder

    async def release(self) -> None:
        self._locker._release(self._upload_id, self._holder)


class MemoryLocker:
    def __init__(self, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self._holders: dict[str, _Holder] = {}

    async def acquire(self, upload_id: str, on_release_requested: Callable[[], None]) -> MemoryLock:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while (holder := self._holders.get(upload_id)) is not None:
            holder.request_release()
            try:
                await asyncio.wait_for(holder.released.wait(), deadline - loop.time())
            except TimeoutError:
                raise LockTimeout(upload_id) from None
        holder = _Holder(on_release_requested)
        self._holders[upload_id] = holder
        return MemoryLock(self, upload_id, holder)

    def _release(self, upload_id: str, holder: _Holder) -> None:
        if self._holders.get(upload_id) is holder:
            del self._holders[upload_id]
        holder.released.set()

    async def forget(self, upload_id: str) -> None:
        return None     # nothing outlives a lock here

    def request_release(self, upload_id: str) -> None:
        """Ask the holder of upload_id, if any, to let go (used for requests from other processes)."""
        holder = self._holders.get(upload_id)
        if holder is not None:
            holder.request_release()

    def held(self, upload_id: str) -> bool:
        return upload_id in self._holders
