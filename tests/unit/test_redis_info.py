"""RedisInfoStore against a real redis-server, alone and behind FileStorage and S3Storage (moto):
upload info and recorded offsets in Redis, and the fenced compare-and-set that advances them."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import pytest
import redis

from tests.support.redis_server import RedisServer, free_port, redis_down, redis_prefix, redis_server, redis_url  # noqa: F401
from tests.support.s3_server import REGION, MotoServer, moto_server, s3_bucket  # noqa: F401
from tusfast.config import Config
from tusfast.core.model import UploadInfo
from tusfast.storage import FileStorage, StorageUnavailable, UploadCorrupt, UploadGone, UploadNotFound
from tusfast.storage.info import Fenced, FencedWriter, OffsetConflict
from tusfast.storage.redis_info import RedisInfoStore
from tusfast.storage.s3 import MIN_PART_SIZE, S3Storage

T = TypeVar("T")
MiB = 1024 * 1024


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(60):
            return await coroutine
    return asyncio.run(bounded())


def new_id() -> str:
    return os.urandom(16).hex()


def new_info(length: int | None = 10, **changes: Any) -> UploadInfo:
    now = time.time()
    fields: dict[str, Any] = {"storage": {"Type": "filestore", "Path": "x"}, **changes}
    return UploadInfo(new_id(), length, 0, {"name": b"a.txt"}, "name YS50eHQ=", created_at=now, updated_at=now,
                      **fields)


def sync_client(url: str) -> "redis.Redis[str]":
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


async def opened(url: str, prefix: str) -> RedisInfoStore:
    store = RedisInfoStore(url, prefix=prefix)
    await store.open()
    return store


# ---- the store alone --------------------------------------------------------------------------

def test_create_load_save_round_trip(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        store = await opened(redis_url, redis_prefix)
        try:
            info = new_info(length=None, concat="partial")
            await store.create(info)
            loaded = await store.load(info.id)
            assert (loaded.id, loaded.length, loaded.offset, loaded.metadata) == (info.id, None, 0, info.metadata)
            assert loaded.metadata_header == info.metadata_header and loaded.is_partial
            assert loaded.storage == info.storage and loaded.updated_at > 0
            with pytest.raises(FileExistsError):
                await store.create(info)
            await store.save(loaded.with_length(99))
            assert (await store.load(info.id)).length == 99
            await store.save(replace_offset(loaded.with_length(99), 99), offset=True)
            assert (await store.load(info.id)).offset == 99
            with pytest.raises(UploadNotFound):
                await store.load(new_id())
            with pytest.raises(UploadNotFound):
                await store.load("../etc")
            with pytest.raises(UploadNotFound):
                await store.save(new_info())
        finally:
            await store.close()
    run(scenario())
    keys = sync_client(redis_url).keys(redis_prefix + "*")
    assert any(key.startswith(redis_prefix + "upload:") for key in keys)


def replace_offset(info: UploadInfo, offset: int) -> UploadInfo:
    return info.with_offset(offset)


def test_a_broken_record_is_that_uploads_problem(redis_url: str, redis_prefix: str) -> None:
    upload_id = new_id()
    sync_client(redis_url).hset(f"{redis_prefix}upload:{upload_id}", mapping={"info": "{not json", "offset": 0})

    async def scenario() -> None:
        store = await opened(redis_url, redis_prefix)
        try:
            with pytest.raises(UploadCorrupt):
                await store.load(upload_id)
        finally:
            await store.close()
    run(scenario())


def test_advance_is_a_compare_and_set_on_offset_and_fence(redis_url: str, redis_prefix: str) -> None:
    client = sync_client(redis_url)

    async def scenario() -> None:
        store = await opened(redis_url, redis_prefix)
        try:
            info = new_info(length=100)
            await store.create(info)
            fence_key = f"{redis_prefix}fence:{info.id}"
            client.set(fence_key, 3)
            await store.advance(info.id, 0, 40, 3)
            assert (await store.load(info.id)).offset == 40
            await store.advance(info.id, 0, 40, 3)      # a retry whose first reply was lost: no conflict
            with pytest.raises(OffsetConflict) as moved:
                await store.advance(info.id, 10, 50, 3)
            assert moved.value.offset == 40
            client.set(fence_key, 4)                    # someone else took the lock
            with pytest.raises(OffsetConflict) as stale:
                await store.advance(info.id, 40, 60, 3)
            assert stale.value.offset == 40 and "taken over" in str(stale.value)
            assert (await store.load(info.id)).offset == 40
            await store.advance(info.id, 40, 60, 4)
            await store.advance(info.id, 60, 55, None)  # unfenced (a repair), also downwards
            assert (await store.load(info.id)).offset == 55
            client.delete(fence_key)                    # a lock taken later starts a new count at 1
            with pytest.raises(OffsetConflict):
                await store.advance(info.id, 55, 70, 4)
            await store.delete(info.id)
            with pytest.raises(OffsetConflict) as gone:
                await store.advance(info.id, 55, 70, None)
            assert gone.value.offset is None
        finally:
            await store.close()
    run(scenario())


def test_tombstones_listing_and_finals(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        store = await opened(redis_url, redis_prefix)
        try:
            first, second, final = new_info(), new_info(), new_info()
            for info in (first, second):
                await store.create(info)
            assert sorted(await store.list_ids()) == sorted([first.id, second.id])
            await store.register_final(UploadInfo(final.id, None, partials=(first.id, second.id, first.id)))
            assert await store.finals_waiting_for(first.id) == [final.id]
            assert await store.finals_waiting_for(second.id) == [final.id]
            await store.expire(first.id)
            with pytest.raises(UploadGone):
                await store.load(first.id)
            assert await store.finals_waiting_for(first.id) == []       # went with the partial
            assert await store.list_ids() == [second.id]
            assert await store.prune_tombstones(time.time() - 3600) == 0    # too young
            assert await store.prune_tombstones(time.time() + 1) == 1
            with pytest.raises(UploadNotFound):
                await store.load(first.id)
            await store.delete(second.id)                               # no tombstone
            with pytest.raises(UploadNotFound):
                await store.load(second.id)
            assert await store.list_ids() == []
        finally:
            await store.close()
    run(scenario())


def test_redis_unreachable_is_storage_unavailable_not_a_hang() -> None:
    async def scenario() -> None:
        store = RedisInfoStore(f"redis://:secret@127.0.0.1:{free_port()}/0", prefix="x:")
        started = time.monotonic()
        for attempt in (store.open(), store.load(new_id()), store.create(new_info()),
                        store.advance(new_id(), 0, 1, 1), store.list_ids()):
            with pytest.raises(StorageUnavailable) as error:
                await attempt
            assert "secret" not in str(error.value) and "Redis" in str(error.value)
        assert time.monotonic() - started < 30      # bounded by the socket timeouts, not forever
        await store.close()
    run(scenario())


def test_redis_going_away_and_coming_back(redis_down: RedisServer, redis_prefix: str) -> None:
    async def scenario() -> None:
        store = await opened(redis_down.url, redis_prefix)
        try:
            info = new_info()
            await store.create(info)
            redis_down.stop()
            with pytest.raises(StorageUnavailable):
                await store.load(info.id)
            redis_down.start()      # no persistence: the record is gone, and the client reconnects
            with pytest.raises(UploadNotFound):
                await store.load(info.id)
            await store.create(info)
            assert (await store.load(info.id)).offset == 0
        finally:
            await store.close()
    run(scenario())


def test_config_needs_a_redis_url_for_the_redis_info_store() -> None:
    with pytest.raises(ValueError, match="--redis-url"):
        Config(info_store="redis")
    with pytest.raises(ValueError, match="info store"):
        Config(info_store="etcd", redis_url="redis://127.0.0.1:6379/0")
    assert Config(info_store="redis", redis_url="redis://127.0.0.1:6379/0").info_store == "redis"


# ---- behind FileStorage -----------------------------------------------------------------------

class Lease:
    """Stands for the handler's lock: a fence and a local lease check."""

    def __init__(self, fence: int) -> None:
        self.fence = fence
        self.over = False

    def expired(self) -> bool:
        return self.over


async def patch(storage: Any, upload_id: str, data: bytes, lease: Lease | None = None) -> UploadInfo:
    info = await storage.get_info(upload_id)
    writer = await storage.open_writer(info)
    if lease is not None:
        assert isinstance(writer, Fenced)
        writer.fence(lease.fence, lease.expired)
    try:
        await writer.write(info.offset, [data])
    finally:
        await writer.close(durable=False)
    return info


def file_storage(tmp_path: Path, url: str, prefix: str) -> FileStorage:
    storage = FileStorage(tmp_path / "shared", info_store=RedisInfoStore(url, prefix=prefix))
    storage.prepare()
    return storage


def test_file_storage_keeps_no_info_files_and_two_hosts_see_one_upload(tmp_path: Path, redis_url: str,
                                                                       redis_prefix: str) -> None:
    async def scenario() -> None:
        a = file_storage(tmp_path, redis_url, redis_prefix)
        b = file_storage(tmp_path, redis_url, redis_prefix)
        try:
            info = await a.create(new_info(length=10, storage={}))
            await patch(a, info.id, b"hello")
            await patch(b, info.id, b"world")
            seen = await a.get_info(info.id)
            assert seen.offset == 10 and seen.is_complete
            assert Path(seen.storage["Path"]).read_bytes() == b"helloworld"
            assert sorted(path.name for path in (tmp_path / "shared").iterdir()) == [info.id]   # no .info
            recorded = sync_client(redis_url).hget(f"{redis_prefix}upload:{info.id}", "info") or ""
            assert f'"Path":"{info.id}"' in recorded       # relative: hosts may mount it anywhere
            assert await a.list_upload_ids() == [info.id]
            await b.terminate(seen)
            with pytest.raises(UploadNotFound):
                await a.get_info(info.id)
            assert list((tmp_path / "shared").iterdir()) == []
        finally:
            await a.infos.close()       # type: ignore[union-attr]
            await b.infos.close()       # type: ignore[union-attr]
    run(scenario())


def test_file_offset_is_the_recorded_one_never_more_than_the_file(tmp_path: Path, redis_url: str,
                                                                    redis_prefix: str) -> None:
    async def scenario() -> None:
        storage = file_storage(tmp_path, redis_url, redis_prefix)
        try:
            info = await storage.create(new_info(length=100, storage={}))
            path = Path(info.storage["Path"])
            with open(path, "ab") as stream:    # stored, never recorded (a crash before the recording)
                stream.write(b"x" * 30)
            assert (await storage.get_info(info.id)).offset == 0
            await patch(storage, info.id, b"a" * 20)
            assert (await storage.get_info(info.id)).offset == 20
            os.truncate(path, 12)               # the file lost recorded bytes (power loss, fsync never)
            assert (await storage.get_info(info.id)).offset == 12
            assert sync_client(redis_url).hget(f"{redis_prefix}upload:{info.id}", "offset") == "12"   # repaired
        finally:
            await storage.infos.close()     # type: ignore[union-attr]
    run(scenario())


def test_a_stale_writer_cannot_advance_the_offset(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    client = sync_client(redis_url)

    async def scenario() -> None:
        storage = file_storage(tmp_path, redis_url, redis_prefix)
        try:
            info = await storage.create(new_info(length=100, storage={}))
            fence_key = f"{redis_prefix}fence:{info.id}"
            client.set(fence_key, 1)
            await patch(storage, info.id, b"a" * 10, Lease(1))
            stale = await storage.open_writer(await storage.get_info(info.id))
            assert isinstance(stale, FencedWriter)
            stale.fence(1, lambda: False)
            await stale.write(10, [b"s" * 30])
            client.incr(fence_key)              # another instance took the lock meanwhile
            with pytest.raises(OffsetConflict):
                await stale.close(durable=False)
            assert (await storage.get_info(info.id)).offset == 10       # its 30 bytes never count
            await patch(storage, info.id, b"b" * 5, Lease(2))           # the new holder goes on at 10
            seen = await storage.get_info(info.id)
            assert seen.offset == 15
            assert Path(seen.storage["Path"]).read_bytes()[:15] == b"a" * 10 + b"b" * 5
        finally:
            await storage.infos.close()     # type: ignore[union-attr]
    run(scenario())


def test_a_writer_whose_lease_ran_out_stops_before_writing(tmp_path: Path, redis_url: str,
                                                           redis_prefix: str) -> None:
    sync_client(redis_url)

    async def scenario() -> None:
        storage = file_storage(tmp_path, redis_url, redis_prefix)
        try:
            info = await storage.create(new_info(length=100, storage={}))
            lease = Lease(0)
            sync_client(redis_url).set(f"{redis_prefix}fence:{info.id}", 0)
            writer = await storage.open_writer(info)
            assert isinstance(writer, FencedWriter)
            writer.fence(None, lease.expired)
            await writer.write(0, [b"k" * 8])
            lease.over = True
            with pytest.raises(StorageUnavailable, match="ran out"):
                await writer.write(8, [b"late"])
            await writer.close(durable=False)      # nobody took over: what it stored before counts
            seen = await storage.get_info(info.id)
            assert seen.offset == 8 and Path(seen.storage["Path"]).stat().st_size == 8
        finally:
            await storage.infos.close()     # type: ignore[union-attr]
    run(scenario())


def test_staged_bytes_count_only_after_commit(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        storage = file_storage(tmp_path, redis_url, redis_prefix)
        try:
            info = await storage.create(new_info(length=100, storage={}))
            writer = await storage.open_writer(info, staged=True)
            await writer.write(0, [b"c" * 10])
            await writer.close(durable=False)                       # no commit: a checksum mismatch
            assert (await storage.get_info(info.id)).offset == 0
            writer = await storage.open_writer(info, staged=True)
            await writer.write(0, [b"d" * 10])
            await writer.commit()
            await writer.close(durable=True)
            assert (await storage.get_info(info.id)).offset == 10
        finally:
            await storage.infos.close()     # type: ignore[union-attr]
    run(scenario())


def test_file_storage_expiry_and_finals_go_through_the_info_store(tmp_path: Path, redis_url: str,
                                                                  redis_prefix: str) -> None:
    async def scenario() -> None:
        storage = file_storage(tmp_path, redis_url, redis_prefix)
        try:
            partial = await storage.create(new_info(length=3, concat="partial", storage={}))
            final = await storage.create(new_info(length=None, storage={}, partials=(partial.id,),
                                                  concat=f"final;/files/{partial.id}"))
            await storage.register_final(final)
            assert await storage.finals_waiting_for(partial.id) == [final.id]
            await patch(storage, partial.id, b"abc")
            partial = await storage.get_info(partial.id)
            joined = await storage.concatenate(await storage.get_info(final.id), [partial])
            seen = await storage.get_info(final.id)
            assert (joined.offset, seen.offset, seen.length) == (3, 3, 3)
            assert Path(seen.storage["Path"]).read_bytes() == b"abc"
            await storage.expire(seen)
            with pytest.raises(UploadGone):
                await storage.get_info(final.id)
            assert not Path(seen.storage["Path"]).exists()
            assert await storage.prune_tombstones(time.time() + 1) == 1
            with pytest.raises(UploadNotFound):
                await storage.get_info(final.id)
        finally:
            await storage.infos.close()     # type: ignore[union-attr]
    run(scenario())


# ---- behind S3Storage (moto) ------------------------------------------------------------------

@pytest.fixture
def s3_store(moto_server: MotoServer, s3_bucket: str, tmp_path: Path, redis_url: str,
             redis_prefix: str) -> Callable[[], S3Storage]:
    def make() -> S3Storage:
        return S3Storage(s3_bucket, "up/", moto_server.endpoint, REGION, part_size=MIN_PART_SIZE,
                         temp_dir=str(tmp_path), info_store=RedisInfoStore(redis_url, prefix=redis_prefix))
    return make


async def s3_opened(make: Callable[[], S3Storage]) -> S3Storage:
    store = make()
    await store.open()
    assert store.infos is not None
    await store.infos.open()
    return store


async def s3_closed(store: S3Storage) -> None:
    await store.close()
    if store.infos is not None:
        await store.infos.close()


def test_s3_keeps_info_in_redis_and_parts_beyond_the_recorded_offset_do_not_count(
        s3_store: Callable[[], S3Storage], moto_server: MotoServer, s3_bucket: str) -> None:
    payload = os.urandom(MIN_PART_SIZE + 3 * MiB)

    async def scenario() -> None:
        store = await s3_opened(s3_store)
        try:
            info = await store.create(UploadInfo(new_id(), len(payload), 0, created_at=time.time()))
            keys = [item["Key"] for item in moto_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
            assert not any(key.endswith(".info") for key in keys)
            await patch(store, info.id, payload[:2 * MiB])                  # a `.part` tail of 2 MiB
            assert (await store.get_info(info.id)).offset == 2 * MiB
            # A writer that is never recorded (no fence, no recorder: a crash before the recording)
            # pushes a whole part holding the tail and more.
            ghost = await store._plain_writer(await store.get_info(info.id))
            await ghost.write(2 * MiB, [os.urandom(MIN_PART_SIZE)])
            await ghost._wait_for_part()
            seen = await store.get_info(info.id)
            assert seen.offset == 2 * MiB       # the stray part does not count; `.part` still has the bytes
            await patch(store, info.id, payload[2 * MiB:])
            seen = await store.get_info(info.id)
            assert seen.offset == len(payload) and seen.is_complete
            data = b"".join([chunk async for chunk in store.read_range(seen, 0, seen.offset)])
            assert data == payload      # the stray part was overwritten
        finally:
            await s3_closed(store)
    run(scenario())


def test_s3_upload_completes_byte_exact_with_fencing(s3_store: Callable[[], S3Storage], moto_server: MotoServer,
                                                     s3_bucket: str, redis_url: str, redis_prefix: str) -> None:
    payload = os.urandom(MIN_PART_SIZE + 1000)
    client = sync_client(redis_url)

    async def scenario() -> None:
        store = await s3_opened(s3_store)
        try:
            info = await store.create(UploadInfo(new_id(), len(payload), 0, created_at=time.time()))
            client.set(f"{redis_prefix}fence:{info.id}", 7)
            await patch(store, info.id, payload[:1000], Lease(7))
            stale = await store.open_writer(await store.get_info(info.id))
            assert isinstance(stale, FencedWriter)
            stale.fence(7, lambda: False)
            client.incr(f"{redis_prefix}fence:{info.id}")
            await stale.write(1000, [b"z" * (len(payload) - 1000)])
            with pytest.raises(OffsetConflict):
                await stale.close(durable=True)     # it may not complete the upload
            assert (await store.get_info(info.id)).offset == 1000
            await patch(store, info.id, payload[1000:], Lease(8))
            seen = await store.get_info(info.id)
            assert seen.is_complete
            data = b"".join([chunk async for chunk in store.read_range(seen, 0, len(payload))])
            assert data == payload
        finally:
            await s3_closed(store)
    run(scenario())
