"""tusfast: a fast, dependable tus 1.0 resumable-upload server on uvloop and h11.

Embedding::

    from tusfast import Config, TusServer

    async with TusServer(Config(port=0, upload_dir="uploads")) as server:
        print("uploads go to", server.url)
        await server.wait_closed()
"""

from ._version import __version__
from .app import TusServer
from .config import Config
from .core.errors import ErrorKind, TusError
from .core.model import UploadInfo
from .hooks import FileInfoChanges, HookContext, HookEvent, HookRejected, HookResponse, Hooks
from .locking import Locker, MemoryLocker
from .storage import FileStorage, Storage

__all__ = ["Config", "ErrorKind", "FileInfoChanges", "FileStorage", "HookContext", "HookEvent", "HookRejected",
           "HookResponse", "Hooks",
           "Locker", "MemoryLocker", "Storage", "TusError", "TusServer", "UploadInfo", "__version__"]
