"""tus-js-client 4.3.1 `parallelUploads` (concatenation, checklist items 75-81) against a real tusfast process.

tus-js-client splits the file into N slices, creates one `Upload-Concat: partial` upload per slice, PATCHes
them in parallel and finally POSTs `Upload-Concat: final;<Location1> <Location2> ...` with the Location
strings exactly as the server returned them. The final upload must hold the source byte for byte.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.interop.helpers import (
    TUS_HEADERS,
    MiB,
    assert_complete,
    assert_stored_equals,
    decode_metadata,
    head,
    sha256_file,
    stored_file,
    upload_id,
)

pytestmark = pytest.mark.interop

METADATA = {"filename": "parallel-słońce.bin", "filetype": "application/octet-stream", "note": "a, b"}


def split(size: int, parts: int) -> list[tuple[int, int]]:
    """tus-js-client's splitSizeIntoParts: equal floor-sized slices, the last one takes the rest."""
    step = size // parts
    bounds = [(step * i, step * (i + 1)) for i in range(parts)]
    bounds[-1] = (bounds[-1][0], size)
    return bounds


def partial_posts(result: Any) -> list[dict[str, Any]]:
    return [r for r in result.requests_with("POST") if r["headers"].get("Upload-Concat") == "partial"]


def final_posts(result: Any) -> list[dict[str, Any]]:
    return [r for r in result.requests_with("POST")
            if r["headers"].get("Upload-Concat", "").startswith("final;")]


def check_parallel_upload(server: Any, result: Any, source: Path, parts: int,
                          bounds: list[tuple[int, int]] | None = None) -> list[str]:
    """The common assertions; returns the partial URLs in slice order."""
    size = source.stat().st_size
    bounds = bounds or split(size, parts)
    assert result.ok, result.describe()

    partials = partial_posts(result)
    assert len(partials) == parts, result.describe()
    assert all(p["status"] == 201 for p in partials), result.describe()
    assert all(p["responseHeaders"].get("upload-concat") == "partial" for p in partials), result.describe()
    assert sorted(int(p["headers"]["Upload-Length"]) for p in partials) == sorted(e - s for s, e in bounds)
    locations = [p["responseHeaders"]["location"] for p in partials]
    assert len(set(locations)) == parts
    for location in locations:
        upload_id(server, location)                  # absolute, under our collection URL

    finals = final_posts(result)
    assert len(finals) == 1, result.describe()
    final = finals[0]
    assert final["status"] == 201, result.describe()
    assert "Upload-Length" not in final["headers"], result.describe()
    concat = final["headers"]["Upload-Concat"]
    order: list[str] = concat[len("final;"):].split(" ")
    assert sorted(order) == sorted(locations), (concat, locations)
    assert final["responseHeaders"]["location"] == result.url
    assert final["responseHeaders"].get("upload-concat") == concat

    # Every partial got contiguous 204 PATCHes up to its own length.
    lengths = {p["responseHeaders"]["location"]: int(p["headers"]["Upload-Length"]) for p in partials}
    offsets: dict[str, int] = defaultdict(int)
    for p in partials:
        offsets[p["responseHeaders"]["location"]] = int(p["responseHeaders"].get("upload-offset") or 0)
    for request in result.requests_with("PATCH"):
        assert request["url"] in lengths, result.describe()
        assert request["status"] == 204, result.describe()
        assert int(request["headers"]["Upload-Offset"]) == offsets[request["url"]], result.describe()
        offsets[request["url"]] = int(request["responseHeaders"]["upload-offset"])
    assert all(offsets[url] == lengths[url] for url in lengths), (dict(offsets), lengths)

    # The final upload: stored, announced and downloadable as the source.
    assert_stored_equals(server, result.url, source)
    assert_complete(result.url, size)
    response = head(result.url)
    assert response.headers["Upload-Concat"] == concat
    download = requests.get(result.url, timeout=30)
    assert download.status_code == 200, download.status_code
    assert hashlib.sha256(download.content).hexdigest() == sha256_file(source)

    # tus-js-client lists the partials in slice order; each holds its slice and survives the join.
    content = source.read_bytes()
    for url, (start, end) in zip(order, bounds):
        assert lengths[url] == end - start
        assert stored_file(server, url).read_bytes() == content[start:end], f"partial {url} != [{start}:{end}]"
        partial_head = head(url)
        assert partial_head.status_code == 200 and partial_head.headers["Upload-Concat"] == "partial"
        assert partial_head.headers["Upload-Offset"] == str(lengths[url])
    return order


def test_parallel_upload_three_parts(server: Any, js_client: Any, source_factory: Any) -> None:
    size = 5 * MiB + 321
    source = source_factory(size)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=512 * 1024, parallelUploads=3,
                       metadata=METADATA)
    order = check_parallel_upload(server, result, source, 3)

    assert len(result.requests_with("PATCH")) >= 3 * 3, result.describe()     # several chunks per part
    # The final carries the upload's metadata; the partials carry none (not carried over either way).
    final_head = head(result.url)
    assert decode_metadata(final_head.headers["Upload-Metadata"]) == METADATA
    for url in order:
        assert decode_metadata(head(url).headers.get("Upload-Metadata", "")) == {}
    download = requests.get(result.url, timeout=30)
    assert "parallel-s%C5%82o%C5%84ce.bin" in download.headers["Content-Disposition"]


def test_parallel_upload_metadata_for_partials_stays_on_partials(server: Any, js_client: Any,
                                                                 source_factory: Any) -> None:
    source = source_factory(MiB + 7)
    result = js_client(endpoint=server.url, file=str(source), parallelUploads=2,
                       metadata={"filename": "final.bin"}, metadataForPartialUploads={"part": "yes"})
    order = check_parallel_upload(server, result, source, 2)
    assert decode_metadata(head(result.url).headers["Upload-Metadata"]) == {"filename": "final.bin"}
    for url in order:
        assert decode_metadata(head(url).headers["Upload-Metadata"]) == {"part": "yes"}


def test_parallel_upload_with_data_during_creation(server: Any, js_client: Any, source_factory: Any) -> None:
    source = source_factory(3 * MiB + 1)
    result = js_client(endpoint=server.url, file=str(source), parallelUploads=3, uploadDataDuringCreation=True)
    check_parallel_upload(server, result, source, 3)
    assert result.requests_with("PATCH") == [], result.describe()             # everything went in the POSTs
    assert all(p["responseHeaders"]["upload-offset"] == p["headers"]["Upload-Length"]
               for p in partial_posts(result)), result.describe()


def test_parallel_upload_many_parts(server: Any, js_client: Any, source_factory: Any) -> None:
    source = source_factory(4 * MiB + 99)
    result = js_client(endpoint=server.url, file=str(source), chunkSize=256 * 1024, parallelUploads=8)
    check_parallel_upload(server, result, source, 8)


def test_parallel_upload_uneven_boundaries(server: Any, js_client: Any, source_factory: Any) -> None:
    size = 2 * MiB + 3
    source = source_factory(size)
    bounds = [(0, 1), (1, MiB), (MiB, size)]
    result = js_client(endpoint=server.url, file=str(source), parallelUploads=3,
                       parallelUploadBoundaries=[{"start": s, "end": e} for s, e in bounds])
    check_parallel_upload(server, result, source, 3, bounds)


def test_parallel_upload_of_a_tiny_file(server: Any, js_client: Any, source_factory: Any) -> None:
    """3 bytes in 3 parts of one byte each. (Empty slices cannot be tested here: tus-js-client's Node file
    reader fails on them before sending anything; zero-length partials are covered in
    tests/integration/test_extensions.py.)"""
    source = source_factory(3)
    result = js_client(endpoint=server.url, file=str(source), parallelUploads=3)
    check_parallel_upload(server, result, source, 3)
    assert [int(p["headers"]["Upload-Length"]) for p in partial_posts(result)] == [1, 1, 1]


def test_parallel_upload_final_is_read_only(server: Any, js_client: Any, source_factory: Any) -> None:
    """[80] once tus-js-client is done, nobody can PATCH the final upload."""
    source = source_factory(MiB)
    result = js_client(endpoint=server.url, file=str(source), parallelUploads=2)
    assert result.ok, result.describe()
    response = requests.patch(result.url, data=b"x", timeout=10,
                              headers={**TUS_HEADERS, "Upload-Offset": str(MiB),
                                       "Content-Type": "application/offset+octet-stream"})
    assert response.status_code == 403, response.status_code
    assert_stored_equals(server, result.url, source)
