"""What the server layer hands to an application and takes back: a tiny, typed ASGI-like contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable

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
class HttpResponse:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""


App = Callable[[HttpRequest], Awaitable[HttpResponse]]
