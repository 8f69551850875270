"""Resource faults: a full disk, a broken `.info` file, an upload directory that goes away or turns
read-only. Each gets a clear tus error reply (507, 503, or the upload's own error), never a 500
traceback; nothing stored is corrupted; and once the fault is gone, uploads carry on (issue 6)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import requests

from tests.conftest import StartServer
from tests.integration.rawhttp import (
    OCTET,
    TIMEOUT,
    TUS,
    RawConnection,
    Response,
    create,
    head,
    offset_of,
    patch,
    path_of,
    upload_id,
)
from tests.support.server_process import ServerProcess
from tusfast.core.errors import ErrorKind

from .conftest import MiB, Mount, data_file, files_of, fill, info_path, remount


def send(server: ServerProcess, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
         pause_after: int = 0) -> Response:
    """A request whose body the server may stop reading early (507): the body goes out from a thread
    while the reply is read, so neither side waits for the other. With `pause_after`, the sender
    stops for a moment after that many bytes (the server then stores the body in several steps)."""
    def sender_main() -> None:
        if pause_after and raw.try_send(body[:pause_after]):
            time.sleep(0.3)
        raw.try_send(body[pause_after:])

    with RawConnection.to(server, timeout=20) as raw:
        raw.request(method, path, headers)
        sender = threading.Thread(target=sender_main, daemon=True)
        sender.start()
        try:
            return raw.read_response(method)
        finally:
            # Shut down first: the sender then fails with EPIPE (which it expects) instead of
            # writing to a descriptor that close() may already have handed to someone else.
            with contextlib.suppress(OSError):
                raw.sock.shutdown(socket.SHUT_RDWR)
            sender.join(10)
            raw.close()


def patch_headers(offset: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", str(offset)), *extra]


def sha1_header(data: bytes) -> tuple[str, str]:
    return ("Upload-Checksum", "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode())


def chunked_body(data: bytes, size: int = 256 * 1024) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
                    for i in range(0, len(data), size)) + b"0\r\n\r\n"


def assert_clean_error(response: Response | requests.Response, statuses: set[int]) -> None:
    status = response.status if isinstance(response, Response) else response.status_code
    text = response.body if isinstance(response, Response) else response.content
    assert status in statuses, (status, text)
    assert response.headers.get("tus-resumable") == "1.0.0", response.headers
    assert b"internal server error" not in text and b"Traceback" not in text, text


def stored(directory: Path, url: str) -> bytes:
    return data_file(directory, upload_id(url)).read_bytes()


def finish(url: str, payload: bytes, checksum: bool = False) -> None:
    offset = offset_of(url)
    while offset < len(payload):
        piece = payload[offset:offset + MiB]
        extra = dict([sha1_header(piece)]) if checksum else {}
        response = patch(url, offset, piece, **extra)
        assert response.status_code == 204, (response.status_code, response.text)
        offset = int(response.headers["Upload-Offset"])


def assert_server_log_clean(server: ServerProcess) -> None:
    log = "".join(server.log)
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


# ---- disk full ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmpfs: Mount) -> Path:
    return tmpfs("uploads", "8m")


def start_with_filler(start_server: StartServer, directory: Path, filler_size: int = 5 * MiB,
                      env: dict[str, str] | None = None) -> tuple[ServerProcess, str]:
    """A server on the small disk, most of it taken by a finished upload that a test deletes to make room."""
    server = start_server(upload_dir=directory, env=env)
    filler = create(server.url, filler_size)
    assert patch(filler, 0, os.urandom(filler_size)).status_code == 204
    return server, filler


# direct: large bodies read into aligned buffers and written with O_DIRECT (tmpfs takes it);
# splice: the same bodies spliced through the page cache (--direct-io off).
WRITE_PATHS = ["direct", "direct-in-steps", "splice", "splice-in-steps", "splice-purepython", "small-patches",
               "checksum", "chunked", "creation-with-upload"]


def write_path_env(path: str) -> dict[str, str] | None:
    env = {"TUSFAST_DIRECT_IO": "off"} if path.startswith("splice") else {}
    if path.endswith("purepython"):
        env["TUSFAST_PUREPYTHON"] = "1"
    return env or None


@pytest.mark.parametrize("path", WRITE_PATHS)
def test_disk_full_gets_507_then_resumes(start_server: StartServer, small_disk: Path, path: str) -> None:
    env = write_path_env(path)
    server, filler = start_with_filler(start_server, small_disk, env=env)
    payload = random.Random(path).randbytes(6 * MiB)        # does not fit in the ~3 MiB left
    url, response = run_out_of_space(server, path, payload)
    assert_clean_error(response, {507})
    offset = int(response.header("Upload-Offset") or -1)
    data = stored(small_disk, url)
    assert offset == len(data) == offset_of(url), (offset, len(data))
    assert data == payload[:offset], "stored bytes are not a prefix of what was sent"
    if path == "checksum":
        assert offset == 0          # a chunk that could not be stored whole never counts
    else:
        assert 0 < offset < len(payload)     # what fitted was kept
    # Still too full for the rest: a retry fails the same way, keeping what fits.
    rest = payload[offset:offset + 4 * MiB]
    retry = send(server, "PATCH", path_of(url), patch_headers(offset, ("Content-Length", str(len(rest)))), rest)
    assert_clean_error(retry, {507})
    assert int(retry.header("Upload-Offset") or -1) == offset_of(url) == len(stored(small_disk, url))
    assert stored(small_disk, url) == payload[:offset_of(url)]

    assert requests.delete(filler, headers=TUS, timeout=TIMEOUT).status_code == 204     # room again
    finish(url, payload, checksum=path == "checksum")
    assert hashlib.sha256(stored(small_disk, url)).digest() == hashlib.sha256(payload).digest()
    assert server.alive
    assert_server_log_clean(server)


def run_out_of_space(server: ServerProcess, path: str, payload: bytes) -> tuple[str, Response]:
    if path == "creation-with-upload":
        response = send(server, "POST", path_of(server.url),
                        [*TUS.items(), ("Upload-Length", str(len(payload))), ("Content-Type", OCTET),
                         ("Content-Length", str(len(payload)))], payload)
        location = response.header("Location")
        assert location, ("a 507 on creation-with-upload must say where to resume", response)
        return location, response
    url = create(server.url, len(payload))
    if path == "small-patches":         # bodies below the splice threshold: the buffered write path
        offset = 0
        while True:
            result = patch(url, offset, payload[offset:offset + 100_000])
            if result.status_code != 204:
                return url, Response(result.status_code, result.reason, list(result.headers.items()),
                                     result.content)
            offset = int(result.headers["Upload-Offset"])
    if path == "chunked":
        return url, send(server, "PATCH", path_of(url), patch_headers(0, ("Transfer-Encoding", "chunked")),
                         chunked_body(payload))
    extra = [sha1_header(payload)] if path == "checksum" else []
    return url, send(server, "PATCH", path_of(url),
                     patch_headers(0, ("Content-Length", str(len(payload))), *extra), payload,
                     pause_after=MiB if path.endswith("-in-steps") else 0)


def test_creation_without_room_for_the_info_file_gets_507(start_server: StartServer, small_disk: Path) -> None:
    server = start_server(upload_dir=small_disk)
    create(server.url, 0)           # the server has made its own files (.locks) now
    before = set(os.listdir(small_disk))
    filler = fill(small_disk)
    for headers in ({"Upload-Length": "10"}, {"Upload-Defer-Length": "1"}):
        response = requests.post(server.url, headers={**TUS, **headers}, timeout=TIMEOUT)
        assert_clean_error(response, {507})
        assert set(os.listdir(small_disk)) == before | {filler.name}, "a failed creation left files behind"
    filler.unlink()
    url = create(server.url, 5, body=b"hello")
    assert offset_of(url) == 5 and stored(small_disk, url) == b"hello"
    assert_server_log_clean(server)


def test_deferred_length_declaration_on_a_full_disk(start_server: StartServer, small_disk: Path) -> None:
    """Declaring the length rewrites the .info file: on a full disk that is a 507, and the old info stays."""
    server = start_server(upload_dir=small_disk)
    url = create(server.url, None, body=b"abc")
    filler = fill(small_disk)
    response = patch(url, 3, b"def", **{"Upload-Length": "6"})
    assert_clean_error(response, {507})
    assert head(url).headers.get("Upload-Defer-Length") == "1" and offset_of(url) == 3
    assert stored(small_disk, url) == b"abc"
    filler.unlink()
    response = patch(url, 3, b"def", **{"Upload-Length": "6"})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "6"
    assert_server_log_clean(server)


def test_checksummed_patch_on_a_full_disk_keeps_the_upload(start_server: StartServer, small_disk: Path) -> None:
    """A checksummed PATCH first records where its staged bytes start; when even that record cannot
    be written, the PATCH gets 507 and the bytes stored before stay (an empty record once read as
    "roll back to 0")."""
    server = start_server(upload_dir=small_disk)
    payload = os.urandom(200_000)
    url = create(server.url, len(payload), body=payload[:100_000])
    filler = fill(small_disk)
    piece = payload[100_000:150_000]
    response = patch(url, 100_000, piece, **dict([sha1_header(piece)]))
    assert_clean_error(response, {507})
    assert offset_of(url) == 100_000
    assert stored(small_disk, url) == payload[:100_000]
    assert [path.name for path in files_of(small_disk, upload_id(url))
            if not path.name.endswith(".info")] == [upload_id(url)]
    filler.unlink()
    finish(url, payload, checksum=True)
    assert stored(small_disk, url) == payload
    assert_server_log_clean(server)


# ---- broken .info files ------------------------------------------------------------------------


def _json(document: object) -> Callable[[Path, dict[str, object]], None]:
    def write(path: Path, original: dict[str, object]) -> None:
        path.write_text(json.dumps(document))
    return write


def _patched(**changes: object) -> Callable[[Path, dict[str, object]], None]:
    def write(path: Path, original: dict[str, object]) -> None:
        path.write_text(json.dumps({**original, **changes}))
    return write


def _garbage(path: Path, original: dict[str, object]) -> None:
    path.write_bytes(b"\x00\xffnot json at all {")


def _truncated(path: Path, original: dict[str, object]) -> None:
    path.write_text(json.dumps(original)[:20])


def _empty(path: Path, original: dict[str, object]) -> None:
    path.write_bytes(b"")


def _directory(path: Path, original: dict[str, object]) -> None:
    path.unlink()
    path.mkdir()


CORRUPTIONS: dict[str, Callable[[Path, dict[str, object]], None]] = {
    "garbage": _garbage,
    "truncated": _truncated,
    "empty": _empty,
    "directory": _directory,
    "not-an-object": _json([1, 2, 3]),
    "null": _json(None),
    "size-is-text": _patched(Size="lots"),
    "size-negative": _patched(Size=-5),
    "size-huge-float": _patched(Size=1e400),
    "id-is-number": _patched(ID=12345),
    "metadata-is-list": _patched(MetaData=["a", "b"]),
    "storage-is-text": _patched(Storage="somewhere"),
    "tusfast-is-text": _patched(Tusfast="x"),
    "concat-is-number": _patched(Tusfast={"Concat": 5}),
    "created-at-is-text": _patched(Tusfast={"CreatedAt": "yesterday"}),
    "partials-are-bad": _patched(PartialUploads=["../../etc/passwd"]),
}


@pytest.mark.parametrize("layout", ["flat", "dir-layout"])
def test_corrupt_info_affects_only_its_upload(start_server: StartServer, tmp_path: Path, layout: str) -> None:
    args = ("--dir-layout", "{year}/{month}") if layout == "dir-layout" else ()
    server = start_server(*args, upload_dir=tmp_path / "uploads")
    directory = server.upload_dir
    healthy = create(server.url, 10, body=b"01234")
    finished = create(server.url, 5, body=b"hello")
    broken: dict[str, str] = {}
    for name, corrupt in CORRUPTIONS.items():
        url = create(server.url, 8, body=b"abcd")
        path = info_path(directory, upload_id(url))
        corrupt(path, json.loads(path.read_text()))
        broken[name] = url

    for name, url in broken.items():
        for method, response in requests_on(url):
            assert_corrupt_reply(response, f"{name}: {method}")
        assert data_file(directory, upload_id(url)).read_bytes() == b"abcd", name    # kept for inspection
    # The neighbours never noticed.
    assert offset_of(healthy) == 5
    assert patch(healthy, 5, b"56789").status_code == 204
    assert requests.get(healthy, timeout=TIMEOUT).content == b"0123456789"
    assert requests.get(finished, timeout=TIMEOUT).content == b"hello"
    fresh = create(server.url, 3, body=b"new")
    assert offset_of(fresh) == 3
    assert requests.delete(finished, headers=TUS, timeout=TIMEOUT).status_code == 204
    assert server.alive
    assert_server_log_clean(server)


def requests_on(url: str) -> list[tuple[str, requests.Response]]:
    return [("HEAD", head(url)), ("PATCH", patch(url, 4, b"efgh")),
            ("GET", requests.get(url, timeout=TIMEOUT)),
            ("DELETE", requests.delete(url, headers=TUS, timeout=TIMEOUT))]


def assert_corrupt_reply(response: requests.Response, what: str) -> None:
    kind = ErrorKind.UPLOAD_CORRUPT
    assert response.status_code == kind.status, (what, response.status_code, response.content)
    assert response.headers.get("Tus-Resumable") == "1.0.0", what
    if response.request.method != "HEAD":
        assert kind.reason.encode() in response.content, (what, response.content)


# ---- the upload directory goes away, or turns read-only ---------------------------------------


def test_upload_dir_moved_away_then_back(start_server: StartServer, tmp_path: Path) -> None:
    directory = tmp_path / "uploads"
    server = start_server(upload_dir=directory)
    payload = os.urandom(300_000)
    url = create(server.url, len(payload), body=payload[:100_000])
    finished = create(server.url, 5, body=b"hello")
    away = tmp_path / "elsewhere"
    directory.rename(away)
    try:
        for response in all_verbs(server, url, finished, 100_000, payload):
            assert_clean_error(response, {503})
        assert not directory.exists(), "the server recreated its upload directory behind the operator's back"
    finally:
        away.rename(directory)
    assert offset_of(url) == 100_000
    finish(url, payload)
    assert stored(directory, url) == payload
    assert requests.get(finished, timeout=TIMEOUT).content == b"hello"
    assert_server_log_clean(server)


def test_upload_dir_deleted_then_recreated(start_server: StartServer, tmp_path: Path) -> None:
    directory = tmp_path / "uploads"
    server = start_server(upload_dir=directory)
    url = create(server.url, 10, body=b"01234")
    shutil.rmtree(directory)
    response = requests.post(server.url, headers={**TUS, "Upload-Length": "3"}, timeout=TIMEOUT)
    assert_clean_error(response, {503})
    assert_clean_error(head(url), {503})
    directory.mkdir()
    assert head(url).status_code == 404        # its files are gone for good
    fresh = create(server.url, 3, body=b"new")
    assert offset_of(fresh) == 3 and stored(directory, fresh) == b"new"
    assert_server_log_clean(server)


def all_verbs(server: ServerProcess, url: str, finished: str, offset: int,
              payload: bytes) -> list[requests.Response]:
    return [requests.post(server.url, headers={**TUS, "Upload-Length": "3"}, timeout=TIMEOUT),
            requests.post(server.url, headers={**TUS, "Upload-Length": "3", "Content-Type": OCTET},
                          data=b"abc", timeout=TIMEOUT),
            head(url),
            patch(url, offset, payload[offset:offset + 1000]),
            requests.get(finished, timeout=TIMEOUT),
            requests.delete(url, headers=TUS, timeout=TIMEOUT)]


@pytest.fixture
def read_only_able(tmpfs: Mount) -> Path:
    """An upload dir on its own tmpfs; its .locks directory is another mount, because the server keeps
    the lock file open for writing and Linux refuses a read-only remount under an open writer."""
    directory = tmpfs("uploads", "16m")
    tmpfs("uploads/.locks", "1m")
    return directory


def test_upload_dir_turns_read_only_then_writable(start_server: StartServer, read_only_able: Path) -> None:
    directory = read_only_able
    server = start_server(upload_dir=directory)
    payload = os.urandom(400_000)
    url = create(server.url, len(payload), body=payload[:100_000])
    finished = create(server.url, 5, body=b"hello")
    remount(directory, "ro")
    try:
        assert_clean_error(requests.post(server.url, headers={**TUS, "Upload-Length": "3"}, timeout=TIMEOUT), {503})
        assert_clean_error(patch(url, 100_000, payload[100_000:200_000]), {503})
        assert_clean_error(patch(url, 100_000, payload[100_000:]), {503})    # spliced
        assert_clean_error(requests.delete(url, headers=TUS, timeout=TIMEOUT), {503})
        # Reading still works: offsets and downloads.
        assert offset_of(url) == 100_000
        assert requests.get(finished, timeout=TIMEOUT).content == b"hello"
    finally:
        remount(directory, "rw")
    finish(url, payload)
    assert stored(directory, url) == payload
    assert_server_log_clean(server)
