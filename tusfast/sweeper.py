"""Removes expired unfinished uploads in the background (and once, for `tusfast cleanup`).

Storage calls run in threads, so sweeping never blocks the event loop. An upload that expired has
seen no write for the whole expiry period, so taking its lock may interrupt only a stalled request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .core import protocol as tus
from .core.model import UploadInfo
from .core.protocol import ProtocolSettings
from .locking import Locker, LockTimeout, LockUnavailable
from .observability.metrics import NULL_METRICS, Metrics
from .storage import Expirable, Storage, StorageError, UploadNotFound

log = logging.getLogger("tusfast.sweeper")

MIN_INTERVAL, MAX_INTERVAL = 0.25, 300.0


def sweep_interval(expire_after: float) -> float:
    return min(MAX_INTERVAL, max(MIN_INTERVAL, expire_after / 4))


class ExpirySweeper:
    def __init__(self, storage: Storage, locker: Locker, settings: ProtocolSettings,
                 on_error: Callable[[BaseException, dict[str, object]], None] | None = None) -> None:
        assert isinstance(storage, Expirable) and settings.expire_after
        self._on_error = on_error       # told about failed background sweeps
        self._storage = storage
        self._locker = locker
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self.metrics: Metrics = NULL_METRICS        # counts removals (tusfast_uploads_expired_total)

    async def sweep_once(self) -> int:
        """Remove every upload that has expired by now; returns how many. Expired uploads answer
        410 for one more expiry period, then 404."""
        assert isinstance(self._storage, Expirable) and self._settings.expire_after
        await self._storage.prune_tombstones(time.time() - self._settings.expire_after)
        removed = 0
        for upload_id in await self._storage.list_upload_ids():
            try:
                removed += await self._remove_if_expired(upload_id)
            except (StorageError, LockTimeout, LockUnavailable) as error:
                log.warning("could not check upload %s for expiry: %s", upload_id, error)
        return removed

    async def _remove_if_expired(self, upload_id: str) -> bool:
        if not self._expired(await self._storage.get_info(upload_id)):
            return False
        lock = await self._locker.acquire(upload_id, lambda: None)
        try:
            info = await self._storage.get_info(upload_id)     # a write may have come in meanwhile
            if not self._expired(info):
                return False
            assert isinstance(self._storage, Expirable)
            await self._storage.expire(info)
            await self._locker.forget(upload_id)
        except UploadNotFound:
            return False
        finally:
            await lock.release()
        log.info("upload expired and removed id=%s offset=%d", upload_id, info.offset)
        self.metrics.upload_expired()
        return True

    def _expired(self, info: UploadInfo) -> bool:
        deadline = tus.expires_at(info, self._settings)
        return deadline is not None and deadline <= time.time()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._settings.expire_after
        interval = sweep_interval(self._settings.expire_after)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_once()
            except Exception as error:
                log.exception("expiry sweep failed; trying again in %.0fs", interval)
                if self._on_error is not None:
                    self._on_error(error, {"task": "expiry-sweeper"})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
