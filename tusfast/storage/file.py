"""Uploads as plain files: `<id>` holds the bytes, `<id>.info` the JSON info (tusd's layout and
format, so tools written for tusd's file store keep working).

The offset is the data file's size, as in tusd: it can never be more than what was written, also
after kill -9. The info file is only ever replaced whole (temp file + rename), never torn.
With a dir layout, both files live in a date directory and `.ids/<ab>/<id>` links to the info file,
so an upload is found by id alone after a restart.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from .. import nativeio
from ..core.headers import parse_metadata
from ..core.model import UploadInfo, is_valid_upload_id
from .base import (Buffer, StorageFull, StorageUnavailable, UploadCorrupt, UploadNotFound)
from .layout import DirLayout

T = TypeVar("T")
INDEX_DIR = ".ids"

_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNAVAILABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EIO}


def translate(exc: OSError) -> Exception:
    """OS errors as storage errors: a full disk is the client's to retry later, not a crash."""
    if exc.errno in _FULL:
        return StorageFull(str(exc))
    if exc.errno in _UNAVAILABLE:
        return StorageUnavailable(str(exc))
    return exc


class FileWriter:
    def __init__(self, fd: int, run: Callable[..., Any]) -> None:
        self._fd = fd
        self._run = run

    async def write(self, offset: int, chunks: Sequence[Buffer]) -> None:
        try:
            await self._run(nativeio.pwritev_all, self._fd, chunks, offset)
        except OSError as exc:
            raise translate(exc) from exc

    async def close(self, *, durable: bool) -> None:
        try:
            if durable:
                await self._run(nativeio.fdatasync, self._fd)
        except OSError as exc:
            raise translate(exc) from exc
        finally:
            os.close(self._fd)


class FileStorage:
    def __init__(self, directory: str | os.PathLike[str], dir_layout: str | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        self.directory = Path(directory).absolute()
        self.layout = DirLayout(dir_layout) if dir_layout else None
        self._executor = executor or ThreadPoolExecutor(max_workers=8, thread_name_prefix="tusfast-file")

    def prepare(self) -> None:
        """Create the upload directory; called once at start-up, so a bad path fails loudly then."""
        self.directory.mkdir(parents=True, exist_ok=True)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        # Disk calls run off the event loop: one slow disk must not stall every connection.
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args))

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await self._run(function, *args)
        except OSError as exc:
            raise translate(exc) from exc

    # ---- the Storage protocol ---------------------------------------------------------------

    async def create(self, info: UploadInfo) -> UploadInfo:
        return await self._call(self._create, info)

    async def get_info(self, upload_id: str) -> UploadInfo:
        return await self._call(self._get_info, upload_id)

    async def open_writer(self, info: UploadInfo) -> FileWriter:
        fd = await self._call(os.open, self._data_path(info), os.O_WRONLY | os.O_CLOEXEC)
        return FileWriter(fd, self._run)

    async def declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        updated = info.with_length(length)
        await self._call(self._write_info, updated)
        return updated

    async def terminate(self, info: UploadInfo) -> None:
        await self._call(self._terminate, info)

    # ---- blocking implementations (run in the executor) -------------------------------------

    def _create(self, info: UploadInfo) -> UploadInfo:
        subdir = self.layout.directory(info.created_at) if self.layout else ""
        folder = self.directory / subdir
        folder.mkdir(parents=True, exist_ok=True)
        data_path = folder / info.id
        info = replace(info, storage={"Type": "filestore", "Path": str(data_path),
                                      "InfoPath": str(data_path) + ".info"})
        os.close(os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        self._write_info(info)
        if subdir:
            self._link_index(info.id, subdir)
        return info

    def _get_info(self, upload_id: str) -> UploadInfo:
        info_path = self._find_info(upload_id)
        try:
            raw = info_path.read_bytes()
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None
        info = _decode_info(raw, upload_id)
        data_path = str(info_path)[:-len(".info")]
        try:
            size = os.stat(data_path).st_size
        except FileNotFoundError:
            raise UploadCorrupt(f"data file of upload {upload_id} is missing") from None
        return replace(info, offset=size, storage={**info.storage, "Path": data_path, "InfoPath": str(info_path)})

    def _find_info(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        flat = self.directory / f"{upload_id}.info"
        if flat.exists():
            return flat
        try:
            target = os.readlink(self._index_path(upload_id))
        except FileNotFoundError:
            return flat
        resolved = (self._index_path(upload_id).parent / target).resolve()
        if not resolved.is_relative_to(self.directory.resolve()) or resolved.name != f"{upload_id}.info":
            raise UploadCorrupt(f"index entry of upload {upload_id} points outside the upload directory")
        return resolved

    def _index_path(self, upload_id: str) -> Path:
        return self.directory / INDEX_DIR / upload_id[:2] / upload_id

    def _link_index(self, upload_id: str, subdir: str) -> None:
        link = self._index_path(upload_id)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.join("..", "..", subdir, f"{upload_id}.info"), link)

    def _write_info(self, info: UploadInfo) -> None:
        info_path = Path(info.storage["InfoPath"])
        temp = info_path.with_name(f".{info_path.name}.tmp")
        with open(temp, "wb") as stream:
            stream.write(_encode_info(info))
        os.replace(temp, info_path)

    def _terminate(self, info: UploadInfo) -> None:
        # The info goes first: once it is gone the upload no longer exists, whatever else remains.
        for path in (info.storage["InfoPath"], info.storage["Path"], self._index_path(info.id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _data_path(self, info: UploadInfo) -> str:
        return info.storage["Path"]


def _encode_info(info: UploadInfo) -> bytes:
    document = {
        "ID": info.id,
        "Size": info.length or 0,
        "SizeIsDeferred": info.length is None,
        "Offset": info.offset,
        "MetaData": {key: value.decode("utf-8", "replace") for key, value in info.metadata.items()},
        "IsPartial": False,
        "IsFinal": False,
        "PartialUploads": None,
        "Storage": info.storage,
        "Tusfast": {"MetaDataHeader": info.metadata_header, "CreatedAt": info.created_at},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _decode_info(raw: bytes, upload_id: str) -> UploadInfo:
    try:
        document = json.loads(raw)
        extra = document.get("Tusfast") or {}
        header = extra.get("MetaDataHeader")
        metadata = (parse_metadata(header) if header else
                    {key: str(value).encode() for key, value in (document.get("MetaData") or {}).items()})
        length = None if document.get("SizeIsDeferred") else int(document["Size"])
        if document["ID"] != upload_id or (length is not None and length < 0):
            raise ValueError("info does not describe this upload")
        return UploadInfo(upload_id, length, 0, metadata, header, float(extra.get("CreatedAt") or 0.0),
                          dict(document.get("Storage") or {}))
    except Exception as exc:    # any defect in one info file is that upload's problem only
        raise UploadCorrupt(f"info file of upload {upload_id} is unreadable: {exc}") from None
