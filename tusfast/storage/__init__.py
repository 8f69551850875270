"""Where upload bytes and info live. Knows nothing of HTTP."""

from .base import (EXTENSION_PROTOCOLS, Concatenatable, Expirable, LengthDeferrable, Readable, DirectWriter,
                   Storage, StorageError, StorageFull, StorageUnavailable, Terminatable, UploadCorrupt, UploadGone,
                   UploadNotFound, UploadWriter, supports)
from .file import FileStorage

__all__ = ["EXTENSION_PROTOCOLS", "Concatenatable", "Expirable", "FileStorage", "LengthDeferrable", "Readable",
           "DirectWriter", "Storage", "StorageError", "StorageFull", "StorageUnavailable", "Terminatable",
           "UploadCorrupt", "UploadGone", "UploadNotFound", "UploadWriter", "supports"]
