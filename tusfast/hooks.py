"""The one seam where the outside world hears about (and, for pre-* events, may veto) uploads.

The request handler calls `Hooks.dispatch` at each lifecycle point. A pre-* hook vetoes by raising
HookRejected; post-* hooks must not slow or fail the request. Transports (HTTP, files, gRPC)
plug in behind this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from .core.model import UploadInfo


class HookEvent(Enum):
    PRE_CREATE = "pre-create"
    POST_CREATE = "post-create"
    POST_RECEIVE = "post-receive"
    PRE_FINISH = "pre-finish"
    POST_FINISH = "post-finish"
    PRE_TERMINATE = "pre-terminate"
    POST_TERMINATE = "post-terminate"

    @property
    def blocking(self) -> bool:
        return self.value.startswith("pre-")


@dataclass(frozen=True)
class HookRequest:
    method: str
    uri: str
    remote_addr: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HookContext:
    event: HookEvent
    upload: UploadInfo
    request: HookRequest


class HookRejected(Exception):
    """Raised by a blocking hook: the request is answered with this status, body and headers."""

    def __init__(self, status: int = 400, body: str = "rejected by hook",
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = headers or []


class Hooks(Protocol):
    async def dispatch(self, context: HookContext) -> None: ...


class NoHooks:
    async def dispatch(self, context: HookContext) -> None:
        return None
