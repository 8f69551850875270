"""S3Storage against a real S3-compatible server (moto in server mode, 5 MiB minimum part size)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import pytest

from tests.support.s3_server import REGION, MotoServer, list_keys, moto_server, open_multipart_uploads, s3_bucket
from tusfast.cli import build_parser, config_from_args
from tusfast.config import Config
from tusfast.core.model import UploadInfo
from tusfast.storage import (Concatenatable, Expirable, LengthDeferrable, Lifecycle, LocalFile, Readable,
                             StorageUnavailable, Terminatable, UploadCorrupt, UploadGone, UploadNotFound, supports)
from tusfast.storage.s3 import MIN_PART_SIZE, S3Storage, part_size_for

__all__ = ["moto_server", "s3_bucket"]     # the fixtures, used by name

T = TypeVar("T")
MiB = 1024 * 1024
PREFIX = "up/"


def ids() -> str:
    return os.urandom(16).hex()


def blob(size: int) -> bytes:
    return os.urandom(size)


@pytest.fixture
def make_store(moto_server: MotoServer, s3_bucket: str, tmp_path: Path) -> Callable[..., S3Storage]:
    def make(**options: Any) -> S3Storage:
        return S3Storage(options.pop("bucket", s3_bucket), options.pop("prefix", PREFIX),
                         options.pop("endpoint", moto_server.endpoint), REGION,
                         part_size=options.pop("part_size", MIN_PART_SIZE), temp_dir=str(tmp_path), **options)
    return make


@pytest.fixture
def store(make_store: Callable[..., S3Storage]) -> S3Storage:
    return make_store()


@pytest.fixture
def s3(moto_server: MotoServer) -> Any:
    return moto_server.client()


def run(store: S3Storage, scenario: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        await store.open()
        try:
            return await scenario()
        finally:
            await store.close()
    return asyncio.run(wrapped())


async def append(store: S3Storage, info: UploadInfo, *chunks: bytes) -> UploadInfo:
    """One PATCH: open a writer at the stored offset, write, close; returns the stored info."""
    info = await store.get_info(info.id)
    writer = await store.open_writer(info)
    try:
        await writer.write(info.offset, list(chunks))
    finally:
        await writer.close(durable=True)
    return await store.get_info(info.id)


async def read_all(store: S3Storage, info: UploadInfo, start: int = 0, end: int | None = None) -> bytes:
    end = info.length if end is None else end
    assert end is not None
    return b"".join([chunk async for chunk in store.read_range(info, start, end)])


def object_size(s3: Any, bucket: str, key: str) -> int:
    """0 if the object does not exist."""
    if key not in list_keys(s3, bucket):
        return 0
    return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])


def test_implements_every_extension_protocol_but_local_files(store: S3Storage) -> None:
    for protocol in (LengthDeferrable, Terminatable, Concatenatable, Expirable, Readable, Lifecycle):
        assert isinstance(store, protocol), protocol
    assert not isinstance(store, LocalFile)     # downloads stream through read_range
    assert supports(store, "checksum-trailer") and supports(store, "download")


def test_part_size_grows_to_stay_within_10000_parts() -> None:
    assert part_size_for(10 * MiB, 8 * MiB) == 8 * MiB
    assert part_size_for(200 * 1024 * MiB, 8 * MiB) * 10_000 >= 200 * 1024 * MiB
    assert part_size_for(None, 8 * MiB) * 10_000 >= 5 * 1024**4     # deferred: S3's largest object
    assert part_size_for(1, 1) == MIN_PART_SIZE


def test_moto_enforces_the_minimum_part_size(moto_server: MotoServer, s3_bucket: str, s3: Any) -> None:
    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key="small")["UploadId"]
    etags = [s3.upload_part(Bucket=s3_bucket, Key="small", UploadId=upload, PartNumber=number,
                            Body=b"x" * 1024)["ETag"] for number in (1, 2)]
    with pytest.raises(Exception, match="EntityTooSmall"):
        s3.complete_multipart_upload(Bucket=s3_bucket, Key="small", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": number, "ETag": etag} for number, etag in zip((1, 2), etags)]})


def test_offsets_across_incomplete_parts_and_completion(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    data = blob(12 * MiB + 123)
    upload_id = ids()

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, len(data), metadata={"name": b"a"}, metadata_header="name YQ=="))
        assert info.storage["Type"] == "s3store" and info.storage["Key"] == PREFIX + upload_id
        assert info.storage["Bucket"] == s3_bucket and info.storage["MultipartUpload"]
        position = 0
        for size in (100, 3 * MiB, 2 * MiB, 1, 4 * MiB, 2 * MiB + 22):
            info = await append(store, info, data[position:position + size])
            position += size
            assert info.offset == position
            parts = s3.list_parts(Bucket=s3_bucket, Key=PREFIX + upload_id,
                                  UploadId=info.storage["MultipartUpload"]).get("Parts", [])
            tail = object_size(s3, s3_bucket, f"{PREFIX}{upload_id}.part")
            assert sum(part["Size"] for part in parts) + tail == position      # all of it in S3
            assert all(part["Size"] >= MIN_PART_SIZE for part in parts)
            assert tail < MIN_PART_SIZE
        info = await append(store, info, data[position:])
        assert info.offset == len(data) and info.is_complete
        assert await read_all(store, info) == data
        assert info.metadata == {"name": b"a"} and info.echo_metadata() == "name YQ=="
        document = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"{PREFIX}{upload_id}.info")["Body"].read())
        assert document["ID"] == upload_id and document["Size"] == len(data) and document["Offset"] == len(data)
        assert document["Storage"]["Type"] == "s3store"

    run(store, scenario)
    assert list_keys(s3, s3_bucket) == [PREFIX + upload_id, f"{PREFIX}{upload_id}.info"]
    assert open_multipart_uploads(s3, s3_bucket) == []
    assert hashlib.sha256(s3.get_object(Bucket=s3_bucket, Key=PREFIX + upload_id)["Body"].read()).digest() == \
        hashlib.sha256(data).digest()


def test_a_write_of_exactly_one_part_leaves_no_tail(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    data = blob(2 * MIN_PART_SIZE + 10)
    upload_id = ids()

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, len(data)))
        info = await append(store, info, data[:MIN_PART_SIZE])
        assert info.offset == MIN_PART_SIZE
        assert f"{PREFIX}{upload_id}.part" not in list_keys(s3, s3_bucket)
        info = await append(store, info, data[MIN_PART_SIZE:2 * MIN_PART_SIZE + 3])    # one part and a tail
        assert info.offset == 2 * MIN_PART_SIZE + 3
        info = await append(store, info, data[2 * MIN_PART_SIZE + 3:])
        assert await read_all(store, info) == data

    run(store, scenario)


def test_the_offset_survives_a_restart(make_store: Callable[..., S3Storage]) -> None:
    upload_id = ids()
    data = blob(6 * MiB)
    first, second = make_store(), make_store()

    async def write_some() -> None:
        info = await first.create(UploadInfo(upload_id, 10 * MiB))
        await append(first, info, data)

    async def look() -> UploadInfo:
        return await second.get_info(upload_id)

    run(first, write_some)
    info = run(second, look)
    assert info.offset == len(data) and not info.is_complete and info.length == 10 * MiB


def test_a_stale_part_object_is_not_counted_twice(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    """A crash between "part uploaded" and ".part deleted" leaves both: the offset stays right."""
    upload_id = ids()
    data = blob(MIN_PART_SIZE)      # ends on a part boundary: the close deletes `.part`
    tail_key = f"{PREFIX}{upload_id}.part"

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, 20 * MiB))
        info = await append(store, info, data[:MiB])
        stale = s3.get_object(Bucket=s3_bucket, Key=tail_key)
        body, metadata = stale["Body"].read(), stale["Metadata"]
        info = await append(store, info, data[MiB:])      # the tail goes into part 1
        assert info.offset == len(data) and tail_key not in list_keys(s3, s3_bucket)
        s3.put_object(Bucket=s3_bucket, Key=tail_key, Body=body, Metadata=metadata)     # as if not deleted
        info = await store.get_info(upload_id)
        assert info.offset == len(data)
        rest = blob(20 * MiB - len(data))
        info = await append(store, info, rest)
        assert info.is_complete and await read_all(store, info) == data + rest

    run(store, scenario)


def test_staged_writes_count_only_after_commit(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    upload_id = ids()
    head, staged = blob(1000), blob(6 * MiB)

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, 10 * MiB))
        info = await append(store, info, head)
        before = sorted(list_keys(s3, s3_bucket))
        writer = await store.open_writer(info, staged=True)
        await writer.write(info.offset, [staged[:MiB], staged[MiB:]])
        # read back what is staged (a trailer checksum does this before commit)
        assert await read_all(store, info, len(head), len(head) + len(staged)) == staged
        await writer.close(durable=True)       # no commit: rolled back
        info = await store.get_info(upload_id)
        assert info.offset == len(head) and sorted(list_keys(s3, s3_bucket)) == before

        writer = await store.open_writer(info, staged=True)
        await writer.write(info.offset, [staged])
        await writer.commit()
        await writer.close(durable=True)
        info = await store.get_info(upload_id)
        assert info.offset == len(head) + len(staged)
        rest = blob(10 * MiB - info.offset)
        info = await append(store, info, rest)
        assert await read_all(store, info) == head + staged + rest

    run(store, scenario)


def test_truncate_takes_back_bytes_not_yet_in_a_part(store: S3Storage) -> None:
    upload_id = ids()
    data = blob(3000)

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, 10_000))
        info = await append(store, info, data[:1000])
        writer = await store.open_writer(info)
        await writer.write(1000, [data[1000:]])
        await writer.truncate(1000)
        await writer.close(durable=True)
        assert (await store.get_info(upload_id)).offset == 1000

    run(store, scenario)


def test_deferred_length(store: S3Storage) -> None:
    upload_id = ids()
    data = blob(MiB + 5)

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, None))
        info = await append(store, info, data)
        assert info.offset == len(data) and info.length is None
        info = await store.declare_length(info, len(data))
        writer = await store.open_writer(info)      # an empty PATCH that declares the length
        await writer.close(durable=True)
        info = await store.get_info(upload_id)
        assert info.is_complete and info.length == len(data)
        assert await read_all(store, info) == data

    run(store, scenario)


def test_empty_upload_is_complete_at_creation(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    upload_id = ids()

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, 0))
        assert (await store.get_info(upload_id)).is_complete
        assert await read_all(store, info) == b""

    run(store, scenario)
    assert s3.head_object(Bucket=s3_bucket, Key=PREFIX + upload_id)["ContentLength"] == 0
    assert open_multipart_uploads(s3, s3_bucket) == []


def test_read_range(store: S3Storage) -> None:
    upload_id = ids()
    data = blob(3 * MiB + 7)

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, len(data)))
        info = await append(store, info, data)
        assert await read_all(store, info, 0, 1) == data[:1]
        assert await read_all(store, info, MiB - 3, 2 * MiB + 5) == data[MiB - 3:2 * MiB + 5]
        assert await read_all(store, info, len(data) - 1) == data[-1:]
        assert await read_all(store, info, 5, 5) == b""

    run(store, scenario)


@pytest.mark.parametrize("sizes, parts", [((6 * MiB, 5 * MiB, 3), "-3"), ((3, 1000, 2 * MiB), "-1")],
                         ids=["copied-in-s3", "streamed"])
def test_concatenation(store: S3Storage, s3: Any, s3_bucket: str, sizes: tuple[int, ...], parts: str) -> None:
    datas = [blob(size) for size in sizes]
    final_id = ids()

    async def scenario() -> None:
        partials = []
        for data in datas:
            partial = await store.create(UploadInfo(ids(), len(data), concat="partial"))
            partials.append(await append(store, partial, data))
        final = await store.create(UploadInfo(final_id, None, concat="final;x", partials=tuple(p.id for p in partials)))
        joined = await store.concatenate(final, partials)
        assert joined.is_complete and joined.length == sum(sizes)
        stored = await store.get_info(final_id)
        assert stored.is_complete and stored.length == sum(sizes)
        assert await read_all(store, stored) == b"".join(datas)

    run(store, scenario)
    # the part count tells how it was joined: one part per partial by UploadPartCopy, or re-uploaded
    assert s3.head_object(Bucket=s3_bucket, Key=PREFIX + final_id)["ETag"].strip('"').endswith(parts)


def test_finals_waiting_for_a_partial(store: S3Storage) -> None:
    async def scenario() -> None:
        partial = await store.create(UploadInfo(ids(), 10, concat="partial"))
        final = await store.create(UploadInfo(ids(), 10, concat="final;x", partials=(partial.id, partial.id)))
        await store.register_final(final)
        assert await store.finals_waiting_for(partial.id) == [final.id]
        assert await store.finals_waiting_for(final.id) == []

    run(store, scenario)


def test_terminate_leaves_no_objects_and_no_multipart_uploads(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    async def scenario() -> None:
        info = await store.create(UploadInfo(ids(), 20 * MiB))
        info = await append(store, info, blob(6 * MiB))      # a part and a .part object
        done = await store.create(UploadInfo(ids(), 10))
        done = await append(store, done, blob(10))
        await store.register_final(UploadInfo(ids(), None, partials=(info.id,)))
        for upload in (info, done):
            await store.terminate(await store.get_info(upload.id))
            with pytest.raises(UploadNotFound):
                await store.get_info(upload.id)

    run(store, scenario)
    assert list_keys(s3, s3_bucket) == []
    assert open_multipart_uploads(s3, s3_bucket) == []


def test_expiry(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    kept_id = ids()

    async def scenario() -> None:
        expired = await store.create(UploadInfo(ids(), 100))
        expired = await append(store, expired, blob(10))
        await store.create(UploadInfo(kept_id, 100))
        orphan = s3.create_multipart_upload(Bucket=s3_bucket, Key=PREFIX + ids())["UploadId"]  # no .info
        assert sorted(await store.list_upload_ids()) == sorted([expired.id, kept_id])
        assert expired.updated_at > time.time() - 60
        await store.expire(expired)
        with pytest.raises(UploadGone):
            await store.get_info(expired.id)
        assert await store.list_upload_ids() == [kept_id]
        assert await store.prune_tombstones(time.time() - 3600) == 0      # too young to forget
        assert await store.prune_tombstones(time.time() + 3600) == 1
        with pytest.raises(UploadNotFound):
            await store.get_info(expired.id)
        uploads = {upload["UploadId"] for upload in open_multipart_uploads(s3, s3_bucket)}
        assert orphan not in uploads and len(uploads) == 1      # the kept upload's stays

    run(store, scenario)
    assert list_keys(s3, s3_bucket) == [f"{PREFIX}{kept_id}.info"]


def test_missing_and_broken_uploads(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    broken_id = ids()
    s3.put_object(Bucket=s3_bucket, Key=f"{PREFIX}{broken_id}.info", Body=b"{not json")

    async def scenario() -> None:
        with pytest.raises(UploadNotFound):
            await store.get_info(ids())
        with pytest.raises(UploadNotFound):
            await store.get_info("../etc")
        with pytest.raises(UploadCorrupt):
            await store.get_info(broken_id)

    run(store, scenario)


def test_a_missing_bucket_is_reported_at_open(make_store: Callable[..., S3Storage]) -> None:
    store = make_store(bucket="no-such-bucket-here")
    with pytest.raises(StorageUnavailable, match="does not exist"):
        asyncio.run(store.open())


def test_an_unreachable_server_is_unavailable_not_a_crash(make_store: Callable[..., S3Storage]) -> None:
    store = make_store(endpoint="http://127.0.0.1:9", connect_timeout=0.5, read_timeout=0.5, retries=1)
    with pytest.raises(StorageUnavailable, match="not reachable"):
        asyncio.run(store.open())


def test_large_parts_are_spooled_through_a_temp_file(store: S3Storage, s3: Any, s3_bucket: str) -> None:
    """A 60 GiB upload needs parts above the configured 5 MiB (the in-memory limit): they go
    through a temp file, and S3 gets exactly the right bytes (a part's ETag is its MD5)."""
    upload_id = ids()
    length = 60 * 1024 * MiB
    size = part_size_for(length, MIN_PART_SIZE)
    assert size > MIN_PART_SIZE
    data = blob(size + 1000)

    async def scenario() -> None:
        info = await store.create(UploadInfo(upload_id, length))
        info = await append(store, info, data[:3 * MiB], data[3 * MiB:])
        assert info.offset == len(data)

    run(store, scenario)
    info = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"{PREFIX}{upload_id}.info")["Body"].read())
    parts = s3.list_parts(Bucket=s3_bucket, Key=PREFIX + upload_id,
                          UploadId=info["Storage"]["MultipartUpload"])["Parts"]
    assert [(part["Size"], part["ETag"].strip('"')) for part in parts] == [(size, hashlib.md5(data[:size]).hexdigest())]
    assert object_size(s3, s3_bucket, f"{PREFIX}{upload_id}.part") == 1000


def test_flags_variables_and_tusd_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUSFAST_S3_REGION", "eu-west-1")
    args = build_parser().parse_args(["serve", "--storage", "s3", "-s3-bucket", "b", "-s3-object-prefix", "p/",
                                      "-s3-part-size", "6291456", "-s3-endpoint", "http://127.0.0.1:9000",
                                      "--s3-temp-dir", "/tmp"])
    config = config_from_args(args)
    assert (config.storage, config.s3_bucket, config.s3_prefix, config.s3_part_size, config.s3_endpoint,
            config.s3_region, config.s3_temp_dir) == ("s3", "b", "p/", 6 * MiB, "http://127.0.0.1:9000",
                                                      "eu-west-1", "/tmp")
    assert Config().storage == "file"
    for bad, message in [({}, "needs --s3-bucket"), ({"s3_bucket": "b", "s3_part_size": MiB}, "part size"),
                         ({"s3_bucket": "b", "workers": 2}, "--redis-url"),
                         ({"s3_bucket": "b", "dir_layout": "{year}"}, "file storage only")]:
        with pytest.raises(ValueError, match=message):
            Config(storage="s3", **bad)
    with pytest.raises(ValueError, match="file or s3"):
        Config(storage="gcs")
