"""The storage contract: a small core every backend implements, plus one optional protocol per tus
extension. The server advertises an extension only when its backend implements the protocol."""

from __future__ import annotations

from typing import AsyncIterator, Callable, Protocol, Sequence, Union, runtime_checkable

from ..core.model import UploadInfo

Buffer = Union[bytes, bytearray, memoryview]


class StorageError(Exception):
    """Base of what storage may raise besides programming errors."""


class UploadNotFound(StorageError):
    pass


class UploadGone(UploadNotFound):
    """The upload existed and was removed on expiry."""


class UploadCorrupt(StorageError):
    """The upload exists but its stored state cannot be read; only this upload is affected."""


class StorageFull(StorageError):
    """`stored`: bytes of the failed write that did land before space ran out (they stay stored)."""

    def __init__(self, message: str = "", stored: int = 0) -> None:
        super().__init__(message)
        self.stored = stored


class StorageUnavailable(StorageError):
    """The backend as a whole cannot serve (directory gone, read-only, unreachable)."""


class UploadWriter(Protocol):
    async def write(self, offset: int, chunks: Sequence[Buffer]) -> None:
        """Store chunks back to back from offset. On error, bytes already written stay written."""

    async def commit(self) -> None:
        """For a staged writer: the bytes written count from now on (also after a crash)."""

    async def truncate(self, offset: int) -> None:
        """Drop every byte from offset on (a chunk that failed a check it did not announce)."""

    async def close(self, *, durable: bool) -> None:
        """Release resources; with durable=True, return only once the data survives power loss.
        A staged writer closed without commit() leaves the upload as it was before it opened."""


@runtime_checkable
class DirectWriter(Protocol):
    """A writer that worker threads may feed directly: splice into its file descriptor, or write
    a buffer synchronously (with O_DIRECT where it can). The body never comes back to the event loop."""

    def splice_target(self) -> tuple[int, Callable[[int, int], None]]:
        """(fd, stored): `stored(offset, count)` is called after bytes land in fd by other means."""

    @property
    def direct_io(self) -> bool:
        """True when write_aligned bypasses the page cache (O_DIRECT): then reading a body into
        aligned buffers costs less than splicing it."""

    def write_aligned(self, offset: int, data: memoryview, last: bool = False,
                      behind: bool = False) -> Callable[[], None] | None:
        """Blocking write, from a worker thread, of a buffer whose address is congruent to offset
        modulo nativeio.DIRECT_IO_ALIGNMENT, as the body reader's buffers are. `last`: the body
        ends with it, and the reply waits for it. Raises StorageError subclasses or OSError.
        `behind`: the writer may return before the bytes are written, with a function that
        finishes the write (and raises what this would have); data must not change until then."""


class Storage(Protocol):
    async def create(self, info: UploadInfo) -> UploadInfo:
        """Persist a new upload; returns the info with backend locations filled in."""

    async def get_info(self, upload_id: str) -> UploadInfo:
        """The stored info with `offset` = bytes durably written so far. Raises UploadNotFound."""

    async def open_writer(self, info: UploadInfo, staged: bool = False) -> UploadWriter:
        """staged=True: writes stay provisional until commit() (a checksum must match first);
        a crash before commit() rolls them back."""


@runtime_checkable
class LengthDeferrable(Protocol):
    async def declare_length(self, info: UploadInfo, length: int) -> UploadInfo: ...


@runtime_checkable
class Terminatable(Protocol):
    async def terminate(self, info: UploadInfo) -> None: ...


@runtime_checkable
class Concatenatable(Protocol):
    async def concatenate(self, final: UploadInfo, partials: Sequence[UploadInfo]) -> UploadInfo:
        """Join the finished partials, in order, into the final upload's data; returns it complete."""

    async def register_final(self, final: UploadInfo) -> None:
        """Remember that `final` waits for its partials (concatenation-unfinished)."""

    async def finals_waiting_for(self, partial_id: str) -> list[str]: ...


@runtime_checkable
class Expirable(Protocol):
    async def list_upload_ids(self) -> list[str]:
        """Every upload id in the store (for the expiry sweeper)."""

    async def expire(self, info: UploadInfo) -> None:
        """Remove an expired upload, leaving a tombstone: get_info raises UploadGone from then on."""

    async def prune_tombstones(self, older_than: float) -> int:
        """Forget expired uploads removed before `older_than` (Unix time); they become plain 404s."""


@runtime_checkable
class Readable(Protocol):
    def read_range(self, info: UploadInfo, start: int, end: int) -> AsyncIterator[bytes]:
        """The upload's bytes [start, end) in chunks (downloads, and a trailer checksum read back)."""


@runtime_checkable
class LocalFile(Protocol):
    """Data in a local file: downloads go out by sendfile instead of through read_range."""

    async def open_file(self, info: UploadInfo) -> int:
        """A read-only file descriptor of the upload's data, for sendfile; the caller closes it."""


@runtime_checkable
class Lifecycle(Protocol):
    """A backend with connections: opened in the server's running loop at start, closed at stop."""

    async def open(self) -> None:
        """Connect and check the store is usable; raises StorageUnavailable with a reason."""

    async def close(self) -> None: ...


# The tus extensions (and downloads) that depend on the backend, and the protocol providing each.
EXTENSION_PROTOCOLS: dict[str, type] = {
    "creation-defer-length": LengthDeferrable,
    "termination": Terminatable,
    "concatenation": Concatenatable,
    "expiration": Expirable,
    "checksum-trailer": Readable,
    "download": Readable,
}


def supports(storage: object, extension: str) -> bool:
    protocol = EXTENSION_PROTOCOLS.get(extension)
    return protocol is None or isinstance(storage, protocol)
