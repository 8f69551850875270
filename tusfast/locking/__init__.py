"""Who may touch an upload right now."""

from .base import Lock, Locker, LockTimeout
from .file import FileLocker
from .memory import MemoryLocker

__all__ = ["FileLocker", "Lock", "Locker", "LockTimeout", "MemoryLocker"]
