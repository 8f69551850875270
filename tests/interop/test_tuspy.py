"""tuspy (tus-py-client 1.1, `from tusclient import client`) against a real tusfast process."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest
import requests

from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError
from tusclient.uploader.uploader import Uploader

from tests.interop.helpers import (
    MiB,
    assert_complete,
    assert_stored_equals,
    decode_metadata,
    head,
    head_offset,
    upload_id,
)

pytestmark = pytest.mark.interop

SIZE = 3 * MiB + 4321


class RecordingSession:
    """Wraps requests.post/patch/head so a test can see what tuspy actually sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, dict[str, str], int | None]] = []
        for method in ("post", "patch", "head"):
            original = getattr(requests, method)
            monkeypatch.setattr(requests, method, self._wrap(method.upper(), original))

    def _wrap(self, method: str, original: Any) -> Any:
        def call(url: str, *args: Any, **kwargs: Any) -> requests.Response:
            response: requests.Response = original(url, *args, **kwargs)
            headers = {k.lower(): v for k, v in (kwargs.get("headers") or {}).items()}
            self.calls.append((method, url, headers, response.status_code))
            return response
        return call

    def methods(self, method: str) -> list[tuple[str, str, dict[str, str], int | None]]:
        return [c for c in self.calls if c[0] == method]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> RecordingSession:
    return RecordingSession(monkeypatch)


def test_chunked_upload(server: Any, source_factory: Any, recorder: RecordingSession) -> None:
    source = source_factory(SIZE)
    chunk = 512 * 1024
    uploader = tus_client.TusClient(server.url).uploader(str(source), chunk_size=chunk)
    uploader.upload()

    assert uploader.offset == SIZE
    upload_id(server, uploader.url)
    patches = recorder.methods("PATCH")
    assert len(patches) == -(-SIZE // chunk)
    assert [int(p[2]["upload-offset"]) for p in patches] == list(range(0, SIZE, chunk))
    assert all(p[3] == 204 for p in patches)
    assert_complete(uploader.url, SIZE)
    assert_stored_equals(server, uploader.url, source)


def test_upload_without_metadata_sends_empty_header(server: Any, source_factory: Any,
                                                     recorder: RecordingSession) -> None:
    source = source_factory(MiB + 1)
    uploader = tus_client.TusClient(server.url).uploader(str(source), chunk_size=256 * 1024)
    uploader.upload()

    post = recorder.methods("POST")[0]
    # tuspy always sends the header, empty when there is no metadata; the server must accept it.
    assert post[2].get("upload-metadata") == ""
    assert post[3] == 201
    response = head(uploader.url)
    assert decode_metadata(response.headers.get("Upload-Metadata", "")) == {}
    assert_stored_equals(server, uploader.url, source)


def test_upload_with_metadata(server: Any, source_factory: Any) -> None:
    source = source_factory(MiB + 2)
    metadata = {"filename": "słońce.bin", "filetype": "application/octet-stream",
                "note": "zażółć gęślą jaźń, 😀"}
    uploader = tus_client.TusClient(server.url).uploader(str(source), chunk_size=MiB,
                                                         metadata=metadata)
    uploader.upload()

    response = head(uploader.url)
    assert response.status_code in (200, 204)
    assert decode_metadata(response.headers["Upload-Metadata"]) == metadata
    assert_stored_equals(server, uploader.url, source)


def test_upload_single_request(server: Any, source_factory: Any,
                               recorder: RecordingSession) -> None:
    source = source_factory(SIZE)
    uploader = tus_client.TusClient(server.url).uploader(str(source))  # chunk_size = maxsize
    uploader.upload()

    assert len(recorder.methods("PATCH")) == 1
    assert_complete(uploader.url, SIZE)
    assert_stored_equals(server, uploader.url, source)


def test_upload_from_file_stream(server: Any, source_factory: Any) -> None:
    source = source_factory(2 * MiB + 9)
    with source.open("rb") as stream:
        uploader = tus_client.TusClient(server.url).uploader(file_stream=stream,
                                                             chunk_size=700 * 1000)
        uploader.upload()

    assert_complete(uploader.url, source.stat().st_size)
    assert_stored_equals(server, uploader.url, source)


def test_resume_with_new_uploader(server: Any, source_factory: Any,
                                  recorder: RecordingSession) -> None:
    source = source_factory(SIZE)
    chunk = 512 * 1024
    stop_at = 1234567  # not on a chunk boundary: the last PATCH of part one is short
    first = tus_client.TusClient(server.url).uploader(str(source), chunk_size=chunk)
    first.upload(stop_at=stop_at)

    assert first.offset == stop_at
    assert head_offset(first.url) == stop_at
    posts_before = len(recorder.methods("POST"))

    second = tus_client.TusClient(server.url).uploader(str(source), chunk_size=chunk,
                                                       url=first.url)
    assert second.offset == stop_at  # tuspy asked the server (HEAD) on construction
    second.upload()

    assert second.url == first.url
    assert len(recorder.methods("POST")) == posts_before == 1
    resumed = [int(p[2]["upload-offset"]) for p in recorder.methods("PATCH")
               if int(p[2]["upload-offset"]) >= stop_at]
    assert resumed[0] == stop_at
    assert_complete(first.url, SIZE)
    assert_stored_equals(server, first.url, source)


def test_resume_after_kill9_and_restart(server: Any, source_factory: Any) -> None:
    source = source_factory(SIZE)
    first = tus_client.TusClient(server.url).uploader(str(source), chunk_size=MiB)
    first.upload(stop_at=2 * MiB)

    server.restart()

    second = tus_client.TusClient(server.url).uploader(str(source), chunk_size=MiB,
                                                       url=first.url)
    # Acknowledged bytes survive a kill -9.
    assert 2 * MiB <= second.offset < SIZE
    second.upload()
    assert_complete(first.url, SIZE)
    assert_stored_equals(server, first.url, source)


def test_resume_already_complete_upload_is_a_no_op(server: Any, source_factory: Any,
                                                   recorder: RecordingSession) -> None:
    source = source_factory(MiB)
    first = tus_client.TusClient(server.url).uploader(str(source), chunk_size=MiB)
    first.upload()
    patches = len(recorder.methods("PATCH"))

    second = tus_client.TusClient(server.url).uploader(str(source), url=first.url)
    assert second.offset == MiB
    second.upload()
    assert len(recorder.methods("PATCH")) == patches
    assert_stored_equals(server, first.url, source)


def test_resume_of_deleted_upload_reports_404(server: Any, source_factory: Any) -> None:
    source = source_factory(MiB)
    first = tus_client.TusClient(server.url).uploader(str(source), chunk_size=256 * 1024)
    first.upload(stop_at=512 * 1024)
    assert first.url is not None
    deleted = requests.delete(first.url, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert deleted.status_code == 204

    # tuspy HEADs the URL when constructing the uploader; a gone upload must be a clean 404/410.
    with pytest.raises(TusCommunicationError) as excinfo:
        tus_client.TusClient(server.url).uploader(str(source), url=first.url)
    assert excinfo.value.status_code in (404, 410), repr(excinfo.value)


def test_empty_file(server: Any, source_factory: Any) -> None:
    source = source_factory(0)
    uploader = tus_client.TusClient(server.url).uploader(str(source))
    uploader.upload()

    assert_complete(uploader.url, 0)
    assert_stored_equals(server, uploader.url, source)


def test_async_uploader(server: Any, source_factory: Any) -> None:
    source = source_factory(2 * MiB + 17)
    uploader = tus_client.TusClient(server.url).async_uploader(
        str(source), chunk_size=512 * 1024, metadata={"filename": "słońce.bin"})
    asyncio.run(uploader.upload())

    assert uploader.offset == source.stat().st_size
    assert decode_metadata(head(uploader.url).headers["Upload-Metadata"]) == {
        "filename": "słońce.bin"}
    assert_stored_equals(server, uploader.url, source)


def test_over_max_size_is_rejected(start_server: Any, source_factory: Any) -> None:
    server = start_server("--max-size", str(MiB))
    source = source_factory(MiB + 1)
    uploader = tus_client.TusClient(server.url).uploader(str(source))

    with pytest.raises(TusCommunicationError) as excinfo:
        uploader.upload()
    assert excinfo.value.status_code == 413


def _supports_deferred_length() -> bool:
    return "upload_length_deferred" in inspect.signature(Uploader.__init__).parameters


@pytest.mark.skipif(not _supports_deferred_length(),
                    reason="this tuspy version has no upload_length_deferred option")
def test_deferred_length(server: Any, source_factory: Any) -> None:
    source = source_factory(SIZE)
    uploader = tus_client.TusClient(server.url).uploader(
        str(source), chunk_size=MiB, upload_length_deferred=True)
    uploader.upload()

    assert_complete(uploader.url, SIZE)
    assert_stored_equals(server, uploader.url, source)


def test_upload_checksum(server: Any, source_factory: Any) -> None:
    source = source_factory(MiB + 5)
    uploader = tus_client.TusClient(server.url).uploader(str(source), chunk_size=256 * 1024,
                                                         upload_checksum=True)
    uploader.upload()

    assert_stored_equals(server, uploader.url, source)


def test_source_files_are_random(source_factory: Any) -> None:
    # Guard against a broken fixture making every comparison trivially true.
    a: Path = source_factory(4096, "a.bin")
    b: Path = source_factory(4096, "b.bin")
    assert a.read_bytes() != b.read_bytes()
    assert len(a.read_bytes()) == 4096
