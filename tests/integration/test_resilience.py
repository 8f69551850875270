"""Interrupted, killed, concurrent and multi-process uploads: every byte the server acknowledges is on disk,
the offset never runs ahead of the data, and resuming always yields identical content [31, 32, 35, 74]."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.server_process import ServerProcess

from .rawhttp import (
    OCTET,
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

MiB = 1024 * 1024




def data_path(server: ServerProcess, url: str):  # type: ignore[no-untyped-def]
    return server.upload_dir / upload_id(url)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resume(url: str, payload: bytes, chunk: int = 256 * 1024) -> None:
    """What a client does: ask for the offset, send the rest."""
    offset = offset_of(url)
    while offset < len(payload):
        response = patch(url, offset, payload[offset:offset + chunk])
        assert response.status_code == 204, (response.status_code, response.text)
        assert int(response.headers["Upload-Offset"]) == min(offset + chunk, len(payload))
        offset = int(response.headers["Upload-Offset"])
    result = head(url)
    assert result.headers["Upload-Offset"] == result.headers["Upload-Length"] == str(len(payload))


# ---- client disconnects mid-body [32, 86] ------------------------------------------------------------


@pytest.mark.parametrize("sent", [0, 1, 4096, 100_000])
def test_interrupted_patch_keeps_received_bytes(server, sent: int) -> None:
    payload = os.urandom(200_000)
    url = create(server.url, len(payload))
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, len(payload)))
        raw.send(payload[:sent])
        time.sleep(0.1)
    assert wait_until(lambda: offset_of(url) == sent, 5), offset_of(url)
    assert data_path(server, url).read_bytes() == payload[:sent]
    resume(url, payload)
    assert digest(data_path(server, url).read_bytes()) == digest(payload)


def test_interrupted_patch_with_reset(server) -> None:
    """An abortive close (RST) instead of FIN: the bytes that arrived are still kept."""
    payload = os.urandom(50_000)
    url = create(server.url, len(payload))
    raw = RawConnection.to(server)
    raw.request("PATCH", path_of(url), patch_headers(0, len(payload)))
    raw.send(payload[:20_000])
    time.sleep(0.2)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    assert wait_until(lambda: offset_of(url) == 20_000, 5), offset_of(url)
    assert data_path(server, url).read_bytes() == payload[:20_000]
    resume(url, payload)
    assert data_path(server, url).read_bytes() == payload


@pytest.mark.parametrize("checksum", [False, True], ids=["spliced", "checksummed"])
def test_reset_during_large_body_is_the_client_leaving_not_a_server_error(server, checksum: bool) -> None:
    """A reset in the middle of a large body (the splice path, or the buffered checksum path) ends the
    request as the client's doing: no 5xx in the access log, no traceback, the offset never past the data."""
    payload = os.urandom(2 * MiB)
    url = create(server.url, len(payload))
    headers = patch_headers(0, len(payload))
    if checksum:
        headers.append(("Upload-Checksum", "sha1 " + base64.b64encode(hashlib.sha1(payload).digest()).decode()))
    raw = RawConnection.to(server)
    raw.request("PATCH", path_of(url), headers)
    raw.send(payload[:MiB])
    time.sleep(0.3)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    request_line = f'"PATCH {path_of(url)}"'
    assert wait_until(lambda: any(request_line in line for line in server.log), 10)
    offset = offset_of(url)
    assert offset <= MiB and data_path(server, url).read_bytes() == payload[:offset]
    if checksum:
        assert offset == 0          # a chunk whose checksum never arrived whole does not count
    patch_lines = [line for line in server.log if request_line in line]
    assert not any(f" {status} " in line for line in patch_lines for status in range(500, 600)), patch_lines
    assert not any("Traceback" in line for line in server.log)
    resume(url, payload)
    assert digest(data_path(server, url).read_bytes()) == digest(payload)


def test_interrupted_chunked_patch_keeps_complete_chunks(server) -> None:
    url = create(server.url, None)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0"),
                                            ("Transfer-Encoding", "chunked")])
        raw.send(b"5\r\nhello\r\n6\r\n world\r\n8\r\nabc")
        time.sleep(0.2)
    assert wait_until(lambda: offset_of(url) in (11, 14), 5)
    offset = offset_of(url)
    assert data_path(server, url).read_bytes() == b"hello worldabc"[:offset]


def test_interrupted_creation_with_upload_then_resume(server) -> None:
    payload = os.urandom(30_000)
    before = set(os.listdir(server.upload_dir))
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url), [*TUS.items(), ("Upload-Length", str(len(payload))),
                                                  ("Content-Type", OCTET), ("Content-Length", str(len(payload)))])
        raw.send(payload[:10_000])
        time.sleep(0.2)
    new = [name for name in set(os.listdir(server.upload_dir)) - before
           if not name.endswith(".info") and not name.startswith(".")]
    assert len(new) == 1, new
    url = server.url + new[0]
    assert wait_until(lambda: offset_of(url) == 10_000, 5), offset_of(url)
    resume(url, payload)
    assert data_path(server, url).read_bytes() == payload


def test_many_interruptions_then_complete(server) -> None:
    payload = os.urandom(64_000)
    url = create(server.url, len(payload))
    offset = 0
    for piece in (1000, 7000, 1, 15_000, 3):
        with RawConnection.to(server) as raw:
            raw.request("PATCH", path_of(url), patch_headers(offset, len(payload) - offset))
            raw.send(payload[offset:offset + piece])
        offset += piece
        assert wait_until(lambda: offset_of(url) == offset, 5), (offset_of(url), offset)
    resume(url, payload)
    assert digest(data_path(server, url).read_bytes()) == digest(payload)


# ---- kill -9 [32] ------------------------------------------------------------------------------------


def test_kill_during_large_patch_then_resume(start_server) -> None:
    server = start_server()
    size = 48 * MiB
    payload = os.urandom(size)
    url = create(server.url, size)
    raw = RawConnection.to(server)
    sent = 0
    try:
        raw.request("PATCH", path_of(url), patch_headers(0, size))
        block = 256 * 1024
        while sent < 20 * MiB:
            raw.send(payload[sent:sent + block])
            sent += block
        time.sleep(0.2)
        server.kill()
    finally:
        raw.close()
    on_disk_before_restart = data_path(server, url).stat().st_size
    assert on_disk_before_restart <= sent
    server.restart()
    response = head(url)
    assert response.status_code == 200
    offset = int(response.headers["Upload-Offset"])
    on_disk = data_path(server, url).stat().st_size
    assert offset <= sent
    assert offset == on_disk, (offset, on_disk)
    assert offset > 0          # 20 MiB reached the server; a kill -9 keeps what was written
    assert data_path(server, url).read_bytes() == payload[:offset]
    resume(url, payload, chunk=16 * MiB)
    assert digest(data_path(server, url).read_bytes()) == digest(payload)


def test_kill_right_after_creation(start_server) -> None:
    server = start_server()
    url = create(server.url, 10, metadata="name YQ==")
    server.restart()
    response = head(url)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "0" and response.headers["Upload-Metadata"] == "name YQ=="
    resume(url, b"0123456789")


def test_restart_keeps_completed_upload(start_server) -> None:
    server = start_server()
    url = create(server.url, 5, body=b"hello")
    server.restart()
    response = head(url)
    assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == "5"
    assert data_path(server, url).read_bytes() == b"hello"
    assert patch(url, 5, b"!").status_code in (409, 413)


def test_kill_with_deferred_length_upload(start_server) -> None:
    server = start_server()
    url = create(server.url, None, body=b"abc")
    server.restart()
    response = head(url)
    assert response.headers["Upload-Defer-Length"] == "1" and response.headers["Upload-Offset"] == "3"
    response = patch(url, 3, b"def", **{"Upload-Length": "6"})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "6"


# ---- concurrency on one upload [35, 74] --------------------------------------------------------------



def assert_late_sender_refused(raw: RawConnection, rest: bytes) -> None:
    """A stalled client that wakes up and sends the rest of its body must not tear the data: it
    gets a 4xx, or finds its connection closed."""
    raw.try_send(rest)
    try:
        late = raw.read_response("PATCH")
        assert 400 <= late.status < 500, late
    except (ConnectionClosed, socket.timeout, TimeoutError):
        pass

def stalled_patch(server: ServerProcess, url: str, payload: bytes, sent: int) -> RawConnection:
    raw = RawConnection.to(server)
    raw.request("PATCH", path_of(url), patch_headers(0, len(payload)))
    raw.send(payload[:sent])
    assert wait_until(lambda: data_path(server, url).stat().st_size == sent, 5)
    return raw


def test_head_interrupts_stalled_patch(server) -> None:
    payload = os.urandom(100_000)
    url = create(server.url, len(payload))
    raw = stalled_patch(server, url, payload, 50_000)
    try:
        start = time.monotonic()
        response = head(url)
        elapsed = time.monotonic() - start
        assert response.status_code == 200
        assert elapsed < 5, elapsed
        offset = int(response.headers["Upload-Offset"])
        assert offset == 50_000
        response = patch(url, offset, payload[offset:])
        assert response.status_code == 204, (response.status_code, response.text)
        assert response.headers["Upload-Offset"] == str(len(payload))
        # the stalled client wakes up and sends the rest of its body: it must not tear the data
        assert_late_sender_refused(raw, payload[50_000:])
    finally:
        raw.close()
    assert offset_of(url) == len(payload)
    assert digest(data_path(server, url).read_bytes()) == digest(payload)


def test_patch_interrupts_stalled_patch(server) -> None:
    payload = os.urandom(100_000)
    url = create(server.url, len(payload))
    raw = stalled_patch(server, url, payload, 30_000)
    try:
        start = time.monotonic()
        response = patch(url, 30_000, payload[30_000:])       # a client that knows the offset retries at once
        assert time.monotonic() - start < 5
        if response.status_code == 409:                       # it saw the old request's offset first
            response = patch(url, int(response.headers["Upload-Offset"]),
                             payload[int(response.headers["Upload-Offset"]):])
        assert response.status_code == 204, (response.status_code, response.text)
        assert response.headers["Upload-Offset"] == str(len(payload))
        assert_late_sender_refused(raw, payload[30_000:40_000])
    finally:
        raw.close()
    assert digest(data_path(server, url).read_bytes()) == digest(payload)


def test_stalled_connection_gets_4xx_or_close(server) -> None:
    payload = os.urandom(10_000)
    url = create(server.url, len(payload))
    raw = stalled_patch(server, url, payload, 4_000)
    try:
        assert head(url).headers["Upload-Offset"] == "4000"
        try:
            response = raw.read_response("PATCH")
            assert 400 <= response.status < 500, response
            assert response.header("Tus-Resumable") == "1.0.0"
        except ConnectionClosed:
            pass
        except (socket.timeout, TimeoutError):
            pytest.fail("the interrupted request got neither a response nor a close within 10 s")
    finally:
        raw.close()
    assert data_path(server, url).read_bytes() == payload[:4000]


def test_delete_during_stalled_patch(server) -> None:
    payload = os.urandom(40_000)
    url = create(server.url, len(payload))
    raw = stalled_patch(server, url, payload, 10_000)
    try:
        start = time.monotonic()
        response = requests.delete(url, headers=TUS, timeout=TIMEOUT)
        assert time.monotonic() - start < 5
        assert response.status_code == 204
        assert_late_sender_refused(raw, payload[10_000:])
    finally:
        raw.close()
    time.sleep(0.2)
    assert head(url).status_code in (404, 410)
    assert not data_path(server, url).exists()
    assert not (server.upload_dir / (upload_id(url) + ".info")).exists()


def test_concurrent_heads_during_upload_never_run_ahead(server) -> None:
    payload = os.urandom(4 * MiB)
    url = create(server.url, len(payload))
    seen: list[int] = []
    ahead: list[tuple[int, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            response = head(url)
            if response.status_code == 200:
                offset = int(response.headers["Upload-Offset"])
                seen.append(offset)
                size = data_path(server, url).stat().st_size
                if size < offset:
                    ahead.append((offset, size))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        offset = 0
        deadline = time.monotonic() + 30
        while offset < len(payload) and time.monotonic() < deadline:
            response = patch(url, offset, payload[offset:offset + MiB])
            if response.status_code in (204,):
                offset = int(response.headers["Upload-Offset"])
            else:          # our PATCH was interrupted by a HEAD: resume like a client would
                assert response.status_code in (400, 409, 423), response.status_code
                offset = offset_of(url)
    finally:
        stop.set()
        poller.join(10)
    assert offset == len(payload)
    assert seen and seen == sorted(seen)
    assert not ahead, ahead
    assert digest(data_path(server, url).read_bytes()) == digest(payload)


def test_parallel_uploads_are_independent(server) -> None:
    payloads = [os.urandom(200_000 + i) for i in range(8)]
    urls = [create(server.url, len(p)) for p in payloads]

    def upload(index: int) -> None:
        resume(urls[index], payloads[index], chunk=50_000)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, range(8)))
    for url, payload in zip(urls, payloads):
        assert data_path(server, url).read_bytes() == payload


# ---- several worker processes --------------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def start_workers(start_server):  # type: ignore[no-untyped-def]
    """start_server with --workers N; the worker processes are found and never outlive the test."""
    started: list[tuple[ServerProcess, set[int]]] = []

    def start(count: int, *args: str) -> tuple[ServerProcess, set[int]]:
        server = start_server("--workers", str(count), *args)
        assert wait_until(lambda: len(children_of(server.pid)) >= count, 10), children_of(server.pid)
        workers = children_of(server.pid)
        started.append((server, workers))
        return server, workers

    yield start
    for server, workers in started:
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - cleanup only
            pass
        wait_until(lambda: not any(alive(pid) for pid in workers), 5)
        for pid in workers:                # only the processes this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_serve_uploads(start_workers) -> None:
    server, _ = start_workers(2)
    payloads = [os.urandom(100_000 + 17 * i) for i in range(10)]

    def upload(payload: bytes) -> str:
        url = create(server.url, len(payload), metadata="n YQ==", body=payload[:1000])
        offset = 1000
        while offset < len(payload):          # a fresh connection per PATCH: any worker may take it
            with requests.Session() as session:
                response = session.patch(url, data=payload[offset:offset + 30_000], timeout=TIMEOUT, headers={
                    **TUS, "Content-Type": OCTET, "Upload-Offset": str(offset)})
            assert response.status_code == 204, (response.status_code, response.text)
            offset = int(response.headers["Upload-Offset"])
        return url

    with ThreadPoolExecutor(5) as pool:
        urls = list(pool.map(upload, payloads))
    assert len(set(urls)) == len(urls)
    for url, payload in zip(urls, payloads):
        response = head(url)
        assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(len(payload))
        assert response.headers["Upload-Metadata"] == "n YQ=="
        assert digest(data_path(server, url).read_bytes()) == digest(payload)
    url = urls[0]
    assert requests.delete(url, headers=TUS, timeout=TIMEOUT).status_code == 204
    for _ in range(4):                         # every worker now sees it gone
        assert head(url).status_code == 404


def test_workers_interrupted_patch_resumed_on_any_worker(start_workers) -> None:
    server, _ = start_workers(2)
    payload = os.urandom(300_000)
    url = create(server.url, len(payload))
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, len(payload)))
        raw.send(payload[:120_000])
        time.sleep(0.2)
    assert wait_until(lambda: offset_of(url) == 120_000, 5)
    for _ in range(4):
        assert offset_of(url) == 120_000
    resume(url, payload, chunk=60_000)
    assert data_path(server, url).read_bytes() == payload


def test_workers_sigterm_graceful(start_workers) -> None:
    server, workers = start_workers(2, "--shutdown-timeout", "10")
    url = create(server.url, 1000)
    payload = os.urandom(1000)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, 1000))
        raw.send(payload[:500])
        time.sleep(0.3)
        server.signal(signal.SIGTERM)
        time.sleep(0.5)
        raw.send(payload[500:])
        response = raw.read_response("PATCH")
        assert response.status == 204, response
        assert response.header("Upload-Offset") == "1000"
    assert server.wait(20) == 0
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 5)
    assert data_path(server, url).read_bytes() == payload


def test_workers_exit_when_supervisor_is_killed(start_workers) -> None:
    """kill -9 of the supervisor must not leave orphaned workers serving the port: after an operator's
    restart they would share it (SO_REUSEPORT) with the new processes, each with its own upload locks."""
    server, workers = start_workers(2)
    assert requests.options(server.url, timeout=TIMEOUT).status_code == 204
    server.kill()
    gone = wait_until(lambda: not any(alive(pid) for pid in workers), 5)
    assert gone, f"workers {sorted(p for p in workers if alive(p))} outlived their supervisor"
