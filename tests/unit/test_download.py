"""tusfast.core.download: GET of a finished upload (ranges, validators, safe Content-Type/Disposition)."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tusfast.core.download import (FALLBACK_TYPE, INLINE_TYPES, DownloadPlan, content_disposition,
                                   content_headers, plan_download)
from tusfast.core.errors import ErrorKind, TusError
from tusfast.core.model import UploadInfo
from tusfast.core.protocol import Download, http_date

UID = "0123456789abcdef0123456789abcdef"
P1, P2 = "1" * 32, "2" * 32
CREATED = 1_700_000_000.0
UPDATED = 1_700_000_500.0
ETAG = f'"{UID}-100"'


def upload(length: int | None = 100, offset: int | None = None, **kwargs) -> UploadInfo:
    kwargs.setdefault("created_at", CREATED)
    kwargs.setdefault("updated_at", UPDATED)
    return UploadInfo(UID, length, length if offset is None and length is not None else (offset or 0), **kwargs)


def get(range_: str | None = None, if_range: str | None = None, if_none_match: str | None = None) -> Download:
    return Download(UID, range_, if_range, if_none_match)


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in headers if key.lower() == name.lower()]
    assert len(values) <= 1, f"{name} appears {len(values)} times"
    return values[0] if values else None


# ---- not finished: 409 -----------------------------------------------------------------------

@pytest.mark.parametrize(("info", "offset_header"), [
    (upload(100, 0), "0"),
    (upload(100, 99), "99"),
    (upload(None, 0), "0"),                          # deferred length: never complete
    (upload(None, 500), "500"),
    (upload(100, 40, concat="partial"), "40"),
    (upload(None, 0, concat="final;/files/a /files/b", partials=(P1, P2)), None),   # a final has no offset yet
    (upload(30, 0, concat="final;/files/a /files/b", partials=(P1, P2)), None),
])
def test_unfinished_upload_is_409(info: UploadInfo, offset_header: str | None) -> None:
    with pytest.raises(TusError) as raised:
        plan_download(get(), info)
    assert raised.value.kind is ErrorKind.NOT_FINISHED
    assert raised.value.status == 409
    assert header(raised.value.headers, "Upload-Offset") == offset_header


# ---- 200 -------------------------------------------------------------------------------------

def test_full_download() -> None:
    plan = plan_download(get(), upload(100, metadata={"filename": b"a.png", "filetype": b"image/png"}))
    assert (plan.status, plan.start, plan.end, plan.count) == (200, 0, 100, 100)
    headers = plan.headers
    assert header(headers, "ETag") == ETAG
    assert re.fullmatch(r'"[^"]+"', header(headers, "ETag") or "")          # a strong validator
    assert header(headers, "Last-Modified") == http_date(UPDATED)
    assert header(headers, "Accept-Ranges") == "bytes"
    assert header(headers, "Content-Type") == "image/png"
    assert header(headers, "Content-Disposition") == "inline; filename=\"a.png\"; filename*=UTF-8''a.png"
    assert header(headers, "X-Content-Type-Options") == "nosniff"
    assert "sandbox" in (header(headers, "Content-Security-Policy") or "")
    assert header(headers, "Content-Range") is None
    assert header(headers, "Cache-Control") is not None


def test_last_modified_falls_back_to_created_at() -> None:
    plan = plan_download(get(), upload(5, updated_at=0.0))
    assert header(plan.headers, "Last-Modified") == http_date(CREATED)


def test_etag_differs_between_uploads_and_lengths() -> None:
    tags = {header(plan_download(get(), info).headers, "ETag")
            for info in [upload(5), upload(6), UploadInfo(P1, 5, 5)]}
    assert len(tags) == 3


@pytest.mark.parametrize("info", [
    upload(0),                                                                       # item 44: empty file
    upload(60, concat="partial"),
    upload(60, concat="final;/files/a /files/b", partials=(P1, P2)),                 # a joined final
])
def test_finished_uploads_download(info: UploadInfo) -> None:
    plan = plan_download(get(), info)
    assert (plan.status, plan.start, plan.end) == (200, 0, info.length)


# ---- 206 / 416 -------------------------------------------------------------------------------

@pytest.mark.parametrize(("range_", "start", "end", "content_range"), [
    ("bytes=0-0", 0, 1, "bytes 0-0/100"),
    ("bytes=0-99", 0, 100, "bytes 0-99/100"),
    ("bytes=10-19", 10, 20, "bytes 10-19/100"),
    ("bytes=90-", 90, 100, "bytes 90-99/100"),
    ("bytes=-10", 90, 100, "bytes 90-99/100"),
    ("bytes=-500", 0, 100, "bytes 0-99/100"),
    ("bytes=50-5000", 50, 100, "bytes 50-99/100"),
])
def test_range_is_206(range_: str, start: int, end: int, content_range: str) -> None:
    plan = plan_download(get(range_), upload(100))
    assert (plan.status, plan.start, plan.end, plan.count) == (206, start, end, end - start)
    assert header(plan.headers, "Content-Range") == content_range
    assert header(plan.headers, "ETag") == ETAG
    assert header(plan.headers, "X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize(("range_", "size"), [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100),
                                              ("bytes=0-", 0)])
def test_unsatisfiable_range_is_416(range_: str, size: int) -> None:
    with pytest.raises(TusError) as raised:
        plan_download(get(range_), upload(size))
    assert raised.value.kind is ErrorKind.RANGE_NOT_SATISFIABLE
    assert raised.value.status == 416
    assert header(raised.value.headers, "Content-Range") == f"bytes */{size}"


@pytest.mark.parametrize("range_", ["bytes=0-1,5-6", "items=0-1", "nonsense", ""])
def test_unsupported_range_sends_everything(range_: str) -> None:
    plan = plan_download(get(range_), upload(100))
    assert (plan.status, plan.start, plan.end) == (200, 0, 100)
    assert header(plan.headers, "Content-Range") is None


# ---- If-Range / If-None-Match ----------------------------------------------------------------

@pytest.mark.parametrize(("if_range", "status"), [
    (ETAG, 206),                                  # the client's copy is current: the range applies
    (f" {ETAG} ", 206),
    (http_date(UPDATED), 206),                    # a date validator works too
    (f'"{UID}-99"', 200),                         # stale: the whole current content
    ('"something-else"', 200),
    (f"W/{ETAG}", 200),                           # If-Range needs a strong match (RFC 9110 13.1.5)
    (http_date(UPDATED - 60), 200),
    ("", 200),
])
def test_if_range(if_range: str, status: int) -> None:
    plan = plan_download(get("bytes=10-19", if_range=if_range), upload(100))
    assert plan.status == status
    if status == 206:
        assert (plan.start, plan.end) == (10, 20)
        assert header(plan.headers, "Content-Range") == "bytes 10-19/100"
    else:
        assert (plan.start, plan.end) == (0, 100)
        assert header(plan.headers, "Content-Range") is None


def test_stale_if_range_with_unsatisfiable_range_sends_everything() -> None:
    plan = plan_download(get("bytes=500-", if_range='"old"'), upload(100))
    assert (plan.status, plan.start, plan.end) == (200, 0, 100)


@pytest.mark.parametrize("if_none_match", [ETAG, f"W/{ETAG}", "*", f'"a", {ETAG}', f'"a",{ETAG} , "b"'])
def test_if_none_match_is_304(if_none_match: str) -> None:
    plan = plan_download(get(if_none_match=if_none_match), upload(100))
    assert plan.status == 304
    assert plan.count == 0
    assert header(plan.headers, "ETag") == ETAG
    assert header(plan.headers, "Content-Range") is None


def test_if_none_match_wins_over_range() -> None:
    assert plan_download(get("bytes=0-0", if_none_match=ETAG), upload(100)).status == 304
    # ...even when the range could not be satisfied
    assert plan_download(get("bytes=900-", if_none_match=ETAG), upload(100)).status == 304


@pytest.mark.parametrize("if_none_match", ['"other"', f'"{UID}-99"', "", f"{UID}-100"])
def test_if_none_match_not_matching_is_200(if_none_match: str) -> None:
    plan = plan_download(get(if_none_match=if_none_match), upload(100))
    assert (plan.status, plan.start, plan.end) == (200, 0, 100)


def test_download_plan_count() -> None:
    assert DownloadPlan(206, 10, 20).count == 10


# ---- Content-Type / Content-Disposition ------------------------------------------------------

def typed(media_type: bytes | None, filename: bytes | None = None, key: str = "filetype") -> UploadInfo:
    metadata = {}
    if media_type is not None:
        metadata[key] = media_type
    if filename is not None:
        metadata["filename"] = filename
    return upload(5, metadata=metadata)


@pytest.mark.parametrize(("media_type", "content_type", "disposition"), [
    (b"image/png", "image/png", "inline"),
    (b"IMAGE/PNG", "image/png", "inline"),
    (b"image/png; charset=x", "image/png", "inline"),
    (b"image/jpeg", "image/jpeg", "inline"),
    (b"text/plain", "text/plain", "inline"),
    (b"video/mp4", "video/mp4", "inline"),
    (b"application/pdf", "application/pdf", "attachment"),     # valid but not on the allow-list
    (b"text/html", "text/html", "attachment"),                 # never rendered as a page of this origin
    (b"TEXT/HTML; charset=utf-8", "text/html", "attachment"),
    (b"application/xhtml+xml", "application/xhtml+xml", "attachment"),
    (b"image/svg+xml", "image/svg+xml", "attachment"),         # SVG runs scripts
    (b"text/javascript", "text/javascript", "attachment"),
    (b"text/html\r\nX: y", FALLBACK_TYPE, "attachment"),       # invalid: header injection attempt
    (b"text/html\nX: y", FALLBACK_TYPE, "attachment"),
    (b"a b/c", FALLBACK_TYPE, "attachment"),
    (b"text/ html", FALLBACK_TYPE, "attachment"),
    (b"image/png\x00", FALLBACK_TYPE, "attachment"),
    (b"image", FALLBACK_TYPE, "attachment"),
    (b"/png", FALLBACK_TYPE, "attachment"),
    (b"image/", FALLBACK_TYPE, "attachment"),
    (b"image/png/x", FALLBACK_TYPE, "attachment"),
    ("image/p\u00f1g".encode(), FALLBACK_TYPE, "attachment"),
    (b"\xff\xfe", FALLBACK_TYPE, "attachment"),
    (b"", FALLBACK_TYPE, "attachment"),
    (None, FALLBACK_TYPE, "attachment"),
])
def test_content_type_and_disposition(media_type: bytes | None, content_type: str, disposition: str) -> None:
    headers = content_headers(typed(media_type))
    assert header(headers, "Content-Type") == content_type
    assert header(headers, "Content-Disposition") == disposition


def test_inline_allow_list_is_safe() -> None:
    assert "image/png" in INLINE_TYPES and "text/plain" in INLINE_TYPES
    for dangerous in ["text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml",
                      "text/javascript", "application/javascript", "application/pdf", "text/css"]:
        assert dangerous not in INLINE_TYPES


def test_type_keys_filetype_before_type_and_filename_before_name() -> None:
    info = upload(5, metadata={"type": b"text/html", "filetype": b"image/png", "name": b"n.html",
                               "filename": b"f.png"})
    headers = content_headers(info)
    assert header(headers, "Content-Type") == "image/png"
    assert header(headers, "Content-Disposition") == "inline; filename=\"f.png\"; filename*=UTF-8''f.png"
    # Uppy sends `type` and `name` alone
    headers = content_headers(upload(5, metadata={"type": b"image/gif", "name": b"x.gif"}))
    assert header(headers, "Content-Type") == "image/gif"
    assert header(headers, "Content-Disposition") == "inline; filename=\"x.gif\"; filename*=UTF-8''x.gif"


@pytest.mark.parametrize(("filename", "expected"), [
    ("a.txt", "attachment; filename=\"a.txt\"; filename*=UTF-8''a.txt"),
    ("słońce.txt", "attachment; filename=\"s_o_ce.txt\"; filename*=UTF-8''s%C5%82o%C5%84ce.txt"),
    ("my file.pdf", "attachment; filename=\"my file.pdf\"; filename*=UTF-8''my%20file.pdf"),
    ('a"b.txt', "attachment; filename=\"a_b.txt\"; filename*=UTF-8''a%22b.txt"),
    ("a\\b.txt", "attachment; filename=\"a_b.txt\"; filename*=UTF-8''a%5Cb.txt"),
    ("../../etc/passwd", "attachment; filename=\".._.._etc_passwd\"; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd"),
    ("a\r\nSet-Cookie: x=1", "attachment; filename=\"aSet-Cookie: x=1\"; filename*=UTF-8''aSet-Cookie%3A%20x%3D1"),
    ("a;b=c.txt", "attachment; filename=\"a;b=c.txt\"; filename*=UTF-8''a%3Bb%3Dc.txt"),
    ("tab\there", "attachment; filename=\"tab_here\"; filename*=UTF-8''tab%09here"),
    ("  padded.txt  ", "attachment; filename=\"padded.txt\"; filename*=UTF-8''padded.txt"),
    ("", "attachment"),
    ("\r\n", "attachment"),
    ("   ", "attachment"),
])
def test_content_disposition(filename: str, expected: str) -> None:
    assert content_disposition("attachment", filename) == expected


def test_content_disposition_from_utf8_metadata() -> None:
    # tus-js-client sends `filename c8WCb8WEY2UudHh0` ("słońce.txt")
    headers = content_headers(typed(b"text/plain", "słońce.txt".encode()))
    assert header(headers, "Content-Disposition") == \
        "inline; filename=\"s_o_ce.txt\"; filename*=UTF-8''s%C5%82o%C5%84ce.txt"


QUOTED = re.compile(r'filename="((?:[^"\\]|\\.)*)"')


def check_disposition(value: str, disposition: str, filename: str) -> None:
    assert "\r" not in value and "\n" not in value
    assert all("\x20" <= char <= "\x7e" for char in value), repr(value)     # plain visible ASCII
    cleaned = filename.replace("\r", "").replace("\n", "").strip()
    if not cleaned:
        assert value == disposition
        return
    assert value.startswith(disposition + "; filename=\"")
    # exactly three parameters-worth of structure: the quoted fallback cannot close early
    match = QUOTED.match(value, len(disposition) + 2)
    assert match is not None, value
    fallback = match.group(1)
    assert "\\" not in fallback and '"' not in fallback and "/" not in fallback
    rest = value[match.end():]
    assert rest.startswith("; filename*=UTF-8''")
    encoded = rest[len("; filename*=UTF-8''"):]
    assert re.fullmatch(r"[A-Za-z0-9%._~-]*", encoded), encoded               # RFC 8187 attr-chars only
    assert unquote(encoded, errors="strict") == cleaned                        # the exact name survives
    assert len(fallback) == len(cleaned)


@given(st.text(max_size=80), st.sampled_from(["inline", "attachment"]))
@example('a"; filename="evil.html', "inline")
@example("x\r\n\r\n<script>", "attachment")
@example("\\\"", "attachment")
@example("\u2028\u0085name", "attachment")
def test_content_disposition_never_breaks_out(filename: str, disposition: str) -> None:
    check_disposition(content_disposition(disposition, filename), disposition, filename)


@given(st.binary(max_size=60), st.binary(max_size=40))
def test_content_headers_from_any_metadata_are_safe(filename: bytes, media_type: bytes) -> None:
    headers = content_headers(typed(media_type, filename))
    content_type = header(headers, "Content-Type") or ""
    assert re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", content_type), content_type
    disposition_value = header(headers, "Content-Disposition") or ""
    disposition = "inline" if content_type in INLINE_TYPES else "attachment"
    assert disposition_value.split(";")[0] == disposition
    text = filename.decode("utf-8", "replace") if filename else ""
    check_disposition(disposition_value, disposition, text)
