"""What the server knows about one upload, independent of where it is stored."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from .headers import format_metadata

# The server makes ids of 32 random hex characters; a pre-create hook may choose any 1-128 characters
# of [A-Za-z0-9_-]. Every request's id is checked against UPLOAD_ID before it reaches storage: no
# '.', '/' or NUL, so no id can name a path outside the upload directory (or a dot-directory in it).
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
SERVER_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def is_valid_upload_id(upload_id: str) -> bool:
    return UPLOAD_ID.fullmatch(upload_id) is not None


@dataclass(frozen=True)
class UploadInfo:
    id: str
    length: int | None                      # None while the length is deferred
    offset: int = 0                         # bytes stored, as reported by storage
    metadata: dict[str, bytes] = field(default_factory=dict)
    metadata_header: str | None = None      # Upload-Metadata exactly as received, echoed on HEAD
    created_at: float = 0.0                 # Unix time
    storage: dict[str, str] = field(default_factory=dict)  # backend-specific locations
    updated_at: float = 0.0                 # last write (creation counts), for expiration
    concat: str | None = None               # Upload-Concat exactly as received, echoed on HEAD
    partials: tuple[str, ...] = ()          # a final upload's partial upload ids, in order

    @property
    def is_complete(self) -> bool:
        return self.length is not None and self.offset >= self.length

    @property
    def is_partial(self) -> bool:
        return self.concat == "partial"

    @property
    def is_final(self) -> bool:
        return bool(self.partials)

    @property
    def remaining(self) -> int | None:
        return None if self.length is None else self.length - self.offset

    def echo_metadata(self) -> str | None:
        if self.metadata_header is not None:
            return self.metadata_header
        return format_metadata(self.metadata) if self.metadata else None

    def with_offset(self, offset: int) -> "UploadInfo":
        return replace(self, offset=offset)

    def with_length(self, length: int) -> "UploadInfo":
        return replace(self, length=length)


def tusd_file_info(info: UploadInfo) -> dict[str, Any]:
    """tusd's FileInfo JSON fields (as in its .info files and hook payloads), without Storage."""
    return {
        "ID": info.id,
        "Size": info.length or 0,
        "SizeIsDeferred": info.length is None,
        "Offset": info.offset,
        "MetaData": {key: value.decode("utf-8", "replace") for key, value in info.metadata.items()},
        "IsPartial": info.is_partial,
        "IsFinal": info.is_final,
        "PartialUploads": list(info.partials) or None,
    }
