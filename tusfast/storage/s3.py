"""Uploads in an S3 bucket, in tusd's s3store layout (`pip install tusfast[s3]`; aiobotocore).

Objects per upload, under an optional key prefix:
- `<id>.info`: tusd's FileInfo JSON (the file backend's encoder), Storage = {"Type": "s3store",
  "Bucket", "Key", "MultipartUpload"}. Rewritten only whole (a PUT replaces an object atomically).
- `<id>` (or the key a pre-create hook chose): the data, built by ONE multipart upload per tus upload.
- `<id>.part`: the tail that is still smaller than a part, picked up by the next PATCH.

The offset is what S3 holds: the multipart upload's parts plus the `.part` object; bytes that are
only buffered here never count. A PATCH flushes its buffered tail to `.part` before it replies (also
when its body was interrupted). The `.part` object carries the number of the part it will start
(metadata `tusfast-next-part`): if it is no longer the next one, the part holding its bytes was
uploaded and only the deletion of `.part` was lost (a crash), so it is stale and ignored. That way no
byte is ever counted twice or lost between "part uploaded" and ".part deleted".

Parts are at least 5 MiB (S3's minimum for all but the last), grown per upload so that the whole
upload fits into 10,000 parts (with a deferred length: S3's largest object, as tusd does). A part is
buffered in memory up to the configured part size and in a temp file beyond that; one part uploads
while the next one fills. Checksummed (staged) bodies go to a temp file first and reach S3 only on
commit(), so a mismatch or a crash before that leaves the upload as it was.

Finished uploads have `Offset == Size` in their info; a crash between CompleteMultipartUpload and
that rewrite is recovered from the data object. Final uploads of concatenations are joined with
UploadPartCopy inside S3 when every partial but the last is large enough to be a part, otherwise by
streaming the partials through this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import IO, Any, AsyncIterator, Sequence

from ..core.download import content_headers
from ..core.model import SERVER_UPLOAD_ID, UploadInfo, is_valid_upload_id
from .base import Buffer, StorageUnavailable, UploadCorrupt, UploadGone, UploadNotFound
from .info_json import decode_info, encode_info, safe_relative_path
from .info import FencedWriter, InfoStore, OffsetConflict

log = logging.getLogger("tusfast.s3")

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB             # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 8 * MiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024**4       # S3's largest object: the part size of uploads with deferred length
MAX_COPY_PART = 5 * 1024**3         # UploadPartCopy copies at most 5 GiB per part
READ_CHUNK = 1024 * 1024
NEXT_PART_META = "tusfast-next-part"
FINALS_PREFIX = ".finals/"
RECALL_SECONDS = 2.0                # how long a looked-up state may stand in for a second look-up
EXPIRED_PREFIX = ".expired/"

_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


class _Missing(StorageUnavailable):
    """An object or multipart upload that does not exist. Handled where it is expected; anywhere
    else it means the store changed under us, which the client may retry (503)."""


def _translate(operation: str, exc: Exception) -> StorageUnavailable:
    """S3 failures as storage errors: whatever S3 says, the client gets a 503 with a reason."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING_CODES:
            return _Missing(f"S3 {operation}: {code}")
        return StorageUnavailable(f"S3 {operation} failed: {code or status} {response.get('Error', {}).get('Message', '')}".strip())
    return StorageUnavailable(f"S3 {operation} failed: {type(exc).__name__}: {exc}")


def part_size_for(length: int | None, configured: int) -> int:
    """Parts of at least `configured` bytes, large enough that the upload needs <= 10,000 parts."""
    target = MAX_OBJECT_SIZE if length is None else length
    return max(configured, MIN_PART_SIZE, -(-target // MAX_PARTS))


@dataclass
class _Part:
    number: int
    size: int
    etag: str
    modified: float


@dataclass
class _State:
    """What S3 holds of an unfinished upload."""
    parts: list[_Part] = field(default_factory=list)
    tail: int | None = None             # size of a valid `.part` object
    tail_modified: float = 0.0

    @property
    def offset(self) -> int:
        return sum(part.size for part in self.parts) + (self.tail or 0)

    @property
    def next_part(self) -> int:
        return len(self.parts) + 1


class _Spool:
    """Bytes on their way into one part: in memory up to `memory_limit`, then in a temp file."""

    def __init__(self, memory_limit: int, temp_dir: str | None) -> None:
        self._limit = memory_limit
        self._temp_dir = temp_dir
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    def append(self, data: Buffer) -> None:
        if self._file is None and self.size + len(data) > self._limit:
            self._file = tempfile.TemporaryFile(dir=self._temp_dir, prefix="tusfast-s3-")
            self._file.write(self._memory)
            self._memory = bytearray()
        if self._file is not None:
            self._file.write(data)
        else:
            self._memory += data
        self.size += len(data)

    def truncate(self, size: int) -> None:
        if self._file is not None:
            self._file.truncate(size)
            self._file.seek(size)
        else:
            del self._memory[size:]
        self.size = size

    def body(self) -> bytes | IO[bytes]:
        """The bytes as a request body (a file object is streamed, not read into memory)."""
        if self._file is None:
            return bytes(self._memory)
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = bytearray()


class S3Writer:
    """Appends to one upload: fills parts, uploads each full one (while the next fills), and on
    close() stores the rest as `.part` -- or, when the upload is complete, as its last part."""

    def __init__(self, store: "S3Storage", info: UploadInfo, state: _State) -> None:
        self._store = store
        self._info = info
        self._part_size = part_size_for(info.length, store.part_size)
        self._etags = {part.number: part.etag for part in state.parts}
        self._next = state.next_part
        self._tail = state.tail                 # a `.part` object to fold into the first part
        self._tail_part = state.next_part       # the part that will hold the `.part` bytes
        self._total = state.offset
        self._spool: _Spool | None = None       # None until the `.part` bytes are loaded
        self._dirty = False                     # the spool holds bytes `.part` does not
        self._sending: asyncio.Task[None] | None = None
        self._failed = False
        self.recorder: FencedWriter | None = None   # with an info store: told of every part stored

    async def write(self, offset: int, chunks: Sequence[Buffer]) -> None:
        spool = await self._loaded()
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                if spool.size >= self._part_size:
                    spool = await self._send_full()
                room = self._part_size - spool.size
                spool.append(view[:room])
                self._dirty = True
                self._total += min(room, len(view))
                view = view[room:]
        if spool.size >= self._part_size:
            await self._send_full()

    async def commit(self) -> None:
        """Not staged: every write counts as soon as it returns."""

    async def truncate(self, offset: int) -> None:
        """Drop the bytes from offset on; possible while they have not left this process yet."""
        spool = await self._loaded()
        start = self._total - spool.size
        if offset < start:
            self._failed = True     # never store a tail after bytes that should not be there
            raise StorageUnavailable("cannot take back bytes already stored in S3 parts "
                                     "(send Trailer: Upload-Checksum to stage the body)")
        spool.truncate(offset - start)
        self._total = offset

    async def close(self, *, durable: bool) -> None:
        """S3 stores durably once it answered: `durable` needs nothing more."""
        try:
            await self._wait_for_part()
            if self._failed:
                raise StorageUnavailable("a part could not be stored; the bytes after it were dropped")
            if self._info.length is not None and self._total >= self._info.length:
                await self._finish()
            elif self._spool is not None and self._spool.size and self._dirty:
                if self.recorder is not None:
                    await self.recorder.check()     # a writer that lost its lock must not replace `.part`
                await self._store._put_tail(self._info, self._spool.body(), self._next)
            elif self._tail is not None and self._next > self._tail_part:
                await self._store._delete(self._store._tail_key(self._info))   # it went into a part
        finally:
            if self._sending is not None:
                self._sending.cancel()
            if self._spool is not None:
                self._spool.close()

    async def _loaded(self) -> _Spool:
        if self._spool is None:
            spool = _Spool(self._store.part_size, self._store.temp_dir)
            if self._tail:
                async for chunk in self._store._read_object(self._store._tail_key(self._info)):
                    spool.append(chunk)
                if spool.size > self._tail and self.recorder is not None:
                    spool.truncate(self._tail)      # only the recorded prefix counts (storage/info.py)
                if spool.size != self._tail:
                    spool.close()
                    raise StorageUnavailable(f"the .part object of upload {self._info.id} changed meanwhile")
            self._spool = spool
        return self._spool

    async def _send_full(self) -> _Spool:
        """Start uploading the spool as the next part; returns the new, empty spool."""
        await self._wait_for_part()
        assert self._spool is not None
        spool, self._spool = self._spool, _Spool(self._store.part_size, self._store.temp_dir)
        number = self._next
        self._next += 1
        self._sending = asyncio.get_running_loop().create_task(self._upload(number, spool, self._total))
        return self._spool

    async def _upload(self, number: int, spool: _Spool, end: int) -> None:
        try:
            self._etags[number] = await self._store._upload_part(self._info, number, spool.body(), spool.size)
        finally:
            spool.close()
        if self.recorder is not None:   # S3 holds every byte up to `end` now: record it at once
            await self.recorder.stored(end)

    async def _wait_for_part(self) -> None:
        if self._sending is None:
            return
        sending, self._sending = self._sending, None
        try:
            await sending
        except BaseException:
            self._failed = True
            raise

    async def _finish(self) -> None:
        spool = await self._loaded()
        if spool.size or self._next == 1:       # the last part may be small (or empty: a 0-byte upload)
            self._etags[self._next] = await self._store._upload_part(self._info, self._next, spool.body(), spool.size)
            self._next += 1
        if self.recorder is not None:
            await self.recorder.check()     # a writer that lost its lock must not complete the upload
        await self._store._complete(self._info, [(number, self._etags[number]) for number in range(1, self._next)])


class StagedS3Writer:
    """A checksummed body: kept in a temp file until commit(), then appended like any other."""

    def __init__(self, store: "S3Storage", info: UploadInfo) -> None:
        self._store = store
        self._info = info
        self.start = info.offset
        self._file = tempfile.TemporaryFile(dir=store.temp_dir, prefix="tusfast-s3-staged-")
        self._size = 0
        self._inner: S3Writer | None = None
        self.recorder: FencedWriter | None = None

    async def write(self, offset: int, chunks: Sequence[Buffer]) -> None:
        for chunk in chunks:
            self._file.write(chunk)
            self._size += len(chunk)

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Staged bytes (absolute offsets), for a trailer checksum read back before commit()."""
        self._file.flush()
        position = start - self.start
        while position < min(end - self.start, self._size):
            chunk = os.pread(self._file.fileno(), min(READ_CHUNK, end - self.start - position), position)
            if not chunk:
                break
            position += len(chunk)
            yield chunk

    async def commit(self) -> None:
        self._inner = await self._store._plain_writer(self._info)
        self._inner.recorder = self.recorder
        self._file.flush()
        position = 0
        while position < self._size:
            chunk = os.pread(self._file.fileno(), min(READ_CHUNK, self._size - position), position)
            await self._inner.write(self.start + position, [chunk])
            position += len(chunk)

    async def truncate(self, offset: int) -> None:
        if self._inner is not None:
            await self._inner.truncate(offset)
            return
        self._size = max(0, min(self._size, offset - self.start))
        self._file.truncate(self._size)
        self._file.seek(self._size)

    async def close(self, *, durable: bool) -> None:
        try:
            if self._inner is not None:
                await self._inner.close(durable=durable)
        finally:
            self._file.close()
            self._store._staged.pop(self._info.id, None)


class _NoWriter:
    """For a finished upload: nothing can be appended, and closing changes nothing."""

    async def write(self, offset: int, chunks: Sequence[Buffer]) -> None:
        if any(len(chunk) for chunk in chunks):
            raise StorageUnavailable("the upload is finished")

    async def commit(self) -> None:
        pass

    async def truncate(self, offset: int) -> None:
        pass

    async def close(self, *, durable: bool) -> None:
        pass


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None, region: str | None = None,
                 part_size: int = DEFAULT_PART_SIZE, temp_dir: str | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0, retries: int = 3,
                 info_store: InfoStore | None = None) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError("S3 part size must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"    # as tusd does
        self.endpoint = endpoint
        self.region = region
        self.part_size = part_size
        self.temp_dir = temp_dir
        self._timeouts = (connect_timeout, read_timeout, retries)
        self._client: Any = None
        self._context: Any = None
        self._staged: dict[str, StagedS3Writer] = {}
        self._recent: dict[str, tuple[float, _State]] = {}
        # None: info in `<id>.info` objects, offset = what S3 holds. Else info and recorded offsets live
        # there (storage/info.py), and the offset is what S3 holds up to the recorded one.
        self.infos = info_store

    # ---- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the client in the running loop and check that the bucket is there."""
        try:
            from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
            from aiobotocore.session import get_session  # type: ignore[import-untyped]
        except ImportError:
            raise StorageUnavailable("--storage s3 needs aiobotocore: pip install 'tusfast[s3]'") from None
        connect, read, retries = self._timeouts
        config = AioConfig(connect_timeout=connect, read_timeout=read,
                           retries={"max_attempts": retries, "mode": "standard"},
                           s3={"addressing_style": "path"} if self.endpoint else None,
                           # S3-compatible servers differ in their support of the newer checksums
                           request_checksum_calculation="when_required",
                           response_checksum_validation="when_required")
        self._context = get_session().create_client("s3", endpoint_url=self.endpoint, region_name=self.region,
                                                    config=config)
        self._client = await self._context.__aenter__()
        try:
            await self._call("head_bucket")
        except StorageUnavailable as error:
            await self.close()
            reason = "does not exist" if isinstance(error, _Missing) else f"is not reachable ({error})"
            raise StorageUnavailable(f"S3 bucket {self.bucket!r} {reason}") from None

    async def close(self) -> None:
        if self._context is not None:
            context, self._context, self._client = self._context, None, None
            await context.__aexit__(None, None, None)

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"S3 bucket {self.bucket}{where}, prefix {self.prefix!r}"

    # ---- the Storage protocol ---------------------------------------------------------------

    async def create(self, info: UploadInfo) -> UploadInfo:
        chosen = info.storage.get("Path")       # a key (below the prefix) a pre-create hook chose
        if chosen and chosen.endswith(".part"):
            raise ValueError(f"unsafe storage path {chosen!r}")     # would pass for an upload's tail
        key = self.prefix + (safe_relative_path(chosen) if chosen else info.id)
        if self.infos is None and (chosen or not SERVER_UPLOAD_ID.fullmatch(info.id)) and \
                await self._exists(self._info_key(info.id)):
            raise FileExistsError(info.id)
        # The type from the metadata, as a download would have it (for serving from S3 directly).
        content_type = dict(content_headers(info))["Content-Type"]
        if info.length == 0:    # nothing to upload: S3 cannot complete a multipart upload without parts
            await self._call("put_object", Key=key, Body=b"", ContentType=content_type)
            upload_id = ""
        else:
            upload_id = (await self._call("create_multipart_upload", Key=key, ContentType=content_type))["UploadId"]
        info = replace(info, storage={"Type": "s3store", "Bucket": self.bucket, "Key": key,
                                      "MultipartUpload": upload_id})
        if self.infos is None:
            await self._write_info(info)
            return info
        try:
            await self.infos.create(info)
        except BaseException:       # the id is taken (a hook's choice), or the store is down
            if upload_id:
                await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
            raise
        return info

    async def get_info(self, upload_id: str) -> UploadInfo:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        if self.infos is not None:
            return await self._get_recorded(self.infos, upload_id)
        try:
            response = await self._call("get_object", Key=self._info_key(upload_id))
            async with response["Body"] as stream:
                raw = await stream.read()
        except _Missing:
            if await self._exists(self._tombstone_key(upload_id)):
                raise UploadGone(upload_id) from None
            raise UploadNotFound(upload_id) from None
        info = decode_info(raw, upload_id)
        if not info.storage.get("Key") or info.storage.get("Type") != "s3store":
            raise UploadCorrupt(f"info object of upload {upload_id} does not describe an S3 upload")
        info = replace(info, updated_at=_timestamp(response.get("LastModified")))
        if info.length is not None and _stored_offset(raw) == info.length and (
                info.length > 0 or not info.storage.get("MultipartUpload")):   # finished (or empty)
            return replace(info, offset=info.length)
        return await self._unfinished(info)

    async def open_writer(self, info: UploadInfo,
                          staged: bool = False) -> S3Writer | StagedS3Writer | _NoWriter | FencedWriter:
        if info.is_complete:
            return _NoWriter()      # an empty PATCH on a finished upload
        if not staged:
            plain = await self._plain_writer(info)
            return plain if self.infos is None else self._fenced(plain, info, False)
        writer = StagedS3Writer(self, info)
        self._staged[info.id] = writer
        return writer if self.infos is None else self._fenced(writer, info, True)

    def _fenced(self, writer: S3Writer | StagedS3Writer, info: UploadInfo, staged: bool) -> FencedWriter:
        assert self.infos is not None
        fenced = FencedWriter(writer, self.infos, info, staged=staged)
        writer.recorder = fenced
        return fenced

    async def declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        updated = info.with_length(length)
        if self.infos is not None:
            await self.infos.save(updated)
        else:
            await self._write_info(replace(updated, offset=0))
        return updated

    async def terminate(self, info: UploadInfo) -> None:
        # The info goes first: once it is gone the upload no longer exists, whatever else remains.
        if self.infos is not None:
            await self.infos.delete(info.id)
        else:
            await self._delete(self._info_key(info.id))
        upload_id = info.storage.get("MultipartUpload")
        if upload_id:
            try:
                await self._call("abort_multipart_upload", Key=info.storage["Key"], UploadId=upload_id)
            except _Missing:
                pass
        for key in (info.storage["Key"], self._tail_key(info)):
            await self._delete(key)
        if self.infos is None:
            for key in await self._list_keys(self._finals_prefix(info.id)):
                await self._delete(key)

    async def concatenate(self, final: UploadInfo, partials: Sequence[UploadInfo]) -> UploadInfo:
        length = sum(partial.length or 0 for partial in partials)
        final = replace(final, length=length, offset=0)
        if not final.storage.get("MultipartUpload"):   # an empty final was complete from its creation
            return replace(final, offset=length)
        ranges = _copy_plan(partials)
        if ranges is not None:
            await self._join_by_copy(final, ranges)
        else:
            await self._join_by_streaming(final, partials)
        if self.infos is not None:
            await self.infos.save(replace(final, offset=length), offset=True)
        return replace(final, offset=length)

    async def register_final(self, final: UploadInfo) -> None:
        if self.infos is not None:
            return await self.infos.register_final(final)
        for partial_id in set(final.partials):
            await self._call("put_object", Key=self._finals_prefix(partial_id) + final.id, Body=b"")

    async def finals_waiting_for(self, partial_id: str) -> list[str]:
        if self.infos is not None:
            return await self.infos.finals_waiting_for(partial_id)
        prefix = self._finals_prefix(partial_id)
        names = [key[len(prefix):] for key in await self._list_keys(prefix)]
        return [name for name in names if is_valid_upload_id(name)]

    async def list_upload_ids(self) -> list[str]:
        if self.infos is not None:
            return await self.infos.list_ids()
        found = []
        for key in await self._list_keys(self.prefix):
            name = key[len(self.prefix):]
            if name.endswith(".info") and is_valid_upload_id(name[:-5]):
                found.append(name[:-5])
        return found

    async def expire(self, info: UploadInfo) -> None:
        if self.infos is not None:
            await self.infos.expire(info.id)
        else:
            await self._call("put_object", Key=self._tombstone_key(info.id), Body=b"")
        await self.terminate(info)

    async def prune_tombstones(self, older_than: float) -> int:
        """Forget old tombstones, and abort multipart uploads that lost their upload (a crash
        between creating one and storing the info) once they are older than the expiry."""
        pruned = 0
        if self.infos is not None:
            pruned = await self.infos.prune_tombstones(older_than)
        async for item in self._list_objects(self.prefix + EXPIRED_PREFIX):
            if _timestamp(item.get("LastModified")) < older_than:
                await self._delete(item["Key"])
                pruned += 1
        await self._abort_abandoned(older_than)
        return pruned

    async def read_range(self, info: UploadInfo, start: int, end: int) -> AsyncIterator[bytes]:
        staged = self._staged.get(info.id)
        if staged is not None and start >= staged.start:
            async for chunk in staged.read(start, end):
                yield chunk
            return
        if start >= end:
            return
        async for chunk in self._read_object(info.storage["Key"], f"bytes={start}-{end - 1}"):
            yield chunk

    # ---- helpers ----------------------------------------------------------------------------

    async def _call(self, operation: str, **params: Any) -> Any:
        if self._client is None:
            raise StorageUnavailable("the S3 client is not open")
        try:
            return await getattr(self._client, operation)(Bucket=self.bucket, **params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _translate(operation, exc) from exc

    def _info_key(self, upload_id: str) -> str:
        return f"{self.prefix}{upload_id}.info"

    def _tail_key(self, info: UploadInfo) -> str:
        return f"{self.prefix}{info.id}.part"

    def _tombstone_key(self, upload_id: str) -> str:
        return f"{self.prefix}{EXPIRED_PREFIX}{upload_id}"

    def _finals_prefix(self, partial_id: str) -> str:
        return f"{self.prefix}{FINALS_PREFIX}{partial_id}/"

    async def _exists(self, key: str) -> bool:
        try:
            await self._call("head_object", Key=key)
        except _Missing:
            return False
        return True

    async def _delete(self, key: str) -> None:
        await self._call("delete_object", Key=key)

    async def _write_info(self, info: UploadInfo) -> None:
        await self._call("put_object", Key=self._info_key(info.id), Body=encode_info(info),
                         ContentType="application/json")

    async def _unfinished(self, info: UploadInfo) -> UploadInfo:
        try:
            state = await self._state(info)
        except _Missing:    # the multipart upload is gone: completed, and the info rewrite was lost
            return await self._recover_completed(info)
        if info.length is not None and state.offset > info.length:
            raise UploadCorrupt(f"upload {info.id} holds more bytes than its length")
        modified = max([info.updated_at, state.tail_modified, *(part.modified for part in state.parts)])
        info = replace(info, offset=state.offset, updated_at=modified)
        self._remember(info.id, state)
        if info.is_final:
            return replace(info, offset=0)     # a join in progress: run again until it completes
        if info.is_complete:                   # all bytes stored, but the completion was lost: finish it
            writer = S3Writer(self, info, state)
            await writer.close(durable=True)
        return info

    async def _get_recorded(self, infos: InfoStore, upload_id: str) -> UploadInfo:
        """With an info store: the offset is what S3 holds of the recorded bytes (_reconciled)."""
        info = await infos.load(upload_id)
        if not info.storage.get("Key") or info.storage.get("Type") != "s3store":
            raise UploadCorrupt(f"recorded info of upload {upload_id} does not describe an S3 upload")
        if info.length is not None and info.offset >= info.length:
            return replace(info, offset=info.length)       # finished (or empty)
        try:
            state = await self._state(info)
        except _Missing:    # completed, and the recording of its offset was lost
            return await self._recover_completed(info)
        if state.offset < info.offset:
            log.warning("upload %s: S3 holds %d of the %d recorded bytes", upload_id, state.offset, info.offset)
            try:
                await infos.advance(upload_id, info.offset, state.offset, None)
            except OffsetConflict:  # moved meanwhile: the next look-up sees it
                pass
        modified = max([info.updated_at, state.tail_modified, *(part.modified for part in state.parts)])
        self._remember(upload_id, state)
        if info.is_final:
            return replace(info, offset=0, updated_at=modified)    # a join in progress: run again
        return replace(info, offset=state.offset, updated_at=modified)

    async def _recover_completed(self, info: UploadInfo) -> UploadInfo:
        try:
            head = await self._call("head_object", Key=info.storage["Key"])
        except _Missing:
            raise UploadCorrupt(f"the multipart upload of upload {info.id} is gone") from None
        size = int(head["ContentLength"])
        info = replace(info, length=size if info.length is None else info.length, offset=size)
        if self.infos is not None:
            # Completed, but the offset was never recorded: a crash right after the completion (or, in
            # the residual window, a writer that lost its lock; see docs/scale-out.md). It is whole.
            log.warning("upload %s was completed in S3 without its offset being recorded; adopting it", info.id)
            await self.infos.save(info, offset=True)
        else:
            await self._write_info(info)
        return info

    async def _state(self, info: UploadInfo) -> _State:
        parts, tail = await asyncio.gather(self._list_parts(info), self._head_tail(info))
        if self.infos is not None:
            return _reconciled(parts, tail, info.offset)
        state = _State(parts)
        if tail is not None and tail[1] == state.next_part:     # else stale: its part was uploaded
            state.tail, state.tail_modified = tail[0], tail[2]
        return state

    async def _list_parts(self, info: UploadInfo) -> list[_Part]:
        parts: list[_Part] = []
        marker = 0
        while True:
            page = await self._call("list_parts", Key=info.storage["Key"],
                                    UploadId=info.storage.get("MultipartUpload", ""), PartNumberMarker=marker)
            parts += [_Part(int(item["PartNumber"]), int(item["Size"]), str(item["ETag"]),
                            _timestamp(item.get("LastModified"))) for item in page.get("Parts", [])]
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        parts.sort(key=lambda part: part.number)
        if [part.number for part in parts] != list(range(1, len(parts) + 1)):
            raise UploadCorrupt(f"the parts of upload {info.id} are not contiguous")
        return parts

    async def _head_tail(self, info: UploadInfo) -> tuple[int, int, float] | None:
        try:
            head = await self._call("head_object", Key=self._tail_key(info))
        except _Missing:
            return None
        try:
            next_part = int(head.get("Metadata", {}).get(NEXT_PART_META, "0"))
        except ValueError:
            next_part = 0
        return int(head["ContentLength"]), next_part, _timestamp(head.get("LastModified"))

    async def _plain_writer(self, info: UploadInfo) -> S3Writer:
        if not info.storage.get("MultipartUpload"):
            raise UploadCorrupt(f"upload {info.id} has no multipart upload to write to")
        state = self._recalled(info) or await self._state(info)
        if state.offset != info.offset:
            raise StorageUnavailable(f"upload {info.id} changed meanwhile ({state.offset} != {info.offset} bytes)")
        return S3Writer(self, info, state)

    def _remember(self, upload_id: str, state: _State) -> None:
        """A PATCH looks the upload up, then opens a writer: the second look-up can be skipped."""
        if len(self._recent) > 1000:
            self._recent.clear()
        self._recent[upload_id] = (time.monotonic(), state)

    def _recalled(self, info: UploadInfo) -> _State | None:
        """The state seen moments ago, if the offset still agrees (bytes are only ever added)."""
        seen, state = self._recent.pop(info.id, (0.0, None))
        if state is None or time.monotonic() - seen > RECALL_SECONDS or state.offset != info.offset:
            return None
        return state

    async def _upload_part(self, info: UploadInfo, number: int, body: bytes | IO[bytes], size: int) -> str:
        if number > MAX_PARTS:
            raise StorageUnavailable(f"upload {info.id} would need more than {MAX_PARTS} parts")
        response = await self._call("upload_part", Key=info.storage["Key"], UploadId=info.storage["MultipartUpload"],
                                    PartNumber=number, Body=body, ContentLength=size)
        return str(response["ETag"])

    async def _put_tail(self, info: UploadInfo, body: bytes | IO[bytes], next_part: int) -> None:
        await self._call("put_object", Key=self._tail_key(info), Body=body,
                         Metadata={NEXT_PART_META: str(next_part)})

    async def _complete(self, info: UploadInfo, parts: list[tuple[int, str]]) -> None:
        length = info.length or 0
        try:
            await self._call("complete_multipart_upload", Key=info.storage["Key"],
                             UploadId=info.storage["MultipartUpload"],
                             MultipartUpload={"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in parts]})
        except _Missing:    # completed meanwhile (a look-up recovering a lost completion)?
            head = await self._call("head_object", Key=info.storage["Key"])
            if int(head["ContentLength"]) != length:
                raise
        if self.infos is None:      # else the writer records it (fenced), or concatenate() does
            await self._write_info(replace(info, length=length, offset=length))
        try:
            await self._delete(self._tail_key(info))
        except StorageUnavailable as error:    # harmless: a finished upload never reads it
            log.warning("could not delete the .part object of upload %s: %s", info.id, error)

    async def _join_by_copy(self, final: UploadInfo, ranges: list[tuple[UploadInfo, int, int]]) -> None:
        parts = []
        for number, (partial, start, end) in enumerate(ranges, 1):
            response = await self._call(
                "upload_part_copy", Key=final.storage["Key"], UploadId=final.storage["MultipartUpload"],
                PartNumber=number, CopySource={"Bucket": self.bucket, "Key": partial.storage["Key"]},
                CopySourceRange=f"bytes={start}-{end - 1}")
            parts.append((number, str(response["CopyPartResult"]["ETag"])))
        await self._complete(final, parts)

    async def _join_by_streaming(self, final: UploadInfo, partials: Sequence[UploadInfo]) -> None:
        """Partials too small to be parts: through this process, part by part (from part 1 again,
        whatever an interrupted join left; completion names exactly the parts written here)."""
        writer = S3Writer(self, final, _State())
        try:
            position = 0
            for partial in partials:
                async for chunk in self.read_range(partial, 0, partial.length or 0):
                    await writer.write(position, [chunk])
                    position += len(chunk)
        finally:
            await writer.close(durable=True)

    async def _read_object(self, key: str, byte_range: str | None = None) -> AsyncIterator[bytes]:
        params = {"Key": key, **({"Range": byte_range} if byte_range else {})}
        response = await self._call("get_object", **params)
        async with response["Body"] as stream:
            while True:
                try:
                    chunk = await stream.read(READ_CHUNK)
                except Exception as exc:
                    raise _translate("get_object", exc) from exc
                if not chunk:
                    return
                yield chunk

    async def _list_objects(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page = await self._call("list_objects_v2", Prefix=prefix,
                                    **({"ContinuationToken": token} if token else {}))
            for item in page.get("Contents", []):
                yield item
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def _list_keys(self, prefix: str) -> list[str]:
        return [str(item["Key"]) async for item in self._list_objects(prefix)]

    async def _abort_abandoned(self, older_than: float) -> None:
        markers: dict[str, str] = {}
        while True:
            page = await self._call("list_multipart_uploads", Prefix=self.prefix, **markers)
            for upload in page.get("Uploads", []):
                if _timestamp(upload.get("Initiated")) < older_than:
                    await self._abort_if_orphan(str(upload["Key"]), str(upload["UploadId"]))
            if not page.get("IsTruncated"):
                return
            markers = {"KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}

    async def _abort_if_orphan(self, key: str, upload_id: str) -> None:
        """A multipart upload whose key is `<prefix><id>` while `<id>.info` does not name it."""
        name = key[len(self.prefix):]
        if not is_valid_upload_id(name):
            return      # a key chosen by a hook, or not ours: leave it alone
        try:
            if await self._recorded_multipart(name) == upload_id:
                return
        except (_Missing, UploadNotFound):
            pass
        except (ValueError, UploadCorrupt):
            return      # an unreadable info is reported elsewhere; do not guess
        log.info("aborting abandoned multipart upload of %s", key)
        try:
            await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
        except _Missing:
            pass

    async def _recorded_multipart(self, upload_id: str) -> str | None:
        if self.infos is not None:
            return (await self.infos.load(upload_id)).storage.get("MultipartUpload")
        response = await self._call("get_object", Key=self._info_key(upload_id))
        async with response["Body"] as stream:
            document = json.loads(await stream.read())
        return (document.get("Storage") or {}).get("MultipartUpload")


def _copy_plan(partials: Sequence[UploadInfo]) -> list[tuple[UploadInfo, int, int]] | None:
    """Byte ranges of the partials, each to become one part of the final by UploadPartCopy, or
    None when that is impossible (a partial but the last below the minimum part size)."""
    sources = [partial for partial in partials if partial.length]
    if not sources or any((partial.length or 0) < MIN_PART_SIZE for partial in sources[:-1]):
        return None
    ranges = []
    for partial in sources:
        length = partial.length or 0
        count = -(-length // MAX_COPY_PART)     # equal pieces, each >= 2.5 GiB when split
        step = -(-length // count)
        ranges += [(partial, start, min(start + step, length)) for start in range(0, length, step)]
    return ranges if len(ranges) <= MAX_PARTS else None


def _reconciled(parts: list[_Part], tail: tuple[int, int, float] | None, recorded: int) -> _State:
    """What S3 holds of the first `recorded` bytes: the parts that end at or before it, and `.part`
    if it starts right after them (its first bytes are the rest). Parts and tail bytes beyond were
    stored but never recorded (a crash before the recording, or a writer that lost its lock): they
    do not count, and the next writer overwrites them from the recorded offset on."""
    kept: list[_Part] = []
    total = 0
    for part in parts:
        if total + part.size > recorded:
            break
        kept.append(part)
        total += part.size
    state = _State(kept)
    rest = recorded - total
    if rest and tail is not None and tail[1] == state.next_part and tail[0] >= rest:
        state.tail, state.tail_modified = rest, tail[2]
    return state


def _stored_offset(raw: bytes) -> int | None:
    try:
        document = json.loads(raw)
        if document.get("SizeIsDeferred"):
            return None
        return int(document.get("Offset", -1))
    except (ValueError, TypeError, AttributeError):
        return None


def _timestamp(value: object) -> float:
    return value.timestamp() if isinstance(value, datetime) else time.time()
