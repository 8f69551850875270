"""Every way a tus request can fail, with the HTTP status it maps to.

One exception type carries an ErrorKind from the table below; the request handler turns it into
a response in exactly one place. Raise it anywhere in the core; never build error responses by hand.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    # value: (HTTP status, short reason sent to the client)
    UNSUPPORTED_VERSION = (412, "missing or unsupported Tus-Resumable header (this server speaks 1.0.0)")
    UNSUPPORTED_MEDIA_TYPE = (415, "Content-Type must be application/offset+octet-stream")
    INVALID_OFFSET = (400, "Upload-Offset must be a non-negative integer")
    MISSING_OFFSET = (400, "missing Upload-Offset header")
    MISMATCHED_OFFSET = (409, "Upload-Offset does not match the upload's current offset")
    INVALID_LENGTH = (400, "Upload-Length must be a non-negative integer")
    MISSING_LENGTH = (400, "either Upload-Length or Upload-Defer-Length: 1 is required")
    AMBIGUOUS_LENGTH = (400, "Upload-Length and Upload-Defer-Length must not both be sent")
    INVALID_DEFER_LENGTH = (400, "Upload-Defer-Length must be 1")
    LENGTH_ALREADY_SET = (400, "Upload-Length differs from the length this upload already has")
    LENGTH_BELOW_OFFSET = (400, "Upload-Length is smaller than the bytes already uploaded")
    MAX_SIZE_EXCEEDED = (413, "upload length exceeds the maximum size of this server")
    SIZE_EXCEEDED = (413, "body goes past the upload's Upload-Length")
    INVALID_METADATA = (400, "Upload-Metadata is malformed")
    DUPLICATE_HEADER = (400, "a tus header was sent more than once")
    INVALID_HOST = (400, "invalid Host or X-Forwarded-Host header")
    UNSUPPORTED_CHECKSUM = (400, "unsupported checksum algorithm")
    INVALID_CHECKSUM = (400, "Upload-Checksum must be '<algorithm> <base64 digest>'")
    CHECKSUM_MISMATCH = (460, "checksum mismatch: the chunk was discarded")
    INVALID_CONCAT = (400, "Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    INVALID_PARTIAL = (400, "a partial upload in Upload-Concat is unknown, foreign or not partial")
    UNFINISHED_PARTIAL = (400, "a partial upload in Upload-Concat is not finished")
    FINAL_WITH_LENGTH = (400, "a final upload takes its length from its partials; omit Upload-Length")
    FINAL_WITH_BODY = (400, "a final upload cannot carry data")
    FINAL_IS_READ_ONLY = (403, "a final upload cannot be patched")
    GONE = (410, "upload expired")
    NOT_FINISHED = (409, "upload is not finished; nothing to download yet")
    RANGE_NOT_SATISFIABLE = (416, "range not satisfiable")
    EXTENSION_DISABLED = (400, "this tus extension is not enabled on this server")
    NOT_FOUND = (404, "upload not found")
    METHOD_NOT_ALLOWED = (405, "method not allowed on this resource")
    LOCKED = (423, "upload is busy with another request; retry shortly")
    LOCK_UNAVAILABLE = (503, "the lock service (Redis) is unreachable, so the upload cannot be locked; retry shortly")
    INTERRUPTED = (400, "upload was interrupted by a newer request for the same upload")
    MALFORMED_BODY = (400, "malformed request body (chunked encoding)")
    BODY_TIMEOUT = (408, "request body stalled; the bytes received so far were kept")
    CLIENT_GONE = (400, "client went away mid-body; the bytes received so far were kept")
    STORAGE_FULL = (507, "not enough storage space")
    STORAGE_UNAVAILABLE = (503, "storage is unavailable")
    UPLOAD_CORRUPT = (500, "upload state is unreadable on the server")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]


Headers = list[tuple[str, str]]


class TusError(Exception):
    """A request that cannot be served. `headers` go into the error response (e.g. Upload-Offset)."""

    def __init__(self, kind: ErrorKind, detail: str | None = None, headers: Headers | None = None) -> None:
        self.kind = kind
        self.message = detail or kind.reason
        self.headers: Headers = headers or []
        super().__init__(self.message)

    @property
    def status(self) -> int:
        return self.kind.status
