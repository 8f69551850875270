"""FileStorage against the storage contract, plus its on-disk promises."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Awaitable, TypeVar

import pytest

from tusfast.core.model import UploadInfo
from tusfast.storage import (FileStorage, LengthDeferrable, StorageFull, Terminatable, UploadCorrupt,
                             UploadNotFound)

T = TypeVar("T")
ID = "0123456789abcdef0123456789abcdef"
NOON = 1795168800.0     # 2026-11-20T10:00:00Z


def run(coroutine: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coroutine
    return asyncio.run(wrapped())


def new_info(upload_id: str = ID, length: int | None = 10, **fields: Any) -> UploadInfo:
    return UploadInfo(upload_id, length, created_at=fields.pop("created_at", NOON), **fields)


async def write(storage: FileStorage, info: UploadInfo, offset: int, *chunks: bytes | memoryview,
                durable: bool = True) -> None:
    writer = await storage.open_writer(info)
    try:
        await writer.write(offset, list(chunks))
    finally:
        await writer.close(durable=durable)


@pytest.fixture(params=[None, "{year}/{month}/{day}"], ids=["flat", "dated"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> FileStorage:
    store = FileStorage(tmp_path, request.param)
    store.prepare()
    return store


def test_implements_the_extension_protocols(storage: FileStorage) -> None:
    assert isinstance(storage, LengthDeferrable) and isinstance(storage, Terminatable)


def test_create_write_and_read_back(storage: FileStorage) -> None:
    async def scenario() -> None:
        info = await storage.create(new_info(metadata={"name": b"x"}, metadata_header="name eA=="))
        await write(storage, info, 0, b"hello", memoryview(b" wor"))
        await write(storage, info, 9, b"l")
        stored = await storage.get_info(ID)
        assert stored.offset == 10 and stored.is_complete
        assert stored.metadata == {"name": b"x"} and stored.echo_metadata() == "name eA=="
        assert Path(stored.storage["Path"]).read_bytes() == b"hello worl"
    run(scenario())


def test_unknown_and_invalid_ids_are_not_found(storage: FileStorage) -> None:
    for upload_id in ("f" * 32, "../" + ID[3:], ID.upper(), "", "a.b", ".ids"):
        with pytest.raises(UploadNotFound):
            run(storage.get_info(upload_id))


def test_dir_layout_places_files_by_utc_date_and_finds_them_by_id(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, "{year}/{month}/{day}/{hour}")
    storage.prepare()
    run(storage.create(new_info()))
    assert (tmp_path / "2026/11/20/10" / ID).exists()
    assert (tmp_path / "2026/11/20/10" / f"{ID}.info").exists()
    assert not (tmp_path / f"{ID}.info").exists()
    restarted = FileStorage(tmp_path, "{year}")     # a new process, even with another layout
    assert run(restarted.get_info(ID)).length == 10


def test_deferred_length_is_declared_once_and_persisted(storage: FileStorage) -> None:
    async def scenario() -> None:
        info = await storage.create(new_info(length=None))
        assert (await storage.get_info(ID)).length is None
        await storage.declare_length(info, 42)
        assert (await storage.get_info(ID)).length == 42
    run(scenario())


def test_info_is_replaced_atomically_without_leftovers(storage: FileStorage) -> None:
    info = run(storage.create(new_info(length=None)))
    run(storage.declare_length(info, 5))
    folder = Path(info.storage["InfoPath"]).parent
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(ID) or p.name.startswith(".")) \
        == [ID, f"{ID}.info"]


def test_info_file_is_tusd_compatible(storage: FileStorage) -> None:
    info = run(storage.create(new_info(metadata={"filename": "słońce".encode()})))
    document = json.loads(Path(info.storage["InfoPath"]).read_text())
    assert document["ID"] == ID and document["Size"] == 10 and document["SizeIsDeferred"] is False
    assert document["MetaData"] == {"filename": "słońce"}
    assert document["Storage"]["Type"] == "filestore"


def test_reads_an_info_written_by_tusd(tmp_path: Path) -> None:
    (tmp_path / ID).write_bytes(b"abc")
    (tmp_path / f"{ID}.info").write_text(json.dumps({
        "ID": ID, "Size": 0, "SizeIsDeferred": True, "Offset": 3, "MetaData": {"filename": "a.txt"},
        "IsPartial": False, "IsFinal": False, "PartialUploads": None,
        "Storage": {"Type": "filestore", "Path": "/elsewhere/" + ID}}))
    info = run(FileStorage(tmp_path).get_info(ID))
    assert info.length is None and info.offset == 3 and info.metadata == {"filename": b"a.txt"}
    assert info.storage["Path"] == str(tmp_path / ID)


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"ID": "other"}', b"\xff\xfe"])
def test_corrupt_info_affects_only_that_upload(storage: FileStorage, content: bytes) -> None:
    good = run(storage.create(new_info("a" * 32)))
    bad = run(storage.create(new_info()))
    Path(bad.storage["InfoPath"]).write_bytes(content)
    with pytest.raises(UploadCorrupt):
        run(storage.get_info(ID))
    assert run(storage.get_info(good.id)).length == 10


def test_missing_data_file_is_corrupt_not_a_crash(storage: FileStorage) -> None:
    info = run(storage.create(new_info()))
    os.unlink(info.storage["Path"])
    with pytest.raises(UploadCorrupt):
        run(storage.get_info(ID))


def test_terminate_removes_every_file(storage: FileStorage, tmp_path: Path) -> None:
    info = run(storage.create(new_info()))
    run(storage.terminate(info))
    with pytest.raises(UploadNotFound):
        run(storage.get_info(ID))
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()]
    assert leftovers == []


def test_disk_full_is_storage_full(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    storage = FileStorage(tmp_path)
    info = run(storage.create(new_info()))
    os.unlink(info.storage["Path"])
    os.symlink("/dev/full", info.storage["Path"])
    with pytest.raises(StorageFull):
        run(write(storage, info, 0, b"x", durable=False))


def test_created_at_is_kept(storage: FileStorage) -> None:
    now = time.time()
    run(storage.create(new_info(created_at=now)))
    assert run(storage.get_info(ID)).created_at == pytest.approx(now)


def test_flat_links_point_at_dated_data_and_go_with_the_upload(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, "{year}/{month}/{day}", flat_links=True)
    storage.prepare()
    info = run(storage.create(new_info()))
    run(write(storage, info, 0, b"0123456789"))
    flat = tmp_path / ID
    assert flat.is_symlink() and flat.read_bytes() == b"0123456789"
    assert flat.resolve() == Path(info.storage["Path"]).resolve()
    assert run(storage.get_info(ID)).offset == 10          # the link does not confuse look-ups
    assert run(storage.list_upload_ids()).count(ID) == 1     # listed once, not again via the link
    run(storage.terminate(info))
    assert not flat.exists() and not flat.is_symlink()


def test_no_flat_link_without_a_layout(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, None, flat_links=True)
    storage.prepare()
    info = run(storage.create(new_info()))
    assert not (tmp_path / ID).is_symlink() and Path(info.storage["Path"]) == tmp_path / ID


def test_a_change_made_by_another_process_is_seen_despite_the_info_cache(tmp_path: Path) -> None:
    """Two storages on one directory stand for two processes: each caches decoded info files."""
    first, second = FileStorage(tmp_path), FileStorage(tmp_path)
    info = run(first.create(new_info(length=None)))
    assert run(first.get_info(ID)).length is None            # cached now
    run(second.declare_length(run(second.get_info(ID)), 42))
    assert run(first.get_info(ID)).length == 42
    info_path = Path(info.storage["InfoPath"])
    info_path.write_bytes(b"{ not json")                      # rewritten in place, another size
    with pytest.raises(UploadCorrupt):
        run(first.get_info(ID))
    info_path.unlink()
    with pytest.raises(UploadNotFound):
        run(first.get_info(ID))
