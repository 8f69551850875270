"""The one seam where the outside world hears about (and, for pre-* events, may veto) uploads.

The request handler calls `Hooks.dispatch` at each lifecycle point. A pre-* hook vetoes by raising
HookRejected, and pre-create may return a HookResponse whose `changes` set the upload's id, metadata
or storage path; post-* hooks must not slow or fail the request. Transports (HTTP, executables in a
directory, Python callables) plug in behind `dispatcher.HookDispatcher`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Awaitable, Callable, Protocol

from ..core.model import UploadInfo


class HookEvent(Enum):
    PRE_CREATE = "pre-create"
    POST_CREATE = "post-create"
    POST_RECEIVE = "post-receive"
    PRE_FINISH = "pre-finish"
    POST_FINISH = "post-finish"
    PRE_TERMINATE = "pre-terminate"
    POST_TERMINATE = "post-terminate"
    PRE_ACCESS = "pre-access"

    @property
    def blocking(self) -> bool:
        return self.value.startswith("pre-")


# tusd's default set (-hooks-enabled-events).
DEFAULT_EVENTS = (HookEvent.PRE_CREATE, HookEvent.POST_CREATE, HookEvent.POST_RECEIVE,
                  HookEvent.POST_TERMINATE, HookEvent.POST_FINISH)


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


@dataclass(frozen=True)
class FileInfoChanges:
    """What a pre-create hook may change (tusd's ChangeFileInfo), already validated."""
    id: str | None = None
    metadata: dict[str, str] | None = None
    storage_path: str | None = None     # relative to the upload directory


@dataclass(frozen=True)
class HookResponse:
    """A hook's answer (tusd's HookResponse). `status` None: the hook set no HTTP response."""
    status: int | None = None
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    reject_upload: bool = False
    reject_termination: bool = False
    reject_access: bool = False
    stop_upload: bool = False
    changes: FileInfoChanges | None = None


class HookRejected(Exception):
    """Raised by a blocking hook: the request is answered with this status, body and headers."""

    hook: str | None = None     # the event whose hook raised it (set by the handler, for error reports)

    def __init__(self, status: int = 400, body: str = "rejected by hook",
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = headers or []


class HookFailure(Exception):
    """A hook could not be asked or gave an unusable answer (502); HookTimeout: it took too long (504)."""
    status = 502


class HookTimeout(HookFailure):
    status = 504


class Hooks(Protocol):
    async def dispatch(self, context: HookContext) -> HookResponse | None: ...


HookCallable = Callable[[HookContext], "HookResponse | None | Awaitable[HookResponse | None]"]


class NoHooks:
    async def dispatch(self, context: HookContext) -> HookResponse | None:
        return None


__all__ = ["DEFAULT_EVENTS", "FileInfoChanges", "HookCallable", "HookContext", "HookEvent", "HookFailure", "HookRejected",
           "HookRequest", "HookResponse", "HookTimeout", "Hooks", "NoHooks"]
