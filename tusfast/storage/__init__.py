"""Where upload bytes and info live. Knows nothing of HTTP."""

from .base import (EXTENSION_PROTOCOLS, Concatenatable, Expirable, LengthDeferrable, Lifecycle, LocalFile,
                   Readable, DirectWriter,
                   Storage, StorageError, StorageFull, StorageUnavailable, Terminatable, UploadCorrupt, UploadGone,
                   UploadNotFound, UploadWriter, supports)
from .file import FileStorage
from .info import Fenced, InfoStore, OffsetConflict

__all__ = ["EXTENSION_PROTOCOLS", "Concatenatable", "Expirable", "FileStorage", "LengthDeferrable", "Lifecycle",
           "LocalFile", "Readable",
           "DirectWriter", "Storage", "StorageError", "StorageFull", "StorageUnavailable", "Terminatable",
           "UploadCorrupt", "UploadGone", "UploadNotFound", "UploadWriter", "supports",
           "Fenced", "InfoStore", "OffsetConflict"]
