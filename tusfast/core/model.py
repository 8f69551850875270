"""What the server knows about one upload, independent of where it is stored."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .headers import format_metadata

# 32 random hex characters. Every request's id is checked against this before it reaches storage,
# so no id can name a path outside the upload directory.
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


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
