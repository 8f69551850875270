"""GET downloads of finished uploads against a real tusfast process: bytes, validators, ranges, safe
Content-Type / Content-Disposition, sendfile over plain TCP and TLS, keep-alive and slow readers."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests

from tests.conftest import StartServer
from tests.support.server_process import ServerProcess
from tests.support.tls import self_signed

from .rawhttp import (
    OCTET,
    TIMEOUT,
    TUS,
    RawConnection,
    Response,
    create,
    head,
    patch,
    path_of,
    sha256,
)

MiB = 1024 * 1024
INLINE = ["image/png", "image/jpeg", "image/gif", "text/plain", "video/mp4", "audio/mpeg"]
ATTACHMENT = ["text/html", "image/svg+xml", "application/xhtml+xml", "application/javascript", "text/javascript",
              "application/pdf", "application/octet-stream", "text/xml", "application/x-shockwave-flash"]
DISPOSITION = re.compile(r'^(inline|attachment); filename="((?:[^"\\]|\\.)*)"; filename\*=UTF-8\'\'([A-Za-z0-9%!#$&+.^_`|~-]*)$')


# ---- helpers -----------------------------------------------------------------------------------------


def metadata(**values: str) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items())


def finished(server: ServerProcess, data: bytes, meta: str | None = None, verify: object = True) -> str:
    """A finished upload of `data`, created by one creation-with-upload POST."""
    headers = {**TUS, "Upload-Length": str(len(data))}
    if data:
        headers["Content-Type"] = OCTET
    if meta is not None:
        headers["Upload-Metadata"] = meta
    response = requests.post(server.url, data=data, headers=headers, timeout=TIMEOUT, verify=verify)  # type: ignore[arg-type]
    assert response.status_code == 201, (response.status_code, response.text)
    assert response.headers["Upload-Offset"] == str(len(data))
    return response.headers["Location"]


def get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=TIMEOUT)


def raw_get(server: ServerProcess, url: str, *headers: tuple[str, str]) -> Response:
    with RawConnection.to(server) as raw:
        raw.request("GET", path_of(url), list(headers))
        return raw.read_response("GET")


def assert_no_upload_bytes(body: bytes, data: bytes) -> None:
    for start in range(0, max(len(data) - 16, 1), 16):
        assert data[start:start + 16] not in body, "upload bytes leaked into the response"


def disposition(response: requests.Response | Response) -> tuple[str, str, str]:
    """(type, ascii fallback, decoded filename*) of Content-Disposition."""
    value = response.headers["content-disposition" if isinstance(response, Response) else "Content-Disposition"]
    match = DISPOSITION.match(value)
    assert match, f"unexpected Content-Disposition {value!r}"
    fallback = re.sub(r"\\(.)", r"\1", match.group(2))
    assert fallback.isascii() and all(32 <= ord(c) < 127 for c in fallback), value
    return match.group(1), fallback, unquote(match.group(3), encoding="utf-8", errors="strict")


@pytest.fixture(scope="module")
def sample(shared_server: ServerProcess) -> tuple[str, bytes]:
    """One finished upload of 300,001 random bytes, reused by the read-only tests."""
    data = os.urandom(300_001)
    return finished(shared_server, data, metadata(filename="sample.bin")), data


# ---- plain GET ----------------------------------------------------------------------------------------


def test_get_finished_upload(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    url, data = sample
    response = get(url)                              # no Tus-Resumable needed: browsers visit these URLs
    assert response.status_code == 200, (response.status_code, response.text[:200])
    assert sha256(response.content) == sha256(data)
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert re.fullmatch(r'(W/)?"[\x21\x23-\x7e]+"', response.headers["ETag"]), response.headers["ETag"]
    modified = email.utils.parsedate_to_datetime(response.headers["Last-Modified"])
    assert modified <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
    assert modified >= dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    assert "Upload-Offset" not in response.headers


def test_get_with_tus_resumable_is_the_same(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    url, data = sample
    response = get(url, **TUS)
    assert response.status_code == 200 and response.content == data


def test_etag_is_stable_and_distinct(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    url, data = sample
    assert get(url).headers["ETag"] == get(url).headers["ETag"]
    same_bytes = finished(server, data)
    assert get(same_bytes).headers["ETag"] != get(url).headers["ETag"]


def test_empty_upload_downloads_empty(server: ServerProcess) -> None:
    url = finished(server, b"")
    response = raw_get(server, url)
    assert response.status == 200 and response.header("Content-Length") == "0" and response.body == b""


def test_get_unknown_upload_is_404(server: ServerProcess) -> None:
    assert get(server.url + "0" * 32).status_code == 404


def test_get_on_the_collection_is_not_a_server_error(server: ServerProcess) -> None:
    assert get(server.url).status_code in (404, 405)


@pytest.mark.parametrize("deferred", [False, True])
def test_get_unfinished_upload_is_409_without_data(server: ServerProcess, deferred: bool) -> None:
    data = os.urandom(4096)
    url = create(server.url, None if deferred else len(data) + 1)
    assert patch(url, 0, data).status_code == 204
    response = get(url)
    assert response.status_code == 409, response.status_code
    assert_no_upload_bytes(response.content, data)
    assert len(response.content) < 1024


def test_disable_download_answers_405(start_server: StartServer) -> None:
    server = start_server("--disable-download")
    url = finished(server, b"secret bytes")
    response = get(url)
    assert response.status_code == 405, response.status_code
    assert b"secret bytes" not in response.content
    assert head(url).headers["Upload-Offset"] == "12"        # the tus side is unaffected


def test_head_and_get_agree(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    """[23] HEAD on the upload URL is the tus offset request; its Content-Length is Upload-Length, the size
    GET returns."""
    url, data = sample
    tus_head = head(url)
    assert tus_head.status_code == 200
    assert tus_head.headers["Upload-Length"] == tus_head.headers["Upload-Offset"] == str(len(data))
    assert tus_head.headers["Content-Length"] == str(len(data))
    assert tus_head.headers["Cache-Control"] == "no-store"
    response = get(url)
    assert response.headers["Content-Length"] == tus_head.headers["Content-Length"]
    with RawConnection.to(server) as raw:                    # and HEAD really sends no body
        raw.request("HEAD", path_of(url), TUS)
        first = raw.read_response("HEAD")
        raw.request("HEAD", path_of(url), TUS)
        second = raw.read_response("HEAD")
    assert first.status == second.status == 200 and first.body == b""


# ---- Content-Type and Content-Disposition --------------------------------------------------------------


@pytest.mark.parametrize("media_type", INLINE)
def test_safe_types_are_inline(server: ServerProcess, media_type: str) -> None:
    url = finished(server, b"content", metadata(filetype=media_type, filename="file.dat"))
    response = get(url)
    assert response.headers["Content-Type"].split(";")[0] == media_type
    assert disposition(response) == ("inline", "file.dat", "file.dat")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("media_type", ATTACHMENT + ["TEXT/HTML", "text/html; charset=utf-8", "Image/SVG+XML"])
def test_active_or_unknown_types_are_attachments(server: ServerProcess, media_type: str) -> None:
    url = finished(server, b"<script>alert(1)</script>", metadata(filetype=media_type, filename="x.html"))
    response = get(url)
    assert response.headers["Content-Disposition"].startswith("attachment;"), response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_type_metadata_key_is_used_too(server: ServerProcess) -> None:
    response = get(finished(server, b"\x89PNG", metadata(type="image/png", name="pic.png")))
    assert response.headers["Content-Type"] == "image/png"
    assert disposition(response) == ("inline", "pic.png", "pic.png")


@pytest.mark.parametrize("media_type", ["not a type", "text", "text/", "/html", "text/html\r\nX-Evil: 1",
                                        "image/png\nSet-Cookie: a=b", "a" * 300 + "/b", "tëxt/plain", ""])
def test_invalid_types_fall_back_to_octet_stream(server: ServerProcess, media_type: str) -> None:
    url = finished(server, b"data", metadata(filetype=media_type))
    response = raw_get(server, url)
    assert response.status == 200, response
    assert response.header("Content-Type") == "application/octet-stream", response
    assert response.header("Content-Disposition").startswith("attachment"), response  # type: ignore[union-attr]
    assert response.count("X-Evil") == 0 and response.count("Set-Cookie") == 0, response


def test_no_metadata_is_an_octet_stream_attachment(server: ServerProcess) -> None:
    response = get(finished(server, b"data"))
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment")


@pytest.mark.parametrize("name", ["report.pdf", "słońce.png", "日本語 ファイル.txt", 'quote"d\\name.txt',
                                  "semi;colon,comma 'single'.txt", "percent%20.txt", "emoji 😀.png"])
def test_filename_is_exact_in_filename_star_and_safe_in_fallback(server: ServerProcess, name: str) -> None:
    response = get(finished(server, b"data", metadata(filename=name, filetype="text/plain")))
    kind, fallback, exact = disposition(response)
    assert kind == "inline"
    assert exact == name
    if name.isascii() and '"' not in name and "\\" not in name:
        assert fallback == name
    assert fallback.strip()


@pytest.mark.parametrize("name", ["evil\r\nSet-Cookie: a=b.txt", "x\nLocation: http://evil/", "a\rb.txt",
                                  "\r\n\r\n<html>", "nul\x00byte.txt", "tab\there.txt"])
def test_filename_cannot_inject_headers(server: ServerProcess, name: str) -> None:
    url = finished(server, b"payload", metadata(filename=name, filetype="text/plain"))
    with RawConnection.to(server) as raw:
        raw.request("GET", path_of(url))
        response = raw.read_response("GET")
        assert response.status == 200 and response.body == b"payload", response
        raw.request("HEAD", path_of(url), TUS)               # the stream is still in sync
        assert raw.read_response("HEAD").status == 200
    assert response.count("Set-Cookie") == 0 and response.count("Location") == 0, response
    assert response.count("Content-Disposition") == 1
    value = response.header("Content-Disposition") or ""
    assert "\r" not in value and "\n" not in value and "\x00" not in value
    _, _, exact = disposition(response)
    assert "\r" not in exact and "\n" not in exact


# ---- ranges [RFC 9110 14] ------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "start", "end"), [
    ("bytes=0-0", 0, 1),
    ("bytes=0-99", 0, 100),
    ("bytes=1000-1999", 1000, 2000),
    ("bytes=299000-", 299000, 300001),            # open end
    ("bytes=-50", 300001 - 50, 300001),           # suffix
    ("bytes=-1", 300000, 300001),
    ("bytes=-999999", 0, 300001),                 # suffix longer than the file
    ("bytes=300000-400000", 300000, 300001),      # end past the size is clamped
    ("bytes=0-", 0, 300001),
])
def test_single_range(server: ServerProcess, sample: tuple[str, bytes], spec: str, start: int, end: int) -> None:
    url, data = sample
    response = get(url, Range=spec)
    assert response.status_code == 206, (spec, response.status_code)
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
    assert response.headers["Content-Length"] == str(end - start)
    assert response.content == data[start:end]
    assert response.headers["ETag"] == get(url).headers["ETag"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("spec", ["bytes=300001-", "bytes=400000-500000", "bytes=-0"])
def test_unsatisfiable_range_is_416(server: ServerProcess, sample: tuple[str, bytes], spec: str) -> None:
    url, data = sample
    response = raw_get(server, url, ("Range", spec))
    assert response.status == 416, (spec, response)
    assert response.header("Content-Range") == f"bytes */{len(data)}"
    assert_no_upload_bytes(response.body, data)


def test_range_on_empty_upload_is_416(server: ServerProcess) -> None:
    response = raw_get(server, finished(server, b""), ("Range", "bytes=0-"))
    assert response.status == 416 and response.header("Content-Range") == "bytes */0", response


@pytest.mark.parametrize("spec", ["items=0-5", "0-5", "none"])
def test_unknown_range_unit_is_ignored(server: ServerProcess, sample: tuple[str, bytes], spec: str) -> None:
    """RFC 9110 14.2: a Range with a unit the server does not understand MUST be ignored."""
    url, data = sample
    response = get(url, Range=spec)
    assert response.status_code == 200, (spec, response.status_code)
    assert response.content == data


@pytest.mark.parametrize("spec", ["bytes=abc", "bytes=5-2", "bytes=", "bytes=--5", "bytes=1-2-3", "bytes=-"])
def test_invalid_byte_range_is_ignored_or_416(server: ServerProcess, sample: tuple[str, bytes], spec: str) -> None:
    """An invalid range-spec: either ignored (200, whole file) or rejected (416) - never a wrong slice."""
    url, data = sample
    response = get(url, Range=spec)
    assert response.status_code in (200, 416), (spec, response.status_code)
    if response.status_code == 200:
        assert response.content == data
    else:
        assert response.headers["Content-Range"] == f"bytes */{len(data)}"
        assert_no_upload_bytes(response.content, data)


def test_multiple_ranges(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    url, data = sample
    response = get(url, Range="bytes=0-9,100-109")
    assert response.status_code in (200, 206), response.status_code
    if response.status_code == 200:
        assert response.content == data
    else:
        assert response.headers["Content-Type"].startswith("multipart/byteranges")
        assert data[0:10] in response.content and data[100:110] in response.content


def test_if_range(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    url, data = sample
    etag = get(url).headers["ETag"]
    response = get(url, Range="bytes=10-19", **{"If-Range": etag})
    assert response.status_code == 206 and response.content == data[10:20]
    for stale in ('"stale"', 'W/' + etag, "Sat, 01 Jan 2000 00:00:00 GMT"):
        response = get(url, Range="bytes=10-19", **{"If-Range": stale})
        assert response.status_code == 200, (stale, response.status_code)
        assert sha256(response.content) == sha256(data)


def test_if_none_match(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    url, data = sample
    etag = get(url).headers["ETag"]
    with RawConnection.to(server) as raw:
        for value in (etag, f'"other", {etag}', "W/" + etag, "*"):
            raw.request("GET", path_of(url), [("If-None-Match", value)])
            response = raw.read_response("GET")
            assert response.status == 304, (value, response)
            assert response.header("ETag") == etag
        raw.request("GET", path_of(url), [("If-None-Match", '"other"')])
        response = raw.read_response("GET")
        assert response.status == 200 and sha256(response.body) == sha256(data)
        raw.request("GET", path_of(url), [("If-None-Match", etag), ("Range", "bytes=0-9")])
        assert raw.read_response("GET").status == 304


def test_parallel_ranges_reassemble_the_file(server: ServerProcess) -> None:
    data = os.urandom(5 * MiB + 3)
    url = finished(server, data)
    step = len(data) // 4 + 1
    spans = [(start, min(start + step, len(data)) - 1) for start in range(0, len(data), step)]

    def fetch(span: tuple[int, int]) -> bytes:
        response = get(url, Range=f"bytes={span[0]}-{span[1]}")
        assert response.status_code == 206
        return response.content

    with ThreadPoolExecutor(4) as pool:
        assert b"".join(pool.map(fetch, spans)) == data


# ---- transport: sendfile, keep-alive, TLS, slow readers -----------------------------------------------


def upload_large(server: ServerProcess, data: bytes) -> str:
    url = create(server.url, len(data))
    response = patch(url, 0, data)
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(len(data))
    return url


def test_large_download_is_identical(server: ServerProcess) -> None:
    data = os.urandom(64 * MiB)
    url = upload_large(server, data)
    digest = hashlib.sha256()
    received = 0
    with requests.get(url, stream=True, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(len(data))
        for block in response.iter_content(1 << 20):
            digest.update(block)
            received += len(block)
    assert received == len(data)
    assert digest.hexdigest() == sha256(data)
    tail = get(url, Range=f"bytes={60 * MiB}-")
    assert tail.status_code == 206 and tail.content == data[60 * MiB:]


def test_keep_alive_after_downloads(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    """Every kind of GET answer leaves the connection usable for the next request."""
    url, data = sample
    unfinished = create(server.url, 10)
    with RawConnection.to(server) as raw:
        raw.request("GET", path_of(url))
        response = raw.read_response("GET")
        assert response.status == 200 and sha256(response.body) == sha256(data)
        etag = response.header("ETag") or ""
        for headers, status in (([("Range", "bytes=5-9")], 206), ([("Range", "bytes=999999-")], 416),
                                ([("If-None-Match", etag)], 304), ([], 200)):
            raw.request("GET", path_of(url), headers)
            response = raw.read_response("GET")
            assert response.status == status, (headers, response)
        raw.request("GET", path_of(unfinished))
        assert raw.read_response("GET").status == 409
        raw.request("HEAD", path_of(url), TUS)
        response = raw.read_response("HEAD")
        assert response.status == 200 and response.header("Upload-Offset") == str(len(data))
        raw.request("PATCH", path_of(unfinished), [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0")],
                    b"0123456789")
        assert raw.read_response("PATCH").status == 204
        raw.request("GET", path_of(unfinished))
        response = raw.read_response("GET")
        assert response.status == 200 and response.body == b"0123456789"


def test_pipelined_downloads(server: ServerProcess, sample: tuple[str, bytes]) -> None:
    url, data = sample
    with RawConnection.to(server) as raw:
        request = f"GET {path_of(url)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        ranged = f"GET {path_of(url)} HTTP/1.1\r\nHost: x\r\nRange: bytes=-7\r\n\r\n".encode()
        raw.send(request + ranged + request)
        first, second, third = (raw.read_response("GET") for _ in range(3))
    assert first.body == data and second.body == data[-7:] and third.body == data
    assert (first.status, second.status, third.status) == (200, 206, 200)



def test_tls_download(start_server: StartServer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = start_server("--tls-cert", cert, "--tls-key", key)
    assert server.url.startswith("https://")
    data = os.urandom(6 * MiB + 5)
    url = finished(server, data, metadata(filename="tls.bin"), verify=cert)
    with requests.Session() as session:
        response = session.get(url, verify=cert, timeout=TIMEOUT)
        assert response.status_code == 200 and sha256(response.content) == sha256(data)
        assert response.headers["Content-Length"] == str(len(data))
        ranged = session.get(url, headers={"Range": "bytes=1000000-1999999"}, verify=cert, timeout=TIMEOUT)
        assert ranged.status_code == 206 and ranged.content == data[1_000_000:2_000_000]
        again = session.get(url, verify=cert, timeout=TIMEOUT)     # keep-alive over TLS
        assert again.status_code == 200 and sha256(again.content) == sha256(data)


def test_slow_reader_gets_identical_bytes(server: ServerProcess) -> None:
    """A client with a tiny receive buffer that stops reading for a while: sendfile must cope with short
    writes and EAGAIN and still deliver every byte in order."""
    data = os.urandom(8 * MiB + 11)
    url = upload_large(server, data)
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect((parts.hostname, parts.port))
    try:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(4096)
            assert chunk, "connection closed before the response head"
            buffer += chunk
        head_bytes, _, body = buffer.partition(b"\r\n\r\n")
        assert head_bytes.startswith(b"HTTP/1.1 200"), head_bytes
        assert f"content-length: {len(data)}".encode() in head_bytes.lower()
        digest = hashlib.sha256(body)
        received = len(body)
        pauses = {64 * 1024: 0.6, 2 * MiB: 0.4, 6 * MiB: 0.3}
        while received < len(data):
            for mark, pause in list(pauses.items()):
                if received >= mark:
                    time.sleep(pause)
                    del pauses[mark]
            chunk = sock.recv(min(4096, len(data) - received))
            assert chunk, f"connection closed after {received} of {len(data)} bytes"
            digest.update(chunk)
            received += len(chunk)
        assert received == len(data) and digest.hexdigest() == sha256(data)
        sock.sendall(f"HEAD {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n\r\n".encode())
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
    finally:
        sock.close()


def test_download_survives_restart(start_server: StartServer) -> None:
    server = start_server()
    data = os.urandom(100_000)
    url = finished(server, data, metadata(filename="kept.bin"))
    before = get(url)
    server.restart()
    after = get(url)
    assert after.status_code == 200 and after.content == data
    assert after.headers["ETag"] == before.headers["ETag"]
    assert after.headers["Last-Modified"] == before.headers["Last-Modified"]
    assert get(url, **{"If-None-Match": before.headers["ETag"]}).status_code == 304


def test_download_while_uploading_never_serves_partial_data(server: ServerProcess) -> None:
    """Until the last byte is stored, GET is 409; right after, it is the whole file."""
    data = os.urandom(MiB)
    url = create(server.url, len(data))
    for offset in range(0, len(data), 256 * 1024):
        response = get(url)
        assert response.status_code == 409
        assert patch(url, offset, data[offset:offset + 256 * 1024]).status_code == 204
    response = get(url)
    assert response.status_code == 200 and response.content == data
    assert response.headers["Content-Length"] == str(len(data))
