"""The tus 1.0.0 rules, sans-IO.

Rule 1: every tus decision lives in this package: which request means what, which header is required,
        which status answers what. The server layer knows nothing about tus; storage knows nothing
        about HTTP.
Rule 2: this package never awaits and never imports asyncio, os, sockets or h11.

A request goes through three steps, each a pure function of its inputs:
    intent = interpret(head, settings)         # what the client asks for, or TusError
    plan = plan_append(intent, info, settings) # for PATCH: may it write, how many bytes at most
    reply = head_reply(info) / append_reply(info) / created_reply(...) / error_reply(err)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from email.utils import formatdate
from enum import Enum
from functools import lru_cache
from typing import Callable, Mapping, Sequence, Union

from .checksum import ALGORITHMS, Checksum
from .errors import ErrorKind, Headers, TusError
from .headers import (OFFSET_STREAM, TUS_VERSION, collect_headers, is_supported_version, media_type,
                      parse_checksum, parse_concat, parse_defer_length, parse_length, parse_metadata,
                      parse_offset)
from .model import UploadInfo, is_valid_upload_id

# In the order OPTIONS lists them.
ALL_EXTENSIONS = ("creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum",
                  "checksum-trailer", "termination", "concatenation", "concatenation-unfinished")
# Extensions that only make sense on top of another one.
REQUIRES = {"creation-with-upload": "creation", "creation-defer-length": "creation",
            "concatenation-unfinished": "concatenation", "checksum-trailer": "checksum"}
DOWNLOAD = "download"   # not a tus extension, but switched like one
# Expiration needs a period, which has no sensible default at this level.
DEFAULT_EXTENSIONS = tuple(name for name in ALL_EXTENSIONS if name != "expiration")


@dataclass(frozen=True)
class ProtocolSettings:
    base_path: str = "/files/"
    max_size: int | None = None
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    public_url: str | None = None     # absolute collection URL as clients see it
    behind_proxy: bool = False        # trust X-Forwarded-* / Forwarded for Location
    expire_after: float | None = None  # seconds an unfinished upload may sit without a write
    download: bool = True

    def __post_init__(self) -> None:
        if not self.base_path.startswith("/") or not self.base_path.endswith("/"):
            raise ValueError("base path must start and end with '/'")
        for extension, needed in REQUIRES.items():
            if extension in self.extensions and needed not in self.extensions:
                raise ValueError(f"{extension} needs {needed}")
        unknown = set(self.extensions) - set(ALL_EXTENSIONS)
        if unknown:
            raise ValueError(f"unknown tus extensions: {', '.join(sorted(unknown))}")
        positive = self.expire_after is not None and 0 < self.expire_after < float("inf")
        if self.expire_after is not None and not positive:
            raise ValueError("expire_after must be positive and finite, or None")
        if ("expiration" in self.extensions) != positive:
            raise ValueError("the expiration extension goes with a positive, finite expire_after")

    def enabled(self, extension: str) -> bool:
        return extension in self.extensions or (extension == DOWNLOAD and self.download)


class Target(Enum):
    COLLECTION = "collection"   # the creation URL, base_path itself
    UPLOAD = "upload"           # base_path + <id>


@dataclass(frozen=True)
class RequestHead:
    """The parts of an HTTP request head that tus cares about."""
    method: str                     # after X-HTTP-Method-Override
    path: str                       # without query string
    headers: Mapping[str, str]      # lower-case names
    scheme: str = "http"
    body_size: int | None = 0       # Content-Length; None for a chunked body of unknown size

    @classmethod
    def parse(cls, method: str, target: str, pairs: list[tuple[str, str]], scheme: str = "http",
              body_size: int | None = 0) -> "RequestHead":
        headers = collect_headers(pairs)
        override = headers.get("x-http-method-override")
        if override:
            method = override.strip().upper()
        return cls(method, _path_of(target), headers, scheme, body_size)

    @property
    def has_body(self) -> bool:
        return self.body_size != 0


def _path_of(target: str) -> str:
    if target.startswith(("http://", "https://")):   # absolute-form, as proxies may send
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return target.split("?", 1)[0]


# ---- intents: what a request asks for -------------------------------------------------------

@dataclass(frozen=True)
class Options:
    pass


@dataclass(frozen=True)
class Create:
    length: int | None
    metadata: dict[str, bytes] = field(default_factory=dict)
    metadata_header: str | None = None
    body_size: int | None = 0
    checksum: tuple[str, bytes] | None = None
    trailer_checksum: bool = False      # the body may end with an Upload-Checksum trailer
    concat: str | None = None           # Upload-Concat as received
    partials: tuple[str, ...] = ()      # for a final upload: partial ids in order


@dataclass(frozen=True)
class GetOffset:
    upload_id: str


@dataclass(frozen=True)
class Append:
    upload_id: str
    offset: int
    length: int | None = None       # Upload-Length sent to settle a deferred length
    body_size: int | None = None
    checksum: tuple[str, bytes] | None = None
    trailer_checksum: bool = False


@dataclass(frozen=True)
class Terminate:
    upload_id: str


@dataclass(frozen=True)
class Download:
    upload_id: str
    range: str | None = None
    if_range: str | None = None
    if_none_match: str | None = None


Intent = Union[Options, Create, GetOffset, Append, Terminate, Download]
_Parser = Callable[[RequestHead, ProtocolSettings, str], Intent]


def _options(head: RequestHead, settings: ProtocolSettings, upload_id: str) -> Intent:
    return Options()


def _create(head: RequestHead, settings: ProtocolSettings, upload_id: str) -> Intent:
    _check_extension_headers(head, settings)
    concat = head.headers.get("upload-concat")
    urls = parse_concat(concat) if concat is not None else None
    if urls is not None:
        return _create_final(head, settings, concat or "", urls)
    length = parse_length(head.headers)
    deferred = parse_defer_length(head.headers)
    if length is not None and deferred:
        raise TusError(ErrorKind.AMBIGUOUS_LENGTH)
    if length is None and not deferred:
        raise TusError(ErrorKind.MISSING_LENGTH)
    if deferred:
        _require(settings, "creation-defer-length")
    if length is not None:
        check_max_size(length, settings)
    raw_metadata = head.headers.get("upload-metadata")
    metadata = parse_metadata(raw_metadata)
    if head.has_body:
        _require(settings, "creation-with-upload")
        _require_offset_stream(head)
        if head.body_size is not None:
            if length is not None and head.body_size > length:
                raise TusError(ErrorKind.SIZE_EXCEEDED)
            check_max_size(head.body_size, settings)
    return Create(length, metadata, raw_metadata if metadata else None, head.body_size,
                  *_checksum_of(head, settings), concat=concat.strip() if concat else None)


def _create_final(head: RequestHead, settings: ProtocolSettings, concat: str, urls: tuple[str, ...]) -> Intent:
    if "upload-length" in head.headers or "upload-defer-length" in head.headers:
        raise TusError(ErrorKind.FINAL_WITH_LENGTH)
    if head.has_body:
        raise TusError(ErrorKind.FINAL_WITH_BODY)
    raw_metadata = head.headers.get("upload-metadata")
    metadata = parse_metadata(raw_metadata)
    partials = tuple(partial_id_from_url(url, head, settings) for url in urls)
    return Create(None, metadata, raw_metadata if metadata else None, 0, concat=concat, partials=partials)


def _get_offset(head: RequestHead, settings: ProtocolSettings, upload_id: str) -> Intent:
    return GetOffset(upload_id)


def _append(head: RequestHead, settings: ProtocolSettings, upload_id: str) -> Intent:
    _require_offset_stream(head)
    _check_extension_headers(head, settings)
    offset = parse_offset(head.headers)
    length = parse_length(head.headers)
    if length is not None:
        check_max_size(length, settings)
    return Append(upload_id, offset, length, head.body_size, *_checksum_of(head, settings))


def _checksum_of(head: RequestHead, settings: ProtocolSettings) -> tuple[tuple[str, bytes] | None, bool]:
    """The announced checksum, and whether a chunked body declared one as a trailer. Only then is
    the body staged: an undeclared trailer is still checked, but an interrupted chunked upload
    must keep its bytes (checklist item 32) rather than wait for a checksum that may never come."""
    value = head.headers.get("upload-checksum")
    checksum = parse_checksum(value) if value is not None else None
    declared = "upload-checksum" in [name.strip().lower() for name in head.headers.get("trailer", "").split(",")]
    if declared and not settings.enabled("checksum-trailer"):
        raise TusError(ErrorKind.EXTENSION_DISABLED, "an Upload-Checksum trailer needs the checksum-trailer "
                                                     "extension, which is not enabled on this server")
    trailer = checksum is None and declared and head.body_size is None
    return checksum, trailer


def _download(head: RequestHead, settings: ProtocolSettings, upload_id: str) -> Intent:
    headers = head.headers
    return Download(upload_id, headers.get("range"), headers.get("if-range"), headers.get("if-none-match"))


def _terminate(head: RequestHead, settings: ProtocolSettings, upload_id: str) -> Intent:
    return Terminate(upload_id)


# ---- the tables ----------------------------------------------------------------------------

ROUTES: dict[tuple[Target, str], _Parser] = {
    (Target.COLLECTION, "OPTIONS"): _options,
    (Target.UPLOAD, "OPTIONS"): _options,
    (Target.COLLECTION, "POST"): _create,
    (Target.UPLOAD, "HEAD"): _get_offset,
    (Target.UPLOAD, "PATCH"): _append,
    (Target.UPLOAD, "DELETE"): _terminate,
    (Target.UPLOAD, "GET"): _download,
}

# A route exists only while the extension that defines it is enabled.
ROUTE_EXTENSION: dict[tuple[Target, str], str] = {
    (Target.COLLECTION, "POST"): "creation",
    (Target.UPLOAD, "DELETE"): "termination",
    (Target.UPLOAD, "GET"): DOWNLOAD,
}

# Methods a client may use without Tus-Resumable: CORS preflights, and downloads (browsers follow links).
VERSION_EXEMPT = frozenset({"OPTIONS", "GET"})

# Headers that belong to an extension: with the extension off they are rejected, never half-served.
EXTENSION_HEADERS: dict[str, str] = {
    "upload-concat": "concatenation",
    "upload-checksum": "checksum",
}


def interpret(head: RequestHead, settings: ProtocolSettings) -> Intent:
    """Map a request head to an intent, or raise TusError (404, 405, 412, 400, 413, 415)."""
    target, upload_id = resolve_target(head.path, settings)
    route = (target, head.method)
    parser = ROUTES.get(route)
    if parser is None or not _route_enabled(route, settings):
        raise TusError(ErrorKind.METHOD_NOT_ALLOWED, headers=[("Allow", allowed_methods(target, settings))])
    if head.method not in VERSION_EXEMPT and not is_supported_version(head.headers):
        raise TusError(ErrorKind.UNSUPPORTED_VERSION, headers=[("Tus-Version", TUS_VERSION)])
    return parser(head, settings, upload_id)


def resolve_target(path: str, settings: ProtocolSettings) -> tuple[Target, str]:
    base = settings.base_path
    if path == base or path == base[:-1]:
        return Target.COLLECTION, ""
    if path.startswith(base):
        upload_id = path[len(base):]
        if is_valid_upload_id(upload_id):
            return Target.UPLOAD, upload_id
    raise TusError(ErrorKind.NOT_FOUND)


def allowed_methods(target: Target, settings: ProtocolSettings) -> str:
    return ", ".join(method for route in ROUTES
                     if route[0] is target and _route_enabled(route, settings) for method in route[1:])


def _route_enabled(route: tuple[Target, str], settings: ProtocolSettings) -> bool:
    needed = ROUTE_EXTENSION.get(route)
    return needed is None or settings.enabled(needed)


def check_max_size(length: int, settings: ProtocolSettings) -> None:
    if settings.max_size is not None and length > settings.max_size:
        raise TusError(ErrorKind.MAX_SIZE_EXCEEDED, headers=[("Tus-Max-Size", str(settings.max_size))])


def _require(settings: ProtocolSettings, extension: str) -> None:
    if not settings.enabled(extension):
        raise TusError(ErrorKind.EXTENSION_DISABLED, f"the {extension} extension is not enabled")


def _require_offset_stream(head: RequestHead) -> None:
    if media_type(head.headers) != OFFSET_STREAM:
        raise TusError(ErrorKind.UNSUPPORTED_MEDIA_TYPE)


def _check_extension_headers(head: RequestHead, settings: ProtocolSettings) -> None:
    for header, extension in EXTENSION_HEADERS.items():
        if header in head.headers and not settings.enabled(extension):
            raise TusError(ErrorKind.EXTENSION_DISABLED, f"{header} needs the {extension} extension, "
                                                         "which is not enabled on this server")


# ---- decisions that need the stored upload -------------------------------------------------

@dataclass(frozen=True)
class AppendPlan:
    limit: int | None               # most bytes this body may add; None = unbounded
    limit_error: ErrorKind          # raised when the body goes past the limit
    new_length: int | None = None   # a deferred length being settled by this request


def plan_append(intent: Append, info: UploadInfo, settings: ProtocolSettings) -> AppendPlan:
    if info.is_final:
        raise TusError(ErrorKind.FINAL_IS_READ_ONLY)
    offset_header = [("Upload-Offset", str(info.offset))]
    if intent.offset != info.offset:
        raise TusError(ErrorKind.MISMATCHED_OFFSET, headers=offset_header)
    new_length = _settle_length(intent, info)
    length = info.length if new_length is None else new_length
    if length is not None:
        plan = AppendPlan(length - info.offset, ErrorKind.SIZE_EXCEEDED, new_length)
    elif settings.max_size is not None:
        plan = AppendPlan(settings.max_size - info.offset, ErrorKind.MAX_SIZE_EXCEEDED)
    else:
        plan = AppendPlan(None, ErrorKind.SIZE_EXCEEDED)
    if plan.limit is not None and intent.body_size is not None and intent.body_size > plan.limit:
        raise TusError(plan.limit_error, headers=offset_header)
    return plan


def _settle_length(intent: Append, info: UploadInfo) -> int | None:
    if intent.length is None:
        return None
    if info.length is not None:
        if intent.length != info.length:
            raise TusError(ErrorKind.LENGTH_ALREADY_SET)
        return None
    if intent.length < info.offset:
        raise TusError(ErrorKind.LENGTH_BELOW_OFFSET)
    return intent.length


# ---- replies --------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""


def options_reply(settings: ProtocolSettings) -> Reply:
    headers = [("Tus-Version", TUS_VERSION)]
    if settings.extensions:
        headers.append(("Tus-Extension", ",".join(settings.extensions)))
    if settings.max_size is not None:
        headers.append(("Tus-Max-Size", str(settings.max_size)))
    if settings.enabled("checksum"):
        headers.append(("Tus-Checksum-Algorithm", ",".join(ALGORITHMS)))
    return Reply(204, headers)


def head_reply(info: UploadInfo, settings: ProtocolSettings) -> Reply:
    headers = [("Cache-Control", "no-store")]
    if not info.is_final or info.is_complete:   # a final's offset is undefined until it is joined
        headers.append(("Upload-Offset", str(info.offset)))
    if info.length is not None:
        headers.append(("Upload-Length", str(info.length)))
    elif not info.is_final:
        headers.append(("Upload-Defer-Length", "1"))
    metadata = info.echo_metadata()
    if metadata is not None:
        headers.append(("Upload-Metadata", metadata))
    if info.concat is not None:
        headers.append(("Upload-Concat", info.concat))
    headers += _expires_header(info, settings)
    if info.length is not None:     # what a GET of the upload would return (checklist item 23)
        headers.append(("Content-Length", str(info.length)))
    return Reply(200, headers)


def created_reply(info: UploadInfo, location: str, settings: ProtocolSettings) -> Reply:
    headers = [("Location", location)]
    if not info.is_final or info.is_complete:
        headers.append(("Upload-Offset", str(info.offset)))
    if info.concat is not None:
        headers.append(("Upload-Concat", info.concat))
    return Reply(201, headers + _expires_header(info, settings))


def append_reply(info: UploadInfo, settings: ProtocolSettings) -> Reply:
    return Reply(204, [("Upload-Offset", str(info.offset)), *_expires_header(info, settings)])


def new_checksum(expected: tuple[str, bytes] | None) -> Checksum | None:
    return None if expected is None else Checksum(*expected)


def terminated_reply() -> Reply:
    return Reply(204)


def error_reply(error: TusError) -> Reply:
    return Reply(error.status, [*error.headers, ("Content-Type", "text/plain; charset=utf-8")],
                 error.message.encode() + b"\n")


# ---- URLs -----------------------------------------------------------------------------------

_HOST = re.compile(r"[A-Za-z0-9.\-_]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def collection_url(head: RequestHead, settings: ProtocolSettings) -> str:
    """The absolute creation URL as the client sees it (relative when the client sent no Host)."""
    if settings.public_url:
        return settings.public_url
    scheme, host, prefix = head.scheme, head.headers.get("host", "").strip(), ""
    if settings.behind_proxy:
        scheme, host, prefix = _forwarded(head, scheme, host)
    if not host:
        return prefix + settings.base_path
    if not _HOST.fullmatch(host):
        raise TusError(ErrorKind.INVALID_HOST)
    return f"{scheme}://{host}{prefix}{settings.base_path}"


def upload_url(head: RequestHead, settings: ProtocolSettings, upload_id: str) -> str:
    return collection_url(head, settings) + upload_id


def _forwarded(head: RequestHead, scheme: str, host: str) -> tuple[str, str, str]:
    headers = head.headers
    forwarded = _parse_forwarded(headers.get("forwarded", ""))
    proto = (headers.get("x-forwarded-proto") or forwarded.get("proto", "")).split(",")[0].strip().lower()
    if proto in ("http", "https"):
        scheme = proto
    forwarded_host = (headers.get("x-forwarded-host") or forwarded.get("host", "")).split(",")[0].strip()
    prefix = headers.get("x-forwarded-prefix", "").strip().rstrip("/")
    if prefix and not re.fullmatch(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+", prefix):
        prefix = ""
    return scheme, forwarded_host or host, prefix


def _parse_forwarded(value: str) -> dict[str, str]:
    """The first element of an RFC 7239 Forwarded header, e.g. `for=1.2.3.4;proto=https;host=x`."""
    first = value.split(",", 1)[0]
    pairs = (part.split("=", 1) for part in first.split(";") if "=" in part)
    return {key.strip().lower(): val.strip().strip('"') for key, val in pairs}


# ---- concatenation ----------------------------------------------------------------------------

def partial_id_from_url(url: str, head: RequestHead, settings: ProtocolSettings) -> str:
    """Map a partial's URL, absolute (our own scheme, host, port and base path) or relative, to its id."""
    if url.startswith(("http://", "https://")):
        own = collection_url(head, settings)
        rest = url[len(own):] if url.startswith(own) else None
    else:
        path = _path_of(url)
        prefix = _forwarded(head, head.scheme, "")[2] if settings.behind_proxy else ""
        bases = [prefix + settings.base_path, settings.base_path]
        if settings.public_url:     # the path clients see may differ from ours
            bases.append(_path_of(settings.public_url))
        rest = next((path[len(base):] for base in bases if path.startswith(base)), None)
    if rest is None or not is_valid_upload_id(rest):
        raise TusError(ErrorKind.INVALID_PARTIAL, f"not a partial upload of this server: {url[:200]}")
    return rest


def plan_final(partials: Sequence[UploadInfo], settings: ProtocolSettings) -> int | None:
    """Check the partials of a new final upload; returns its length when it can be known now."""
    for partial in partials:
        if not partial.is_partial:
            raise TusError(ErrorKind.INVALID_PARTIAL, f"upload {partial.id} is not a partial upload")
        if not partial.is_complete and not settings.enabled("concatenation-unfinished"):
            raise TusError(ErrorKind.UNFINISHED_PARTIAL, f"partial upload {partial.id} is not finished")
    lengths = [partial.length for partial in partials]
    if None in lengths:
        return None
    total = sum(length or 0 for length in lengths)
    check_max_size(total, settings)
    return total


# ---- expiration -------------------------------------------------------------------------------

def expires_at(info: UploadInfo, settings: ProtocolSettings) -> float | None:
    """When an unfinished upload expires (sliding from its last write); finished ones never do."""
    if not settings.expire_after or info.is_complete:
        return None
    return (info.updated_at or info.created_at) + settings.expire_after


def check_not_expired(info: UploadInfo, settings: ProtocolSettings, now: float) -> None:
    deadline = expires_at(info, settings)
    if deadline is not None and deadline <= now:
        raise TusError(ErrorKind.GONE)


def http_date(timestamp: float) -> str:
    """IMF-fixdate, e.g. `Wed, 25 Jun 2014 16:00:00 GMT`."""
    return _http_date_of_second(math.floor(timestamp))


@lru_cache(maxsize=256)
def _http_date_of_second(second: int) -> str:
    # Cached: every PATCH answers with an Upload-Expires, and the date has whole seconds only.
    return formatdate(second, usegmt=True)


def _expires_header(info: UploadInfo, settings: ProtocolSettings) -> Headers:
    deadline = expires_at(info, settings)
    return [] if deadline is None else [("Upload-Expires", http_date(deadline))]
