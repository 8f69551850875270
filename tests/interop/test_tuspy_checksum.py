"""tuspy (tus-py-client 1.1) with `upload_checksum=True` against a real tusfast process (checklist 62-69).

tuspy sends `Upload-Checksum: sha1 <base64>` on every PATCH. A chunk corrupted on the way must get
`460 Checksum Mismatch` without moving the offset, and tuspy's retry (HEAD, then the same chunk again)
must finish the upload with identical bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
import requests
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError
from tusclient.request import AsyncTusRequest

from tests.interop.helpers import (
    TUS_HEADERS,
    MiB,
    assert_complete,
    assert_stored_equals,
    head_offset,
    stored_file,
)

pytestmark = pytest.mark.interop

SIZE = 3 * MiB + 4321
CHUNK = 512 * 1024


def sha1_header(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


class PatchRecorder:
    """Wraps requests.patch/head: records what tuspy sent, and can corrupt the body of chosen PATCHes
    (flip one byte after tuspy computed the checksum), as a faulty network would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, corrupt: set[int] | None = None) -> None:
        self.patches: list[dict[str, Any]] = []
        self.heads: list[int] = []
        self.corrupt = corrupt or set()
        original_patch, original_head = requests.patch, requests.head

        def patch(url: str, *args: Any, **kwargs: Any) -> requests.Response:
            index = len(self.patches)
            data = bytes(kwargs.get("data") or b"")
            sent = data
            if index in self.corrupt and data:
                flipped = bytearray(data)
                flipped[len(flipped) // 2] ^= 0xFF
                sent = bytes(flipped)
                kwargs["data"] = sent
            response: requests.Response = original_patch(url, *args, **kwargs)
            headers = {k.lower(): v for k, v in (kwargs.get("headers") or {}).items()}
            self.patches.append({"headers": headers, "data": data, "sent": sent,
                                 "status": response.status_code, "response": response})
            return response

        def head(url: str, *args: Any, **kwargs: Any) -> requests.Response:
            response: requests.Response = original_head(url, *args, **kwargs)
            self.heads.append(response.status_code)
            return response

        monkeypatch.setattr(requests, "patch", patch)
        monkeypatch.setattr(requests, "head", head)


def test_checksum_on_every_chunk(server: Any, source_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    source = source_factory(SIZE)
    recorder = PatchRecorder(monkeypatch)
    uploader = tus_client.TusClient(server.url).uploader(str(source), chunk_size=CHUNK, upload_checksum=True)
    uploader.upload()

    assert uploader.offset == SIZE
    assert len(recorder.patches) == math.ceil(SIZE / CHUNK)
    expected = 0
    for record in recorder.patches:
        assert record["headers"]["upload-checksum"] == sha1_header(record["data"])   # what tuspy sends
        assert record["status"] == 204
        assert int(record["headers"]["upload-offset"]) == expected
        expected += len(record["data"])
        assert record["response"].headers["Upload-Offset"] == str(expected)
    assert_complete(uploader.url, SIZE)
    assert_stored_equals(server, uploader.url, source)


def test_corrupted_chunk_is_rejected_and_retried(server: Any, source_factory: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    source = source_factory(SIZE)
    recorder = PatchRecorder(monkeypatch, corrupt={2})
    uploader = tus_client.TusClient(server.url).uploader(str(source), chunk_size=CHUNK, upload_checksum=True,
                                                         retries=2, retry_delay=0)
    uploader.upload()

    bad, retry = recorder.patches[2], recorder.patches[3]
    assert bad["status"] == 460, [p["status"] for p in recorder.patches]
    assert bad["response"].reason == "Checksum Mismatch"
    assert bad["response"].headers.get("Tus-Resumable") == "1.0.0"
    assert bad["sent"] != bad["data"]
    # tuspy asked for the offset (HEAD) and sent the same chunk again at the same offset.
    assert recorder.heads == [200]
    assert retry["headers"]["upload-offset"] == bad["headers"]["upload-offset"] == str(2 * CHUNK)
    assert retry["data"] == bad["data"] and retry["status"] == 204
    assert [p["status"] for p in recorder.patches].count(460) == 1
    assert all(p["status"] == 204 for i, p in enumerate(recorder.patches) if i != 2)
    assert_complete(uploader.url, SIZE)
    assert_stored_equals(server, uploader.url, source)          # the corrupted byte never made it to disk


def test_corrupted_chunk_without_retries_keeps_the_offset(server: Any, source_factory: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    source = source_factory(SIZE)
    recorder = PatchRecorder(monkeypatch, corrupt={1})
    uploader = tus_client.TusClient(server.url).uploader(str(source), chunk_size=CHUNK, upload_checksum=True)
    with pytest.raises(TusCommunicationError) as excinfo:
        uploader.upload()
    assert excinfo.value.status_code == 460
    assert [p["status"] for p in recorder.patches] == [204, 460]
    assert head_offset(uploader.url) == CHUNK
    stored = stored_file(server, uploader.url)
    assert stored.stat().st_size == CHUNK
    assert stored.read_bytes() == source.read_bytes()[:CHUNK]

    # A new uploader resumes from the server's offset and finishes cleanly.
    resumed = tus_client.TusClient(server.url).uploader(str(source), url=uploader.url, chunk_size=CHUNK,
                                                        upload_checksum=True)
    assert resumed.offset == CHUNK
    resumed.upload()
    assert_complete(uploader.url, SIZE)
    assert_stored_equals(server, uploader.url, source)


def test_bad_patch_by_hand_between_tuspy_chunks(server: Any, source_factory: Any) -> None:
    source = source_factory(SIZE)
    content = source.read_bytes()
    uploader = tus_client.TusClient(server.url).uploader(str(source), chunk_size=CHUNK, upload_checksum=True)
    uploader.upload(stop_at=2 * CHUNK)
    assert uploader.url is not None
    assert head_offset(uploader.url) == 2 * CHUNK

    chunk = content[2 * CHUNK:3 * CHUNK]
    response = requests.patch(uploader.url, data=chunk, timeout=30, headers={
        **TUS_HEADERS, "Upload-Offset": str(2 * CHUNK), "Content-Type": "application/offset+octet-stream",
        "Upload-Checksum": sha1_header(chunk[:-1] + b"\x00")})
    assert response.status_code == 460, response.status_code
    assert response.headers.get("Upload-Offset") in (None, str(2 * CHUNK))
    assert head_offset(uploader.url) == 2 * CHUNK
    assert stored_file(server, uploader.url).stat().st_size == 2 * CHUNK

    uploader.upload()
    assert_complete(uploader.url, SIZE)
    assert_stored_equals(server, uploader.url, source)


def test_async_uploader_with_checksum(server: Any, source_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    source = source_factory(2 * MiB + 17)
    sent: list[str] = []
    original = AsyncTusRequest.add_checksum

    def add_checksum(self: AsyncTusRequest, chunk: bytes) -> None:
        original(self, chunk)
        sent.append(self._request_headers["upload-checksum"])

    monkeypatch.setattr(AsyncTusRequest, "add_checksum", add_checksum)
    uploader = tus_client.TusClient(server.url).async_uploader(str(source), chunk_size=512 * 1024,
                                                               upload_checksum=True)
    asyncio.run(uploader.upload())

    content = Path(source).read_bytes()
    assert sent == [sha1_header(content[i:i + 512 * 1024]) for i in range(0, len(content), 512 * 1024)]
    assert uploader.offset == len(content)
    assert_stored_equals(server, uploader.url, source)


def test_single_request_upload_with_checksum(server: Any, source_factory: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    source = source_factory(SIZE)
    recorder = PatchRecorder(monkeypatch)
    uploader = tus_client.TusClient(server.url).uploader(str(source), upload_checksum=True)
    uploader.upload()
    assert len(recorder.patches) == 1 and recorder.patches[0]["status"] == 204
    assert recorder.patches[0]["headers"]["upload-checksum"] == sha1_header(source.read_bytes())
    assert_stored_equals(server, uploader.url, source)
