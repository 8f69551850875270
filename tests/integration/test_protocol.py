"""tus 1.0.0 protocol rules (checklist Part A) against a real tusfast process, status by status.

Extensions enabled by default: creation, creation-with-upload, creation-defer-length, termination.
Numbers in brackets refer to the items of ../shared/spec/tus-server-checklist.md Part A.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st


from .rawhttp import (OCTET, TIMEOUT, TUS, UPLOAD_ID, RawConnection, chunked, create, head, offset_of, patch,
                      path_of, upload_id)

EXTENSIONS = ("creation,creation-with-upload,creation-defer-length,expiration,checksum,checksum-trailer,"
              "termination,concatenation,concatenation-unfinished")
TOO_BIG = str(2 ** 63)               # one past the largest signed 64-bit integer
HUGE = "9" * 30


# ---- helpers -----------------------------------------------------------------------------------------


def files_in(directory: Path) -> set[str]:
    """Every file and symlink below `directory`, relative paths. The server's own hidden bookkeeping
    directories (e.g. lock files) are left out, except `.ids` (the id index of --dir-layout)."""
    if not directory.exists():
        return set()
    found = set()
    for root, dirs, names in os.walk(directory):
        if root == str(directory):
            dirs[:] = [d for d in dirs if not d.startswith(".") or d == ".ids"]
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            found.add(os.path.relpath(os.path.join(root, name), directory))
    return found


def assert_tus(response: requests.Response) -> None:
    """[8] every response, errors included, carries Tus-Resumable: 1.0.0."""
    assert response.headers.get("Tus-Resumable") == "1.0.0", (response.status_code, response.headers)


def assert_error(response: requests.Response, status: int | tuple[int, ...]) -> None:
    """[83] errors: the status, Tus-Resumable, a short text body."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.headers, response.text)
    assert_tus(response)
    if response.request.method != "HEAD":
        assert response.headers.get("Content-Type", "").startswith("text/plain"), response.headers
        assert 0 < len(response.content) < 1024, response.content


def data_file(server, url: str) -> Path:  # type: ignore[no-untyped-def]
    return server.upload_dir / upload_id(url)


def info_file(server, url: str) -> Path:  # type: ignore[no-untyped-def]
    return server.upload_dir / (upload_id(url) + ".info")


def post(server, headers: dict[str, str], body: bytes | None = None, url: str | None = None) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(url or server.url, headers=headers, data=body, timeout=TIMEOUT)




# ---- OPTIONS [38, 39, 7, 11, 12] ---------------------------------------------------------------------


def test_options_announces_version_and_extensions(server) -> None:
    response = requests.options(server.url, timeout=TIMEOUT)
    assert response.status_code == 204
    assert response.headers["Tus-Version"].split(",")[0].strip() == "1.0.0"
    assert "1.0.0" in [v.strip() for v in response.headers["Tus-Version"].split(",")]
    assert response.headers["Tus-Extension"] == EXTENSIONS
    assert "Tus-Max-Size" not in response.headers      # no limit configured
    assert response.content == b""
    assert_tus(response)


def test_options_announces_max_size(start_server) -> None:
    server = start_server("--max-size", "1000")
    response = requests.options(server.url, timeout=TIMEOUT)
    assert response.status_code == 204
    assert response.headers["Tus-Max-Size"] == "1000"


def test_options_max_size_with_unit(start_server) -> None:
    server = start_server("--max-size", "2K")
    response = requests.options(server.url, timeout=TIMEOUT)
    assert response.headers["Tus-Max-Size"] in ("2048", "2000")


@pytest.mark.parametrize("version", ["0.2.2", "garbage", ""])
def test_options_ignores_tus_resumable(server, version: str) -> None:
    response = requests.options(server.url, headers={"Tus-Resumable": version}, timeout=TIMEOUT)
    assert response.status_code == 204, response.text
    assert "Tus-Version" in response.headers


def test_options_on_upload_url(server) -> None:
    url = create(server.url, 5)
    response = requests.options(url, headers={"Tus-Resumable": "9.9.9"}, timeout=TIMEOUT)
    assert response.status_code in (200, 204)
    assert "Tus-Version" in response.headers


def test_disabled_termination_not_announced_and_not_served(start_server) -> None:
    server = start_server("--disable-termination")
    response = requests.options(server.url, timeout=TIMEOUT)
    assert response.headers["Tus-Extension"] == EXTENSIONS.replace(",termination", "")
    url = create(server.url, 5)
    response = requests.delete(url, headers=TUS, timeout=TIMEOUT)
    assert 400 <= response.status_code < 500 and response.status_code != 404, response.status_code
    assert offset_of(url) == 0 and data_file(server, url).exists()


def test_disabled_creation_drops_creation_with_upload(start_server) -> None:
    """[55] creation-with-upload depends on creation."""
    server = start_server("--disable-creation")
    response = requests.options(server.url, timeout=TIMEOUT)
    extensions = response.headers.get("Tus-Extension", "").split(",")
    assert "creation" not in extensions and "creation-with-upload" not in extensions
    before = files_in(server.upload_dir)
    response = post(server, {**TUS, "Upload-Length": "5"})
    assert 400 <= response.status_code < 500, response.status_code
    assert "Location" not in response.headers
    assert files_in(server.upload_dir) == before


def test_disabled_defer_length_rejects_deferred_creation(start_server) -> None:
    server = start_server("--disable-creation-defer-length")
    response = requests.options(server.url, timeout=TIMEOUT)
    assert "creation-defer-length" not in response.headers["Tus-Extension"].split(",")
    before = files_in(server.upload_dir)
    response = post(server, {**TUS, "Upload-Defer-Length": "1"})
    assert_error(response, 400)
    assert files_in(server.upload_dir) == before


# ---- 412 version negotiation [9, 10] -----------------------------------------------------------------


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", "2.0.0", ""])
def test_post_without_supported_version_is_412(server, version: str | None) -> None:
    headers = {"Upload-Length": "5"}
    if version is not None:
        headers["Tus-Resumable"] = version
    before = files_in(server.upload_dir)
    response = post(server, headers)
    assert_error(response, 412)
    assert "1.0.0" in response.headers.get("Tus-Version", "")
    assert "Location" not in response.headers
    assert files_in(server.upload_dir) == before


def test_post_with_body_without_version_is_412(server) -> None:
    before = files_in(server.upload_dir)
    response = post(server, {"Upload-Length": "5", "Content-Type": OCTET}, b"hello")
    assert_error(response, 412)
    assert files_in(server.upload_dir) == before


@pytest.mark.parametrize("version", [None, "0.2.2", "x"])
def test_patch_without_supported_version_is_412(server, version: str | None) -> None:
    url = create(server.url, 10)
    headers = {"Content-Type": OCTET, "Upload-Offset": "0"}
    if version is not None:
        headers["Tus-Resumable"] = version
    response = requests.patch(url, headers=headers, data=b"hello", timeout=TIMEOUT)
    assert_error(response, 412)
    assert "1.0.0" in response.headers.get("Tus-Version", "")
    assert offset_of(url) == 0
    assert data_file(server, url).read_bytes() == b""


@pytest.mark.parametrize("version", [None, "0.2.2"])
def test_head_without_supported_version_is_412(server, version: str | None) -> None:
    url = create(server.url, 10)
    headers = {} if version is None else {"Tus-Resumable": version}
    response = requests.head(url, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 412
    assert_tus(response)
    assert "1.0.0" in response.headers.get("Tus-Version", "")
    assert "Upload-Offset" not in response.headers


@pytest.mark.parametrize("version", [None, "0.2.2"])
def test_delete_without_supported_version_is_412(server, version: str | None) -> None:
    url = create(server.url, 10)
    headers = {} if version is None else {"Tus-Resumable": version}
    response = requests.delete(url, headers=headers, timeout=TIMEOUT)
    assert_error(response, 412)
    assert "1.0.0" in response.headers.get("Tus-Version", "")
    assert offset_of(url) == 0
    assert data_file(server, url).exists() and info_file(server, url).exists()


# ---- POST / creation [42-48] -------------------------------------------------------------------------


def test_creation_201_with_absolute_location(server) -> None:
    before = files_in(server.upload_dir)
    response = post(server, {**TUS, "Upload-Length": "11"})
    assert response.status_code == 201
    assert_tus(response)
    location = response.headers["Location"]
    assert location.startswith(server.url)
    assert UPLOAD_ID.match(location[len(server.url):])
    assert response.headers.get("Content-Length", "0") == "0" and response.content == b""
    assert "Upload-Defer-Length" not in response.headers
    created = files_in(server.upload_dir) - before
    ident = upload_id(location)
    assert created == {ident, ident + ".info"}
    assert (server.upload_dir / ident).read_bytes() == b""


def test_two_creations_get_distinct_ids(server) -> None:
    urls = {create(server.url, 1) for _ in range(5)}
    assert len(urls) == 5


def test_creation_needs_a_length(server) -> None:
    before = files_in(server.upload_dir)
    response = post(server, dict(TUS))
    assert_error(response, 400)
    assert "Location" not in response.headers
    assert files_in(server.upload_dir) == before


def test_creation_with_length_and_defer_is_400(server) -> None:
    before = files_in(server.upload_dir)
    response = post(server, {**TUS, "Upload-Length": "5", "Upload-Defer-Length": "1"})
    assert_error(response, 400)
    assert files_in(server.upload_dir) == before


@pytest.mark.parametrize("value", ["0", "2", "true", "", "-1"])
def test_defer_length_other_than_1_is_400(server, value: str) -> None:
    before = files_in(server.upload_dir)
    response = post(server, {**TUS, "Upload-Defer-Length": value})
    assert_error(response, 400)
    assert files_in(server.upload_dir) == before


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1e3", "0x10", TOO_BIG, HUGE, "", "5 5", "٣"])
def test_malformed_upload_length_is_400(server, value: str) -> None:
    before = files_in(server.upload_dir)
    raw = RawConnection.to(server)
    with raw:
        raw.request("POST", path_of(server.url), [("Tus-Resumable", "1.0.0"),
                                                    ("Upload-Length", value.encode().decode("latin-1"))])
        response = raw.read_response("POST")
    assert response.status == 400, response
    assert response.header("Tus-Resumable") == "1.0.0"
    assert response.header("Location") is None
    assert files_in(server.upload_dir) == before


def test_largest_signed_length_is_not_a_500(server) -> None:
    response = post(server, {**TUS, "Upload-Length": str(2 ** 63 - 1)})
    assert response.status_code in (201, 413), response.status_code


@pytest.mark.parametrize("value", ["+5", "05", " 5 "])
def test_odd_but_numeric_length_is_rejected_or_normalized(server, value: str) -> None:
    """[84] either 400, or accepted as 5 (consistently)."""
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url), [("Tus-Resumable", "1.0.0"), ("Upload-Length", value)])
        response = raw.read_response("POST")
    assert response.status in (201, 400), response
    if response.status == 201:
        head_response = head(response.header("Location") or "")
        assert head_response.headers["Upload-Length"] == "5"


def test_max_size_exceeded_is_413_and_nothing_created(start_server) -> None:
    server = start_server("--max-size", "1000")
    before = files_in(server.upload_dir)
    response = post(server, {**TUS, "Upload-Length": "1001"})
    assert_error(response, 413)
    assert "Location" not in response.headers
    assert files_in(server.upload_dir) == before
    response = post(server, {**TUS, "Upload-Length": "1000"})
    assert response.status_code == 201


def test_max_size_exceeded_with_body_is_413(start_server) -> None:
    server = start_server("--max-size", "10")
    before = files_in(server.upload_dir)
    response = post(server, {**TUS, "Upload-Length": "20", "Content-Type": OCTET}, b"x" * 20)
    assert_error(response, 413)
    assert "Location" not in response.headers
    assert files_in(server.upload_dir) == before


def test_upload_length_zero_is_complete_at_once(server) -> None:
    url = create(server.url, 0)
    response = head(url)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "0"
    assert data_file(server, url).read_bytes() == b""
    # nothing more may be appended; an empty PATCH at the final offset is fine
    response = patch(url, 0, b"")
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "0"
    response = patch(url, 0, b"x")
    assert response.status_code in (409, 413), response.status_code
    assert_tus(response)
    assert offset_of(url) == 0 and data_file(server, url).read_bytes() == b""


# ---- Upload-Metadata [19, 45, 46] --------------------------------------------------------------------


METADATA = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,nonlatin c8WCb8WEY2U=,empty "


@pytest.mark.parametrize("value", [
    METADATA,
    "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential",
    "nonlatin c8WCb8WEY2U=",
    "b YQ==,a b2M=",        # any order of keys is echoed as sent
])
def test_metadata_echoed_byte_for_byte(server, value: str) -> None:
    url = create(server.url, 3, metadata=value)
    response = head(url)
    assert response.status_code == 200
    assert response.headers["Upload-Metadata"] == value.strip() or response.headers["Upload-Metadata"] == value


def test_metadata_echoed_after_upload_completes(server) -> None:
    url = create(server.url, 3, metadata=METADATA.rstrip())
    assert patch(url, 0, b"abc").status_code == 204
    assert head(url).headers["Upload-Metadata"] == METADATA.rstrip()


@pytest.mark.parametrize("value", [
    "filename not-base64!",
    "filename aGVsbG8",          # missing padding
    "filename aGVsbG8=,filename d29ybGQ=",   # duplicate key
    "filename aGVsbG8= extra",   # three parts
    "filename aGVs bG8=",
])
def test_bad_metadata_is_400(server, value: str) -> None:
    before = files_in(server.upload_dir)
    response = post(server, {**TUS, "Upload-Length": "5", "Upload-Metadata": value})
    assert_error(response, 400)
    assert "Location" not in response.headers
    assert files_in(server.upload_dir) == before


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_metadata_header_is_no_metadata(server, value: str) -> None:
    """[46, INTEROP] tuspy always sends `Upload-Metadata:`, empty when there is none."""
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url),
                    [("Tus-Resumable", "1.0.0"), ("Upload-Length", "4"), ("Upload-Metadata", value)])
        response = raw.read_response("POST")
    assert response.status == 201, response
    url = response.header("Location") or ""
    result = head(url)
    assert result.status_code == 200
    assert result.headers.get("Upload-Metadata", "").strip() == ""
    assert patch(url, 0, b"data").status_code == 204


# ---- HEAD [14-20, 23] ---------------------------------------------------------------------------------


def test_head_new_upload(server) -> None:
    url = create(server.url, 100)
    response = head(url)
    assert response.status_code == 200
    assert_tus(response)
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "100"
    assert "no-store" in response.headers["Cache-Control"]
    assert "Upload-Defer-Length" not in response.headers
    assert "Upload-Metadata" not in response.headers
    assert response.content == b""


def test_head_complete_upload_keeps_offset(server) -> None:
    url = create(server.url, 5)
    assert patch(url, 0, b"hello").status_code == 204
    response = head(url)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "5"
    assert response.headers["Upload-Length"] == "5"
    assert "no-store" in response.headers["Cache-Control"]


def test_head_writes_no_body_bytes(server) -> None:
    """[23] a HEAD response has no body, whatever its Content-Length says."""
    url = create(server.url, 5, body=b"hel")
    with RawConnection.to(server) as raw:
        raw.request("HEAD", path_of(url), TUS)
        raw.request("HEAD", path_of(url), TUS)
        first = raw.read_response("HEAD")
        second = raw.read_response("HEAD")
        assert first.status == second.status == 200
        assert first.header("Upload-Offset") == second.header("Upload-Offset") == "3"
        assert raw.buffer == b""
        assert not raw.is_closed(0.3)
        assert raw.buffer == b"", raw.buffer


def test_head_unknown_upload_is_404_without_offset(server) -> None:
    response = head(server.url + "0" * 32)
    assert_error(response, (404, 410))
    assert "Upload-Offset" not in response.headers


def test_head_while_length_deferred(server) -> None:
    url = create(server.url, None)
    response = head(url)
    assert response.status_code == 200
    assert response.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response.headers
    assert response.headers["Upload-Offset"] == "0"
    assert "no-store" in response.headers["Cache-Control"]


# ---- PATCH [24-34] -----------------------------------------------------------------------------------


def test_patch_appends_and_reports_offset(server) -> None:
    url = create(server.url, 10)
    response = patch(url, 0, b"hello")
    assert response.status_code == 204
    assert_tus(response)
    assert response.headers["Upload-Offset"] == "5"
    assert response.content == b""
    response = patch(url, 5, b"world")
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "10"
    assert data_file(server, url).read_bytes() == b"helloworld"
    assert offset_of(url) == 10


def test_patch_empty_body_keeps_offset(server) -> None:
    url = create(server.url, 10, body=b"abc")
    response = patch(url, 3, b"")
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "3"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream",
                                          "application/offset+octet-streamx"])
def test_patch_wrong_content_type_is_415(server, content_type: str | None) -> None:
    url = create(server.url, 10, body=b"abc")
    headers = {**TUS, "Upload-Offset": "3"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = requests.patch(url, headers=headers, data=b"defg", timeout=TIMEOUT)
    assert_error(response, 415)
    assert offset_of(url) == 3
    assert data_file(server, url).read_bytes() == b"abc"


def test_patch_content_type_parameters_and_case_accepted(server) -> None:
    url = create(server.url, 4)
    response = patch(url, 0, b"abcd", **{"Content-Type": "Application/Offset+Octet-Stream; charset=x"})
    assert response.status_code in (204, 415)
    if response.status_code == 415:
        assert offset_of(url) == 0


@pytest.mark.parametrize("offset", [0, 2, 4, 100])
def test_patch_offset_mismatch_is_409_with_current_offset(server, offset: int) -> None:
    url = create(server.url, 10, body=b"abc")
    response = patch(url, offset, b"xyz")
    assert_error(response, 409)
    assert response.headers["Upload-Offset"] == "3"
    assert offset_of(url) == 3
    assert data_file(server, url).read_bytes() == b"abc"


@pytest.mark.parametrize("value", [None, "abc", "-1", "1.0", TOO_BIG, HUGE, ""])
def test_patch_malformed_offset_is_400(server, value: str | None) -> None:
    url = create(server.url, 10, body=b"abc")
    headers = [("Tus-Resumable", "1.0.0"), ("Content-Type", OCTET)]
    if value is not None:
        headers.append(("Upload-Offset", value))
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), headers, b"xyz")
        response = raw.read_response("PATCH")
    assert response.status == 400, response
    assert response.header("Tus-Resumable") == "1.0.0"
    assert offset_of(url) == 3
    assert data_file(server, url).read_bytes() == b"abc"


def test_patch_unknown_upload_is_404(server) -> None:
    before = files_in(server.upload_dir)
    response = patch(server.url + "ab" * 16, 0, b"abc")
    assert_error(response, (404, 410))
    assert "Upload-Offset" not in response.headers
    assert files_in(server.upload_dir) == before


def test_patch_past_length_is_413(server) -> None:
    url = create(server.url, 10, body=b"abc")
    response = patch(url, 3, b"x" * 20)
    assert_error(response, 413)
    offset = offset_of(url)
    assert offset == 3 or offset == 10, offset
    assert data_file(server, url).read_bytes() == (b"abc" + b"x" * 7)[:offset]


def test_chunked_patch_past_length_is_413(server) -> None:
    url = create(server.url, 10, body=b"abc")
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url),
                    [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "3"), ("Transfer-Encoding", "chunked")],
                    chunked(b"defg", b"hijk", b"lmno"))
        response = raw.read_response("PATCH")
    assert response.status == 413, response
    assert response.header("Tus-Resumable") == "1.0.0"
    offset = offset_of(url)
    assert offset in (3, 10), offset
    assert data_file(server, url).read_bytes() == b"abcdefghijklmno"[:offset]


def test_patch_exactly_to_length_completes(server) -> None:
    url = create(server.url, 6, body=b"abc")
    response = patch(url, 3, b"def")
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "6"
    assert data_file(server, url).read_bytes() == b"abcdef"


def test_patch_on_completed_upload(server) -> None:
    url = create(server.url, 5, body=b"hello")
    response = patch(url, 5, b"")
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"
    response = patch(url, 5, b"!")
    assert_error(response, (409, 413))
    response = patch(url, 0, b"HELLO")
    assert_error(response, (409, 413))
    assert offset_of(url) == 5
    assert data_file(server, url).read_bytes() == b"hello"


def test_patch_on_collection_url_is_not_500(server) -> None:
    response = patch(server.url, 0, b"abc")
    assert_error(response, (404, 405))
    response = head(server.url)
    assert response.status_code in (404, 405)
    response = requests.delete(server.url, headers=TUS, timeout=TIMEOUT)
    assert_error(response, (404, 405))


# ---- creation-with-upload [55, 56] -------------------------------------------------------------------


def test_creation_with_partial_body(server) -> None:
    response = post(server, {**TUS, "Upload-Length": "10", "Content-Type": OCTET}, b"hello")
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    url = response.headers["Location"]
    assert offset_of(url) == 5
    assert patch(url, 5, b"world").headers["Upload-Offset"] == "10"
    assert data_file(server, url).read_bytes() == b"helloworld"


def test_creation_with_whole_body_completes(server) -> None:
    response = post(server, {**TUS, "Upload-Length": "5", "Content-Type": OCTET, "Upload-Metadata": "a Yg=="},
                    b"hello")
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "5"
    result = head(response.headers["Location"])
    assert result.headers["Upload-Offset"] == result.headers["Upload-Length"] == "5"
    assert result.headers["Upload-Metadata"] == "a Yg=="


def test_creation_with_empty_body_reports_offset_0(server) -> None:
    response = post(server, {**TUS, "Upload-Length": "5", "Content-Type": OCTET}, b"")
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"


def test_creation_with_upload_and_deferred_length(server) -> None:
    response = post(server, {**TUS, "Upload-Defer-Length": "1", "Content-Type": OCTET}, b"abc")
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "3"
    url = response.headers["Location"]
    result = head(url)
    assert result.headers["Upload-Defer-Length"] == "1" and result.headers["Upload-Offset"] == "3"


def test_creation_with_chunked_body(server) -> None:
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url),
                    [*TUS.items(), ("Upload-Length", "8"), ("Content-Type", OCTET), ("Transfer-Encoding", "chunked")],
                    chunked(b"abcd", b"ef"))
        response = raw.read_response("POST")
    assert response.status == 201, response
    assert response.header("Upload-Offset") == "6"
    url = response.header("Location") or ""
    assert data_file(server, url).read_bytes() == b"abcdef"


def test_creation_with_upload_expect_100_continue(server) -> None:
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url),
                    [*TUS.items(), ("Upload-Length", "5"), ("Content-Type", OCTET), ("Content-Length", "5"),
                     ("Expect", "100-continue")])
        interim = raw.read_response("POST", allow_interim=True)
        assert interim.status == 100, interim
        raw.send(b"hello")
        response = raw.read_response("POST")
    assert response.status == 201, response
    assert response.header("Upload-Offset") == "5"
    assert data_file(server, response.header("Location") or "").read_bytes() == b"hello"


def test_creation_with_upload_expect_but_rejected_gets_final_status_first(start_server) -> None:
    server = start_server("--max-size", "100")
    before = files_in(server.upload_dir)
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url),
                    [*TUS.items(), ("Upload-Length", "500"), ("Content-Type", OCTET), ("Content-Length", "500"),
                     ("Expect", "100-continue")])
        response = raw.read_response("POST", allow_interim=True)
    assert response.status == 413, response
    assert files_in(server.upload_dir) == before


def test_creation_with_interrupted_body_keeps_bytes(server) -> None:
    """[56, 32] a POST body cut short still creates the upload with the bytes that arrived."""
    before = files_in(server.upload_dir)
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url),
                    [*TUS.items(), ("Upload-Length", "100"), ("Content-Type", OCTET), ("Content-Length", "100")],
                    b"")
        raw.send(b"x" * 40)
        time.sleep(0.3)
    created = [name for name in files_in(server.upload_dir) - before
               if not name.endswith(".info") and not name.startswith(".")]
    assert len(created) == 1, created
    url = server.url + created[0]

    def settled() -> bool:
        return offset_of(url) == 40

    deadline = time.monotonic() + 5
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert offset_of(url) == 40
    assert data_file(server, url).read_bytes() == b"x" * 40


# ---- creation-defer-length [50-54] -------------------------------------------------------------------


def test_deferred_length_settled_by_later_patch(server) -> None:
    url = create(server.url, None, metadata="k dg==")
    # PATCHes without Upload-Length are accepted while the length is unknown [54]
    response = patch(url, 0, b"hello ")
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "6"
    result = head(url)
    assert result.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in result.headers
    response = patch(url, 6, b"world", **{"Upload-Length": "11"})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "11"
    result = head(url)
    assert result.headers["Upload-Length"] == "11"
    assert "Upload-Defer-Length" not in result.headers
    assert result.headers["Upload-Metadata"] == "k dg=="
    assert data_file(server, url).read_bytes() == b"hello world"


def test_deferred_length_set_by_empty_patch_then_changed_is_400(server) -> None:
    url = create(server.url, None)
    assert patch(url, 0, b"abc").status_code == 204
    response = patch(url, 3, b"", **{"Upload-Length": "6"})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "3"
    assert head(url).headers["Upload-Length"] == "6"
    response = patch(url, 3, b"def", **{"Upload-Length": "7"})
    assert_error(response, 400)
    assert offset_of(url) == 3
    assert head(url).headers["Upload-Length"] == "6"
    # repeating the same length is harmless
    response = patch(url, 3, b"def", **{"Upload-Length": "6"})
    assert response.status_code in (204, 400)
    if response.status_code == 204:
        assert response.headers["Upload-Offset"] == "6"
        assert data_file(server, url).read_bytes() == b"abcdef"


def test_length_of_normal_upload_cannot_be_changed(server) -> None:
    url = create(server.url, 6)
    response = patch(url, 0, b"abc", **{"Upload-Length": "9"})
    assert_error(response, 400)
    assert offset_of(url) == 0
    assert head(url).headers["Upload-Length"] == "6"


def test_deferred_length_below_offset_is_rejected(server) -> None:
    url = create(server.url, None, body=b"0123456789")
    response = patch(url, 10, b"", **{"Upload-Length": "5"})
    assert_error(response, (400, 409, 413))
    result = head(url)
    assert result.headers["Upload-Offset"] == "10"
    assert result.headers.get("Upload-Defer-Length") == "1"


def test_deferred_length_over_max_size_is_413(start_server) -> None:
    server = start_server("--max-size", "100")
    url = create(server.url, None)
    response = patch(url, 0, b"abc", **{"Upload-Length": "101"})
    assert_error(response, 413)
    result = head(url)
    assert result.headers["Upload-Offset"] == "0"
    assert result.headers.get("Upload-Defer-Length") == "1"


def test_deferred_body_cannot_pass_max_size(start_server) -> None:
    server = start_server("--max-size", "10")
    url = create(server.url, None, body=b"abcdef")
    response = patch(url, 6, b"x" * 10)
    assert_error(response, 413)
    offset = offset_of(url)
    assert offset <= 10
    assert data_file(server, url).stat().st_size == offset


def test_deferred_length_final_patch_completes(server) -> None:
    url = create(server.url, None)
    response = patch(url, 0, b"abc", **{"Upload-Length": "3"})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "3"
    result = head(url)
    assert result.headers["Upload-Length"] == result.headers["Upload-Offset"] == "3"


# ---- termination [72-74] -----------------------------------------------------------------------------


def test_delete_then_gone(server) -> None:
    url = create(server.url, 10, body=b"abc", metadata="a Yg==")
    data, info = data_file(server, url), info_file(server, url)
    assert data.exists() and info.exists()
    response = requests.delete(url, headers=TUS, timeout=TIMEOUT)
    assert response.status_code == 204
    assert_tus(response)
    assert response.content == b""
    assert not data.exists() and not info.exists()
    response = head(url)
    assert response.status_code in (404, 410) and "Upload-Offset" not in response.headers
    assert_tus(response)
    assert_error(patch(url, 3, b"def"), (404, 410))
    assert_error(requests.delete(url, headers=TUS, timeout=TIMEOUT), (404, 410))
    assert not data.exists() and not info.exists()


def test_delete_completed_upload(server) -> None:
    url = create(server.url, 3, body=b"abc")
    assert requests.delete(url, headers=TUS, timeout=TIMEOUT).status_code == 204
    assert head(url).status_code in (404, 410)
    assert not data_file(server, url).exists() and not info_file(server, url).exists()


def test_delete_unknown_is_404(server) -> None:
    assert_error(requests.delete(server.url + "f" * 32, headers=TUS, timeout=TIMEOUT), (404, 410))


# ---- X-HTTP-Method-Override [13] ---------------------------------------------------------------------


def test_method_override_patch(server) -> None:
    url = create(server.url, 6)
    before = files_in(server.upload_dir)
    response = requests.post(url, data=b"abc", timeout=TIMEOUT, headers={
        **TUS, "X-HTTP-Method-Override": "PATCH", "Content-Type": OCTET, "Upload-Offset": "0"})
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == "3"
    assert "Location" not in response.headers
    assert files_in(server.upload_dir) == before          # no new upload was created
    assert data_file(server, url).read_bytes() == b"abc"


def test_method_override_delete(server) -> None:
    url = create(server.url, 6)
    response = requests.post(url, timeout=TIMEOUT, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert response.status_code == 204, response.text
    assert head(url).status_code in (404, 410)
    assert not data_file(server, url).exists() and not info_file(server, url).exists()


def test_method_override_head(server) -> None:
    url = create(server.url, 6, body=b"ab")
    with RawConnection.to(server, timeout=5) as raw:
        raw.request("POST", path_of(url), [*TUS.items(), ("X-HTTP-Method-Override", "HEAD")])
        # on the wire this is a POST: the response must be framed as one (a Content-Length needs its body)
        response = raw.read_response("POST")
    assert response.status == 200, response
    assert response.header("Upload-Offset") == "2"


def test_method_override_lowercase(server) -> None:
    url = create(server.url, 6)
    response = requests.post(url, data=b"abc", timeout=TIMEOUT, headers={
        **TUS, "X-HTTP-Method-Override": "patch", "Content-Type": OCTET, "Upload-Offset": "0"})
    assert response.status_code == 204
    assert offset_of(url) == 3


def test_method_override_still_checks_version(server) -> None:
    url = create(server.url, 6)
    response = requests.post(url, timeout=TIMEOUT, headers={"X-HTTP-Method-Override": "DELETE"})
    assert_error(response, 412)
    assert offset_of(url) == 0


# ---- Location [48] -----------------------------------------------------------------------------------


def raw_create(server, headers: list[tuple[str, str]], path: str | None = None):  # type: ignore[no-untyped-def]
    with RawConnection.to(server) as raw:
        raw.request("POST", path or path_of(server.url), [*TUS.items(), ("Upload-Length", "3"), *headers])
        return raw.read_response("POST")


def test_location_built_from_host_header(server) -> None:
    response = raw_create(server, [("Host", "uploads.example.com:8080")])
    assert response.status == 201, response
    location = response.header("Location") or ""
    assert location.startswith("http://uploads.example.com:8080/files/"), location
    ident = location.rsplit("/", 1)[1]
    assert UPLOAD_ID.match(ident)
    assert offset_of(server.url + ident) == 0


def test_location_with_host_without_port(server) -> None:
    response = raw_create(server, [("Host", "example.org")])
    assert response.status == 201, response
    assert (response.header("Location") or "").startswith("http://example.org/files/")


@pytest.mark.parametrize("bad_host", ["evil.com/../x", "a b", "example.com\\x", "x.org:80:90"])
def test_location_invalid_host_is_rejected(server, bad_host: str) -> None:
    """A Host that cannot be part of a URL must never end up in Location (header/URL injection)."""
    before = files_in(server.upload_dir)
    response = raw_create(server, [("Host", bad_host)])
    assert response.status in (201, 400), response
    if response.status == 400:
        assert files_in(server.upload_dir) == before
    else:
        assert bad_host not in (response.header("Location") or "")


def test_forwarded_headers_ignored_without_behind_proxy(server) -> None:
    response = raw_create(server, [("Host", "internal:1080"), ("X-Forwarded-Host", "proxy.example"),
                                   ("X-Forwarded-Proto", "https"), ("Forwarded", "host=fwd.example;proto=https")])
    assert response.status == 201, response
    assert (response.header("Location") or "").startswith("http://internal:1080/files/"), response


def test_x_forwarded_with_behind_proxy(start_server) -> None:
    server = start_server("--behind-proxy")
    response = raw_create(server, [("Host", "internal:1080"), ("X-Forwarded-Host", "proxy.example"),
                                   ("X-Forwarded-Proto", "https")])
    assert response.status == 201, response
    location = response.header("Location") or ""
    assert location.startswith("https://proxy.example/files/"), location
    assert UPLOAD_ID.match(location.rsplit("/", 1)[1])


def test_forwarded_header_with_behind_proxy(start_server) -> None:
    server = start_server("--behind-proxy")
    forwarded = 'for=1.2.3.4;host="fwd.example:8443";proto=https'
    response = raw_create(server, [("Host", "internal:1080"), ("Forwarded", forwarded)])
    assert response.status == 201, response
    assert (response.header("Location") or "").startswith("https://fwd.example:8443/files/"), response


def test_behind_proxy_without_forwarded_headers_uses_host(start_server) -> None:
    server = start_server("--behind-proxy")
    response = raw_create(server, [("Host", "plain.example:81")])
    assert (response.header("Location") or "").startswith("http://plain.example:81/files/"), response


def test_public_url_wins(start_server) -> None:
    public = "https://uploads.example.com:8443/files/"
    server = start_server("--public-url", public)
    assert server.url.startswith("http://127.0.0.1:")    # the log line names the bound port
    response = raw_create(server, [("Host", "internal:1080"), ("X-Forwarded-Host", "proxy.example")])
    assert response.status == 201, response
    location = response.header("Location") or ""
    assert location.startswith(public), location
    ident = location[len(public):]
    assert UPLOAD_ID.match(ident)
    assert offset_of(server.url + ident) == 0


def test_custom_base_path(start_server) -> None:
    server = start_server("--base-path", "/api/upload/resumable_upload/")
    assert server.url.endswith("/api/upload/resumable_upload/")
    url = create(server.url, 5, body=b"ab")
    assert path_of(url).startswith("/api/upload/resumable_upload/")
    assert patch(url, 2, b"cde").headers["Upload-Offset"] == "5"
    assert offset_of(url) == 5
    root = server.url.split("/api/")[0]
    ident = upload_id(url)
    response = requests.post(root + "/files/", headers={**TUS, "Upload-Length": "5"}, timeout=TIMEOUT)
    assert response.status_code == 404
    assert_tus(response)
    assert head(root + "/files/" + ident).status_code == 404
    assert head(root + "/api/upload/" + ident).status_code == 404
    response = requests.options(server.url, timeout=TIMEOUT)
    assert response.status_code == 204 and response.headers["Tus-Extension"] == EXTENSIONS


def test_query_string_ignored(server) -> None:
    url = create(server.url, 3)
    assert patch(url + "?token=abc", 0, b"abc").status_code == 204
    assert head(url + "?x=1").headers["Upload-Offset"] == "3"


# ---- CORS [40] ---------------------------------------------------------------------------------------


ALLOW_HEADERS = ["Tus-Resumable", "Upload-Length", "Upload-Metadata", "Upload-Offset", "Upload-Defer-Length",
                 "Upload-Concat", "Upload-Checksum", "Content-Type", "X-HTTP-Method-Override", "X-Requested-With"]
EXPOSE_HEADERS = ["Location", "Upload-Offset", "Upload-Length", "Tus-Version", "Tus-Resumable", "Tus-Max-Size",
                  "Tus-Extension", "Upload-Metadata", "Upload-Defer-Length", "Upload-Concat", "Upload-Expires"]


def header_tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}


def test_cors_preflight(server) -> None:
    url = create(server.url, 3)
    for target in (server.url, url):
        response = requests.options(target, timeout=TIMEOUT, headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type"})
        assert response.status_code in (200, 204), response.status_code
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")
        methods = header_tokens(response.headers.get("Access-Control-Allow-Methods"))
        assert {"post", "head", "patch", "delete", "options"} <= methods, methods
        allowed = header_tokens(response.headers.get("Access-Control-Allow-Headers"))
        assert {h.lower() for h in ALLOW_HEADERS} <= allowed, allowed


def test_cors_actual_responses_expose_headers(server) -> None:
    origin = {"Origin": "https://app.example"}
    response = post(server, {**TUS, **origin, "Upload-Length": "3"})
    assert response.status_code == 201
    url = response.headers["Location"]
    responses = [response, head(url, **origin), patch(url, 0, b"abc", **origin), patch(url, 1, b"x", **origin),
                 requests.head(url, headers=origin, timeout=TIMEOUT)]
    for response in responses:
        assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example"), response.headers
        exposed = header_tokens(response.headers.get("Access-Control-Expose-Headers"))
        assert {h.lower() for h in EXPOSE_HEADERS} <= exposed, (response.status_code, exposed)
        if response.headers["Access-Control-Allow-Origin"] != "*":
            assert "origin" in header_tokens(response.headers.get("Vary"))


def test_cors_origin_restricted(start_server) -> None:
    server = start_server("--cors-origin", "https://good.example,https://also.example")
    good = requests.options(server.url, timeout=TIMEOUT, headers={
        "Origin": "https://good.example", "Access-Control-Request-Method": "POST"})
    assert good.headers.get("Access-Control-Allow-Origin") == "https://good.example"
    also = post(server, {**TUS, "Upload-Length": "1", "Origin": "https://also.example"})
    assert also.status_code == 201
    assert also.headers.get("Access-Control-Allow-Origin") == "https://also.example"
    bad = requests.options(server.url, timeout=TIMEOUT, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert bad.status_code in (200, 204, 403)
    assert bad.headers.get("Access-Control-Allow-Origin") in (None, "")
    assert "Access-Control-Allow-Methods" not in bad.headers
    bad_post = post(server, {**TUS, "Upload-Length": "1", "Origin": "https://evil.example"})
    assert bad_post.headers.get("Access-Control-Allow-Origin") in (None, "")
    assert "Access-Control-Expose-Headers" not in bad_post.headers


def test_cors_none(start_server) -> None:
    server = start_server("--cors-origin", "none")
    response = requests.options(server.url, timeout=TIMEOUT, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in response.headers
    response = post(server, {**TUS, "Upload-Length": "1", "Origin": "https://app.example"})
    assert response.status_code == 201
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_headers_on_errors(server) -> None:
    response = head(server.url + "0" * 32, Origin="https://app.example")
    assert response.status_code == 404
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example")
    response = requests.post(server.url, headers={"Origin": "https://app.example", "Upload-Length": "1"},
                             timeout=TIMEOUT)
    assert response.status_code == 412
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example")


# ---- --dir-layout --------------------------------------------------------------------------------------


def utc_day_dirs() -> set[str]:
    now = time.time()
    return {dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y/%m/%d") for t in (now - 5, now, now + 5)}


def test_dir_layout_places_files_in_date_dir(start_server) -> None:
    server = start_server("--dir-layout", "{year}/{month}/{day}")
    days = utc_day_dirs()
    url = create(server.url, 10, metadata="name eC50eHQ=", body=b"hello")
    assert url[len(server.url):] == upload_id(url) and UPLOAD_ID.match(upload_id(url))
    ident = upload_id(url)
    found = files_in(server.upload_dir)
    assert not (server.upload_dir / ident).exists()
    data_paths = [p for p in found if p.endswith("/" + ident)]
    assert any(p == f"{day}/{ident}" for p in data_paths for day in days), found
    day = next(d for d in days if f"{d}/{ident}" in found)
    data = server.upload_dir / day / ident
    info = server.upload_dir / day / (ident + ".info")
    assert data.read_bytes() == b"hello"
    assert info.is_file()
    link = server.upload_dir / ".ids" / ident[:2] / ident
    assert link.is_symlink()
    assert link.resolve() == info.resolve()

    assert patch(url, 5, b"wor").headers["Upload-Offset"] == "8"
    server.restart()
    response = head(url)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "8"
    assert response.headers["Upload-Length"] == "10"
    assert response.headers["Upload-Metadata"] == "name eC50eHQ="
    assert patch(url, 8, b"ld").headers["Upload-Offset"] == "10"
    assert data.read_bytes() == b"helloworld"

    assert requests.delete(url, headers=TUS, timeout=TIMEOUT).status_code == 204
    assert not data.exists() and not info.exists() and not os.path.lexists(link)
    assert head(url).status_code == 404


def test_dir_layout_unknown_id_404(start_server) -> None:
    server = start_server("--dir-layout", "{year}/{month}/{day}")
    create(server.url, 3)
    for path in ["0" * 32, ".ids", ".ids/00", "%2eids"]:
        response = head(server.url + path)
        assert response.status_code == 404, (path, response.status_code)


# ---- paths, ids, methods [85] ------------------------------------------------------------------------


def request_raw(server, method: str, target: str, headers=(), body: bytes = b""):  # type: ignore[no-untyped-def]
    with RawConnection.to(server) as raw:
        raw.request(method, target, [*TUS.items(), *headers], body)
        return raw.read_response(method)


BAD_IDS = [
    "../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd", "%2e%2e", "..", ".",
    "abc%00def", "%00", "ab\\..\\cd", "{upper}", "{id}/", "{id}/extra", "{id}.info", "{id}%2finfo",
    "{id}%00", "{short}", "{long}", "{dots}", "{encoded}", "%252e%252e%252f",
]


@pytest.mark.parametrize("template", BAD_IDS)
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE"])
def test_bad_upload_paths_are_404(server, template: str, method: str) -> None:
    url = create(server.url, 10, body=b"abc")
    ident = upload_id(url)
    tmp_path = server.upload_dir.parent
    outside = tmp_path / ("e" * 32)
    outside.write_bytes(b"secret")
    (tmp_path / ("e" * 32 + ".info")).write_text('{"ID": "%s", "Size": 10, "Offset": 6}' % ("e" * 32))
    before_outside = sorted(os.listdir(tmp_path))
    target = template.format(upper=ident.upper(), id=ident, short=ident[:31], long=ident + "0",
                             dots="../" + "e" * 32, encoded="%2e%2e%2f" + "e" * 32)
    base = path_of(server.url)
    headers = [("Content-Type", OCTET), ("Upload-Offset", "3")] if method == "PATCH" else []
    response = request_raw(server, method, base + target, headers, b"def" if method == "PATCH" else b"")
    assert response.status in (400, 404), (target, response)
    assert response.header("Tus-Resumable") == "1.0.0"
    assert response.header("Upload-Offset") is None
    assert sorted(os.listdir(tmp_path)) == before_outside
    assert outside.read_bytes() == b"secret"
    assert offset_of(url) == 3
    assert (server.upload_dir / ident).read_bytes() == b"abc"


@pytest.mark.parametrize("target", ["/", "/other", "/filesX/", "/files/../", "/files/%2e%2e/",
                                    "/files//", "//files/", "*"])
def test_post_outside_collection_creates_nothing(server, target: str) -> None:
    tmp_path = server.upload_dir.parent
    before = files_in(tmp_path)
    response = request_raw(server, "POST", target, [("Upload-Length", "3")])
    assert response.status in (400, 404, 405), (target, response)
    assert response.header("Location") is None
    assert files_in(tmp_path) == before


@pytest.mark.parametrize("target", ["/", "/other/" + "a" * 32, "/files/a/b", "/files/" + "a" * 32 + "/x"])
def test_unknown_paths_are_404(server, target: str) -> None:
    response = request_raw(server, "HEAD", target)
    assert response.status == 404, (target, response)
    assert response.header("Tus-Resumable") == "1.0.0"


@pytest.mark.parametrize("method", ["PUT", "FOO", "TRACE", "CONNECT"])
def test_unknown_method_is_405(server, method: str) -> None:
    url = create(server.url, 3)
    target = path_of(url)
    response = request_raw(server, method, target)
    assert response.status == 405, response
    assert response.header("Tus-Resumable") == "1.0.0"
    assert offset_of(url) == 0


def test_unknown_method_on_collection_is_405(server) -> None:
    before = files_in(server.upload_dir)
    response = request_raw(server, "PUT", path_of(server.url), [("Upload-Length", "3")], b"abc")
    assert response.status == 405, response
    assert files_in(server.upload_dir) == before


def test_unknown_override_is_rejected(server) -> None:
    url = create(server.url, 3)
    response = request_raw(server, "POST", path_of(url), [("X-HTTP-Method-Override", "FOO")])
    assert response.status in (400, 405), response
    assert offset_of(url) == 0


def test_header_names_case_insensitive(server) -> None:
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url), [("tus-resumable", "1.0.0"), ("UPLOAD-LENGTH", "4"),
                                                    ("upload-metadata", "k dg==")])
        response = raw.read_response("POST")
        assert response.status == 201, response
        url = response.header("location") or ""
        raw.request("PATCH", path_of(url), [("TUS-RESUMABLE", "1.0.0"), ("content-type", OCTET),
                                            ("upload-offset", "0")], b"abcd")
        response = raw.read_response("PATCH")
        assert response.status == 204 and response.header("upload-offset") == "4"


def test_duplicate_tus_headers_rejected(server) -> None:
    url = create(server.url, 10)
    response = request_raw(server, "PATCH", path_of(url),
                           [("Content-Type", OCTET), ("Upload-Offset", "0"), ("Upload-Offset", "5")], b"abc")
    assert response.status in (400, 409), response
    assert offset_of(url) == 0
    before = files_in(server.upload_dir)
    response = request_raw(server, "POST", path_of(server.url), [("Upload-Length", "3"), ("Upload-Length", "9")])
    assert response.status == 400, response
    assert files_in(server.upload_dir) == before


def test_every_status_carries_tus_resumable(server) -> None:
    url = create(server.url, 3)
    responses = [
        requests.options(server.url, timeout=TIMEOUT),
        post(server, {**TUS, "Upload-Length": "3"}),
        head(url),
        patch(url, 0, b"a"),
        patch(url, 0, b"a"),                                          # 409
        patch(url, 1, b"a", **{"Content-Type": "text/plain"}),       # 415
        patch(url, 1, b"abcd"),                                       # 413
        requests.patch(url, headers={"Upload-Offset": "1"}, timeout=TIMEOUT),   # 412
        head(server.url + "1" * 32),                                  # 404
        requests.delete(url, headers=TUS, timeout=TIMEOUT),           # 204
    ]
    statuses = [r.status_code for r in responses]
    assert statuses == [204, 201, 200, 204, 409, 415, 413, 412, 404, 204], statuses
    for response in responses:
        assert_tus(response)


# ---- property tests ----------------------------------------------------------------------------------

KEYS = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=","),
               min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.dictionaries(KEYS, st.binary(max_size=40), min_size=1, max_size=5))
def test_property_metadata_round_trip(server, pairs: dict[str, bytes]) -> None:
    value = ",".join(f"{key} {base64.b64encode(data).decode()}" if data else key for key, data in pairs.items())
    url = create(server.url, 1, metadata=value)
    assert head(url).headers["Upload-Metadata"] == value


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=0, max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=6),
       deferred=st.booleans())
def test_property_any_split_gives_identical_content(server, payload: bytes, cuts: list[int], deferred: bool) -> None:
    url = create(server.url, None if deferred else len(payload))
    bounds = sorted({0, len(payload), *[c for c in cuts if c <= len(payload)]})
    for start, end in zip(bounds, bounds[1:]):
        extra = {"Upload-Length": str(len(payload))} if deferred and end == len(payload) else {}
        response = patch(url, start, payload[start:end], **extra)
        assert response.status_code == 204, (response.status_code, response.text)
        assert response.headers["Upload-Offset"] == str(end)
    if deferred and len(payload) == 0:
        assert patch(url, 0, b"", **{"Upload-Length": "0"}).status_code == 204
    result = head(url)
    assert result.headers["Upload-Offset"] == result.headers["Upload-Length"] == str(len(payload))
    assert data_file(server, url).read_bytes() == payload
