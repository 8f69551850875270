"""What the server layer hands to an application and takes back: a tiny, typed ASGI-like contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

if TYPE_CHECKING:
    from .body import RequestBody

Headers = list[tuple[str, str]]


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: Headers            # names lower-cased, values decoded as latin-1
    body: "RequestBody"
    scheme: str = "http"
    client: str = ""
    http_version: str = "1.1"

    @property
    def body_size(self) -> int | None:
        return self.body.size


@dataclass
class FileBody:
    """A response body sent from a file by sendfile(2). The server closes `fd` when done."""
    fd: int
    offset: int
    count: int

    def __len__(self) -> int:      # h11's data passthrough frames the body by its length
        return self.count


@dataclass
class StreamBody:
    """A response body of `count` bytes produced by an async iterator (storage without local files).
    The server closes `chunks` when done, also when it never sent them (HEAD, a dropped client)."""
    chunks: AsyncIterator[bytes]
    count: int

    def __len__(self) -> int:      # framed by its length, like FileBody
        return self.count

    async def close(self) -> None:
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class HttpResponse:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    file: FileBody | StreamBody | None = None

    @property
    def body_length(self) -> int:
        return self.file.count if self.file is not None else len(self.body)


App = Callable[[HttpRequest], Awaitable[HttpResponse]]
