"""Requests in, responses out: the only module that joins the tus core, storage, locking and hooks.

Each verb is a short coroutine; every failure is raised (TusError, storage errors, body errors) and
turned into a response in exactly one place, `TusHandler.__call__`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import AsyncIterator, Awaitable, Callable, Sequence, cast

from .core import protocol as tus
from .core.checksum import Checksum
from .core.cors import cors_headers
from .core.download import plan_download
from .core.errors import ErrorKind, TusError
from .core.headers import parse_checksum
from .core.model import UploadInfo
from .core.protocol import (
    Append,
    AppendPlan,
    Create,
    Download,
    GetOffset,
    Options,
    Reply,
    RequestHead,
    Terminate,
)
from .hooks import (
    HookContext,
    HookEvent,
    HookRejected,
    HookRequest,
    HookResponse,
    Hooks,
    NoHooks,
)
from .hooks.dispatcher import HookDispatcher
from .http.body import (
    BodyAborted,
    BodyError,
    BodyTimeout,
    Buffer,
    ClientDisconnected,
    MalformedBody,
    RequestBody,
)
from .http.messages import FileBody, HttpRequest, HttpResponse, StreamBody
from .locking import Lock, Locker, LockTimeout, LockUnavailable
from .http.splice import Reporting
from .nativeio import DIRECT_IO_ALIGNMENT, SpliceError
from .observability.logs import AccessLog, NullAccessLog
from .observability.metrics import NULL_METRICS, Metrics
from .observability.sentry import ErrorReporter, NullReporter, request_context
from .storage import (
    Concatenatable,
    DirectWriter,
    LengthDeferrable,
    LocalFile,
    Readable,
    Storage,
    StorageFull,
    StorageUnavailable,
    Terminatable,
    UploadCorrupt,
    UploadGone,
    UploadNotFound,
    UploadWriter,
)
from .storage.info import Fenced, OffsetConflict

log = logging.getLogger("tusfast")

# Most specific first: the first class an error is an instance of decides.
STORAGE_ERRORS: dict[type[Exception], ErrorKind] = {
    UploadGone: ErrorKind.GONE,
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


_WRITERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="tusfast-hashed-write")


def new_upload_id() -> str:
    return secrets.token_hex(16)


@dataclass
class FileReply(Reply):
    file: FileBody | StreamBody | None = None


async def _stream(storage: Readable, info: UploadInfo, start: int, end: int) -> StreamBody:
    """A download through read_range. The first chunk is read before the reply, so a store that
    fails right away still gets a proper error reply instead of a cut connection."""
    chunks = storage.read_range(info, start, end)
    first = await anext(chunks, b"") if end > start else b""
    return StreamBody(_Prefetched(first, chunks), end - start)


class _Prefetched:
    def __init__(self, first: bytes, chunks: AsyncIterator[bytes]) -> None:
        self._first = first
        self._chunks = chunks

    def __aiter__(self) -> "_Prefetched":
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        return await anext(self._chunks)

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class TusHandler:
    def __init__(self, settings: tus.ProtocolSettings, storage: Storage, locker: Locker,
                 hooks: Hooks | None = None, cors_origins: tuple[str, ...] = ("*",),
                 new_id: Callable[[], str] = new_upload_id, fsync: str = "complete",
                 progress_interval: float = 1.0, reporter: ErrorReporter | None = None,
                 metrics: Metrics = NULL_METRICS, access_log: AccessLog | None = None) -> None:
        self._access = access_log or NullAccessLog()
        self._reporter = reporter or NullReporter()
        self._metrics = metrics
        self.settings = settings
        self._progress_interval = progress_interval
        self._fsync = fsync
        self._storage = storage
        # With a separate info store (--info-store redis), writers record offsets under the lock's fence.
        self._fencing = getattr(storage, "infos", None) is not None
        self._locker = locker
        self._hooks = hooks or NoHooks()
        self._cors_origins = cors_origins
        self._new_id = new_id
        self._verbs: dict[type, Callable[..., Awaitable[Reply]]] = {
            Options: self._options, Create: self._create, GetOffset: self._get_offset,
            Append: self._append, Terminate: self._terminate, Download: self._download,
        }

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        failed_hook: str | None = None
        intent: tus.Intent | None = None
        try:
            head = RequestHead.parse(request.method, request.target, request.headers, request.scheme,
                                     request.body_size)
            intent = tus.interpret(head, self.settings)
            reply = await self._verbs[type(intent)](intent, head, request)
        except TusError as error:
            reply = tus.error_reply(error)
        except HookRejected as rejection:
            reply = _rejected(rejection)
            failed_hook = rejection.hook
        except OffsetConflict as conflict:     # a writer whose lock was taken over: its bytes do not count
            log.warning("%s %s: %s", request.method, request.target, conflict)
            offset = [] if conflict.offset is None else [("Upload-Offset", str(conflict.offset))]
            reply = tus.error_reply(TusError(ErrorKind.MISMATCHED_OFFSET, str(conflict), offset))
        except tuple(STORAGE_ERRORS) as error:
            if not isinstance(error, UploadNotFound):
                log.warning("%s %s: %s", request.method, request.target, error)
            kind = next(kind for cls, kind in STORAGE_ERRORS.items() if isinstance(error, cls))
            reply = tus.error_reply(TusError(kind))
        if reply.status >= 500 and self._reporter.enabled:
            self._report_5xx(reply, request, failed_hook)
        elapsed = time.monotonic() - started
        self._metrics.request_done(request.method, reply.status, elapsed)
        response = self._respond(reply, request)
        self._access.record(request.method, request.target, reply.status, request.body.received,
                            response.body_length, elapsed, self._upload_id_of(request.target, reply, intent),
                            request.client, request.headers)
        return response

    def _upload_id_of(self, target: str, reply: Reply, intent: tus.Intent | None) -> str:
        """The upload a request was about: from the Location of a creation, or from its URL."""
        location = next((value for name, value in reply.headers if name == "Location"), None)
        if location is not None:
            return location.rsplit("/", 1)[-1]
        known: str | None = getattr(intent, "upload_id", None)     # the URL, already resolved
        if known is not None:
            return known
        try:
            return tus.resolve_target(target.split("?", 1)[0], self.settings)[1]
        except TusError:
            return ""

    def _report_5xx(self, reply: Reply, request: HttpRequest, hook: str | None) -> None:
        message = reply.body.decode("utf-8", "replace").strip()[:200] if reply.body else "server error"
        context = request_context(request, self.settings.base_path, status=reply.status, hook=hook)
        self._reporter.capture_5xx(reply.status, message, context)

    def _respond(self, reply: Reply, request: HttpRequest) -> HttpResponse:
        if self._cors_origins:
            headers = dict(request.headers)     # may hold repeats; CORS only needs Origin
            reply.headers += cors_headers(headers, self._cors_origins, request.method)
        file = reply.file if isinstance(reply, FileReply) else None
        return HttpResponse(reply.status, reply.headers, reply.body, file)

    # ---- verbs ------------------------------------------------------------------------------

    async def _options(self, intent: Options, head: RequestHead, request: HttpRequest) -> Reply:
        return tus.options_reply(self.settings)

    async def _create(self, intent: Create, head: RequestHead, request: HttpRequest) -> Reply:
        if intent.partials:
            return await self._create_final(intent, head, request)
        now = time.time()
        info = UploadInfo(self._new_id(), intent.length, 0, intent.metadata, intent.metadata_header,
                          created_at=now, updated_at=now, concat=intent.concat)
        info = await self._pre_create(info, request)
        location = tus.upload_url(head, self.settings, info.id)
        async with self._locked(info.id, request.body.abort) as lock:
            info = await self._store_new(info)
            log.info("upload created id=%s length=%s", info.id, info.length)
            await self._hook(HookEvent.POST_CREATE, info, request)
            if head.has_body:
                append = Append(info.id, 0, None, intent.body_size, intent.checksum, intent.trailer_checksum)
                info = await self._receive_new(info, append, request, location, lock)
            elif info.is_complete:
                await self._finished(info, request)
        return tus.created_reply(info, location, self.settings)

    async def _receive_new(self, info: UploadInfo, append: Append, request: HttpRequest, location: str,
                           lock: Lock) -> UploadInfo:
        """creation-with-upload: a body that fails its checksum leaves no orphan upload behind; after
        any other failure (disk full, body cut short) the upload stays, and the error reply says
        where it is, so the client can resume from the Upload-Offset it also carries."""
        try:
            return await self._receive(info, tus.plan_append(append, info, self.settings), append, request, lock)
        except TusError as error:
            if error.kind is not ErrorKind.CHECKSUM_MISMATCH:
                error.headers.append(("Location", location))
            elif isinstance(self._storage, Terminatable):
                await self._storage.terminate(info)
                await self._locker.forget(info.id)
                self._metrics.upload_terminated(was_complete=False)
            raise

    async def _create_final(self, intent: Create, head: RequestHead, request: HttpRequest) -> Reply:
        partials = await self._partials(intent.partials)
        now = time.time()
        info = UploadInfo(self._new_id(), tus.plan_final(partials, self.settings), 0, intent.metadata,
                          intent.metadata_header, created_at=now, updated_at=now, concat=intent.concat,
                          partials=intent.partials)
        info = await self._pre_create(info, request)
        location = tus.upload_url(head, self.settings, info.id)
        async with self._locked(info.id, _ignore):
            info = await self._store_new(info)
            log.info("final upload created id=%s from %d partials", info.id, len(partials))
            await self._hook(HookEvent.POST_CREATE, info, request)
            if not all(partial.is_complete for partial in partials):
                await self._concatenator().register_final(info)     # first register, then re-check:
            info = await self._join_if_ready(info, request)          # no partial can slip between
        return tus.created_reply(info, location, self.settings)

    async def _pre_create(self, info: UploadInfo, request: HttpRequest) -> UploadInfo:
        """pre-create may reject (HookRejected), or choose the id, metadata and storage path."""
        response = await self._hook(HookEvent.PRE_CREATE, info, request)
        changes = response.changes if response is not None else None
        if changes is None:
            return info
        if changes.id is not None and changes.id != info.id:
            await self._check_id_free(changes.id)
            info = replace(info, id=changes.id)
        if changes.metadata is not None:
            metadata = {key: value.encode() for key, value in changes.metadata.items()}
            info = replace(info, metadata=metadata, metadata_header=None)
        if changes.storage_path is not None:
            info = replace(info, storage={"Path": changes.storage_path})
        return info

    async def _check_id_free(self, upload_id: str) -> None:
        try:
            await self._storage.get_info(upload_id)
        except UploadNotFound:
            return
        except (UploadGone, UploadCorrupt):
            pass
        raise HookRejected(409, "an upload with the id chosen by the pre-create hook exists")

    async def _store_new(self, info: UploadInfo) -> UploadInfo:
        try:
            info = await self._storage.create(info)
        except FileExistsError:     # only a hook's choice of id or path can collide
            raise HookRejected(409, "an upload with the id or storage path chosen by the pre-create hook exists") from None
        self._metrics.upload_created()
        return info

    async def _partials(self, partial_ids: Sequence[str]) -> list[UploadInfo]:
        try:
            return [await self._storage.get_info(partial_id) for partial_id in partial_ids]
        except UploadNotFound as missing:
            raise TusError(ErrorKind.INVALID_PARTIAL, f"partial upload {missing} does not exist") from None

    async def _join_if_ready(self, final: UploadInfo, request: HttpRequest) -> UploadInfo:
        """Join a final upload once every partial is finished (call with the final's lock held)."""
        if final.is_complete:
            return final
        try:
            partials = await self._partials(final.partials)
        except TusError:
            return final        # a partial was deleted: the final can never complete
        if not all(partial.is_complete and partial.is_partial for partial in partials):
            return final
        final = await self._concatenator().concatenate(final, partials)
        await self._finished(final, request)
        return final

    def _concatenator(self) -> Concatenatable:
        assert isinstance(self._storage, Concatenatable)     # the extension is on only if it is
        return self._storage

    async def _get_offset(self, intent: GetOffset, head: RequestHead, request: HttpRequest) -> Reply:
        async with self._locked(intent.upload_id, _ignore):
            info = await self._live_info(intent.upload_id)
            await self._hook(HookEvent.PRE_ACCESS, info, request)
            if info.is_final:   # also finishes a join that a crash interrupted
                info = await self._join_if_ready(info, request)
        return tus.head_reply(info, self.settings)

    async def _live_info(self, upload_id: str) -> UploadInfo:
        info = await self._storage.get_info(upload_id)
        tus.check_not_expired(info, self.settings, time.time())
        return info

    async def _append(self, intent: Append, head: RequestHead, request: HttpRequest) -> Reply:
        async with self._locked(intent.upload_id, request.body.abort) as lock:
            info = await self._live_info(intent.upload_id)
            await self._hook(HookEvent.PRE_ACCESS, info, request)
            plan = tus.plan_append(intent, info, self.settings)
            if plan.new_length is not None:
                info = await self._declare_length(info, plan.new_length)
            info = await self._receive(info, plan, intent, request, lock)
        return tus.append_reply(info, self.settings)

    async def _download(self, intent: Download, head: RequestHead, request: HttpRequest) -> Reply:
        # No lock: a finished upload never changes, and a download must not interrupt an upload.
        info = await self._storage.get_info(intent.upload_id)
        await self._hook(HookEvent.PRE_ACCESS, info, request)
        plan = plan_download(intent, info)
        if plan.status == 304:
            return Reply(304, plan.headers)
        if isinstance(self._storage, LocalFile):
            fd = await self._storage.open_file(info)
            return FileReply(plan.status, plan.headers, file=FileBody(fd, plan.start, plan.count))
        assert isinstance(self._storage, Readable)        # downloads are on only if it is
        return FileReply(plan.status, plan.headers, file=await _stream(self._storage, info, plan.start, plan.end))

    async def _terminate(self, intent: Terminate, head: RequestHead, request: HttpRequest) -> Reply:
        async with self._locked(intent.upload_id, _ignore):
            info = await self._storage.get_info(intent.upload_id)
            await self._hook(HookEvent.PRE_ACCESS, info, request)
            await self._hook(HookEvent.PRE_TERMINATE, info, request)
            assert isinstance(self._storage, Terminatable)    # the route exists only if it is
            await self._storage.terminate(info)
            await self._locker.forget(info.id)
        self._metrics.upload_terminated(was_complete=info.is_complete)
        log.info("upload terminated id=%s", info.id)
        await self._hook(HookEvent.POST_TERMINATE, info, request)
        return tus.terminated_reply()

    # ---- shared steps -----------------------------------------------------------------------

    @asynccontextmanager
    async def _locked(self, upload_id: str, on_release_requested: Callable[[], None]) -> AsyncIterator[Lock]:
        try:
            lock = await self._locker.acquire(upload_id, on_release_requested)
        except LockTimeout:
            raise TusError(ErrorKind.LOCKED) from None
        except LockUnavailable as error:
            log.warning("cannot lock upload %s: %s", upload_id, error)
            raise TusError(ErrorKind.LOCK_UNAVAILABLE) from None
        try:
            yield lock
        finally:
            await lock.release()

    async def _declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        assert isinstance(self._storage, LengthDeferrable)    # deferring needs the extension
        return await self._storage.declare_length(info, length)

    async def _receive(self, info: UploadInfo, plan: AppendPlan, intent: Append, request: HttpRequest,
                       lock: Lock) -> UploadInfo:
        """Stream the body into storage. Without a checksum, every byte received is kept and the
        offset reported reflects it, whatever happens. With one, the bytes count only once the
        digest matched; otherwise the upload stays exactly as it was (checklist item 65)."""
        checksum = tus.new_checksum(intent.checksum)
        staged = checksum is not None or intent.trailer_checksum
        writer = await self._storage.open_writer(info, staged=staged)
        if self._fencing and isinstance(writer, Fenced):    # the storage never sees the locker
            writer.fence(getattr(lock, "fence", None), getattr(lock, "expired", _never))
        progress = _Progress(info.offset, staged)
        if self._wants(HookEvent.POST_RECEIVE):
            progress.report = lambda offset: self._hook(HookEvent.POST_RECEIVE, replace(info, offset=offset), request)
            progress.interval = self._progress_interval
        cut_short = False
        try:
            await self._pump(writer, progress, plan, request.body, checksum)
            try:
                await self._verify(info, progress, request, checksum)
            except TusError:
                if not staged:      # an undeclared trailer failed: cut the chunk off again
                    await writer.truncate(info.offset)
                    progress.kept = info.offset
                raise
            await writer.commit()
            progress.kept = progress.offset
        except TusError:
            cut_short = True
            raise
        finally:
            info = replace(info, offset=progress.kept, updated_at=time.time())
            await writer.close(durable=self._fsync == "every-patch" or
                               (self._fsync == "complete" and info.is_complete))
            if cut_short and info.is_complete and progress.kept > progress.start:
                # The bytes kept from a body that went past the length (or broke off after its
                # last byte) completed the upload: it is finished all the same (hooks, joins).
                await self._finished(info, request)
        await progress.final_report()
        if info.is_complete:
            await self._finished(info, request, newly=progress.kept > progress.start or
                                 plan.new_length is not None or info.offset == 0)
        return info

    async def _pump(self, writer: UploadWriter, progress: "_Progress", plan: AppendPlan, body: RequestBody,
                    checksum: Checksum | None) -> None:
        end = None if plan.limit is None else progress.offset + plan.limit
        # A known body size was checked against the limit up front, so taking it all is safe.
        direct = _as_direct_writer(writer) if body.size is not None and body.can_splice() else None
        if direct is not None:
            if checksum is None and not direct.direct_io:
                await self._splice(writer, direct, progress, body)
            else:
                await self._read_through(writer, direct, progress, body, checksum)
        while True:
            try:
                chunks = await body.read()
            except BodyError as error:
                raise TusError(BODY_ERRORS[type(error)], headers=progress.header()) from None
            if not chunks:
                return
            size = sum(len(chunk) for chunk in chunks)
            if end is not None and progress.offset + size > end:
                await self._write(writer, progress, _truncate(chunks, end - progress.offset), checksum)
                body.abort()
                raise TusError(plan.limit_error, headers=progress.header())
            await self._write(writer, progress, chunks, checksum)

    async def _splice(self, writer: UploadWriter, target: DirectWriter, progress: "_Progress",
                      body: RequestBody) -> None:
        """The rest of the body goes from the socket to the file inside the kernel (page cache)."""
        await self._write(writer, progress, body.begin_splice(), None)
        fd, stored = target.splice_target()
        start = progress.offset
        try:
            progress.offset = start + await body.splice_into(fd, start, stored, progress.reporting(start))
        except BodyError as error:
            progress.offset = progress.start + body.received
            raise TusError(BODY_ERRORS[type(error)], headers=progress.header(progress.offset)) from None
        except SpliceError as error:
            # `stored` counts from `start`, the steps that went well included (reporting already
            # moved progress.offset past those: adding would count them twice).
            progress.offset = start + error.stored
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            kind = ErrorKind.STORAGE_FULL if full else ErrorKind.STORAGE_UNAVAILABLE
            raise TusError(kind, headers=progress.header(progress.offset)) from None
        finally:
            progress.kept = progress.offset

    async def _read_through(self, writer: UploadWriter, direct: DirectWriter, progress: "_Progress",
                            body: RequestBody, checksum: Checksum | None) -> None:
        """A worker thread reads the rest of the body into a reused aligned buffer, hashes it if
        asked, and writes it (with O_DIRECT where the writer can). What the transport already
        read goes first, through the same buffers."""
        prefix = body.begin_splice()
        start = progress.offset
        end = start + sum(len(part) for part in prefix) + body.unread
        written = 0

        def settle(finish: Callable[[], None], position: int, length: int) -> None:
            nonlocal written
            try:
                finish()
            except StorageFull as full:
                written = position + full.stored
                raise
            written = position + length

        def consume(part: memoryview, position: int) -> Callable[[], None] | None:
            nonlocal written
            last = start + position + len(part) == end
            try:
                if checksum is None:
                    # Behind: the reader fills the next buffer while the disk takes this one.
                    finish = direct.write_aligned(start + position, part, last, behind=not last)
                    if finish is not None:
                        return partial(settle, finish, position, len(part))
                else:
                    # Write in a second thread while this one hashes: both release the GIL, so a
                    # buffer costs max(hash, write) instead of their sum.
                    writing = _WRITERS.submit(direct.write_aligned, start + position, part, last)
                    checksum.update([part])
                    writing.result()
            except StorageFull as full:
                written = position + full.stored
                raise
            written = position + len(part)
            return None

        reporting = progress.reporting(start)      # the reader reports what it consumed, prefix included
        failed: ErrorKind | None = None
        try:
            await body.read_into(consume, reporting, start % DIRECT_IO_ALIGNMENT, prefix,
                                 overlap=checksum is not None)     # hash one buffer while the next fills
        except BodyError as error:
            failed = BODY_ERRORS[type(error)]
        except StorageFull:
            failed = ErrorKind.STORAGE_FULL
        finally:
            progress.offset = start + written
            if not progress.staged:     # staged bytes count only once the checksum matched
                progress.kept = progress.offset
        if failed is not None:
            raise TusError(failed, headers=progress.header())

    async def _write(self, writer: UploadWriter, progress: "_Progress", chunks: list[Buffer],
                     checksum: Checksum | None) -> None:
        try:
            if checksum is None:
                await writer.write(progress.offset, chunks)
            else:   # hash in a second thread while the first writes (hashlib drops the GIL)
                await asyncio.gather(writer.write(progress.offset, chunks), asyncio.to_thread(checksum.update, chunks))
        except StorageFull as full:
            progress.offset += full.stored
            if not progress.staged:     # the part that fitted is kept, as after any interruption
                progress.kept = progress.offset
            raise TusError(ErrorKind.STORAGE_FULL, headers=progress.header()) from None
        progress.offset += sum(len(chunk) for chunk in chunks)
        # Staged bytes (a checksum in the header or a declared trailer) count only once verified.
        if not progress.staged:
            progress.kept = progress.offset
            await progress.tick()

    async def _verify(self, info: UploadInfo, progress: "_Progress", request: HttpRequest,
                      checksum: Checksum | None) -> None:
        """Check the digest from the header, or from a trailer (then read back what was staged)."""
        unchanged = [("Upload-Offset", str(info.offset))]
        if checksum is None:
            trailer = dict(request.body.trailers).get("upload-checksum")
            if trailer is None or not self.settings.enabled("checksum-trailer"):
                return
            try:
                checksum = Checksum(*parse_checksum(trailer))
            except TusError as error:
                raise TusError(error.kind, error.message, [*error.headers, *unchanged]) from None
            assert isinstance(self._storage, Readable)      # checksum-trailer is on only if it is
            async for chunk in self._storage.read_range(info, info.offset, progress.offset):
                await asyncio.to_thread(checksum.update, [chunk])
        if not checksum.matches():
            raise TusError(ErrorKind.CHECKSUM_MISMATCH, headers=unchanged)

    async def _finished(self, info: UploadInfo, request: HttpRequest, newly: bool = True) -> None:
        """pre-finish may still reject (the data stays stored); then post-finish is queued."""
        log.info("upload finished id=%s size=%d", info.id, info.offset)
        if newly:       # not an empty PATCH on an upload that was already complete
            self._metrics.upload_finished()
        if not info.is_partial:
            await self._hook(HookEvent.PRE_FINISH, info, request)
        if info.is_partial:     # partials are not processed on their own (checklist item 76)
            await self._join_waiting_finals(info.id, request)
        else:
            await self._hook(HookEvent.POST_FINISH, info, request)

    async def _join_waiting_finals(self, partial_id: str, request: HttpRequest) -> None:
        if not isinstance(self._storage, Concatenatable):
            return
        for final_id in await self._storage.finals_waiting_for(partial_id):
            try:
                async with self._locked(final_id, _ignore):
                    await self._join_if_ready(await self._storage.get_info(final_id), request)
            except (UploadNotFound, TusError, HookRejected) as error:
                log.warning("could not join final upload %s: %s", final_id, error)

    def _wants(self, event: HookEvent) -> bool:
        if isinstance(self._hooks, HookDispatcher):
            return self._hooks.wants(event)
        return not isinstance(self._hooks, NoHooks)

    async def _hook(self, event: HookEvent, info: UploadInfo, request: HttpRequest) -> HookResponse | None:
        if not self._wants(event):
            return None
        hook_request = HookRequest(request.method, request.target, request.client, dict(request.headers))
        try:
            return await self._hooks.dispatch(HookContext(event, info, hook_request))
        except HookRejected as rejection:
            rejection.hook = rejection.hook or event.value
            raise


def _rejected(rejection: HookRejected) -> Reply:
    headers = list(rejection.headers)
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    return Reply(rejection.status, headers, rejection.body.encode())


class _Progress:
    def __init__(self, offset: int, staged: bool = False) -> None:
        self.start = offset
        self.staged = staged    # written bytes are provisional until the checksum matched
        self.offset = offset    # written
        self.kept = offset      # written and final: what the upload's offset becomes
        self.report: Callable[[int], Awaitable[object]] | None = None     # post-receive
        self.interval = 1.0
        self._reported = offset
        self._last = time.monotonic()

    async def tick(self) -> None:
        """post-receive, at most once per interval while the body streams in."""
        if self.report is not None and time.monotonic() - self._last >= self.interval:
            await self._report()

    async def final_report(self) -> None:
        if self.report is not None and self.kept != self._reported:
            await self._report()

    async def _report(self) -> None:
        assert self.report is not None
        self._last = time.monotonic()
        self._reported = self.kept
        await self.report(self.kept)

    def header(self, offset: int | None = None) -> list[tuple[str, str]]:
        return [("Upload-Offset", str(self.kept if offset is None else offset))]

    def reporting(self, start: int) -> Reporting | None:
        """For bodies read in worker threads: post-receive while they stream in, if asked for."""
        if self.report is None or self.staged:
            return None

        async def advanced(moved: int) -> None:
            self.offset = self.kept = start + moved
            await self.tick()
        return Reporting(advanced, self.interval)


def _truncate(chunks: list[Buffer], size: int) -> list[Buffer]:
    kept: list[Buffer] = []
    for chunk in chunks:
        if size <= 0:
            break
        kept.append(chunk[:size])
        size -= len(kept[-1])
    return kept


_DIRECT_WRITER_TYPES: dict[type, bool] = {}


def _as_direct_writer(writer: UploadWriter) -> DirectWriter | None:
    """isinstance() against a runtime-checkable protocol costs microseconds per PATCH; the answer
    depends on the writer's type only."""
    known = _DIRECT_WRITER_TYPES.get(type(writer))
    if known is None:
        known = _DIRECT_WRITER_TYPES[type(writer)] = isinstance(writer, DirectWriter)
    return cast(DirectWriter, writer) if known else None


def _never() -> bool:
    return False


def _ignore() -> None:
    """A HEAD or DELETE holds the lock only briefly; asked to let go, it simply finishes."""
