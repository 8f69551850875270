"""The storage contract: a small core every backend implements, plus one optional protocol per tus
extension. The server advertises an extension only when its backend implements the protocol."""

from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

from ..core.model import UploadInfo

Buffer = Union[bytes, bytearray, memoryview]


class StorageError(Exception):
    """Base of what storage may raise besides programming errors."""


class UploadNotFound(StorageError):
    pass


class UploadCorrupt(StorageError):
    """The upload exists but its stored state cannot be read; only this upload is affected."""


class StorageFull(StorageError):
    pass


class StorageUnavailable(StorageError):
    """The backend as a whole cannot serve (directory gone, read-only, unreachable)."""


class UploadWriter(Protocol):
    async def write(self, offset: int, chunks: Sequence[Buffer]) -> None:
        """Store chunks back to back from offset. On error, bytes already written stay written."""

    async def close(self, *, durable: bool) -> None:
        """Release resources; with durable=True, return only once the data survives power loss."""


class Storage(Protocol):
    async def create(self, info: UploadInfo) -> UploadInfo:
        """Persist a new upload; returns the info with backend locations filled in."""

    async def get_info(self, upload_id: str) -> UploadInfo:
        """The stored info with `offset` = bytes durably written so far. Raises UploadNotFound."""

    async def open_writer(self, info: UploadInfo) -> UploadWriter: ...


@runtime_checkable
class LengthDeferrable(Protocol):
    async def declare_length(self, info: UploadInfo, length: int) -> UploadInfo: ...


@runtime_checkable
class Terminatable(Protocol):
    async def terminate(self, info: UploadInfo) -> None: ...


# The tus extensions that depend on the backend, and the protocol that provides each.
EXTENSION_PROTOCOLS: dict[str, type] = {
    "creation-defer-length": LengthDeferrable,
    "termination": Terminatable,
}


def supports(storage: object, extension: str) -> bool:
    protocol = EXTENSION_PROTOCOLS.get(extension)
    return protocol is None or isinstance(storage, protocol)
