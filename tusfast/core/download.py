"""GET of a finished upload: ranges, validators, and safe Content-Type / Content-Disposition."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote

from .errors import ErrorKind, Headers, TusError
from .headers import parse_range
from .model import UploadInfo
from .protocol import Download, http_date

# Types a browser may render in place; anything else downloads (an HTML or SVG upload must never
# run as a page of this origin).
INLINE_TYPES = frozenset({
    "text/plain", "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif",
    "audio/wav", "audio/wave", "audio/x-wav", "audio/webm", "audio/ogg", "audio/mpeg", "audio/flac",
    "video/mp4", "video/webm", "video/ogg", "application/ogg",
})
FALLBACK_TYPE = "application/octet-stream"
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_UNSAFE_FILENAME = re.compile(r'[^\x20-\x7e]|["\\/]')
SAFETY_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", "default-src 'none'; sandbox")]


@dataclass(frozen=True)
class DownloadPlan:
    status: int                 # 200, 206 or 304
    start: int = 0
    end: int = 0                # exclusive
    headers: Headers = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.end - self.start


def plan_download(intent: Download, info: UploadInfo) -> DownloadPlan:
    if not info.is_complete or info.length is None:
        offset = [] if info.is_final else [("Upload-Offset", str(info.offset))]
        raise TusError(ErrorKind.NOT_FINISHED, headers=offset)
    size = info.length
    etag = f'"{info.id}-{size}"'
    validators = [("ETag", etag), ("Last-Modified", http_date(info.updated_at or info.created_at)),
                  ("Cache-Control", "private, max-age=0, must-revalidate")]
    if intent.if_none_match is not None and _matches(intent.if_none_match, etag):
        return DownloadPlan(304, headers=validators)
    headers = [*validators, ("Accept-Ranges", "bytes"), *content_headers(info), *SAFETY_HEADERS]
    byte_range = None
    if intent.range is not None and _if_range_holds(intent.if_range, validators):
        byte_range = parse_range(intent.range, size)
    if byte_range is None:
        return DownloadPlan(200, 0, size, headers)
    start, end = byte_range
    return DownloadPlan(206, start, end, [*headers, ("Content-Range", f"bytes {start}-{end - 1}/{size}")])


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _if_range_holds(if_range: str | None, validators: Headers) -> bool:
    """If-Range: apply the range only while the client's copy is current (RFC 9110 13.1.5)."""
    return if_range is None or if_range.strip() in (value for _, value in validators[:2])


def content_headers(info: UploadInfo) -> Headers:
    media_type = _metadata_text(info, "filetype", "type").split(";")[0].strip().lower()
    if not _MEDIA_TYPE.fullmatch(media_type):
        media_type = FALLBACK_TYPE
    disposition = "inline" if media_type in INLINE_TYPES else "attachment"
    filename = _metadata_text(info, "filename", "name")
    return [("Content-Type", media_type), ("Content-Disposition", content_disposition(disposition, filename))]


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact UTF-8 name; nothing can break out of the header."""
    filename = filename.replace("\r", "").replace("\n", "").strip()
    if not filename:
        return disposition
    fallback = _UNSAFE_FILENAME.sub("_", filename)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _metadata_text(info: UploadInfo, *keys: str) -> str:
    for key in keys:
        value = info.metadata.get(key)
        if value:
            return value.decode("utf-8", "replace")
    return ""
