"""Who may touch an upload right now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ConnectedLocker, Lock, Locker, LockTimeout, LockUnavailable
from .file import FileLocker
from .memory import MemoryLocker

if TYPE_CHECKING:
    from .redis import RedisLocker

__all__ = ["ConnectedLocker", "FileLocker", "Lock", "Locker", "LockTimeout", "LockUnavailable",
           "MemoryLocker", "RedisLocker"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so a server without --redis-url never imports redis-py.
    if name == "RedisLocker":
        from .redis import RedisLocker
        return RedisLocker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
