"""Several `tusfast serve` processes on one shared upload directory, locking through a real Redis
(`--redis-url`): what operators get behind a load balancer. Every byte acknowledged by any instance
is kept, a stalled request on one instance never blocks the others, a killed instance's uploads
resume on the others, and Redis being down is a clear 503, never a lost byte."""

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
from tests.support.redis_server import RedisServer, free_port, redis_down, redis_prefix, redis_server, redis_url  # noqa: F401
from tests.support.server_process import ServerProcess

from .rawhttp import (
    TIMEOUT,
    TUS,
    ConnectionClosed,
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


def instances(start_server: StartServer, directory: Path, url: str, prefix: str, count: int,
              *flags: str) -> list[ServerProcess]:
    return [start_server("--redis-url", url, "--redis-prefix", prefix, *flags, upload_dir=directory)
            for _ in range(count)]


def on(server: ServerProcess, url: str) -> str:
    """The same upload, addressed to another instance."""
    return server.upload_url(upload_id(url))


def stalled_patch(server: ServerProcess, url: str, payload: bytes, sent: int) -> RawConnection:
    """A PATCH whose client sent the head and `sent` bytes of the body, then went quiet."""
    raw = RawConnection.to(server)
    raw.request("PATCH", path_of(url), patch_headers(0, len(payload)))
    raw.send(payload[:sent])
    assert wait_until(lambda: (server.upload_dir / upload_id(url)).stat().st_size == sent, 10)
    return raw


def interrupted_reply_offset(raw: RawConnection) -> int | None:
    """The offset the interrupted request reported, or None if it only closed the connection."""
    try:
        response = raw.read_response("PATCH")
    except ConnectionClosed:
        return None
    assert 400 <= response.status < 500, response
    assert response.header("Tus-Resumable") == "1.0.0"
    return int(response.header("Upload-Offset") or -1)


def stored(server: ServerProcess, url: str) -> bytes:
    return (server.upload_dir / upload_id(url)).read_bytes()


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    return tmp_path / "shared"


def test_patches_alternate_between_three_instances(start_server: StartServer, shared_dir: Path, redis_url: str,
                                                   redis_prefix: str) -> None:
    servers = instances(start_server, shared_dir, redis_url, redis_prefix, 3)
    payload = os.urandom(300_000)
    url = create(servers[0].url, len(payload))
    offset, step = 0, 0
    while offset < len(payload):
        server = servers[step % 3]
        assert offset_of(on(server, url)) == offset
        response = patch(on(server, url), offset, payload[offset:offset + 25_000])
        assert response.status_code == 204, (response.status_code, response.text)
        offset = int(response.headers["Upload-Offset"])
        step += 1
    for server in servers:
        assert offset_of(on(server, url)) == len(payload)
    download = requests.get(on(servers[1], url), timeout=TIMEOUT)
    assert download.status_code == 200 and download.content == payload
    # The locks went through Redis: every locked request (POST, HEADs, PATCHes) took a new fence.
    fence = redis.Redis.from_url(redis_url).get(f"{redis_prefix}fence:{upload_id(url)}")
    assert fence is not None and int(fence) >= 1 + 2 * step


def test_head_on_b_releases_a_stalled_patch_on_a(start_server: StartServer, shared_dir: Path, redis_url: str,
                                                   redis_prefix: str) -> None:
    a, b = instances(start_server, shared_dir, redis_url, redis_prefix, 2)
    payload = os.urandom(100_000)
    url = create(a.url, len(payload))
    raw = stalled_patch(a, url, payload, 40_000)
    try:
        # Without a release request crossing to A, this would wait the whole lock timeout (20 s)
        # and get 423, or run into the client's own timeout (10 s).
        response = head(on(b, url))
        assert response.status_code == 200, (response.status_code, response.text)
        assert response.headers["Upload-Offset"] == "40000"
        assert interrupted_reply_offset(raw) in (40_000, None)
    finally:
        raw.close()
    response = patch(on(b, url), 40_000, payload[40_000:])
    assert response.status_code == 204, (response.status_code, response.text)
    assert stored(a, url) == payload


def test_patch_on_b_interrupts_a_stalled_patch_on_a(start_server: StartServer, shared_dir: Path, redis_url: str,
                                                    redis_prefix: str) -> None:
    a, b = instances(start_server, shared_dir, redis_url, redis_prefix, 2)
    payload = os.urandom(8 * 1024 * 1024)      # more than the socket buffers: B's body streams after B waited
    url = create(a.url, len(payload))
    raw = stalled_patch(a, url, payload, 30_000)
    try:
        response = patch(on(b, url), 30_000, payload[30_000:])
        assert response.status_code == 204, (response.status_code, response.text)
        assert response.headers["Upload-Offset"] == str(len(payload))
        assert interrupted_reply_offset(raw) in (30_000, None)
        raw.try_send(payload[30_000:40_000])    # the stalled client wakes up: it must not tear the data
    finally:
        raw.close()
    assert offset_of(on(a, url)) == len(payload)
    assert stored(b, url) == payload


def test_kill_9_of_the_holder_then_another_instance_resumes(start_server: StartServer, shared_dir: Path,
                                                            redis_url: str, redis_prefix: str) -> None:
    a, b = instances(start_server, shared_dir, redis_url, redis_prefix, 2, "--redis-lock-lease", "2s")
    payload = os.urandom(200_000)
    url = create(b.url, len(payload))
    raw = stalled_patch(a, url, payload, 70_000)
    lock_key = f"{redis_prefix}lock:{upload_id(url)}"
    assert redis.Redis.from_url(redis_url).exists(lock_key)      # A holds it
    a.kill()
    raw.close()
    # Nobody releases A's lock: B waits for its lease (2 s) to run out, well inside the lock timeout.
    response = head(on(b, url))
    assert response.status_code == 200, (response.status_code, response.text)
    offset = int(response.headers["Upload-Offset"])
    assert offset == 70_000
    response = patch(on(b, url), offset, payload[offset:])
    assert response.status_code == 204, (response.status_code, response.text)
    assert offset_of(on(b, url)) == len(payload)
    assert stored(b, url) == payload


def test_redis_down_is_503_with_a_reason_and_nothing_is_lost(start_server: StartServer, shared_dir: Path,
                                                              redis_down: RedisServer, redis_prefix: str) -> None:
    a, b = instances(start_server, shared_dir, redis_down.url, redis_prefix, 2, "--redis-lock-lease", "1s")
    payload = os.urandom(120_000)
    url = create(a.url, len(payload))
    assert patch(url, 0, payload[:50_000]).status_code == 204
    redis_down.stop()
    refused = [head(on(b, url)), patch(on(a, url), 50_000, payload[50_000:60_000]),
               requests.post(b.url, headers={**TUS, "Upload-Length": "10"}, timeout=TIMEOUT),
               requests.delete(on(b, url), headers=TUS, timeout=TIMEOUT)]
    for response in refused:
        assert response.status_code == 503, (response.status_code, response.text)
        assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Redis" in refused[1].text and "retry" in refused[1].text
    assert stored(a, url) == payload[:50_000]
    redis_down.start()
    assert offset_of(on(b, url)) == 50_000
    response = patch(on(b, url), 50_000, payload[50_000:])
    assert response.status_code == 204, (response.status_code, response.text)
    assert stored(a, url) == payload
    assert a.alive and b.alive


def test_redis_down_mid_patch_stops_the_patch_and_keeps_its_bytes(start_server: StartServer, shared_dir: Path,
                                                                  redis_down: RedisServer,
                                                                  redis_prefix: str) -> None:
    (a,) = instances(start_server, shared_dir, redis_down.url, redis_prefix, 1, "--redis-lock-lease", "1s")
    payload = os.urandom(80_000)
    url = create(a.url, len(payload))
    raw = stalled_patch(a, url, payload, 20_000)
    try:
        redis_down.stop()
        # A can no longer renew its lease: once it ran out, A tells the request to stop.
        assert interrupted_reply_offset(raw) in (20_000, None)
    finally:
        raw.close()
    redis_down.start()
    assert offset_of(url) == 20_000
    assert patch(url, 20_000, payload[20_000:]).status_code == 204
    assert stored(a, url) == payload


def test_server_does_not_start_without_its_redis(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tusfast", "serve", "--host", "127.0.0.1", "--port", "0", "--upload-dir",
         str(tmp_path / "data"), "--redis-url", f"redis://127.0.0.1:{free_port()}/0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Redis" in result.stderr
    assert "Traceback" not in result.stderr and "listening on" not in result.stderr


def test_cleanup_locks_through_redis_too(start_server: StartServer, shared_dir: Path, redis_url: str,
                                        redis_prefix: str) -> None:
    (a,) = instances(start_server, shared_dir, redis_url, redis_prefix, 1)
    url = create(a.url, 100)
    fence = f"{redis_prefix}fence:{upload_id(url)}"
    assert redis.Redis.from_url(redis_url).exists(fence)
    time.sleep(1.2)         # let the upload expire for a cleanup run with --expire-after 1s
    result = subprocess.run(
        [sys.executable, "-m", "tusfast", "cleanup", "--upload-dir", str(shared_dir), "--expire-after", "1s",
         "--redis-url", redis_url, "--redis-prefix", redis_prefix],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "removed 1 expired" in result.stdout
    assert not redis.Redis.from_url(redis_url).exists(fence)     # it locked and forgot through Redis


def test_cleanup_without_its_redis_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tusfast", "cleanup", "--upload-dir", str(tmp_path / "data"), "--expire-after", "1h",
         "--redis-url", f"redis://127.0.0.1:{free_port()}/0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Redis" in result.stdout and "unreachable" in result.stdout
    assert "Traceback" not in result.stderr
