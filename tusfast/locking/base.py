"""One writer per upload. A request that wants an upload held by another asks the holder to let go
(the holder stops reading its body, keeps what it stored, and releases) instead of queueing behind
a connection that may have stalled for good."""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable


class LockTimeout(Exception):
    """The holder did not let go in time."""


class LockUnavailable(Exception):
    """The lock service (e.g. Redis) cannot be reached: nobody can say who holds the upload."""


class Lock(Protocol):
    async def release(self) -> None: ...


class Locker(Protocol):
    async def acquire(self, upload_id: str, on_release_requested: Callable[[], None]) -> Lock:
        """Wait for the lock on upload_id, asking any current holder to release it.
        `on_release_requested` is called, at most once, if a later request asks us to let go
        (or, for a locker with leases, if the lock was lost)."""

    async def forget(self, upload_id: str) -> None:
        """The upload is gone (call while holding its lock): drop what the locker keeps for it."""


@runtime_checkable
class ConnectedLocker(Protocol):
    """A locker that talks to a service: checked when the server starts, closed when it stops."""

    async def connect(self) -> None:
        """Reach the service now; raise LockUnavailable with a reason if it cannot be reached."""

    async def disconnect(self) -> None: ...
