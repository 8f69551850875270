"""Where the info of an upload lives, apart from its bytes: the InfoStore seam.

By default (`--info-store file`) every backend keeps the info next to the data, in its own
`<id>.info` file or object, and the offset is what the backend holds (file size, S3 parts); the
backends implement that themselves, inline, so the default path costs nothing extra. Given an
InfoStore (`--info-store redis`, storage/redis_info.py), a backend keeps the info there instead,
together with the *recorded* offset: the offset that was acknowledged. The offset reported is then
min(recorded, what the backend really holds), never more than what is stored.

The recorded offset moves only through `advance()`, a compare-and-set that also checks the
writer's fencing number (from its lock) is still the current one for the upload: a writer whose
lock was taken over can store stray bytes beyond the recorded offset in the residual window before
it notices, but it can never make them count. FencedWriter puts a backend's writer behind that.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Protocol, Sequence, runtime_checkable

from ..core.model import UploadInfo
from .base import Buffer, StorageError, StorageFull, StorageUnavailable, UploadWriter

ADVANCE_EVERY = 1.0     # seconds: a long PATCH records its progress this often (file storage)


class OffsetConflict(StorageError):
    """advance() refused: the writer's lock was taken over (a newer fence), or the recorded offset
    is no longer the one it started from. `offset`: the recorded offset now (None if unknown)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class InfoStore(Protocol):
    """Upload info and the recorded offset, kept apart from the data."""

    async def open(self) -> None:
        """Reach the store; raises StorageUnavailable with a reason."""

    async def close(self) -> None: ...

    async def create(self, info: UploadInfo) -> None:
        """Store a new upload (recorded offset = info.offset); FileExistsError if the id is taken."""

    async def load(self, upload_id: str) -> UploadInfo:
        """The info with `offset` = the recorded offset and `updated_at` = the last advance.
        Raises UploadNotFound, UploadGone (expired, within its tombstone period) or UploadCorrupt."""

    async def save(self, info: UploadInfo, *, offset: bool = False) -> None:
        """Rewrite the info (a declared length, a joined final); with offset=True also set the
        recorded offset to info.offset, unfenced (a join, a completion found after a crash)."""

    async def advance(self, upload_id: str, expected: int, new: int, fence: int | None) -> None:
        """Set the recorded offset from `expected` to `new` if, atomically, it is still `expected`
        and `fence` (unless None) is the upload's current fencing number; else OffsetConflict."""

    async def delete(self, upload_id: str) -> None:
        """Forget the upload (its info, offset, and the finals waiting for it)."""

    async def expire(self, upload_id: str) -> None:
        """delete(), leaving a tombstone: load() raises UploadGone until it is pruned."""

    async def prune_tombstones(self, older_than: float) -> int: ...

    async def list_ids(self) -> list[str]: ...

    async def register_final(self, final: UploadInfo) -> None: ...

    async def finals_waiting_for(self, partial_id: str) -> list[str]: ...


@runtime_checkable
class Fenced(Protocol):
    """A writer that records its offset only while its lock is current. The handler, which holds
    the lock, hands over the lock's fencing number and a cheap local check of its lease."""

    def fence(self, token: int | None, expired: Callable[[], bool]) -> None: ...


def _never() -> bool:
    return False


class FencedWriter:
    """A backend's writer whose progress counts only through InfoStore.advance().

    Non-staged bytes are recorded when the writer closes (after the backend stored them, and after
    fdatasync when that was asked for), every ADVANCE_EVERY seconds on the way if `periodic` (bytes
    a write returned are stored: file storage), and whenever the backend reports bytes stored
    (`stored()`, S3 parts). Staged bytes count only after commit(), at close. Before each write
    step, a writer whose lease ran out stops: it must not write on an upload that may have a new
    holder (StorageUnavailable, 503; the bytes it stored before stay, and count if nobody took over).
    """

    def __init__(self, inner: UploadWriter, infos: InfoStore, info: UploadInfo, *, staged: bool = False,
                 periodic: bool = False) -> None:
        self._inner = inner
        self._infos = infos
        self._id = info.id
        self.recorded = info.offset     # what the store holds
        self._end = info.offset         # what this writer stored
        self._staged = staged
        self._periodic = periodic
        self._fence: int | None = None
        self._expired: Callable[[], bool] = _never
        self._last = time.monotonic()

    def fence(self, token: int | None, expired: Callable[[], bool]) -> None:
        self._fence, self._expired = token, expired

    async def write(self, offset: int, chunks: Sequence[Buffer]) -> None:
        self._check_lease()
        try:
            await self._inner.write(offset, chunks)
        except StorageFull as full:
            self._end = offset + full.stored
            raise
        self._end = offset + sum(len(chunk) for chunk in chunks)
        if self._periodic and not self._staged and time.monotonic() - self._last >= ADVANCE_EVERY:
            await self._advance(self._end)

    async def stored(self, offset: int) -> None:
        """The backend holds every byte up to offset for good (an S3 part went up): record it."""
        if not self._staged and offset > self.recorded:
            await self._advance(offset)

    async def check(self) -> None:
        """OffsetConflict unless the lock is still current: before a step that cannot be taken back
        (completing an S3 upload, replacing its `.part`)."""
        self._check_lease()
        await self._infos.advance(self._id, self.recorded, self.recorded, self._fence)

    async def commit(self) -> None:
        """The staged bytes are verified: from now on they count as they are stored."""
        self._check_lease()
        self._staged = False
        await self._inner.commit()

    async def truncate(self, offset: int) -> None:
        self._check_lease()
        await self._inner.truncate(offset)
        self._end = offset
        if self.recorded > offset:      # recorded on the way, then a trailer failed: take it back
            await self._advance(offset)

    async def close(self, *, durable: bool) -> None:
        await self._inner.close(durable=durable)
        if not self._staged and self._end != self.recorded:
            await self._advance(self._end)

    def _check_lease(self) -> None:
        if self._expired():
            raise StorageUnavailable(f"the lock on upload {self._id} ran out before this write "
                                     "(another request may own the upload now); retry")

    async def _advance(self, new: int) -> None:
        await self._infos.advance(self._id, self.recorded, new, self._fence)
        self.recorded = new
        self._last = time.monotonic()


StoredCallback = Callable[[int], Awaitable[None]]
