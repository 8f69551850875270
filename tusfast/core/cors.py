"""CORS for browser tus clients (Uppy, tus-js-client): preflights and exposed headers."""

from __future__ import annotations

from typing import Mapping

from .errors import Headers

ALLOW_METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS, GET"
ALLOW_HEADERS = ("Authorization, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, "
                 "Content-Type, Upload-Length, Upload-Offset, Tus-Resumable, Upload-Metadata, "
                 "Upload-Defer-Length, Upload-Concat, Upload-Checksum")
# Without Location and Upload-Offset exposed, browser clients cannot resume.
EXPOSE_HEADERS = ("Location, Upload-Offset, Upload-Length, Tus-Version, Tus-Resumable, Tus-Max-Size, "
                  "Tus-Extension, Tus-Checksum-Algorithm, Upload-Metadata, Upload-Defer-Length, "
                  "Upload-Concat, Upload-Expires, ETag, Last-Modified, Content-Range, Content-Disposition")
PREFLIGHT_MAX_AGE = "86400"


def cors_headers(request_headers: Mapping[str, str], allowed_origins: tuple[str, ...],
                 method: str) -> Headers:
    """Headers to add to a response. `allowed_origins` is ("*",) for any, () for CORS off."""
    origin = request_headers.get("origin")
    if not origin or not _is_allowed(origin, allowed_origins):
        return [("Vary", "Origin")] if allowed_origins and allowed_origins != ("*",) else []
    headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    if method == "OPTIONS" and "access-control-request-method" in request_headers:
        headers += [("Access-Control-Allow-Methods", ALLOW_METHODS),
                    ("Access-Control-Allow-Headers", ALLOW_HEADERS),
                    ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)]
    else:
        headers.append(("Access-Control-Expose-Headers", EXPOSE_HEADERS))
    return headers


def _is_allowed(origin: str, allowed_origins: tuple[str, ...]) -> bool:
    return "*" in allowed_origins or origin in allowed_origins
