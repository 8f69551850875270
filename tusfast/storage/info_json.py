"""The info document of an upload: tusd's FileInfo JSON, shared by every place that stores it
(`.info` files, S3 `.info` objects, the Redis info store), so each reads what the others wrote."""

from __future__ import annotations

import json
import os

from ..core.headers import parse_metadata
from ..core.model import UploadInfo, is_valid_upload_id, tusd_file_info
from .base import UploadCorrupt

STAGED_SUFFIX = ".staged"   # a file backend's marker of a write not yet verified


def encode_info(info: UploadInfo) -> bytes:
    """tusd's FileInfo JSON, plus what tusd has no field for under "Tusfast"."""
    document = {
        **tusd_file_info(info),
        "Storage": info.storage,
        "Tusfast": {"MetaDataHeader": info.metadata_header, "CreatedAt": info.created_at, "Concat": info.concat},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def decode_info(raw: bytes, upload_id: str) -> UploadInfo:
    """Also reads what tusd wrote. Any defect raises UploadCorrupt: it is that upload's problem only."""
    try:
        document = json.loads(raw)
        extra = document.get("Tusfast") or {}
        header = extra.get("MetaDataHeader")
        metadata = (parse_metadata(header) if header else
                    {key: str(value).encode() for key, value in (document.get("MetaData") or {}).items()})
        length = None if document.get("SizeIsDeferred") else int(document["Size"])
        if document["ID"] != upload_id or (length is not None and length < 0):
            raise ValueError("info does not describe this upload")
        partials = tuple(str(item) for item in document.get("PartialUploads") or ())
        if not all(is_valid_upload_id(item) for item in partials):
            raise ValueError("invalid partial upload ids")
        concat = extra.get("Concat") or ("partial" if document.get("IsPartial") else None)
        if concat is not None and not isinstance(concat, str):
            raise ValueError("invalid Concat")
        return UploadInfo(upload_id, length, 0, metadata, header, float(extra.get("CreatedAt") or 0.0),
                          dict(document.get("Storage") or {}), concat=concat, partials=partials)
    except Exception as exc:    # any defect in one info file is that upload's problem only
        raise UploadCorrupt(f"info file of upload {upload_id} is unreadable: {exc}") from None


def safe_relative_path(path: str) -> str:
    """A storage path chosen by a hook: relative, inside the upload directory, no dot-directories."""
    parts = path.split("/")
    if (os.path.isabs(path) or "\0" in path or parts[-1].endswith((".info", STAGED_SUFFIX))
            or any(part in ("", ".", "..") or part.startswith(".") for part in parts)):
        raise ValueError(f"unsafe storage path {path!r}")
    return path
