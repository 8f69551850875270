"""Where upload bytes and info live. Knows nothing of HTTP."""

from .base import (EXTENSION_PROTOCOLS, LengthDeferrable, Storage, StorageError, StorageFull,
                   StorageUnavailable, Terminatable, UploadCorrupt, UploadNotFound, UploadWriter, supports)
from .file import FileStorage

__all__ = ["EXTENSION_PROTOCOLS", "FileStorage", "LengthDeferrable", "Storage", "StorageError", "StorageFull",
           "StorageUnavailable", "Terminatable", "UploadCorrupt", "UploadNotFound", "UploadWriter", "supports"]
