"""Requests in, responses out: the only module that joins the tus core, storage, locking and hooks.

Each verb is a short coroutine; every failure is raised (TusError, storage errors, body errors) and
turned into a response in exactly one place, `TusHandler.__call__`.
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

from .core import protocol as tus
from .core.cors import cors_headers
from .core.errors import ErrorKind, TusError
from .core.model import UploadInfo
from .core.protocol import Append, AppendPlan, Create, GetOffset, Options, Reply, RequestHead, Terminate
from .hooks import HookContext, HookEvent, HookRejected, HookRequest, Hooks, NoHooks
from .http.body import Buffer, BodyAborted, BodyError, BodyTimeout, ClientDisconnected, MalformedBody, RequestBody
from .http.messages import HttpRequest, HttpResponse
from .locking import Locker, LockTimeout
from .storage import (LengthDeferrable, Storage, StorageFull, StorageUnavailable, Terminatable, UploadCorrupt,
                      UploadNotFound, UploadWriter)

log = logging.getLogger("tusfast")

STORAGE_ERRORS: dict[type[Exception], ErrorKind] = {
    UploadNotFound: ErrorKind.NOT_FOUND,
    UploadCorrupt: ErrorKind.UPLOAD_CORRUPT,
    StorageFull: ErrorKind.STORAGE_FULL,
    StorageUnavailable: ErrorKind.STORAGE_UNAVAILABLE,
}

BODY_ERRORS: dict[type[BodyError], ErrorKind] = {
    BodyAborted: ErrorKind.INTERRUPTED,
    MalformedBody: ErrorKind.MALFORMED_BODY,
    BodyTimeout: ErrorKind.BODY_TIMEOUT,
    ClientDisconnected: ErrorKind.CLIENT_GONE,
}


def new_upload_id() -> str:
    return secrets.token_hex(16)


class TusHandler:
    def __init__(self, settings: tus.ProtocolSettings, storage: Storage, locker: Locker,
                 hooks: Hooks | None = None, cors_origins: tuple[str, ...] = ("*",),
                 new_id: Callable[[], str] = new_upload_id) -> None:
        self.settings = settings
        self._storage = storage
        self._locker = locker
        self._hooks = hooks or NoHooks()
        self._cors_origins = cors_origins
        self._new_id = new_id
        self._verbs: dict[type, Callable[..., Awaitable[Reply]]] = {
            Options: self._options, Create: self._create, GetOffset: self._get_offset,
            Append: self._append, Terminate: self._terminate,
        }

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            head = RequestHead.parse(request.method, request.target, request.headers, request.scheme,
                                     request.body_size)
            intent = tus.interpret(head, self.settings)
            reply = await self._verbs[type(intent)](intent, head, request)
        except TusError as error:
            reply = tus.error_reply(error)
        except HookRejected as rejection:
            reply = Reply(rejection.status, [*rejection.headers, ("Content-Type", "text/plain; charset=utf-8")],
                          rejection.body.encode())
        except tuple(STORAGE_ERRORS) as error:
            log.warning("%s %s: %s", request.method, request.target, error)
            reply = tus.error_reply(TusError(STORAGE_ERRORS[type(error)]))
        return self._respond(reply, request)

    def _respond(self, reply: Reply, request: HttpRequest) -> HttpResponse:
        if self._cors_origins:
            headers = dict(request.headers)     # may hold repeats; CORS only needs Origin
            reply.headers += cors_headers(headers, self._cors_origins, request.method)
        return HttpResponse(reply.status, reply.headers, reply.body)

    # ---- verbs ------------------------------------------------------------------------------

    async def _options(self, intent: Options, head: RequestHead, request: HttpRequest) -> Reply:
        return tus.options_reply(self.settings)

    async def _create(self, intent: Create, head: RequestHead, request: HttpRequest) -> Reply:
        info = UploadInfo(self._new_id(), intent.length, 0, intent.metadata, intent.metadata_header,
                          created_at=time.time())
        location = tus.upload_url(head, self.settings, info.id)
        await self._hook(HookEvent.PRE_CREATE, info, request)
        async with self._locked(info.id, request.body.abort):
            info = await self._storage.create(info)
            log.info("upload created id=%s length=%s", info.id, info.length)
            await self._hook(HookEvent.POST_CREATE, info, request)
            if head.has_body:
                plan = tus.plan_append(Append(info.id, 0, body_size=intent.body_size), info, self.settings)
                info = await self._receive(info, plan, request)
            elif info.is_complete:
                await self._finished(info, request)
        return tus.created_reply(info, location)

    async def _get_offset(self, intent: GetOffset, head: RequestHead, request: HttpRequest) -> Reply:
        async with self._locked(intent.upload_id, _ignore):
            info = await self._storage.get_info(intent.upload_id)
        return tus.head_reply(info)

    async def _append(self, intent: Append, head: RequestHead, request: HttpRequest) -> Reply:
        async with self._locked(intent.upload_id, request.body.abort):
            info = await self._storage.get_info(intent.upload_id)
            plan = tus.plan_append(intent, info, self.settings)
            if plan.new_length is not None:
                info = await self._declare_length(info, plan.new_length)
            info = await self._receive(info, plan, request)
        return tus.append_reply(info)

    async def _terminate(self, intent: Terminate, head: RequestHead, request: HttpRequest) -> Reply:
        async with self._locked(intent.upload_id, _ignore):
            info = await self._storage.get_info(intent.upload_id)
            await self._hook(HookEvent.PRE_TERMINATE, info, request)
            assert isinstance(self._storage, Terminatable)    # the route exists only if it is
            await self._storage.terminate(info)
        log.info("upload terminated id=%s", info.id)
        await self._hook(HookEvent.POST_TERMINATE, info, request)
        return tus.terminated_reply()

    # ---- shared steps -----------------------------------------------------------------------

    @asynccontextmanager
    async def _locked(self, upload_id: str, on_release_requested: Callable[[], None]) -> AsyncIterator[None]:
        try:
            lock = await self._locker.acquire(upload_id, on_release_requested)
        except LockTimeout:
            raise TusError(ErrorKind.LOCKED) from None
        try:
            yield
        finally:
            await lock.release()

    async def _declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        assert isinstance(self._storage, LengthDeferrable)    # deferring needs the extension
        return await self._storage.declare_length(info, length)

    async def _receive(self, info: UploadInfo, plan: AppendPlan, request: HttpRequest) -> UploadInfo:
        """Stream the body into storage. Whatever happens, every byte received is written and the
        offset reported reflects it; an error is raised only after that."""
        writer = await self._storage.open_writer(info)
        progress = _Progress(info.offset)
        try:
            await self._pump(writer, progress, plan, request.body)
        finally:
            info = info.with_offset(progress.offset)
            await writer.close(durable=info.is_complete)
        if info.is_complete:
            await self._finished(info, request)
        return info

    async def _pump(self, writer: UploadWriter, progress: "_Progress", plan: AppendPlan, body: RequestBody) -> None:
        end = None if plan.limit is None else progress.offset + plan.limit
        while True:
            try:
                chunks = await body.read()
            except BodyError as error:
                raise TusError(BODY_ERRORS[type(error)], headers=progress.header()) from None
            if not chunks:
                return
            size = sum(len(chunk) for chunk in chunks)
            if end is not None and progress.offset + size > end:
                await self._write(writer, progress, _truncate(chunks, end - progress.offset))
                body.abort()
                raise TusError(plan.limit_error, headers=progress.header())
            await self._write(writer, progress, chunks)

    async def _write(self, writer: UploadWriter, progress: "_Progress", chunks: list[Buffer]) -> None:
        try:
            await writer.write(progress.offset, chunks)
        except StorageFull:
            raise TusError(ErrorKind.STORAGE_FULL, headers=progress.header()) from None
        progress.offset += sum(len(chunk) for chunk in chunks)

    async def _finished(self, info: UploadInfo, request: HttpRequest) -> None:
        log.info("upload finished id=%s size=%d", info.id, info.offset)
        await self._hook(HookEvent.POST_FINISH, info, request)

    async def _hook(self, event: HookEvent, info: UploadInfo, request: HttpRequest) -> None:
        if isinstance(self._hooks, NoHooks):
            return
        hook_request = HookRequest(request.method, request.target, request.client, dict(request.headers))
        await self._hooks.dispatch(HookContext(event, info, hook_request))


class _Progress:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def header(self) -> list[tuple[str, str]]:
        return [("Upload-Offset", str(self.offset))]


def _truncate(chunks: list[Buffer], size: int) -> list[Buffer]:
    kept: list[Buffer] = []
    for chunk in chunks:
        if size <= 0:
            break
        kept.append(chunk[:size])
        size -= len(kept[-1])
    return kept


def _ignore() -> None:
    """A HEAD or DELETE holds the lock only briefly; asked to let go, it simply finishes."""
