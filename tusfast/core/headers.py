"""Parsing of tus request header values. Pure functions: str in, value out, TusError on bad input."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Mapping

from .errors import ErrorKind, TusError

TUS_VERSION = "1.0.0"
OFFSET_STREAM = "application/offset+octet-stream"
MAX_INT = 2**63 - 1

_DIGITS = re.compile(r"[0-9]+")
# Keys: no spaces or commas (the format's separators), printable ASCII so they are safe to echo.
_METADATA_KEY = re.compile(r"[!-+\--~]+")

# Headers whose meaning would be ambiguous if sent twice (request smuggling, conflicting offsets).
SINGLE_VALUED = frozenset({
    "tus-resumable", "upload-offset", "upload-length", "upload-defer-length", "upload-metadata",
    "upload-concat", "upload-checksum", "x-http-method-override", "content-type", "host",
    "x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix",
})


def collect_headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased name -> value. A repeated tus header is an error; other repeats are joined."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        if name in headers:
            if name in SINGLE_VALUED:
                raise TusError(ErrorKind.DUPLICATE_HEADER, f"header {name} was sent more than once")
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value
    return headers


def parse_uint(value: str, kind: ErrorKind) -> int:
    """A non-negative decimal integer that fits in 63 bits; anything else (sign, space, hex) is `kind`."""
    if not _DIGITS.fullmatch(value):
        raise TusError(kind)
    significant = value.lstrip("0")
    if len(significant) > 19:      # checked before int(): a header may hold thousands of digits
        raise TusError(kind)
    number = int(significant or "0")
    if number > MAX_INT:
        raise TusError(kind)
    return number


def parse_offset(headers: Mapping[str, str]) -> int:
    value = headers.get("upload-offset")
    if value is None:
        raise TusError(ErrorKind.MISSING_OFFSET)
    return parse_uint(value.strip(), ErrorKind.INVALID_OFFSET)


def parse_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("upload-length")
    return None if value is None else parse_uint(value.strip(), ErrorKind.INVALID_LENGTH)


def parse_defer_length(headers: Mapping[str, str]) -> bool:
    value = headers.get("upload-defer-length")
    if value is None:
        return False
    if value.strip() != "1":
        raise TusError(ErrorKind.INVALID_DEFER_LENGTH)
    return True


def is_supported_version(headers: Mapping[str, str]) -> bool:
    return headers.get("tus-resumable", "").strip() == TUS_VERSION


def media_type(headers: Mapping[str, str]) -> str:
    """The media type of Content-Type without parameters, lower-cased ('' when absent)."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def parse_metadata(value: str | None) -> dict[str, bytes]:
    """`key base64,key2 base64,flag` -> {key: decoded bytes}. Empty or blank means no metadata."""
    if value is None or not value.strip():
        return {}
    metadata: dict[str, bytes] = {}
    for pair in value.split(","):
        key, decoded = _parse_metadata_pair(pair.strip())
        if key in metadata:
            raise TusError(ErrorKind.INVALID_METADATA, f"Upload-Metadata key {key!r} appears twice")
        metadata[key] = decoded
    return metadata


def _parse_metadata_pair(pair: str) -> tuple[str, bytes]:
    key, _, encoded = pair.partition(" ")
    if not _METADATA_KEY.fullmatch(key):
        raise TusError(ErrorKind.INVALID_METADATA,
                       "Upload-Metadata keys must be non-empty printable ASCII without spaces or commas")
    try:
        return key, base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise TusError(ErrorKind.INVALID_METADATA,
                       f"Upload-Metadata value of {key!r} is not valid base64") from None


CHECKSUM_DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64, "crc32": 4}


def parse_checksum(value: str) -> tuple[str, bytes]:
    """`sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=` -> ("sha1", digest). 400 for unknown or malformed."""
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUM_DIGEST_SIZES:
        raise TusError(ErrorKind.UNSUPPORTED_CHECKSUM, headers=[("Tus-Checksum-Algorithm", ",".join(CHECKSUM_DIGEST_SIZES))])
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise TusError(ErrorKind.INVALID_CHECKSUM) from None
    if len(digest) != CHECKSUM_DIGEST_SIZES[algorithm]:
        raise TusError(ErrorKind.INVALID_CHECKSUM, f"a {algorithm} digest has {CHECKSUM_DIGEST_SIZES[algorithm]} bytes")
    return algorithm, digest


def parse_concat(value: str) -> tuple[str, ...] | None:
    """`partial` -> None; `final;<url> <url>` -> the URLs in order. Anything else is 400."""
    value = value.strip()
    if value == "partial":
        return None
    kind, sep, urls = value.partition(";")
    parts = tuple(urls.split(" ")) if sep else ()
    if kind != "final" or not parts or any(not url for url in parts):
        raise TusError(ErrorKind.INVALID_CONCAT)
    return parts


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range -> (start, end exclusive). None means "send everything" (multiple or
    unparsable ranges may be ignored, RFC 9110 14.2); an unsatisfiable range is 416."""
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    start, stop = _range_bound(first), _range_bound(last)
    if not dash or (start is None and stop is None) or (first and start is None) or (last and stop is None):
        return None
    if start is None:                   # suffix: the last N bytes
        count = stop or 0
        if count == 0 or size == 0:
            raise TusError(ErrorKind.RANGE_NOT_SATISFIABLE, headers=[("Content-Range", f"bytes */{size}")])
        return max(0, size - count), size
    end = min(stop + 1, size) if stop is not None else size
    if start >= size or end <= start:
        raise TusError(ErrorKind.RANGE_NOT_SATISFIABLE, headers=[("Content-Range", f"bytes */{size}")])
    return start, end


def _range_bound(text: str) -> int | None:
    """ASCII digits only (str.isdigit also takes '²'); absurdly long numbers saturate, not crash."""
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    return MAX_INT if len(text.lstrip("0")) > 19 else int(text)


def format_metadata(metadata: Mapping[str, bytes]) -> str:
    """The inverse of parse_metadata, for uploads whose original header was not kept."""
    return ",".join(f"{key} {base64.b64encode(value).decode()}" if value else key
                    for key, value in metadata.items())
