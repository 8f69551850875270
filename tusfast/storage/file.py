"""Uploads as plain files: `<id>` holds the bytes, `<id>.info` the JSON info (tusd's layout and
format, so tools written for tusd's file store keep working).

The offset is the data file's size, as in tusd: it can never be more than what was written, also
after kill -9. The info file is only ever replaced whole (temp file + rename), never torn.
With a dir layout, both files live in a date directory and `.ids/<ab>/<id>` links to the info file,
so an upload is found by id alone after a restart.

Checksummed writes are staged: `<id>.staged` records the offset they started at until the checksum
matched; if the process dies before that, the next look-up cuts the data back to that offset.
Final uploads waiting for their partials are listed in `.finals/<partial id>`.

Where work runs: metadata operations (a few syscalls on cached inodes) run inline on the event
loop, because a thread hand-off costs more than they do (measured: HEAD 0.55 -> 0.23 ms of CPU).
Anything that can wait on the disk (large writes, fdatasync, joins, scans, reads) runs in threads.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence, TypeVar

from .. import nativeio
from ..core.model import UploadInfo, is_valid_upload_id
from .info_json import STAGED_SUFFIX, decode_info, encode_info, safe_relative_path
from .base import Buffer, StorageFull, StorageUnavailable, UploadCorrupt, UploadGone, UploadNotFound
from .info import FencedWriter, InfoStore, OffsetConflict
from .layout import DirLayout
from .mounts import MOUNTINFO, mount_of

T = TypeVar("T")
log = logging.getLogger("tusfast.storage")
INDEX_DIR = ".ids"
FINALS_DIR = ".finals"
EXPIRED_DIR = ".expired"
READ_CHUNK = 1024 * 1024
WRITE_BACK_WINDOW = 8 * 1024 * 1024     # bounded dirty data: durable ingest at disk speed
INLINE_WRITE = 64 * 1024                # smaller writes go to the page cache inline
INFO_CACHE_SIZE = 10_000                # decoded info files kept (checked against the file on every use)
ALIGN = nativeio.DIRECT_IO_ALIGNMENT
# Local disk file systems, where O_DIRECT skips the page cache without a network round trip per write.
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "bcachefs", "jfs", "zfs", "tmpfs"})

_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNAVAILABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EIO}


def translate(exc: OSError) -> Exception:
    """OS errors as storage errors: a full disk is the client's to retry later, not a crash."""
    if exc.errno in _FULL:
        return StorageFull(str(exc))
    if exc.errno in _UNAVAILABLE:
        return StorageUnavailable(str(exc))
    return exc


class DirectIO:
    """Whether large bodies go to the upload directory with O_DIRECT, and why (for the log):
    decided once at start-up, switched off for good (with one warning) the first time the file
    system refuses a write."""

    def __init__(self, enabled: bool, why: str = "") -> None:
        self.enabled = enabled
        self.why = why

    @classmethod
    def choose(cls, directory: Path, mode: str, mountinfo: str = MOUNTINFO) -> DirectIO:
        """mode 'auto': on local disk file systems that take O_DIRECT; 'on': wherever they take it;
        'off': never. On NFS, SMB or FUSE every O_DIRECT write waits for a round trip to the
        server, so 'auto' leaves those to the page cache."""
        if mode == "off":
            return cls(False, "--direct-io off")
        mount = mount_of(directory, mountinfo)
        kind = mount.type if mount is not None else ""
        if mode == "auto" and kind not in LOCAL_FILE_SYSTEMS:
            return cls(False, f"{kind or 'unknown'} file system (--direct-io on uses it anyway)")
        if not _takes_direct_writes(directory):
            return cls(False, f"the {kind or 'unknown'} file system refused an O_DIRECT write")
        return cls(True, f"{kind or 'unknown'} file system")

    def refused(self, exc: OSError) -> None:
        if self.enabled:
            self.enabled = False
            self.why = f"a write was refused: {exc}"
            log.warning("the upload directory refused an O_DIRECT write (%s): writing through the "
                        "page cache from now on", exc)


def _takes_direct_writes(directory: Path) -> bool:
    """Write one aligned block with O_DIRECT into a scratch file in directory."""
    path = directory / f".direct-io-probe-{secrets.token_hex(8)}"     # never a stale one's name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        return os.pwrite(fd, nativeio.aligned_buffer(ALIGN), 0) == ALIGN
    except OSError:
        return False
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


class _WriteBehind:
    """The helper thread that lets a body's reader go on while the device takes its previous
    buffer. It is lent to one body at a time per process: while another body's O_DIRECT write is
    in flight the disk is busy anyway, and with many bodies (scenario 3 of the benchmarks) a second
    buffer and thread per body only cost CPU and memory. Bodies that find it lent write in their
    own thread."""

    def __init__(self) -> None:
        self._writer: nativeio.BackgroundWriter | None = None     # started once, kept while not lent
        self._lent = False
        self._lock = threading.Lock()

    def take(self) -> nativeio.BackgroundWriter | None:
        with self._lock:
            if self._lent:
                return None
            self._lent = True
            writer, self._writer = self._writer, None
        if writer is None:
            try:
                writer = nativeio.background_writer()
            except OSError:
                writer = None       # no thread to be had: write in the calling thread
        if writer is None:
            with self._lock:
                self._lent = False
        return writer

    def give_back(self, writer: nativeio.BackgroundWriter) -> None:
        with self._lock:
            self._lent = False
            self._writer = writer


_WRITE_BEHIND = _WriteBehind()


class FileWriter:
    def __init__(self, fd: int, run: Callable[..., Any], staged_marker: str | None = None,
                 start: int = 0, write_back: bool = True, direct: tuple[DirectIO, str] | None = None) -> None:
        self._fd = fd
        self._run = run
        self._marker = staged_marker    # present while writes are provisional
        self._start = start
        self._write_back = write_back
        self._window = start - start % WRITE_BACK_WINDOW   # first byte not yet handed to write-back
        self._direct = direct           # (support, data path) when large writes may bypass the page cache
        self._direct_fd = -1            # opened on first use: small bodies never need it

    @property
    def direct_io(self) -> bool:
        """write_aligned bypasses the page cache: reading bodies into aligned buffers beats splicing."""
        return self._direct is not None and self._direct[0].enabled

    async def write(self, offset: int, chunks: Sequence[Buffer]) -> None:
        try:
            if sum(len(chunk) for chunk in chunks) <= INLINE_WRITE:
                self._write_paced(chunks, offset)
            else:
                await self._run(self._write_paced, chunks, offset)
        except OSError as exc:
            raise self._failed(exc, offset) from exc

    def _write_paced(self, chunks: Sequence[Buffer], offset: int) -> None:
        end = offset + nativeio.pwritev_all(self._fd, chunks, offset)
        self.wrote(offset, end - offset)

    def splice_target(self) -> tuple[int, Callable[[int, int], None]]:
        return self._fd, self.wrote

    def write_aligned(self, offset: int, data: memoryview, last: bool = False,
                      behind: bool = False) -> Callable[[], None] | None:
        """Blocking, from a worker thread; data's address is congruent to offset modulo ALIGN (as
        splice.read_body's parts are). With direct I/O the aligned middle goes straight to the
        disk, and only the ragged edges (under a page each) pass through the page cache. The
        `last` part of a body goes through the page cache (and its write-back windows): the reply
        waits for it, and need not wait for the device (durability is --fsync's business).
        `behind`: the middle may still be on its way to the disk when this returns (see
        _WriteBehind); then the returned function waits for it, writes the tail and raises what
        this would have. Until it has run, data must not change."""
        head = min(len(data), -offset % ALIGN)
        middle = (len(data) - head) // ALIGN * ALIGN
        try:
            direct_fd = self._open_direct() if middle and not last else -1
            if direct_fd < 0:
                self._write_paced([data], offset)
                return None
            if head:
                nativeio.pwrite_all(self._fd, data[:head], offset)
            writer = _WRITE_BEHIND.take() if behind else None
            if writer is not None:
                self._start_behind(writer, direct_fd, data[head:head + middle], offset + head)
                return partial(self._finish_behind, writer, data, offset, head, middle)
            self._write_direct(direct_fd, data[head:head + middle], offset + head)
            self._write_tail(data, offset, head + middle)
            return None
        except OSError as exc:
            raise self._failed(exc, offset) from exc

    @staticmethod
    def _start_behind(writer: nativeio.BackgroundWriter, direct_fd: int, data: memoryview, offset: int) -> None:
        try:
            writer.start(direct_fd, data, offset)
        except BaseException:
            _WRITE_BEHIND.give_back(writer)     # not lent out for good
            raise

    def _finish_behind(self, writer: nativeio.BackgroundWriter, data: memoryview, offset: int,
                       head: int, middle: int) -> None:
        try:
            try:
                writer.wait()
            except OSError as exc:
                self._direct_failed(exc, data[head:head + middle], offset + head)
            else:
                self._direct_written(offset + head + middle)
            finally:
                _WRITE_BEHIND.give_back(writer)
            self._write_tail(data, offset, head + middle)
        except OSError as exc:
            raise self._failed(exc, offset) from exc

    def _write_tail(self, data: memoryview, offset: int, done: int) -> None:
        if done < len(data):
            nativeio.pwrite_all(self._fd, data[done:], offset + done)

    def _open_direct(self) -> int:
        if self._direct_fd < 0 and self.direct_io:
            assert self._direct is not None
            try:
                self._direct_fd = os.open(self._direct[1], os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct[0].refused(exc)
        return self._direct_fd if self.direct_io else -1

    def _write_direct(self, direct_fd: int, data: memoryview, offset: int) -> None:
        try:
            nativeio.pwrite_all(direct_fd, data, offset)
        except OSError as exc:
            self._direct_failed(exc, data, offset)
            return
        self._direct_written(offset + len(data))

    def _direct_failed(self, exc: OSError, data: memoryview, offset: int) -> None:
        """EINVAL: the file system refused O_DIRECT and nothing was written: write it the other way."""
        if exc.errno != errno.EINVAL:
            raise exc
        assert self._direct is not None
        self._direct[0].refused(exc)
        self._write_paced([data], offset)

    def _direct_written(self, end: int) -> None:
        # The page cache holds none of it: nothing to write back.
        self._window = max(self._window, end - end % WRITE_BACK_WINDOW)

    def _failed(self, exc: OSError, offset: int) -> Exception:
        """A write that ran out of space may have stored a part first: StorageFull says how much,
        so the offset we report is what the file holds (the file's size is the offset)."""
        error = translate(exc)
        if isinstance(error, StorageFull):
            try:
                error.stored = max(0, os.fstat(self._fd).st_size - offset)
            except OSError:
                pass
        return error

    def wrote(self, offset: int, count: int) -> None:
        """Account for bytes written at offset (also by splice): every full window goes to disk."""
        end = offset + count
        while self._write_back and end - self._window >= WRITE_BACK_WINDOW:
            nativeio.write_back(self._fd, self._window, WRITE_BACK_WINDOW)
            self._window += WRITE_BACK_WINDOW

    async def commit(self) -> None:
        if self._marker is not None:
            os.unlink(self._marker)
            self._marker = None

    async def truncate(self, offset: int) -> None:
        await self._run(os.ftruncate, self._fd, offset)

    async def close(self, *, durable: bool) -> None:
        try:
            if self._marker is not None:    # never committed: put the upload back as it was
                _roll_back(self._fd, self._start, self._marker)
            elif durable:
                await self._run(nativeio.fdatasync, self._fd)
        except OSError as exc:
            raise translate(exc) from exc
        finally:
            os.close(self._fd)
            if self._direct_fd >= 0:
                os.close(self._direct_fd)


def _roll_back(fd: int, offset: int, marker: str) -> None:
    os.ftruncate(fd, offset)
    os.unlink(marker)


class FileStorage:
    def __init__(self, directory: str | os.PathLike[str], dir_layout: str | None = None,
                 executor: ThreadPoolExecutor | None = None, flat_links: bool = False,
                 info_store: InfoStore | None = None, direct_io: str = "auto") -> None:
        self.directory = Path(directory).absolute()
        self._root = str(self.directory)
        # Large bodies are written with O_DIRECT if the directory takes it (probed in prepare()).
        self.direct_io = DirectIO(False, "not decided yet")
        self.direct_io_mode = direct_io     # auto, on or off (see DirectIO.choose)
        # None: info in <id>.info files, offset = file size. Else info and recorded offsets live
        # there (storage/info.py), with paths relative to the directory (hosts may mount it anywhere).
        self.infos = info_store
        self.layout = DirLayout(dir_layout) if dir_layout else None
        # For consumers that look data up as <upload dir>/<id> although it lives elsewhere.
        self.flat_links = flat_links
        self._executor = executor or ThreadPoolExecutor(max_workers=8, thread_name_prefix="tusfast-file")
        self._info_cache: dict[str, tuple[tuple[int, int, int, int], UploadInfo]] = {}

    def prepare(self) -> None:
        """Create the upload directory; called once at start-up, so a bad path fails loudly then."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.infos is not None:
            # Its fenced writers record progress between writes, on the event loop, so bodies take
            # the loop's path: neither splice nor O_DIRECT.
            self.direct_io = DirectIO(False, "upload info in an info store: bodies are read by the event loop")
        else:
            self.direct_io = DirectIO.choose(self.directory, self.direct_io_mode)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        # Disk calls run off the event loop: one slow disk must not stall every connection.
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args))

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        """In a thread: for work that may wait on the disk."""
        try:
            return await self._run(function, *args)
        except OSError as exc:
            raise translate(exc) from exc

    @staticmethod
    def _inline(function: Callable[..., T], *args: Any) -> T:
        """On the loop: for metadata operations, cheaper than a thread hand-off."""
        try:
            return function(*args)
        except OSError as exc:
            raise translate(exc) from exc

    # ---- the Storage protocol ---------------------------------------------------------------

    async def create(self, info: UploadInfo) -> UploadInfo:
        if self.infos is not None:
            return await self._create_recorded(self.infos, info)
        return self._inline(self._create, info)

    async def get_info(self, upload_id: str) -> UploadInfo:
        if self.infos is not None:
            return await self._get_recorded(self.infos, upload_id)
        return self._inline(self._get_info, upload_id)

    async def open_writer(self, info: UploadInfo, staged: bool = False) -> FileWriter | FencedWriter:
        path = self._data_path(info)
        fd = self._inline(os.open, path, os.O_WRONLY | os.O_CLOEXEC)
        if self.infos is not None:  # no marker: staged bytes count only once recorded
            return FencedWriter(FileWriter(fd, self._run, start=info.offset), self.infos, info, staged=staged,
                                periodic=True)
        direct = (self.direct_io, path) if self.direct_io.enabled else None
        if not staged:
            return FileWriter(fd, self._run, start=info.offset, direct=direct)
        marker = path + STAGED_SUFFIX
        try:
            self._inline(_write_marker, marker, info.offset)
        except BaseException:
            os.close(fd)
            raise
        return FileWriter(fd, self._run, marker, info.offset, direct=direct)

    async def declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        updated = info.with_length(length)
        if self.infos is not None:
            await self.infos.save(self._portable(updated))
        else:
            self._inline(self._write_info, updated)
        return updated

    async def terminate(self, info: UploadInfo) -> None:
        if self.infos is not None:      # the info goes first, as with files
            await self.infos.delete(info.id)
            return self._inline(self._remove_recorded, info)
        self._inline(self._terminate, info)

    async def concatenate(self, final: UploadInfo, partials: Sequence[UploadInfo]) -> UploadInfo:
        joined = await self._call(self._concatenate, final, partials)
        if self.infos is not None:
            await self.infos.save(self._portable(joined), offset=True)
        return joined

    async def register_final(self, final: UploadInfo) -> None:
        if self.infos is not None:
            return await self.infos.register_final(final)
        self._inline(self._register_final, final)

    async def finals_waiting_for(self, partial_id: str) -> list[str]:
        if self.infos is not None:
            return await self.infos.finals_waiting_for(partial_id)
        return self._inline(self._finals_waiting_for, partial_id)

    async def list_upload_ids(self) -> list[str]:
        if self.infos is not None:
            return await self.infos.list_ids()
        return await self._call(self._list_upload_ids)

    async def expire(self, info: UploadInfo) -> None:
        if self.infos is not None:
            await self.infos.expire(info.id)
            return self._inline(self._remove_recorded, info)
        self._inline(self._expire, info)

    async def prune_tombstones(self, older_than: float) -> int:
        if self.infos is not None:
            return await self.infos.prune_tombstones(older_than)
        return await self._call(self._prune_tombstones, older_than)

    async def open_file(self, info: UploadInfo) -> int:
        return self._inline(os.open, self._data_path(info), os.O_RDONLY | os.O_CLOEXEC)

    async def read_range(self, info: UploadInfo, start: int, end: int) -> AsyncIterator[bytes]:
        fd = await self.open_file(info)
        try:
            while start < end:
                chunk = await self._call(os.pread, fd, min(READ_CHUNK, end - start), start)
                if not chunk:
                    break
                start += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    # ---- blocking implementations (run in the executor) -------------------------------------

    def _location(self, info: UploadInfo) -> tuple[str, str]:
        """(directory relative to the upload dir, file name) of a new upload's data."""
        chosen = info.storage.get("Path")       # a relative path a pre-create hook chose
        if chosen:
            return os.path.split(safe_relative_path(chosen))
        return (self.layout.directory(info.created_at) if self.layout else ""), info.id

    def _create(self, info: UploadInfo) -> UploadInfo:
        subdir, name = self._location(info)
        info = self._new_data_file(info, subdir, name)
        data_path = info.storage["Path"]
        info = replace(info, storage={**info.storage, "InfoPath": data_path + ".info"})
        made: list[str | Path] = [data_path]
        try:
            self._write_info(info)
            made.append(info.storage["InfoPath"])
            if subdir or name != info.id:
                self._link_index(info.id, os.path.join(subdir, name))
                made.append(self._index_path(info.id))
                if self.flat_links:
                    os.symlink(os.path.join(subdir, name), self.directory / info.id)
        except BaseException:       # e.g. no room for the info file: leave no half-made upload behind
            for path in reversed(made):
                _unlink_quietly(path)
            raise
        return info

    def _check_directory(self) -> None:
        if not self.directory.is_dir():
            raise StorageUnavailable(f"upload directory {self.directory} is missing")

    def _get_info(self, upload_id: str) -> UploadInfo:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        info_path = os.path.join(self._root, upload_id + ".info")    # os.path: pathlib costs more per request
        try:
            try:
                info = self._decoded_info(info_path, upload_id)
            except FileNotFoundError:       # not flat: a dated layout's index entry says where
                info_path = self._indexed_info(upload_id)
                info = self._decoded_info(info_path, upload_id)
        except FileNotFoundError:
            self._check_directory()     # a missing directory is an outage, not a missing upload
            if self._tombstone(upload_id).exists():
                raise UploadGone(upload_id) from None
            raise UploadNotFound(upload_id) from None
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise UploadCorrupt(f"info file of upload {upload_id} is unreadable: {exc}") from None
        data_path = info_path[:-len(".info")]
        _recover_staged(data_path)
        try:
            stat = os.stat(data_path)
        except FileNotFoundError:
            raise UploadCorrupt(f"data file of upload {upload_id} is missing") from None
        return replace(info, offset=stat.st_size, updated_at=stat.st_mtime,
                       storage={**info.storage, "Path": data_path, "InfoPath": info_path})

    def _decoded_info(self, info_path: str, upload_id: str) -> UploadInfo:
        """The info file, decoded, from a cache checked against the file's inode, mtime and size:
        info files are replaced whole (a new inode), so a match is the same content, also when
        another process wrote it. Saves a read and a JSON decode on every request."""
        fd = os.open(info_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.fstat(fd)
            key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
            cached = self._info_cache.get(info_path)
            if cached is not None and cached[0] == key:
                return cached[1]
            raw = _read_all(fd, stat.st_size)
        finally:
            os.close(fd)
        info = decode_info(raw, upload_id)
        if len(self._info_cache) >= INFO_CACHE_SIZE:
            self._info_cache.clear()
        self._info_cache[info_path] = (key, info)
        return info

    def _indexed_info(self, upload_id: str) -> str:
        """The info file the index entry points at; FileNotFoundError if there is no entry."""
        target = os.readlink(self._index_path(upload_id))
        resolved = (self._index_path(upload_id).parent / target).resolve()
        if not resolved.is_relative_to(self.directory.resolve()) or not resolved.name.endswith(".info"):
            raise UploadCorrupt(f"index entry of upload {upload_id} points outside the upload directory")
        return str(resolved)

    def _index_path(self, upload_id: str) -> Path:
        return self.directory / INDEX_DIR / upload_id[:2] / upload_id

    def _link_index(self, upload_id: str, data_path: str) -> None:
        """`data_path` is relative to the upload directory: `<layout dir>/<id>` or a hook's choice."""
        link = self._index_path(upload_id)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.join("..", "..", data_path + ".info"), link)

    def _write_info(self, info: UploadInfo) -> None:
        info_path = Path(info.storage["InfoPath"])
        temp = info_path.with_name(f".{info_path.name}.tmp")
        try:
            with open(temp, "wb") as stream:
                stream.write(encode_info(info))
            os.replace(temp, info_path)
        except BaseException:       # no room for it, say: the old info stays, and no temp file
            temp.unlink(missing_ok=True)
            raise

    def _terminate(self, info: UploadInfo) -> None:
        # The info goes first: once it is gone the upload no longer exists, whatever else remains.
        data = info.storage["Path"]
        for path in (info.storage["InfoPath"], data, data + STAGED_SUFFIX, self._index_path(info.id),
                     self._finals_path(info.id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        flat = self.directory / info.id
        if flat.is_symlink():       # a --flat-links link; a flat data file went with `data` above
            flat.unlink()

    def _concatenate(self, final: UploadInfo, partials: Sequence[UploadInfo]) -> UploadInfo:
        fd = os.open(self._data_path(final), os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            position = 0
            for partial in partials:
                source = os.open(self._data_path(partial), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    position += nativeio.copy_range_all(source, 0, fd, position, partial.length or 0)
                finally:
                    os.close(source)
            nativeio.fdatasync(fd)
        finally:
            os.close(fd)
        joined = replace(final, offset=position, length=position)
        if final.length is None and self.infos is None:    # partials with deferred lengths: now it is known
            self._write_info(joined)
        return joined

    def _tombstone(self, upload_id: str) -> Path:
        return self.directory / EXPIRED_DIR / upload_id[:2] / upload_id

    def _expire(self, info: UploadInfo) -> None:
        tombstone = self._tombstone(info.id)
        tombstone.parent.mkdir(parents=True, exist_ok=True)
        tombstone.touch()
        self._terminate(info)

    def _prune_tombstones(self, older_than: float) -> int:
        pruned = 0
        for tombstone in (self.directory / EXPIRED_DIR).glob("*/*"):
            try:
                if tombstone.stat().st_mtime < older_than:
                    tombstone.unlink()
                    pruned += 1
            except FileNotFoundError:
                pass
        return pruned

    def _finals_path(self, partial_id: str) -> Path:
        return self.directory / FINALS_DIR / partial_id

    def _register_final(self, final: UploadInfo) -> None:
        (self.directory / FINALS_DIR).mkdir(exist_ok=True)
        for partial_id in set(final.partials):
            # One short O_APPEND write per line: concurrent registrations never interleave.
            fd = os.open(self._finals_path(partial_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, final.id.encode() + b"\n")
            finally:
                os.close(fd)

    def _finals_waiting_for(self, partial_id: str) -> list[str]:
        try:
            lines = self._finals_path(partial_id).read_text().split()
        except FileNotFoundError:
            return []
        return [line for line in dict.fromkeys(lines) if is_valid_upload_id(line)]

    def _list_upload_ids(self) -> list[str]:
        found = []
        for folder, subdirs, files in os.walk(self.directory):
            subdirs[:] = [name for name in subdirs if not name.startswith(".")]
            found += [name[:-5] for name in files if name.endswith(".info") and is_valid_upload_id(name[:-5])]
        return list(dict.fromkeys(found + self._indexed_ids()))

    def _indexed_ids(self) -> list[str]:
        """Ids of the index: also uploads stored under a path a hook chose."""
        index = self.directory / INDEX_DIR
        if not index.is_dir():
            return []
        return [entry.name for shard in index.iterdir() if shard.is_dir()
                for entry in shard.iterdir() if is_valid_upload_id(entry.name)]

    def _data_path(self, info: UploadInfo) -> str:
        return info.storage["Path"]

    # ---- with an info store (--info-store redis) ---------------------------------------------

    async def _create_recorded(self, infos: InfoStore, info: UploadInfo) -> UploadInfo:
        subdir, name = self._location(info)
        info = self._inline(self._new_data_file, info, subdir, name)
        try:
            await infos.create(self._portable(info))
            if self.flat_links and (subdir or name != info.id):
                self._inline(os.symlink, os.path.join(subdir, name), self.directory / info.id)
        except BaseException:       # the id is taken, or the store is down: leave no data file behind
            self._inline(self._remove_recorded, info)
            raise
        return info

    def _new_data_file(self, info: UploadInfo, subdir: str, name: str) -> UploadInfo:
        self._check_directory()     # never recreate it: an unmounted volume must not fill the root disk
        folder = self.directory / subdir
        folder.mkdir(parents=True, exist_ok=True)
        data_path = folder / name
        os.close(os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        return replace(info, storage={"Type": "filestore", "Path": str(data_path)})

    async def _get_recorded(self, infos: InfoStore, upload_id: str) -> UploadInfo:
        """offset = min(recorded, file size): bytes beyond the recorded offset (a request cut off
        before it recorded them, or a writer that lost its lock) do not count, and a file that lost
        bytes the store recorded (power loss with --fsync never) reports what it holds."""
        info = self._local(await infos.load(upload_id))
        size = self._inline(self._data_size, info)
        if size < info.offset:
            log.warning("upload %s: the data file holds %d bytes, %d were recorded", upload_id, size, info.offset)
            try:
                await infos.advance(upload_id, info.offset, size, None)
            except OffsetConflict:  # moved meanwhile: the next look-up sees it
                pass
            info = replace(info, offset=size)
        return info

    def _data_size(self, info: UploadInfo) -> int:
        try:
            return os.stat(self._data_path(info)).st_size
        except FileNotFoundError:
            self._check_directory()
            raise UploadCorrupt(f"data file of upload {info.id} is missing") from None

    def _remove_recorded(self, info: UploadInfo) -> None:
        data = self._data_path(info)
        for path in (data, data + STAGED_SUFFIX):
            _unlink_quietly(path)
        flat = self.directory / info.id
        if flat.is_symlink():
            flat.unlink()

    def _portable(self, info: UploadInfo) -> UploadInfo:
        """As the info store keeps it: the data path relative to the upload directory."""
        path = os.path.relpath(info.storage["Path"], self.directory)
        return replace(info, storage={**info.storage, "Path": path})

    def _local(self, info: UploadInfo) -> UploadInfo:
        path = info.storage.get("Path", "")
        try:
            relative = safe_relative_path(path) if path else ""
        except ValueError:
            relative = ""
        if not relative:
            raise UploadCorrupt(f"the recorded info of upload {info.id} has no valid data path")
        return replace(info, storage={**info.storage, "Path": str(self.directory / relative)})


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_marker(marker: str, offset: int) -> None:
    """Whole or not at all (temp file + rename): recovery reads an empty marker as "roll back to 0",
    so a marker cut short by a full disk or a kill would throw away every byte stored before."""
    head, name = os.path.split(marker)
    temp = os.path.join(head, f".{name}.tmp")
    try:
        with open(temp, "w") as stream:
            stream.write(str(offset))
        os.replace(temp, marker)
    except BaseException:
        _unlink_quietly(temp)
        raise


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, max(size, 4096))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _recover_staged(data_path: str) -> None:
    """A staged write that never committed (the process died): cut the data back."""
    marker = data_path + STAGED_SUFFIX
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_CLOEXEC)   # cheaper than open() on every look-up
    except FileNotFoundError:
        return
    try:
        offset = int(os.read(fd, 64).strip() or b"0")
    except ValueError:
        offset = 0
    finally:
        os.close(fd)
    if os.stat(data_path).st_size > offset:
        os.truncate(data_path, offset)
    os.unlink(marker)
