"""Several `tusfast serve --redis-url ... --info-store redis` processes sharing a directory or an S3
bucket (moto), with upload info and recorded offsets in a real Redis: requests alternate between
instances byte-exact, a holder whose lock was taken over cannot advance the offset, and an instance
killed mid-upload leaves an upload that another instance resumes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import StartServer
from tests.support.redis_server import RedisServer, redis_down, redis_prefix, redis_server, redis_url  # noqa: F401
from tests.support.s3_server import MotoServer, list_keys, moto_server, s3_bucket  # noqa: F401
from tests.support.server_process import ServerProcess

from .rawhttp import (
    TIMEOUT,
    TUS,
    RawConnection,
    create,
    head,
    offset_of,
    patch,
    patch_headers,
    path_of,
    upload_id,
    wait_until,
)

MiB = 1024 * 1024


def instances(start_server: StartServer, directory: Path, url: str, prefix: str, count: int, *flags: str,
              env: dict[str, str] | None = None) -> list[ServerProcess]:
    return [start_server("--redis-url", url, "--redis-prefix", prefix, "--info-store", "redis", *flags,
                         upload_dir=directory, env=env) for _ in range(count)]


def s3_flags(bucket: str) -> tuple[str, ...]:
    return ("--storage", "s3", "--s3-bucket", bucket, "--s3-prefix", "tus/", "--s3-part-size", "5M")


def on(server: ServerProcess, url: str) -> str:
    return server.upload_url(upload_id(url))


def recorded(redis_url: str, prefix: str, url: str) -> int:
    value = redis.Redis.from_url(redis_url, decode_responses=True).hget(f"{prefix}upload:{upload_id(url)}", "offset")
    return -1 if value is None else int(value)


def alternate(servers: list[ServerProcess], url: str, payload: bytes, step: int) -> None:
    offset, turn = 0, 0
    while offset < len(payload):
        server = servers[turn % len(servers)]
        assert offset_of(on(server, url)) == offset
        response = patch(on(server, url), offset, payload[offset:offset + step])
        assert response.status_code == 204, (response.status_code, response.text)
        offset = int(response.headers["Upload-Offset"])
        turn += 1
    for server in servers:
        assert offset_of(on(server, url)) == len(payload)


def downloaded(server: ServerProcess, url: str) -> bytes:
    response = requests.get(on(server, url), timeout=TIMEOUT)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.content


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    return tmp_path / "shared"


def test_three_instances_on_a_shared_directory(start_server: StartServer, shared_dir: Path, redis_url: str,
                                               redis_prefix: str) -> None:
    servers = instances(start_server, shared_dir, redis_url, redis_prefix, 3)
    payload = os.urandom(300_000)
    url = create(servers[0].url, len(payload), metadata="filename YS50eHQ=")
    alternate(servers, url, payload, 25_000)
    assert downloaded(servers[2], url) == payload
    assert (shared_dir / upload_id(url)).read_bytes() == payload
    assert not list(shared_dir.glob("*.info"))          # the info lives in Redis only
    assert recorded(redis_url, redis_prefix, url) == len(payload)
    assert head(on(servers[1], url)).headers["Upload-Metadata"] == "filename YS50eHQ="
    response = requests.delete(on(servers[1], url), headers=TUS, timeout=TIMEOUT)
    assert response.status_code == 204
    assert head(on(servers[0], url)).status_code == 404
    assert not (shared_dir / upload_id(url)).exists()


def test_the_log_says_bodies_skip_direct_io_with_the_info_in_redis(start_server: StartServer, shared_dir: Path,
                                                                    redis_url: str, redis_prefix: str) -> None:
    server, = instances(start_server, shared_dir, redis_url, redis_prefix, 1)
    lines = [line for line in server.log if "direct I/O (O_DIRECT) for large bodies" in line]
    assert lines and lines[0].rstrip().endswith(": off (upload info in an info store: bodies are read by the "
                                                 "event loop)"), "".join(server.log)


def test_three_instances_on_s3(start_server: StartServer, shared_dir: Path, redis_url: str, redis_prefix: str,
                               moto_server: MotoServer, s3_bucket: str) -> None:
    servers = instances(start_server, shared_dir, redis_url, redis_prefix, 3, *s3_flags(s3_bucket),
                        env=moto_server.env())
    payload = os.urandom(12 * MiB + 12_345)
    url = create(servers[0].url, len(payload))
    alternate(servers, url, payload, 3 * MiB)
    assert downloaded(servers[1], url) == payload
    keys = list_keys(moto_server.client(), s3_bucket)
    assert f"tus/{upload_id(url)}" in keys and not any(key.endswith(".info") for key in keys)


def test_concatenation_across_instances(start_server: StartServer, shared_dir: Path, redis_url: str,
                                        redis_prefix: str) -> None:
    a, b = instances(start_server, shared_dir, redis_url, redis_prefix, 2)
    first = create(a.url, None, extra={"Upload-Concat": "partial"})     # unfinished when the final comes
    second = create(b.url, 3, extra={"Upload-Concat": "partial"})
    response = requests.post(a.url, headers={**TUS, "Upload-Concat": f"final;{path_of(first)} {path_of(second)}"},
                             timeout=TIMEOUT)
    assert response.status_code == 201, (response.status_code, response.text)
    final = response.headers["Location"]
    assert patch(on(b, second), 0, b"xyz").status_code == 204
    assert patch(on(b, first), 0, b"abc", **{"Upload-Length": "3"}).status_code == 204     # joins the final
    response = head(on(b, final))
    assert response.headers["Upload-Offset"] == "6" and response.headers["Upload-Length"] == "6"
    assert downloaded(a, final) == b"abcxyz"


def test_a_holder_whose_lock_was_taken_over_cannot_advance_the_offset(start_server: StartServer, shared_dir: Path,
                                                                     redis_url: str, redis_prefix: str) -> None:
    a, b = instances(start_server, shared_dir, redis_url, redis_prefix, 2)
    payload = os.urandom(100_000)
    url = create(a.url, len(payload))
    assert patch(on(a, url), 0, payload[:10_000]).status_code == 204
    raw = RawConnection.to(a)
    try:
        stale = os.urandom(50_000)
        raw.request("PATCH", path_of(url), patch_headers(10_000, len(stale)))
        raw.send(stale[:20_000])
        assert wait_until(lambda: (shared_dir / upload_id(url)).stat().st_size == 30_000, 10)
        # What a new holder's acquisition does: A's fence is no longer the upload's current one.
        redis.Redis.from_url(redis_url).incr(f"{redis_prefix}fence:{upload_id(url)}")
        time.sleep(1.1)     # past the writer's recording interval: its next write tries to record
        raw.send(stale[20_000:])
        response = raw.read_response("PATCH")
        assert response.status == 409, response
        assert response.header("Tus-Resumable") == "1.0.0" and response.header("Upload-Offset") == "10000"
        assert b"taken over" in response.body
    finally:
        raw.close()
    assert (shared_dir / upload_id(url)).stat().st_size > 10_000       # A's bytes landed, but do not count
    assert recorded(redis_url, redis_prefix, url) == 10_000
    assert offset_of(on(b, url)) == 10_000
    response = patch(on(b, url), 10_000, payload[10_000:])
    assert response.status_code == 204, (response.status_code, response.text)
    assert downloaded(a, url) == payload


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_kill_9_mid_upload_then_another_instance_resumes(storage: str, start_server: StartServer, shared_dir: Path,
                                                         redis_url: str, redis_prefix: str, moto_server: MotoServer,
                                                         s3_bucket: str) -> None:
    flags: tuple[str, ...] = ("--redis-lock-lease", "2s")
    env: dict[str, str] | None = None
    if storage == "s3":
        flags, env = (*flags, *s3_flags(s3_bucket)), moto_server.env()
    a, b = instances(start_server, shared_dir, redis_url, redis_prefix, 2, *flags, env=env)
    payload = os.urandom(8 * MiB)
    url = create(b.url, len(payload))
    # What A records before it dies: file storage records every second, S3 each part that went up.
    first = 80_000 if storage == "file" else 5 * MiB
    raw = RawConnection.to(a)
    try:
        raw.request("PATCH", path_of(url), patch_headers(0, len(payload)))
        if storage == "file":
            raw.send(payload[:70_000])
            assert wait_until(lambda: (shared_dir / upload_id(url)).stat().st_size == 70_000, 10)
            time.sleep(1.1)
            raw.send(payload[70_000:first])
        else:
            raw.send(payload[:first + MiB // 2])
        assert wait_until(lambda: recorded(redis_url, redis_prefix, url) == first, 20)
        a.kill()
    finally:
        raw.close()
    # Nobody releases A's lock: B waits for its lease (2 s) to run out, well inside the lock timeout.
    offset = offset_of(on(b, url))
    assert offset == first
    response = patch(on(b, url), offset, payload[offset:])
    assert response.status_code == 204, (response.status_code, response.text)
    assert downloaded(b, url) == payload


def test_redis_down_is_a_503_with_a_reason_also_for_downloads(start_server: StartServer, shared_dir: Path,
                                                              redis_down: RedisServer, redis_prefix: str) -> None:
    (a,) = instances(start_server, shared_dir, redis_down.url, redis_prefix, 1, "--redis-lock-lease", "1s")
    url = create(a.url, 5)
    assert patch(url, 0, b"hello").status_code == 204
    redis_down.stop()
    try:
        for response in (head(url), requests.get(url, timeout=TIMEOUT),
                         requests.post(a.url, headers={**TUS, "Upload-Length": "3"}, timeout=TIMEOUT)):
            assert response.status_code == 503, (response.status_code, response.text)
            assert response.headers["Tus-Resumable"] == "1.0.0"
            assert response.request.method == "HEAD" or "unavailable" in response.text or "Redis" in response.text
    finally:
        redis_down.start()
    assert a.alive
    assert any("upload info store" in line for line in a.log)


def test_cleanup_expires_through_the_info_store(start_server: StartServer, shared_dir: Path, redis_url: str,
                                                redis_prefix: str) -> None:
    (a,) = instances(start_server, shared_dir, redis_url, redis_prefix, 1)
    url = create(a.url, 100)
    assert patch(url, 0, b"x" * 10).status_code == 204
    time.sleep(1.2)         # let the upload expire for a cleanup run with --expire-after 1s
    result = subprocess.run(
        [sys.executable, "-m", "tusfast", "cleanup", "--upload-dir", str(shared_dir), "--expire-after", "1s",
         "--redis-url", redis_url, "--redis-prefix", redis_prefix, "--info-store", "redis"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "removed 1 expired" in result.stdout
    assert head(url).status_code == 410         # the tombstone is in Redis too
    assert not (shared_dir / upload_id(url)).exists()
    assert not redis.Redis.from_url(redis_url).exists(f"{redis_prefix}upload:{upload_id(url)}")
