"""`tusfast serve --storage s3` against a real S3-compatible server (moto, 5 MiB minimum part size):
every byte acknowledged is in S3, HEAD agrees with what S3 holds, content comes back identical."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from typing import Any, Callable

import pytest
import requests

from tests.support.s3_server import MotoServer, list_keys, moto_server, open_multipart_uploads, s3_bucket, start_moto
from tests.support.server_process import ServerProcess

from .rawhttp import (
    OCTET,
    TIMEOUT,
    TUS,
    RawConnection,
    chunked,
    create,
    head,
    offset_of,
    patch,
    patch_headers,
    path_of,
    upload_id,
    wait_until,
)

__all__ = ["moto_server", "s3_bucket"]     # the fixtures, used by name

MiB = 1024 * 1024
PREFIX = "tus/"


@pytest.fixture
def s3_server(start_server: Callable[..., ServerProcess], moto_server: MotoServer, s3_bucket: str) -> ServerProcess:
    return start_server("--storage", "s3", "--s3-bucket", s3_bucket, "--s3-prefix", PREFIX,
                        "--s3-part-size", "5M", env=moto_server.env())


@pytest.fixture
def s3(moto_server: MotoServer) -> Any:
    return moto_server.client()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=TIMEOUT)


def stored_in_s3(s3: Any, bucket: str, url: str) -> int:
    """Bytes S3 holds of an unfinished upload: its parts plus the `.part` object, unless that is
    stale (it names a part that exists: its bytes went into that part, then the server died)."""
    key = PREFIX + upload_id(url)
    uploads = [item for item in open_multipart_uploads(s3, bucket) if item["Key"] == key]
    parts = [part for item in uploads for part in
             s3.list_parts(Bucket=bucket, Key=key, UploadId=item["UploadId"]).get("Parts", [])]
    tail = 0
    if key + ".part" in list_keys(s3, bucket):
        found = s3.head_object(Bucket=bucket, Key=key + ".part")
        if found["Metadata"].get("tusfast-next-part") == str(len(parts) + 1):
            tail = found["ContentLength"]
    return int(sum(part["Size"] for part in parts) + tail)


def finish(url: str, payload: bytes, chunk: int = 4 * MiB) -> None:
    offset = offset_of(url)
    while offset < len(payload):
        response = patch(url, offset, payload[offset:offset + chunk])
        assert response.status_code == 204, (response.status_code, response.text)
        offset = int(response.headers["Upload-Offset"])
    assert offset == len(payload)


def test_options_lists_the_extensions_the_backend_supports(s3_server: ServerProcess) -> None:
    response = requests.options(s3_server.url, headers=TUS, timeout=TIMEOUT)
    assert response.status_code == 204
    extensions = set(response.headers["Tus-Extension"].split(","))
    assert extensions == {"creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum",
                          "checksum-trailer", "termination", "concatenation", "concatenation-unfinished"}
    assert any("S3 bucket" in line for line in s3_server.log)


def test_creation_and_many_small_patches(s3_server: ServerProcess, s3: Any, s3_bucket: str) -> None:
    payload = os.urandom(6 * MiB + 1000)
    url = create(s3_server.url, len(payload), metadata="filename aGVsbG8udHh0,filetype dGV4dC9wbGFpbg==")
    offset, step = 0, 500_000
    while offset < len(payload):
        response = patch(url, offset, payload[offset:offset + step])
        assert response.status_code == 204, response.text
        offset = int(response.headers["Upload-Offset"])
        if offset < len(payload):
            assert offset_of(url) == offset == stored_in_s3(s3, s3_bucket, url)
    got = download(url)
    assert got.status_code == 200 and sha256(got.content) == sha256(payload)
    assert 'filename="hello.txt"' in got.headers["Content-Disposition"]
    key = PREFIX + upload_id(url)
    assert list_keys(s3, s3_bucket) == [key, key + ".info"]
    assert s3.head_object(Bucket=s3_bucket, Key=key)["ContentType"] == "text/plain"
    assert open_multipart_uploads(s3, s3_bucket) == []


def test_one_big_patch_crossing_several_parts(s3_server: ServerProcess, s3: Any, s3_bucket: str) -> None:
    payload = os.urandom(17 * MiB + 3)
    url = create(s3_server.url, len(payload))
    response = patch(url, 0, payload)
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(len(payload))
    assert head(url).headers["Upload-Offset"] == str(len(payload))
    etag = s3.head_object(Bucket=s3_bucket, Key=PREFIX + upload_id(url))["ETag"]
    assert etag.strip('"').endswith("-4")       # 3 parts of 5 MiB and the rest
    assert sha256(download(url).content) == sha256(payload)


def test_interrupted_patch_keeps_acknowledged_bytes(s3_server: ServerProcess, s3: Any, s3_bucket: str) -> None:
    payload = os.urandom(12 * MiB)
    url = create(s3_server.url, len(payload))
    sent = 7 * MiB + 12345
    with RawConnection.to(s3_server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, len(payload)))
        raw.send(payload[:sent])
        time.sleep(0.3)
    assert wait_until(lambda: offset_of(url) == sent, 10), offset_of(url)
    assert stored_in_s3(s3, s3_bucket, url) == sent     # HEAD agrees with S3
    finish(url, payload)
    assert sha256(download(url).content) == sha256(payload)


def test_kill_9_mid_upload_then_resume(start_server: Callable[..., ServerProcess], moto_server: MotoServer,
                                       s3_bucket: str, s3: Any) -> None:
    flags = ("--storage", "s3", "--s3-bucket", s3_bucket, "--s3-prefix", PREFIX, "--s3-part-size", "5M")
    server = start_server(*flags, env=moto_server.env())
    payload = os.urandom(20 * MiB)
    url = create(server.url, len(payload))
    assert patch(url, 0, payload[:MiB]).status_code == 204     # a `.part` object from a finished PATCH
    sent = MiB
    raw = RawConnection.to(server)
    try:
        raw.request("PATCH", path_of(url), patch_headers(MiB, len(payload) - MiB))
        while sent < 13 * MiB:
            raw.send(payload[sent:sent + 256 * 1024])
            sent += 256 * 1024
        time.sleep(0.5)
        server.kill()
    finally:
        raw.close()
    server.restart()
    offset = offset_of(url)
    assert MiB <= offset <= sent
    assert offset == stored_in_s3(s3, s3_bucket, url)
    finish(url, payload)
    got = download(url)
    assert got.status_code == 200 and sha256(got.content) == sha256(payload)


def test_checksum_mismatch_keeps_the_offset(s3_server: ServerProcess, s3: Any, s3_bucket: str) -> None:
    payload = os.urandom(6 * MiB)
    url = create(s3_server.url, len(payload))
    assert patch(url, 0, payload[:1000]).status_code == 204
    chunk = payload[1000:]
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    response = patch(url, 1000, chunk, **{"Upload-Checksum": f"sha1 {wrong}"})
    assert response.status_code == 460
    assert offset_of(url) == 1000 == stored_in_s3(s3, s3_bucket, url)
    right = base64.b64encode(hashlib.sha1(chunk[:3 * MiB]).digest()).decode()
    response = patch(url, 1000, chunk[:3 * MiB], **{"Upload-Checksum": f"sha1 {right}"})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(1000 + 3 * MiB)
    # the rest with a trailer checksum, declared so the body is staged
    rest = payload[1000 + 3 * MiB:]
    trailer = base64.b64encode(hashlib.sha256(rest).digest()).decode()
    with RawConnection.to(s3_server) as raw:
        raw.request("PATCH", path_of(url), [*TUS.items(), ("Content-Type", OCTET),
                                            ("Upload-Offset", str(1000 + 3 * MiB)),
                                            ("Transfer-Encoding", "chunked"), ("Trailer", "Upload-Checksum")])
        raw.send(chunked(rest[:MiB], rest[MiB:], trailer=f"Upload-Checksum: sha256 {trailer}\r\n"))
        reply = raw.read_response("PATCH")
    assert reply.status == 204, reply
    assert sha256(download(url).content) == sha256(payload)


def test_deferred_length(s3_server: ServerProcess) -> None:
    payload = os.urandom(5 * MiB + 77)
    url = create(s3_server.url, None)
    assert patch(url, 0, payload[:MiB]).status_code == 204
    assert "Upload-Length" not in head(url).headers
    response = patch(url, MiB, payload[MiB:], **{"Upload-Length": str(len(payload))})
    assert response.status_code == 204
    assert head(url).headers["Upload-Length"] == str(len(payload))
    assert sha256(download(url).content) == sha256(payload)


@pytest.mark.parametrize("sizes", [(6 * MiB, 1000), (1000, 2000, 3000)], ids=["copied", "streamed"])
def test_concatenation(s3_server: ServerProcess, sizes: tuple[int, ...]) -> None:
    datas = [os.urandom(size) for size in sizes]
    partials = [create(s3_server.url, len(data), extra={"Upload-Concat": "partial"}) for data in datas]
    for url, data in zip(partials[:-1], datas):
        assert patch(url, 0, data).status_code == 204
    # the final comes before the last partial finished (concatenation-unfinished)
    concat = "final;" + " ".join(path_of(url) for url in partials)
    created = requests.post(s3_server.url, headers={**TUS, "Upload-Concat": concat}, timeout=TIMEOUT)
    assert created.status_code == 201, created.text
    final = created.headers["Location"]
    assert patch(partials[-1], 0, datas[-1]).status_code == 204
    assert wait_until(lambda: head(final).headers.get("Upload-Offset") == str(sum(sizes)), 10)
    got = download(final)
    assert got.status_code == 200 and sha256(got.content) == sha256(b"".join(datas))


def test_download_with_and_without_range(s3_server: ServerProcess) -> None:
    payload = os.urandom(3 * MiB + 5)
    url = create(s3_server.url, len(payload), body=payload)
    whole = download(url)
    assert whole.status_code == 200 and whole.content == payload
    assert whole.headers["Content-Length"] == str(len(payload))
    part = download(url, Range="bytes=1000-2099999")
    assert part.status_code == 206 and part.content == payload[1000:2100000]
    assert part.headers["Content-Range"] == f"bytes 1000-2099999/{len(payload)}"
    assert download(url, Range="bytes=-10").content == payload[-10:]
    assert download(url, Range=f"bytes={len(payload)}-").status_code == 416
    unfinished = create(s3_server.url, 10)
    assert download(unfinished).status_code == 409


def test_delete_leaves_nothing_behind(s3_server: ServerProcess, s3: Any, s3_bucket: str) -> None:
    payload = os.urandom(8 * MiB)
    url = create(s3_server.url, 20 * MiB)
    assert patch(url, 0, payload).status_code == 204      # a part and a `.part` object
    response = requests.delete(url, headers=TUS, timeout=TIMEOUT)
    assert response.status_code == 204
    assert head(url).status_code == 404
    assert list_keys(s3, s3_bucket) == [] and open_multipart_uploads(s3, s3_bucket) == []


def test_a_missing_bucket_stops_the_server_with_a_clear_message(moto_server: MotoServer) -> None:
    result = subprocess.run([sys.executable, "-m", "tusfast", "serve", "--port", "0", "--storage", "s3",
                             "--s3-bucket", "no-such-bucket-here"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **moto_server.env()})
    assert result.returncode == 1
    assert "bucket 'no-such-bucket-here' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_s3_going_away_is_a_503_with_a_reason(start_server: Callable[..., ServerProcess]) -> None:
    own = start_moto()      # this one is stopped mid-test
    try:
        bucket = own.new_bucket()
        server = start_server("--storage", "s3", "--s3-bucket", bucket, env=own.env())
        url = create(server.url, 10 * MiB)
        assert patch(url, 0, b"x" * 1000).status_code == 204
    finally:
        own.stop()
    for response in (head(url), patch(url, 1000, b"y" * 1000)):
        assert response.status_code == 503, (response.status_code, response.text)
        assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "storage" in response.text.lower(), response.text       # the PATCH's reason
    assert server.alive and not any("Traceback" in line for line in server.log)
