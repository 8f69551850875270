"""tus-js-client 4.3.1 (Node build, driven by js/client.mjs) against a real tusfast process.

Every upload is checked byte for byte: the server's data file `<upload_dir>/<id>` must have
the sha256 of the random source file.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from tests.interop.helpers import (
    UPLOAD_ID,
    MiB,
    assert_complete,
    assert_stored_equals,
    decode_metadata,
    head,
    head_offset,
    stored_file,
    upload_id,
)

pytestmark = pytest.mark.interop

SIZE = 4 * MiB + 123  # deliberately not a multiple of any chunk size used below


def _patch_offsets(result: Any) -> list[int]:
    return [int(r["headers"]["Upload-Offset"]) for r in result.requests_with("PATCH")]


def _assert_patches_contiguous(result: Any, start: int, size: int) -> None:
    """Each PATCH started where the previous response said, all were 204, the last hit size."""
    patches = result.requests_with("PATCH")
    assert patches, result.describe()
    expected = start
    for request in patches:
        assert int(request["headers"]["Upload-Offset"]) == expected, result.describe()
        assert request["status"] == 204, result.describe()
        expected = int(request["responseHeaders"]["upload-offset"])
    assert expected == size, result.describe()


def _assert_offsets_consistent(result: Any, size: int) -> None:
    """Every PATCH was sent at the offset the server reported last (HEAD, POST or PATCH
    response), and the last offset the server reported is the full size. Tolerates retries."""
    known: int | None = None
    for request in result.requests:
        if request["method"] == "PATCH":
            assert known is not None, result.describe()
            assert int(request["headers"]["Upload-Offset"]) == known, result.describe()
        response = request["responseHeaders"] or {}
        if request["status"] in (200, 201, 204) and "upload-offset" in response:
            known = int(response["upload-offset"])
        elif request["method"] == "POST" and request["status"] == 201:
            known = 0  # plain creation: nothing stored yet
    assert known == size, result.describe()


# --------------------------------------------------------------------------- plain uploads


def test_chunked_upload(server: Any, js_client: Any, source_factory: Any) -> None:
    source = source_factory(SIZE)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=MiB)

    assert result.ok, result.describe()
    assert result.bytes_accepted == SIZE
    posts = result.requests_with("POST")
    assert len(posts) == 1 and posts[0]["status"] == 201, result.describe()
    assert posts[0]["headers"]["Upload-Length"] == str(SIZE)
    # Location must be absolute (the server's documented behaviour).
    assert posts[0]["responseHeaders"]["location"] == result.url
    assert len(result.requests_with("PATCH")) == math.ceil(SIZE / MiB), result.describe()
    _assert_patches_contiguous(result, 0, SIZE)
    assert_complete(result.url, SIZE)
    assert_stored_equals(server, result.url, source)


@pytest.mark.parametrize("chunk_size", [None, "Infinity"])
def test_single_request_upload(server: Any, js_client: Any, source_factory: Any,
                               chunk_size: Any) -> None:
    source = source_factory(SIZE)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=chunk_size)

    assert result.ok, result.describe()
    patches = result.requests_with("PATCH")
    assert len(patches) == 1, result.describe()
    assert patches[0]["headers"]["Upload-Offset"] == "0"
    assert patches[0]["responseHeaders"]["upload-offset"] == str(SIZE)
    assert_complete(result.url, SIZE)
    assert_stored_equals(server, result.url, source)


def test_two_uploads_get_distinct_urls(server: Any, js_client: Any, source_factory: Any) -> None:
    first = source_factory(MiB + 1, "first.bin")
    second = source_factory(MiB + 2, "second.bin")
    a = js_client(endpoint=server.url, file=str(first), chunkSize=256 * 1024)
    b = js_client(endpoint=server.url, file=str(second), chunkSize=256 * 1024)

    assert a.ok and b.ok, a.describe() + "\n" + b.describe()
    assert upload_id(server, a.url) != upload_id(server, b.url)
    assert_stored_equals(server, a.url, first)
    assert_stored_equals(server, b.url, second)


# --------------------------------------------------------------------------- creation-with-upload


@pytest.mark.parametrize("chunk_size", [None, MiB], ids=["whole-file-in-POST", "1MiB-in-POST"])
def test_creation_with_upload(server: Any, js_client: Any, source_factory: Any,
                              chunk_size: Any) -> None:
    source = source_factory(SIZE)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=chunk_size,
                       uploadDataDuringCreation=True)

    assert result.ok, result.describe()
    posts = result.requests_with("POST")
    assert len(posts) == 1 and posts[0]["status"] == 201, result.describe()
    assert posts[0]["headers"]["Content-Type"] == "application/offset+octet-stream"
    in_post = SIZE if chunk_size is None else chunk_size
    # The creation response must report how much of the body the server stored.
    assert posts[0]["responseHeaders"].get("upload-offset") == str(in_post), result.describe()
    if chunk_size is None:
        assert result.requests_with("PATCH") == [], result.describe()
    else:
        _assert_patches_contiguous(result, in_post, SIZE)
    assert_complete(result.url, SIZE)
    assert_stored_equals(server, result.url, source)


# --------------------------------------------------------------------------- deferred length


def test_deferred_length_stream(server: Any, js_client: Any, source_factory: Any) -> None:
    size = 3 * MiB + 777
    source = source_factory(size)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=MiB,
                       uploadLengthDeferred=True)

    assert result.ok, result.describe()
    post = result.requests_with("POST")[0]
    assert post["headers"].get("Upload-Defer-Length") == "1"
    assert "Upload-Length" not in post["headers"]
    patches = result.requests_with("PATCH")
    assert len(patches) == 4, result.describe()
    # tus-js-client declares the length with the last PATCH, once the stream has ended.
    assert patches[-1]["headers"].get("Upload-Length") == str(size), result.describe()
    assert all("Upload-Length" not in p["headers"] for p in patches[:-1]), result.describe()
    _assert_patches_contiguous(result, 0, size)
    assert_complete(result.url, size)
    response = head(result.url)
    assert "Upload-Defer-Length" not in response.headers, response.headers
    assert_stored_equals(server, result.url, source)


def test_deferred_length_head_before_length_is_known(server: Any, js_client: Any,
                                                     source_factory: Any) -> None:
    size = 3 * MiB + 5
    source = source_factory(size)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=MiB,
                       uploadLengthDeferred=True, abortAfterBytes=MiB)

    assert result.aborted, result.describe()
    response = head(result.url)
    assert response.status_code in (200, 204), response
    # tus 1.0.0: as long as the length is unknown, HEAD MUST carry Upload-Defer-Length: 1.
    assert response.headers.get("Upload-Defer-Length") == "1", response.headers
    assert "Upload-Length" not in response.headers, response.headers
    assert MiB <= int(response.headers["Upload-Offset"]) < size, response.headers


# --------------------------------------------------------------------------- metadata


METADATA = {
    "filename": "słońce.bin",
    "filetype": "application/octet-stream",
    "caption": "Dzień dobry, słońce! ☀ — 日本語 😀",
    "ascii": "plain value, with comma",
}


def test_metadata_round_trip(server: Any, js_client: Any, source_factory: Any) -> None:
    source = source_factory(MiB + 3)
    result = js_client(endpoint=server.url, file=str(source), metadata=METADATA)

    assert result.ok, result.describe()
    post = result.requests_with("POST")[0]
    assert "Upload-Metadata" in post["headers"]
    response = head(result.url)
    assert response.status_code in (200, 204), response
    assert response.headers.get("Cache-Control") == "no-store", response.headers
    assert "Upload-Metadata" in response.headers, response.headers
    assert decode_metadata(response.headers["Upload-Metadata"]) == METADATA
    assert_stored_equals(server, result.url, source)


def test_metadata_with_empty_value(server: Any, js_client: Any, source_factory: Any) -> None:
    # tus-js-client encodes "" as "key " (key, space, empty base64); after header whitespace
    # trimming the server sees a key without a value, which tus 1.0.0 allows.
    source = source_factory(1000)
    metadata = {"empty": "", "filename": "słońce.txt"}
    result = js_client(endpoint=server.url, file=str(source), metadata=metadata)

    assert result.ok, result.describe()
    decoded = decode_metadata(head(result.url).headers.get("Upload-Metadata", ""))
    assert decoded.get("filename") == "słońce.txt", decoded
    assert "empty" in decoded and decoded["empty"] in (None, ""), decoded
    assert_stored_equals(server, result.url, source)


# --------------------------------------------------------------------------- abort / resume


def _abort_midway(js_client: Any, server: Any, source: Path, abort_after: int,
                  **extra: Any) -> tuple[Any, int]:
    first = js_client(endpoint=server.url, file=str(source), chunkSize=512 * 1024,
                      abortAfterBytes=abort_after, **extra)
    assert first.aborted and not first.ok, first.describe()
    assert first.error is None, first.describe()
    upload_id(server, first.url)
    offset = head_offset(first.url)
    size = source.stat().st_size
    assert 0 < offset < size, f"server offset after abort: {offset}\n{first.describe()}"
    # Bytes the server acknowledged with a 204 must not be lost.
    assert offset >= first.bytes_accepted, first.describe()
    return first, offset


def _assert_resumed(second: Any, first_url: str, offset: int, size: int) -> None:
    assert second.ok, second.describe()
    assert second.url == first_url, "the client created a new upload instead of resuming"
    assert second.requests_with("POST") == [], second.describe()
    heads = second.requests_with("HEAD")
    assert heads and heads[0]["responseHeaders"]["upload-offset"] == str(offset), second.describe()
    patch_offsets = _patch_offsets(second)
    assert patch_offsets and patch_offsets[0] == offset > 0, second.describe()
    _assert_patches_contiguous(second, offset, size)


def test_abort_then_resume_with_upload_url(server: Any, js_client: Any,
                                           source_factory: Any) -> None:
    source = source_factory(SIZE)
    first, offset = _abort_midway(js_client, server, source, abort_after=3 * MiB // 2)

    second = js_client(endpoint=server.url, file=str(source), chunkSize=512 * 1024,
                       uploadUrl=first.url)

    _assert_resumed(second, first.url, offset, SIZE)
    assert_complete(first.url, SIZE)
    assert_stored_equals(server, first.url, source)


def test_abort_inside_a_request_then_resume(server: Any, js_client: Any,
                                           source_factory: Any) -> None:
    # One PATCH for the whole file, aborted at its first progress event: the connection drops
    # after the request head and at most the first 64 KiB of a 16 MiB body. The server may keep
    # any part of what it received, but must report an offset it really has, and the resumed
    # upload (which may race with the server still closing the dead request) must complete.
    size = 16 * MiB + 7
    source = source_factory(size)
    first = js_client(endpoint=server.url, file=str(source), abortAfterBytes=1)
    assert first.aborted and first.error is None, first.describe()
    assert len(first.requests_with("PATCH")) == 1, first.describe()
    offset = head_offset(first.url)
    assert 0 <= offset < size

    second = js_client(endpoint=server.url, file=str(source), uploadUrl=first.url)

    assert second.ok, second.describe()
    assert second.url == first.url and second.requests_with("POST") == [], second.describe()
    _assert_offsets_consistent(second, size)
    assert_complete(first.url, size)
    assert_stored_equals(server, first.url, source)


def test_abort_then_resume_from_url_storage(server: Any, js_client: Any, source_factory: Any,
                                            tmp_path: Path) -> None:
    source = source_factory(SIZE)
    storage = tmp_path / "tus-url-storage.json"
    first, offset = _abort_midway(js_client, server, source, abort_after=MiB,
                                  urlStorage=str(storage))
    assert storage.is_file() and first.url in storage.read_text()

    second = js_client(endpoint=server.url, file=str(source), chunkSize=512 * 1024,
                       urlStorage=str(storage), resumePrevious=True)

    assert second.previous_uploads == 1, second.describe()
    _assert_resumed(second, first.url, offset, SIZE)
    assert_stored_equals(server, first.url, source)


def test_resume_after_kill9_and_restart(server: Any, js_client: Any, source_factory: Any) -> None:
    source = source_factory(SIZE)
    first, _ = _abort_midway(js_client, server, source, abort_after=2 * MiB)

    server.restart()  # kill -9, then start again on the same port and upload dir

    offset_after = head_offset(first.url)
    assert offset_after >= first.bytes_accepted > 0, (offset_after, first.describe())
    second = js_client(endpoint=server.url, file=str(source), chunkSize=512 * 1024,
                       uploadUrl=first.url)

    _assert_resumed(second, first.url, offset_after, SIZE)
    assert_stored_equals(server, first.url, source)


def test_server_killed_during_upload_client_retries(server: Any, js_client: Any,
                                                    source_factory: Any) -> None:
    source = source_factory(SIZE)
    chunk = 128 * 1024
    running = js_client.spawn(endpoint=server.url, file=str(source), chunkSize=chunk,
                              requestDelayMs=40,
                              retryDelays=[100, 300, 500, 1000, 1000, 2000, 2000, 4000])
    # Wait until the upload exists and has made some progress, then kill -9 the server. Watch
    # the data file rather than sending HEADs: a HEAD for the upload would interrupt the
    # running PATCH (the server lets a newer request for an upload end the older one).
    ident = None
    stored = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        infos = list(Path(server.upload_dir).glob("*.info"))
        if infos:
            ident = infos[0].name[: -len(".info")]
            data = Path(server.upload_dir) / ident
            stored = data.stat().st_size if data.exists() else 0
            if stored >= MiB:
                break
        time.sleep(0.01)
    assert ident is not None and MiB <= stored < SIZE, f"upload did not progress as planned: {stored}"
    server.restart()

    result = running.result()
    assert result.ok, result.describe()
    assert result.url == server.upload_url(ident)
    assert len(result.requests_with("POST")) == 1, result.describe()
    # The client noticed the outage (a request without response) and asked for the offset.
    assert any(r["status"] is None for r in result.requests), result.describe()
    assert result.requests_with("HEAD"), result.describe()
    _assert_offsets_consistent(result, SIZE)
    assert_complete(result.url, SIZE)
    assert_stored_equals(server, result.url, source)


def test_abort_with_termination(server: Any, js_client: Any, source_factory: Any) -> None:
    source = source_factory(2 * MiB)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=256 * 1024,
                       abortAfterBytes=512 * 1024, terminateOnAbort=True)

    assert result.aborted and result.error is None, result.describe()
    deletes = result.requests_with("DELETE")
    assert len(deletes) == 1 and deletes[0]["status"] == 204, result.describe()
    assert head(result.url).status_code in (404, 410)
    assert not stored_file(server, result.url).exists()
    assert not Path(str(stored_file(server, result.url)) + ".info").exists()


def test_resume_of_terminated_upload_starts_a_new_one(server: Any, js_client: Any,
                                                      source_factory: Any) -> None:
    # tus-js-client HEADs the given uploadUrl; on a 4xx (404/410) it forgets the URL and creates
    # a new upload. That only works if the server answers the HEAD of a gone upload properly.
    source = source_factory(MiB + 11)
    first = js_client(endpoint=server.url, file=str(source), chunkSize=256 * 1024,
                      abortAfterBytes=256 * 1024, terminateOnAbort=True)
    assert first.aborted and first.requests_with("DELETE")[0]["status"] == 204, first.describe()

    second = js_client(endpoint=server.url, file=str(source), chunkSize=256 * 1024,
                       uploadUrl=first.url, retryDelays=None)

    assert second.ok, second.describe()
    heads = second.requests_with("HEAD")
    assert heads and heads[0]["status"] in (404, 410), second.describe()
    assert len(second.requests_with("POST")) == 1, second.describe()
    assert second.url != first.url
    assert_stored_equals(server, second.url, source)


# --------------------------------------------------------------------------- edge cases


def test_empty_file(server: Any, js_client: Any, source_factory: Any) -> None:
    source = source_factory(0)
    result = js_client(endpoint=server.url, file=str(source))

    assert result.ok, result.describe()
    post = result.requests_with("POST")[0]
    assert post["headers"]["Upload-Length"] == "0" and post["status"] == 201
    assert_complete(result.url, 0)
    assert_stored_equals(server, result.url, source)


@pytest.mark.parametrize("with_body", [False, True], ids=["creation", "creation-with-upload"])
def test_upload_over_max_size_is_rejected(start_server: Any, js_client: Any,
                                          source_factory: Any, with_body: bool) -> None:
    # With creation-with-upload the 413 arrives while the client may still be sending the
    # body; the client must still get to read the 413 (not an EPIPE / ECONNRESET).
    limit = MiB
    server = start_server("--max-size", str(limit))
    source = source_factory(limit + 1)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=None if with_body else
                       256 * 1024, uploadDataDuringCreation=with_body, retryDelays=None)

    assert not result.ok, result.describe()
    assert result.status == 413, result.describe()
    assert "413" in (result.error or ""), result.describe()
    assert result.requests_with("PATCH") == [], result.describe()
    leftovers = [p.name for p in Path(server.upload_dir).iterdir()
                 if UPLOAD_ID.match(p.name)]
    assert leftovers == [], "a rejected creation must not leave uploads behind"


def test_upload_of_exactly_max_size_is_accepted(start_server: Any, js_client: Any,
                                                source_factory: Any) -> None:
    limit = MiB
    server = start_server("--max-size", str(limit))
    source = source_factory(limit)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=256 * 1024)

    assert result.ok, result.describe()
    assert_stored_equals(server, result.url, source)


def test_deferred_upload_over_max_size_is_rejected(start_server: Any, js_client: Any,
                                                   source_factory: Any) -> None:
    limit = MiB
    server = start_server("--max-size", str(limit))
    source = source_factory(limit + 256 * 1024 + 1)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=256 * 1024,
                       uploadLengthDeferred=True, retryDelays=None)

    assert not result.ok, result.describe()
    assert result.status == 413, result.describe()
    assert "413" in (result.error or ""), result.describe()
    if result.url:
        data = stored_file(server, result.url)
        assert not data.exists() or data.stat().st_size <= limit
