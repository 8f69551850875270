"""The tus extensions beyond creation/termination, against a real tusfast process: checksum, checksum-trailer,
expiration, concatenation and concatenation-unfinished, plus feature detection and the `--disable-*` flags.

Numbers in brackets refer to the items of ../shared/spec/tus-server-checklist.md Part A.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import os
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import requests

from tests.conftest import StartServer
from tests.support.server_process import ServerProcess

from .rawhttp import (
    OCTET,
    TIMEOUT,
    TUS,
    UPLOAD_ID,
    RawConnection,
    Response,
    chunked,
    create,
    head,
    offset_of,
    patch,
    path_of,
    sha256,
    upload_id,
    wait_until,
)

MiB = 1024 * 1024
ALL_EXTENSIONS = ["creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum",
                  "checksum-trailer", "termination", "concatenation", "concatenation-unfinished"]
ALGORITHMS = ["md5", "sha1", "sha256", "sha512", "crc32"]
IMF_FIXDATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                         r"\d{4} \d{2}:\d{2}:\d{2} GMT$")


# ---- helpers -----------------------------------------------------------------------------------------


def digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


def checksum(algorithm: str, data: bytes) -> str:
    """The Upload-Checksum value for `data` [63]."""
    return f"{algorithm} {base64.b64encode(digest(algorithm, data)).decode()}"


def wrong_checksum(algorithm: str, data: bytes) -> str:
    return checksum(algorithm, data + b"!")


def user_files(directory: Path) -> set[str]:
    """Data and .info files of the upload directory (the server's hidden bookkeeping left out)."""
    if not directory.exists():
        return set()
    found = set()
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found |= {os.path.relpath(os.path.join(root, n), directory) for n in names if not n.startswith(".")}
    return found


def data_file(server: ServerProcess, url: str) -> Path:
    return server.upload_dir / upload_id(url)


def info_file(server: ServerProcess, url: str) -> Path:
    return server.upload_dir / f"{upload_id(url)}.info"


def assert_tus_error(response: requests.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.headers, response.text)
    assert response.headers.get("Tus-Resumable") == "1.0.0", response.headers


def extensions(server: ServerProcess) -> list[str]:
    response = requests.options(server.url, timeout=TIMEOUT)
    assert response.status_code in (200, 204), response.status_code
    value = response.headers.get("Tus-Extension", "")
    return [token.strip() for token in value.split(",") if token.strip()]


def patch_head(offset: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", str(offset)), *extra]


def http_date(value: str) -> dt.datetime:
    assert IMF_FIXDATE.match(value), f"not an IMF-fixdate: {value!r}"
    return email.utils.parsedate_to_datetime(value)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def partial(server: ServerProcess, data: bytes, *, upload: bool = True, metadata: str | None = None) -> str:
    """A complete (upload=True) or empty partial upload of len(data) bytes."""
    url = create(server.url, len(data), metadata=metadata, extra={"Upload-Concat": "partial"})
    if upload and data:
        response = patch(url, 0, data)
        assert response.status_code == 204, (response.status_code, response.text)
    return url


def post_final(server: ServerProcess, concat: str, **headers: str) -> requests.Response:
    return requests.post(server.url, headers={**TUS, "Upload-Concat": concat, **headers}, timeout=TIMEOUT)


def create_final(server: ServerProcess, concat: str, **headers: str) -> str:
    response = post_final(server, concat, **headers)
    assert response.status_code == 201, (response.status_code, response.headers, response.text)
    assert response.headers.get("Upload-Concat") == concat, response.headers
    location = response.headers["Location"]
    assert location.startswith(server.url) and UPLOAD_ID.match(location[len(server.url):]), location
    return location


def download(url: str) -> requests.Response:
    return requests.get(url, timeout=TIMEOUT)


def assert_final_complete(url: str, concat: str, content: bytes) -> None:
    response = head(url)
    assert response.status_code == 200, (response.status_code, response.headers)
    assert response.headers["Upload-Concat"] == concat, response.headers
    assert response.headers["Upload-Length"] == str(len(content)), response.headers
    assert response.headers["Upload-Offset"] == str(len(content)), response.headers
    got = download(url)
    assert got.status_code == 200, (got.status_code, got.text[:200])
    assert sha256(got.content) == sha256(content)


# ---- feature detection [4, 11, 38, 55, 57, 62, 67, 70, 75, 82] --------------------------------------


def test_options_announces_every_extension_and_algorithm(server: ServerProcess) -> None:
    response = requests.options(server.url, timeout=TIMEOUT)
    assert response.status_code in (200, 204)
    tokens = [t.strip() for t in response.headers["Tus-Extension"].split(",")]
    assert sorted(tokens) == sorted(ALL_EXTENSIONS) and len(tokens) == len(set(tokens)), tokens
    algorithms = [a.strip() for a in response.headers["Tus-Checksum-Algorithm"].split(",")]
    assert sorted(algorithms) == sorted(ALGORITHMS), algorithms
    assert "sha1" in algorithms                     # [66] the one every server must support
    assert all(a == a.lower() and a.isascii() for a in algorithms)


def test_cors_covers_the_extension_headers(server: ServerProcess) -> None:
    """[40] browsers (tus-js-client, Uppy) may only send Upload-Checksum / Upload-Concat and read
    Upload-Concat / Upload-Expires when CORS allows it."""
    origin = {"Origin": "http://app.example"}
    preflight = requests.options(server.url, timeout=TIMEOUT, headers={
        **origin, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "tus-resumable,upload-checksum,upload-concat"})
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"upload-checksum", "upload-concat", "tus-resumable"} <= allowed, allowed
    created = requests.post(server.url, timeout=TIMEOUT,
                            headers={**TUS, **origin, "Upload-Length": "3", "Upload-Concat": "partial"})
    assert created.status_code == 201
    exposed = {h.strip().lower() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"upload-concat", "upload-expires", "location", "upload-offset"} <= exposed, exposed


@pytest.mark.parametrize(("flags", "removed"), [
    (("--disable-creation",), {"creation", "creation-with-upload", "creation-defer-length"}),
    (("--disable-creation-with-upload",), {"creation-with-upload"}),
    (("--disable-creation-defer-length",), {"creation-defer-length"}),
    (("--disable-expiration",), {"expiration"}),
    (("--expire-after", "0"), {"expiration"}),
    (("--disable-checksum",), {"checksum", "checksum-trailer"}),
    (("--disable-checksum-trailer",), {"checksum-trailer"}),
    (("--disable-termination",), {"termination"}),
    (("--disable-concatenation",), {"concatenation", "concatenation-unfinished"}),
    (("--disable-concatenation-unfinished",), {"concatenation-unfinished"}),
], ids=lambda value: " ".join(value) if isinstance(value, tuple) else None)
def test_disabled_extensions_are_not_announced(start_server: StartServer, flags: tuple[str, ...],
                                               removed: set[str]) -> None:
    server = start_server(*flags)
    tokens = extensions(server)
    assert len(tokens) == len(set(tokens)), tokens
    assert set(tokens) == set(ALL_EXTENSIONS) - removed, tokens


def test_disabled_checksum_rejects_upload_checksum(start_server: StartServer) -> None:
    server = start_server("--disable-checksum")
    assert "Tus-Checksum-Algorithm" not in requests.options(server.url, timeout=TIMEOUT).headers
    url = create(server.url, 10)
    response = patch(url, 0, b"hello", **{"Upload-Checksum": checksum("sha1", b"hello")})
    assert_tus_error(response, 400)
    assert offset_of(url) == 0 and data_file(server, url).stat().st_size == 0
    before = user_files(server.upload_dir)
    response = requests.post(server.url, data=b"hello", timeout=TIMEOUT,
                             headers={**TUS, "Upload-Length": "5", "Content-Type": OCTET,
                                      "Upload-Checksum": checksum("sha1", b"hello")})
    assert_tus_error(response, 400)
    assert "Location" not in response.headers
    assert user_files(server.upload_dir) == before


@pytest.mark.parametrize("flag", ["--disable-checksum", "--disable-checksum-trailer"])
def test_disabled_checksum_trailer_rejects_a_declared_trailer(start_server: StartServer, flag: str) -> None:
    """[4] a client that sends a checksum trailer to a server without checksum-trailer must not believe its
    data was verified: the declared trailer gets 400 and nothing is stored."""
    server = start_server(flag)
    url = create(server.url, 10)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_head(0, ("Transfer-Encoding", "chunked"),
                                                      ("Trailer", "Upload-Checksum")))
        raw.send(chunked(b"hello", trailer=f"Upload-Checksum: {wrong_checksum('sha1', b'hello')}\r\n"))
        response = raw.read_response("PATCH")
    assert response.status == 400, response
    assert offset_of(url) == 0 and data_file(server, url).stat().st_size == 0


def test_disabled_checksum_trailer_keeps_header_checksums(start_server: StartServer) -> None:
    server = start_server("--disable-checksum-trailer")
    url = create(server.url, 10)
    assert_tus_error(patch(url, 0, b"hello", **{"Upload-Checksum": wrong_checksum("sha1", b"hello")}), 460)
    response = patch(url, 0, b"hello", **{"Upload-Checksum": checksum("sha1", b"hello")})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "5"


def test_disabled_concatenation_rejects_upload_concat(start_server: StartServer) -> None:
    server = start_server("--disable-concatenation")
    before = user_files(server.upload_dir)
    response = requests.post(server.url, headers={**TUS, "Upload-Length": "5", "Upload-Concat": "partial"},
                             timeout=TIMEOUT)
    assert_tus_error(response, 400)
    assert "Location" not in response.headers
    url = create(server.url, 3)
    patch(url, 0, b"abc")
    response = post_final(server, f"final;{url}")
    assert_tus_error(response, 400)
    assert user_files(server.upload_dir) == before | {upload_id(url), upload_id(url) + ".info"}


def test_disabled_termination_keeps_the_upload(start_server: StartServer) -> None:
    server = start_server("--disable-termination")
    url = create(server.url, 5)
    response = requests.delete(url, headers=TUS, timeout=TIMEOUT)
    assert 400 <= response.status_code < 500, response.status_code
    assert offset_of(url) == 0 and data_file(server, url).exists()


def test_disabled_creation_creates_nothing(start_server: StartServer) -> None:
    server = start_server("--disable-creation")
    response = requests.post(server.url, headers={**TUS, "Upload-Length": "5"}, timeout=TIMEOUT)
    assert 400 <= response.status_code < 500 and "Location" not in response.headers, response.status_code
    assert user_files(server.upload_dir) == set()


def test_disabled_creation_with_upload_rejects_a_body(start_server: StartServer) -> None:
    server = start_server("--disable-creation-with-upload")
    response = requests.post(server.url, data=b"hello", timeout=TIMEOUT,
                             headers={**TUS, "Upload-Length": "5", "Content-Type": OCTET})
    assert_tus_error(response, 400)
    assert user_files(server.upload_dir) == set()


def test_disabled_creation_defer_length_rejects_deferral(start_server: StartServer) -> None:
    server = start_server("--disable-creation-defer-length")
    response = requests.post(server.url, headers={**TUS, "Upload-Defer-Length": "1"}, timeout=TIMEOUT)
    assert_tus_error(response, 400)
    assert user_files(server.upload_dir) == set()


@pytest.mark.parametrize("flags", [("--disable-expiration",), ("--expire-after", "0")])
def test_no_upload_expires_without_expiration(start_server: StartServer, flags: tuple[str, ...]) -> None:
    server = start_server(*flags)
    created = requests.post(server.url, headers={**TUS, "Upload-Length": "10"}, timeout=TIMEOUT)
    assert created.status_code == 201 and "Upload-Expires" not in created.headers, created.headers
    url = created.headers["Location"]
    patched = patch(url, 0, b"12345")
    assert patched.status_code == 204 and "Upload-Expires" not in patched.headers, patched.headers
    assert "Upload-Expires" not in head(url).headers


# ---- checksum [62-69] ---------------------------------------------------------------------------------


def test_known_sha1_value_is_accepted(server: ServerProcess) -> None:
    """[63] the spec's own example: sha1 of "hello world"."""
    url = create(server.url, 11)
    response = patch(url, 0, b"hello world", **{"Upload-Checksum": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "11"
    assert data_file(server, url).read_bytes() == b"hello world"


def test_crc32_is_four_big_endian_bytes(server: ServerProcess) -> None:
    data = b"The quick brown fox jumps over the lazy dog"
    assert checksum("crc32", data) == "crc32 QU+jOQ=="      # 0x414fa339
    url = create(server.url, len(data))
    little_endian = "crc32 " + base64.b64encode(zlib.crc32(data).to_bytes(4, "little")).decode()
    assert_tus_error(patch(url, 0, data, **{"Upload-Checksum": little_endian}), 460)
    response = patch(url, 0, data, **{"Upload-Checksum": "crc32 QU+jOQ=="})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(len(data))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matching_checksum_is_stored(server: ServerProcess, algorithm: str) -> None:
    payload = os.urandom(300_000)
    url = create(server.url, len(payload))
    offset = 0
    for size in (100_000, 1, 199_999):
        chunk = payload[offset:offset + size]
        response = patch(url, offset, chunk, **{"Upload-Checksum": checksum(algorithm, chunk)})
        assert response.status_code == 204, (response.status_code, response.text)
        offset += size
        assert response.headers["Upload-Offset"] == str(offset)
    assert data_file(server, url).read_bytes() == payload


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mismatch_is_460_and_discards_the_chunk(server: ServerProcess, algorithm: str) -> None:
    """[64, 65, 68, 69] 460 Checksum Mismatch; the offset and the data file stay; the same chunk can be
    sent again."""
    first, second = os.urandom(1000), os.urandom(5000)
    url = create(server.url, len(first) + len(second))
    assert patch(url, 0, first, **{"Upload-Checksum": checksum(algorithm, first)}).status_code == 204
    response = patch(url, 1000, second, **{"Upload-Checksum": wrong_checksum(algorithm, second)})
    assert_tus_error(response, 460)
    assert response.reason == "Checksum Mismatch"
    assert offset_of(url) == 1000
    assert data_file(server, url).read_bytes() == first
    response = patch(url, 1000, second, **{"Upload-Checksum": checksum(algorithm, second)})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "6000"
    assert data_file(server, url).read_bytes() == first + second


def test_corrupted_body_with_original_checksum_is_rejected(server: ServerProcess) -> None:
    """What the checksum is for: a flipped bit in transit is caught and never stored."""
    payload = os.urandom(64 * 1024)
    corrupted = bytearray(payload)
    corrupted[40_000] ^= 0x01
    url = create(server.url, len(payload))
    assert_tus_error(patch(url, 0, bytes(corrupted), **{"Upload-Checksum": checksum("sha256", payload)}), 460)
    assert offset_of(url) == 0 and data_file(server, url).stat().st_size == 0
    assert patch(url, 0, payload, **{"Upload-Checksum": checksum("sha256", payload)}).status_code == 204
    assert data_file(server, url).read_bytes() == payload


@pytest.mark.parametrize("value", [
    "sha3 Kq5sNclPz7QV2+lfQIuc6R7oRu0=",      # unknown algorithm
    "whirlpool AAAA",
    "sha1",                                  # no digest
    "sha1 ",
    "Kq5sNclPz7QV2+lfQIuc6R7oRu0=",          # no algorithm
    "sha1 !!!notbase64!!!",
    "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0",      # bad padding
    "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0= extra",
    "",
])
def test_unsupported_or_malformed_checksum_is_400(server: ServerProcess, value: str) -> None:
    """[64, 68] 400, and nothing is stored."""
    url = create(server.url, 20)
    assert patch(url, 0, b"01234").status_code == 204
    response = patch(url, 5, b"hello world", **{"Upload-Checksum": value})
    assert_tus_error(response, 400)
    assert offset_of(url) == 5 and data_file(server, url).read_bytes() == b"01234"


def test_digest_of_the_wrong_size_is_rejected(server: ServerProcess) -> None:
    url = create(server.url, 5)
    response = patch(url, 0, b"hello", **{"Upload-Checksum": "sha1 " + base64.b64encode(b"x" * 16).decode()})
    assert response.status_code in (400, 460), response.status_code
    assert offset_of(url) == 0 and data_file(server, url).stat().st_size == 0


def test_checksummed_patch_keeps_the_core_checks(server: ServerProcess) -> None:
    """[26, 33] a valid checksum does not bypass the offset and length checks."""
    url = create(server.url, 5)
    assert_tus_error(patch(url, 0, b"0123456789", **{"Upload-Checksum": checksum("sha1", b"0123456789")}), 413)
    assert_tus_error(patch(url, 3, b"ab", **{"Upload-Checksum": checksum("sha1", b"ab")}), 409)
    assert offset_of(url) == 0 and data_file(server, url).stat().st_size == 0
    assert patch(url, 0, b"01234", **{"Upload-Checksum": checksum("md5", b"01234")}).status_code == 204


def test_checksum_of_empty_body(server: ServerProcess) -> None:
    url = create(server.url, 5)
    response = patch(url, 0, b"", **{"Upload-Checksum": checksum("sha1", b"")})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "0"
    assert_tus_error(patch(url, 0, b"", **{"Upload-Checksum": checksum("sha1", b"x")}), 460)
    assert offset_of(url) == 0


def test_checksum_on_a_large_patch(server: ServerProcess) -> None:
    """The server stages the whole body before committing: 24 MiB in one checksummed PATCH."""
    payload = os.urandom(24 * MiB)
    url = create(server.url, len(payload))
    assert_tus_error(patch(url, 0, payload, **{"Upload-Checksum": wrong_checksum("sha512", payload)}), 460)
    assert offset_of(url) == 0 and data_file(server, url).stat().st_size == 0
    response = patch(url, 0, payload, **{"Upload-Checksum": checksum("sha512", payload)})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(len(payload))
    assert sha256(data_file(server, url).read_bytes()) == sha256(payload)


def test_checksum_header_with_chunked_body(server: ServerProcess) -> None:
    url = create(server.url, None)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_head(0, ("Transfer-Encoding", "chunked"),
                                                      ("Upload-Checksum", wrong_checksum("md5", b"hello world"))))
        raw.send(chunked(b"hello", b" world"))
        response = raw.read_response("PATCH")
        assert response.status == 460, response
        raw.request("PATCH", path_of(url), patch_head(0, ("Transfer-Encoding", "chunked"),
                                                      ("Upload-Checksum", checksum("md5", b"hello world"))))
        raw.send(chunked(b"hello", b" world"))
        response = raw.read_response("PATCH")
        assert response.status == 204 and response.header("Upload-Offset") == "11", response
    assert data_file(server, url).read_bytes() == b"hello world"


def test_connection_stays_usable_after_460(server: ServerProcess) -> None:
    """[87] the 460 comes after the whole body was read, so the client can retry on the same connection."""
    url = create(server.url, 5)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_head(0, ("Upload-Checksum", wrong_checksum("sha1", b"hello"))),
                    b"hello")
        response = raw.read_response("PATCH")
        assert response.status == 460 and response.header("Tus-Resumable") == "1.0.0", response
        assert (response.header("Connection") or "").lower() != "close", response
        raw.request("PATCH", path_of(url), patch_head(0, ("Upload-Checksum", checksum("sha1", b"hello"))),
                    b"hello")
        response = raw.read_response("PATCH")
        assert response.status == 204 and response.header("Upload-Offset") == "5", response


@pytest.mark.parametrize("sent", [0, 1, 70_000, 199_999])
def test_interrupted_checksummed_patch_changes_nothing(server: ServerProcess, sent: int) -> None:
    """[65] unlike a plain PATCH (whose received bytes are kept), an interrupted checksummed PATCH leaves
    the offset and the data file as they were."""
    first, second = os.urandom(500), os.urandom(200_000)
    url = create(server.url, len(first) + len(second))
    assert patch(url, 0, first).status_code == 204
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_head(500, ("Content-Length", str(len(second))),
                                                      ("Upload-Checksum", checksum("sha1", second))))
        raw.send(second[:sent])
        time.sleep(0.2)
    time.sleep(0.3)
    assert offset_of(url) == 500
    assert data_file(server, url).read_bytes() == first
    response = patch(url, 500, second, **{"Upload-Checksum": checksum("sha1", second)})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(500 + len(second))
    assert data_file(server, url).read_bytes() == first + second


def test_kill_during_checksummed_patch_keeps_old_offset(start_server: StartServer) -> None:
    server = start_server()
    first, second = os.urandom(1000), os.urandom(16 * MiB)
    url = create(server.url, len(first) + len(second))
    assert patch(url, 0, first).status_code == 204
    raw = RawConnection.to(server)
    try:
        raw.request("PATCH", path_of(url), patch_head(1000, ("Content-Length", str(len(second))),
                                                      ("Upload-Checksum", checksum("sha256", second))))
        raw.send(second[:8 * MiB])
        time.sleep(0.3)
        server.kill()
    finally:
        raw.close()
    server.restart()
    assert offset_of(url) == 1000
    assert data_file(server, url).read_bytes() == first
    response = patch(url, 1000, second, **{"Upload-Checksum": checksum("sha256", second)})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(len(first) + len(second))
    assert sha256(data_file(server, url).read_bytes()) == sha256(first + second)


@pytest.mark.parametrize("algorithm", ["sha1", "crc32"])
def test_creation_with_upload_checksum(server: ServerProcess, algorithm: str) -> None:
    """[56] Upload-Checksum on a creation-with-upload POST: match -> 201 with the offset, mismatch -> 460 and
    no upload, unknown algorithm -> 400 and no upload."""
    payload = os.urandom(10_000)
    base = {**TUS, "Upload-Length": str(len(payload) + 10), "Content-Type": OCTET}
    before = user_files(server.upload_dir)
    for value, status in ((wrong_checksum(algorithm, payload), 460), ("sha3 AAAA", 400),
                          (f"{algorithm} ***", 400)):
        response = requests.post(server.url, data=payload, timeout=TIMEOUT,
                                 headers={**base, "Upload-Checksum": value})
        assert_tus_error(response, status)
        assert "Location" not in response.headers, response.headers
        assert user_files(server.upload_dir) == before
    response = requests.post(server.url, data=payload, timeout=TIMEOUT,
                             headers={**base, "Upload-Checksum": checksum(algorithm, payload)})
    assert response.status_code == 201 and response.headers["Upload-Offset"] == str(len(payload))
    assert data_file(server, response.headers["Location"]).read_bytes() == payload


# ---- checksum-trailer [70, 71] ------------------------------------------------------------------------


def chunked_patch_with_trailer(server: ServerProcess, url: str, offset: int, parts: list[bytes], trailer: str | None,
                               declare: bool = True) -> Response:
    headers = patch_head(offset, ("Transfer-Encoding", "chunked"))
    if declare and trailer is not None:
        headers.append(("Trailer", "Upload-Checksum"))
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), headers)
        raw.send(chunked(*parts, trailer=f"Upload-Checksum: {trailer}\r\n" if trailer is not None else ""))
        return raw.read_response("PATCH")


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "crc32"])
def test_checksum_trailer_matches(server: ServerProcess, algorithm: str, declare: bool) -> None:
    parts = [os.urandom(1000), os.urandom(70_000), b"x"]
    whole = b"".join(parts)
    url = create(server.url, len(whole) + 1)
    response = chunked_patch_with_trailer(server, url, 0, parts, checksum(algorithm, whole), declare)
    assert response.status == 204 and response.header("Upload-Offset") == str(len(whole)), response
    assert data_file(server, url).read_bytes() == whole


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "undeclared"])
def test_checksum_trailer_mismatch_is_460_and_retry_works(server: ServerProcess, declare: bool) -> None:
    url = create(server.url, 20)
    assert patch(url, 0, b"abc").status_code == 204
    parts = [b"hello", b" ", b"world"]
    response = chunked_patch_with_trailer(server, url, 3, parts, wrong_checksum("sha1", b"hello world"), declare)
    assert response.status == 460 and response.header("Tus-Resumable") == "1.0.0", response
    assert offset_of(url) == 3 and data_file(server, url).read_bytes() == b"abc"
    response = chunked_patch_with_trailer(server, url, 3, parts, checksum("sha1", b"hello world"), declare)
    assert response.status == 204 and response.header("Upload-Offset") == "14", response
    assert data_file(server, url).read_bytes() == b"abchello world"


@pytest.mark.parametrize("value", ["sha3 AAAA", "sha1 !!!", "sha1"])
def test_checksum_trailer_unsupported_is_400(server: ServerProcess, value: str) -> None:
    url = create(server.url, 20)
    response = chunked_patch_with_trailer(server, url, 0, [b"hello"], value)
    assert response.status == 400, response
    assert offset_of(url) == 0 and data_file(server, url).stat().st_size == 0


def test_chunked_patch_without_trailer_just_works(server: ServerProcess) -> None:
    url = create(server.url, 11)
    response = chunked_patch_with_trailer(server, url, 0, [b"hello", b" world"], None)
    assert response.status == 204 and response.header("Upload-Offset") == "11", response
    assert data_file(server, url).read_bytes() == b"hello world"


def test_declared_trailer_that_never_comes(server: ServerProcess) -> None:
    """`Trailer: Upload-Checksum` announced, but the trailer section is empty: the data is simply stored
    (nothing to verify) or rejected with 400 - never a 5xx, and never a half-applied chunk."""
    url = create(server.url, 11)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_head(0, ("Transfer-Encoding", "chunked"),
                                                      ("Trailer", "Upload-Checksum")))
        raw.send(chunked(b"hello", b" world"))
        response = raw.read_response("PATCH")
    assert response.status in (204, 400), response
    expected = 11 if response.status == 204 else 0
    assert offset_of(url) == expected and data_file(server, url).stat().st_size == expected


def test_interrupted_declared_trailer_patch_changes_nothing(server: ServerProcess) -> None:
    """With `Trailer: Upload-Checksum` announced, the body can only be trusted once the trailer arrived."""
    url = create(server.url, 100_000)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_head(0, ("Transfer-Encoding", "chunked"),
                                                      ("Trailer", "Upload-Checksum")))
        raw.send(b"%x\r\n%s\r\n" % (50_000, os.urandom(50_000)))
        time.sleep(0.3)
    time.sleep(0.3)
    assert offset_of(url) == 0 and data_file(server, url).stat().st_size == 0


# ---- expiration [49, 57-61] ---------------------------------------------------------------------------


def test_upload_expires_on_post_patch_and_head_of_unfinished_uploads(server: ServerProcess) -> None:
    """Default period 7 days; IMF-fixdate [59]; only unfinished uploads carry it [58, 61]."""
    week = dt.timedelta(days=7)
    created = requests.post(server.url, headers={**TUS, "Upload-Length": "10"}, timeout=TIMEOUT)
    assert created.status_code == 201
    expires = http_date(created.headers["Upload-Expires"])
    assert now() + week - dt.timedelta(seconds=60) <= expires <= now() + week + dt.timedelta(seconds=2)
    url = created.headers["Location"]
    response = head(url)
    assert http_date(response.headers["Upload-Expires"]) >= expires - dt.timedelta(seconds=1)
    response = patch(url, 0, b"12345")
    assert response.status_code == 204
    assert http_date(response.headers["Upload-Expires"]) >= expires
    response = patch(url, 5, b"67890")                       # completes the upload
    assert response.status_code == 204 and "Upload-Expires" not in response.headers, response.headers
    assert "Upload-Expires" not in head(url).headers


def test_upload_expires_on_deferred_and_partial_uploads(server: ServerProcess) -> None:
    deferred = requests.post(server.url, headers={**TUS, "Upload-Defer-Length": "1"}, timeout=TIMEOUT)
    assert deferred.status_code == 201
    http_date(deferred.headers["Upload-Expires"])
    http_date(head(deferred.headers["Location"]).headers["Upload-Expires"])
    part = requests.post(server.url, headers={**TUS, "Upload-Length": "4", "Upload-Concat": "partial"},
                         timeout=TIMEOUT)
    assert part.status_code == 201
    http_date(part.headers["Upload-Expires"])


def test_uploads_finished_at_creation_have_no_upload_expires(server: ServerProcess) -> None:
    empty = requests.post(server.url, headers={**TUS, "Upload-Length": "0"}, timeout=TIMEOUT)
    assert empty.status_code == 201 and "Upload-Expires" not in empty.headers, empty.headers
    assert "Upload-Expires" not in head(empty.headers["Location"]).headers
    full = requests.post(server.url, data=b"abc", timeout=TIMEOUT,
                         headers={**TUS, "Upload-Length": "3", "Content-Type": OCTET})
    assert full.status_code == 201 and full.headers["Upload-Offset"] == "3"
    assert "Upload-Expires" not in full.headers, full.headers
    partly = requests.post(server.url, data=b"abc", timeout=TIMEOUT,
                           headers={**TUS, "Upload-Length": "4", "Content-Type": OCTET})
    assert partly.status_code == 201
    http_date(partly.headers["Upload-Expires"])


def test_expire_after_sets_the_period(start_server: StartServer) -> None:
    server = start_server("--expire-after", "1h")
    created = requests.post(server.url, headers={**TUS, "Upload-Length": "10"}, timeout=TIMEOUT)
    expires = http_date(created.headers["Upload-Expires"])
    assert abs((expires - now()).total_seconds() - 3600) <= 5, expires


def test_expiry_slides_with_each_write_and_spares_finished_uploads(start_server: StartServer) -> None:
    server = start_server("--expire-after", "2s")
    finished = create(server.url, 3)
    assert patch(finished, 0, b"abc").status_code == 204
    created = requests.post(server.url, headers={**TUS, "Upload-Length": "10"}, timeout=TIMEOUT)
    url = created.headers["Location"]
    first = http_date(created.headers["Upload-Expires"])
    assert abs((first - now()).total_seconds() - 2) <= 1.5, first
    time.sleep(1.2)
    response = patch(url, 0, b"123")
    assert response.status_code == 204
    assert http_date(response.headers["Upload-Expires"]) > first       # last write + period
    time.sleep(1.3)             # 2.5 s after creation, 1.3 s after the last write
    response = head(url)
    assert response.status_code == 200 and response.headers["Upload-Offset"] == "3", response.status_code
    assert patch(url, 3, b"4567890").status_code == 204
    time.sleep(2.6)             # both uploads are finished now: they never expire
    for finished_url, content in ((finished, b"abc"), (url, b"1234567890")):
        response = head(finished_url)
        assert response.status_code == 200 and "Upload-Expires" not in response.headers
        assert download(finished_url).content == content
        assert data_file(server, finished_url).exists() and info_file(server, finished_url).exists()


def test_expired_upload_is_gone_then_swept_then_404(start_server: StartServer) -> None:
    """[60] 410 once expired; the sweeper removes data and .info; 410 for one more period; then 404."""
    server = start_server("--expire-after", "1s")
    url = create(server.url, 10)
    assert patch(url, 0, b"12345").status_code == 204
    untouched = create(server.url, 10)
    assert wait_until(lambda: head(url).status_code == 410, 4), head(url).status_code
    gone_at = time.monotonic()
    response = head(url)
    assert "Upload-Offset" not in response.headers and response.headers.get("Tus-Resumable") == "1.0.0"
    response = patch(url, 5, b"67890")
    assert_tus_error(response, 410)
    assert wait_until(lambda: not data_file(server, url).exists() and not info_file(server, url).exists(), 4), \
        user_files(server.upload_dir)
    assert head(url).status_code == 410
    assert patch(url, 5, b"67890").status_code == 410
    assert not data_file(server, url).exists()                   # a late PATCH does not resurrect it
    assert wait_until(lambda: head(url).status_code == 404, 5), head(url).status_code
    assert time.monotonic() - gone_at >= 0.5, "410 was not kept for one more period"
    assert patch(url, 5, b"67890").status_code == 404
    assert head(untouched).status_code in (404, 410)             # never written to: expired too


def test_expired_upload_is_swept_even_without_requests(start_server: StartServer) -> None:
    server = start_server("--expire-after", "1s")
    urls = [create(server.url, 10) for _ in range(3)]
    done = create(server.url, 2)
    assert patch(done, 0, b"ok").status_code == 204
    assert wait_until(lambda: all(not data_file(server, u).exists() and not info_file(server, u).exists()
                                  for u in urls), 5), user_files(server.upload_dir)
    assert user_files(server.upload_dir) == {upload_id(done), upload_id(done) + ".info"}


def test_expiry_is_based_on_the_stored_last_write(start_server: StartServer, tmp_path: Path) -> None:
    """An upload written under a long period expires when a restarted server uses a short one."""
    directory = tmp_path / "restart"
    first = start_server("--expire-after", "1h", upload_dir=directory)
    url = create(first.url, 10)
    assert patch(url, 0, b"123").status_code == 204
    first.stop()
    time.sleep(1.2)
    second = start_server("--expire-after", "1s", upload_dir=directory)
    moved = second.url + upload_id(url)
    assert head(moved).status_code in (404, 410)
    assert wait_until(lambda: not (directory / upload_id(url)).exists(), 4)


def run_cleanup(directory: Path, period: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tusfast", "cleanup", "--upload-dir", str(directory),
                           "--expire-after", period], capture_output=True, text=True, timeout=30, check=False)


def test_cleanup_command_removes_expired_unfinished_uploads(start_server: StartServer, tmp_path: Path) -> None:
    directory = tmp_path / "cleanup"
    server = start_server("--expire-after", "1h", upload_dir=directory)
    unfinished = [create(server.url, 10), create(server.url, None)]
    assert patch(unfinished[0], 0, b"1234").status_code == 204
    finished = create(server.url, 3)
    assert patch(finished, 0, b"abc").status_code == 204
    empty = create(server.url, 0)
    server.stop()
    everything = user_files(directory)
    assert len(everything) == 8

    result = run_cleanup(directory, "1h")
    assert result.returncode == 0, result.stderr
    assert "removed 0 expired upload(s)" in result.stdout, (result.stdout, result.stderr)
    assert user_files(directory) == everything

    time.sleep(1.2)
    result = run_cleanup(directory, "1s")
    assert result.returncode == 0, result.stderr
    assert "removed 2 expired upload(s)" in result.stdout, (result.stdout, result.stderr)
    assert user_files(directory) == {upload_id(u) + suffix for u in (finished, empty) for suffix in ("", ".info")}

    result = run_cleanup(directory, "1s")
    assert result.returncode == 0 and "removed 0 expired upload(s)" in result.stdout, result.stdout

    server.start()
    assert head(finished).status_code == 200
    assert download(finished).content == b"abc"
    assert head(unfinished[0]).status_code in (404, 410)


# ---- concatenation [75-81] ----------------------------------------------------------------------------


def test_partial_upload_head(server: ServerProcess) -> None:
    created = requests.post(server.url, headers={**TUS, "Upload-Length": "5", "Upload-Concat": "partial"},
                            timeout=TIMEOUT)
    assert created.status_code == 201 and created.headers.get("Upload-Concat") == "partial"
    url = created.headers["Location"]
    response = head(url)
    assert response.headers["Upload-Concat"] == "partial"
    assert response.headers["Upload-Offset"] == "0" and response.headers["Upload-Length"] == "5"
    assert patch(url, 0, b"ab").status_code == 204
    assert head(url).headers["Upload-Offset"] == "2"


def test_partial_with_creation_with_upload(server: ServerProcess) -> None:
    created = requests.post(server.url, data=b"hello", timeout=TIMEOUT,
                            headers={**TUS, "Upload-Length": "8", "Upload-Concat": "partial",
                                     "Content-Type": OCTET})
    assert created.status_code == 201 and created.headers["Upload-Offset"] == "5"
    response = head(created.headers["Location"])
    assert response.headers["Upload-Concat"] == "partial" and response.headers["Upload-Offset"] == "5"


def test_final_from_absolute_urls_in_list_order(server: ServerProcess) -> None:
    parts = [os.urandom(1000), os.urandom(1), os.urandom(70_000)]
    urls = [partial(server, part) for part in parts]
    concat = "final;" + " ".join(reversed(urls))
    final = create_final(server, concat)
    assert_final_complete(final, concat, b"".join(reversed(parts)))


def test_final_from_relative_urls_echoes_them_exactly(server: ServerProcess) -> None:
    parts = [b"first-", b"second-", b"third"]
    urls = [partial(server, part) for part in parts]
    concat = f"final;{path_of(urls[0])} {urls[1]} {path_of(urls[2])}"     # mixed relative and absolute
    final = create_final(server, concat)
    assert_final_complete(final, concat, b"first-second-third")


def test_a_partial_may_appear_twice_and_in_several_finals(server: ServerProcess) -> None:
    a, b = partial(server, b"AAA"), partial(server, b"bb")
    first = create_final(server, f"final;{a} {b} {a}")
    second = create_final(server, f"final;{b} {b}")
    assert_final_complete(first, f"final;{a} {b} {a}", b"AAAbbAAA")
    assert_final_complete(second, f"final;{b} {b}", b"bbbb")


def test_zero_length_partial(server: ServerProcess) -> None:
    empty, full = partial(server, b""), partial(server, b"data")
    concat = f"final;{empty} {full} {empty}"
    assert_final_complete(create_final(server, concat), concat, b"data")
    only_empty = create_final(server, f"final;{empty}")
    assert_final_complete(only_empty, f"final;{empty}", b"")


def test_partials_survive_concatenation(server: ServerProcess) -> None:
    """[79] clients may reuse partials, so they are not deleted after joining."""
    urls = [partial(server, b"one"), partial(server, b"two")]
    final = create_final(server, "final;" + " ".join(urls))
    for url, content in zip(urls, (b"one", b"two")):
        response = head(url)
        assert response.status_code == 200 and response.headers["Upload-Concat"] == "partial"
        assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == "3"
        assert data_file(server, url).read_bytes() == content
    assert download(final).content == b"onetwo"


def test_final_survives_deleting_its_partials(server: ServerProcess) -> None:
    urls = [partial(server, b"one"), partial(server, b"two")]
    final = create_final(server, "final;" + " ".join(urls))
    for url in urls:
        assert requests.delete(url, headers=TUS, timeout=TIMEOUT).status_code == 204
    assert_final_complete(final, "final;" + " ".join(urls), b"onetwo")


def test_partial_metadata_is_not_carried_over(server: ServerProcess) -> None:
    """[79] the final's Upload-Metadata is only what its own POST sent."""
    urls = [partial(server, b"x", metadata="filename cGFydC5iaW4="), partial(server, b"y", metadata="secret eQ==")]
    concat = "final;" + " ".join(urls)
    bare = create_final(server, concat)
    assert "Upload-Metadata" not in head(bare).headers or head(bare).headers["Upload-Metadata"] == ""
    named = create_final(server, concat, **{"Upload-Metadata": "filename ZmluYWwudHh0,is_final"})
    assert head(named).headers["Upload-Metadata"] == "filename ZmluYWwudHh0,is_final"
    assert head(urls[0]).headers["Upload-Metadata"] == "filename cGFydC5iaW4="


def test_upload_length_on_final_is_400(server: ServerProcess) -> None:
    url = partial(server, b"abc")
    before = user_files(server.upload_dir)
    for length in ("3", "0", "10"):
        assert_tus_error(post_final(server, f"final;{url}", **{"Upload-Length": length}), 400)
    assert_tus_error(post_final(server, f"final;{url}", **{"Upload-Defer-Length": "1"}), 400)
    assert user_files(server.upload_dir) == before


def test_body_on_final_is_400(server: ServerProcess) -> None:
    url = partial(server, b"abc")
    before = user_files(server.upload_dir)
    response = requests.post(server.url, data=b"more", timeout=TIMEOUT,
                             headers={**TUS, "Upload-Concat": f"final;{url}", "Content-Type": OCTET})
    assert_tus_error(response, 400)
    assert user_files(server.upload_dir) == before


def test_final_with_bad_partial_urls_is_400(server: ServerProcess) -> None:
    """[78] unknown, foreign (host, port, scheme, path), non-partial or final URLs: 400 and nothing created."""
    good = partial(server, b"abc")
    ident = upload_id(good)
    normal = create(server.url, 3)
    assert patch(normal, 0, b"xyz").status_code == 204
    final = create_final(server, f"final;{good}")
    port = server.port
    other_port = port + 1 if port < 65535 else port - 1
    cases = [
        f"final;{server.url}{'0' * 32}",                              # unknown id
        f"final;http://example.com:{port}/files/{ident}",              # foreign host
        f"final;http://127.0.0.1:{other_port}/files/{ident}",          # foreign port
        f"final;https://127.0.0.1:{port}/files/{ident}",               # foreign scheme
        f"final;http://127.0.0.1:{port}/other/{ident}",                # outside the base path
        f"final;/other/{ident}",
        f"final;{normal}",                                             # not a partial
        f"final;{good} {normal}",
        f"final;{final}",                                              # a final is not a partial
        f"final;{good} ../{ident}",
        "final;",                                                      # empty list
        f"final {good}",                                               # no semicolon
        f"partial;{good}",
        "bogus",
    ]
    before = user_files(server.upload_dir)
    for concat in cases:
        response = post_final(server, concat)
        assert response.status_code == 400, (concat, response.status_code, response.text)
        assert "Location" not in response.headers, concat
    assert user_files(server.upload_dir) == before


def test_patch_on_final_is_403_and_changes_nothing(server: ServerProcess) -> None:
    """[37, 80]"""
    a, b = partial(server, b"left"), partial(server, b"right")
    concat = f"final;{a} {b}"
    final = create_final(server, concat)
    for offset, body in ((9, b""), (9, b"more"), (0, b"XXXX"), (4, b"zz")):
        assert_tus_error(patch(final, offset, body), 403)
    assert_final_complete(final, concat, b"leftright")
    assert data_file(server, a).read_bytes() == b"left" and data_file(server, b).read_bytes() == b"right"


def test_patch_with_checksum_on_final_is_403(server: ServerProcess) -> None:
    a = partial(server, b"left")
    final = create_final(server, f"final;{a}")
    assert_tus_error(patch(final, 4, b"x", **{"Upload-Checksum": checksum("sha1", b"x")}), 403)
    assert head(final).headers["Upload-Offset"] == "4"


def test_final_with_metadata_filename_downloads(server: ServerProcess) -> None:
    parts = [os.urandom(300_000), os.urandom(123_457)]
    urls = [partial(server, p) for p in parts]
    final = create_final(server, "final;" + " ".join(urls),
                         **{"Upload-Metadata": "filename am9pbmVkLmJpbg==,filetype dGV4dC9wbGFpbg=="})
    response = download(final)
    assert response.status_code == 200 and response.content == b"".join(parts)
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "joined.bin" in response.headers["Content-Disposition"]


# ---- concatenation-unfinished [78, 82] ----------------------------------------------------------------


def test_final_of_unfinished_partials_completes_with_the_last_partial(server: ServerProcess) -> None:
    parts = [os.urandom(2000), os.urandom(3000), os.urandom(10)]
    a = partial(server, parts[0])                    # complete
    b = partial(server, parts[1], upload=False)      # empty
    c = partial(server, parts[2], upload=False)
    assert patch(b, 0, parts[1][:1000]).status_code == 204     # half-way
    concat = f"final;{a} {path_of(b)} {c}"
    final = create_final(server, concat)

    def assert_pending() -> None:
        response = head(final)
        assert response.status_code == 200
        assert response.headers["Upload-Concat"] == concat
        assert response.headers.get("Upload-Length") == "5010", response.headers   # computable already
        assert "Upload-Offset" not in response.headers, response.headers            # [80] until joined
        got = download(final)
        assert got.status_code == 409, got.status_code
        assert parts[0][:64] not in got.content
        assert_tus_error(patch(final, 0, b"x"), 403)

    assert_pending()
    assert patch(c, 0, parts[2]).status_code == 204            # out of order: c before b
    assert_pending()
    assert patch(b, 1000, parts[1][1000:]).status_code == 204  # the last partial completes
    assert wait_until(lambda: head(final).headers.get("Upload-Offset") == "5010", 5), head(final).headers
    assert_final_complete(final, concat, b"".join(parts))


def test_final_of_unfinished_partial_completed_with_checksum_and_chunked(server: ServerProcess) -> None:
    part = os.urandom(5000)
    url = partial(server, part, upload=False)
    concat = f"final;{url} {url}"
    final = create_final(server, concat)
    assert patch(url, 0, part[:100], **{"Upload-Checksum": wrong_checksum("sha1", part[:100])}).status_code == 460
    assert "Upload-Offset" not in head(final).headers
    response = chunked_patch_with_trailer(server, url, 0, [part[:2500], part[2500:]], checksum("crc32", part))
    assert response.status == 204, response
    assert wait_until(lambda: head(final).headers.get("Upload-Offset") == "10000", 5), head(final).headers
    assert_final_complete(final, concat, part + part)


def test_disabled_concatenation_unfinished(start_server: StartServer) -> None:
    server = start_server("--disable-concatenation-unfinished")
    done = partial(server, b"done")
    pending = partial(server, b"pending", upload=False)
    before = user_files(server.upload_dir)
    response = post_final(server, f"final;{done} {pending}")
    assert_tus_error(response, 400)
    assert user_files(server.upload_dir) == before
    assert patch(pending, 0, b"pending").status_code == 204
    concat = f"final;{done} {pending}"
    assert_final_complete(create_final(server, concat), concat, b"donepending")


def test_final_completes_across_worker_processes(start_server: StartServer) -> None:
    """With several worker processes, the request completing the last partial and the requests asking
    about the final land on different processes: the join must not depend on in-process state."""
    server = start_server("--workers", "3")
    parts = [os.urandom(50_000) for _ in range(4)]
    urls = [partial(server, part, upload=False) for part in parts]
    concat = "final;" + " ".join(urls)
    final = create_final(server, concat)
    for url, part in zip(urls, parts):
        for offset in range(0, len(part), 10_000):          # many requests, new connections each time
            assert patch(url, offset, part[offset:offset + 10_000]).status_code == 204
            if url is not urls[-1] or offset + 10_000 < len(part):
                assert "Upload-Offset" not in head(final).headers
    assert wait_until(lambda: all(head(final).headers.get("Upload-Offset") == "200000" for _ in range(6)), 5)
    for _ in range(6):
        assert_final_complete(final, concat, b"".join(parts))
