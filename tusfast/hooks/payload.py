"""The JSON that hooks send and receive, in tusd's two shapes. Pure: no I/O.

tusd v2 (`--hooks-format tusd`, the default)::

    request:  {"Type": "pre-create", "Event": {"Upload": {...}, "HTTPRequest": {...}}}
    response: {"HTTPResponse": {"StatusCode": 403, "Body": "...", "Header": {...}},
               "RejectUpload": true, "RejectTermination": false, "StopUpload": false,
               "ChangeFileInfo": {"ID": "...", "MetaData": {...}, "Storage": {"Path": "..."}}}

tusd v1 / rustus (`--hooks-format tusd-v1`): the event name goes in a `Hook-Name` header, the body
is `{"Upload": {...}, "HTTPRequest": {...}}`, and a receiver rejects by answering non-2xx.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..core.model import UploadInfo, is_valid_upload_id, tusd_file_info
from . import FileInfoChanges, HookContext, HookEvent, HookFailure, HookRejected, HookRequest, HookResponse

FORMATS = ("tusd", "tusd-v1")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_DROPPED_HEADERS = {"content-length", "transfer-encoding", "connection", "tus-resumable"}
_DEFAULT_REJECTIONS = {
    HookEvent.PRE_CREATE: (400, "upload creation has been rejected by server"),
    HookEvent.PRE_FINISH: (400, "upload finishing has been rejected by server"),
    HookEvent.PRE_TERMINATE: (400, "upload termination has been rejected by server"),
    HookEvent.PRE_ACCESS: (403, "access to this upload has been denied by server"),
}


# ---- requests -------------------------------------------------------------------------------

def upload_fields(info: UploadInfo) -> dict[str, Any]:
    """tusd's FileInfo JSON."""
    return {**tusd_file_info(info), "Storage": dict(info.storage) or None}


def canonical_name(name: str) -> str:
    """Go's canonical header form, as tusd sends them: `x-api-key` -> `X-Api-Key`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def request_fields(request: HookRequest) -> dict[str, Any]:
    return {
        "Method": request.method,
        "URI": request.uri,
        "RemoteAddr": request.remote_addr,
        "Header": {canonical_name(name): [value] for name, value in request.headers.items()},
    }


def event_fields(context: HookContext) -> dict[str, Any]:
    return {"Upload": upload_fields(context.upload), "HTTPRequest": request_fields(context.request)}


def encode_request(context: HookContext, format: str = "tusd") -> bytes:
    document = event_fields(context)
    if format == "tusd":
        document = {"Type": context.event.value, "Event": document}
    return json.dumps(document, separators=(",", ":")).encode()


def request_headers(context: HookContext, forward: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Headers of the hook's own HTTP request: `Hook-Name` (tusd v1, rustus) plus forwarded ones."""
    headers = [("Content-Type", "application/json"), ("Hook-Name", context.event.value)]
    wanted = {name.lower() for name in forward}
    return headers + [(canonical_name(name), value) for name, value in context.request.headers.items()
                      if name in wanted and _FIELD_VALUE.fullmatch(value)]


# ---- responses ------------------------------------------------------------------------------

def decode_response(event: HookEvent, status: int, body: bytes, format: str = "tusd") -> HookResponse:
    """A receiver's answer. Non-2xx rejects with that status and body (tusd v1 and rustus style);
    a 2xx body is a tusd v2 response (ignored for tusd-v1). Raises HookFailure if unusable."""
    if not 200 <= status < 300:
        return HookResponse(status, body.decode("utf-8", "replace"), reject_upload=True,
                            reject_termination=True, reject_access=True)
    if format != "tusd" or not body.strip():
        return HookResponse()
    try:
        document = json.loads(body)
    except ValueError:
        raise HookFailure(f"{event.value} hook answered with invalid JSON") from None
    return parse_response(document)


def parse_response(document: Any) -> HookResponse:
    """A tusd v2 HookResponse document."""
    if not isinstance(document, dict):
        raise HookFailure("hook response must be a JSON object")
    http = _object(document.get("HTTPResponse"), "HTTPResponse")
    changes = document.get("ChangeFileInfo")
    return HookResponse(
        status=_status(http.get("StatusCode")),
        body=str(http.get("Body") or ""),
        headers={str(name): str(value) for name, value in _object(http.get("Header"), "Header").items()},
        reject_upload=document.get("RejectUpload") is True,
        reject_termination=document.get("RejectTermination") is True,
        reject_access=document.get("RejectAccess") is True,
        stop_upload=document.get("StopUpload") is True,
        changes=parse_changes(changes) if changes else None,
    )


def encode_response(response: HookResponse) -> bytes:
    """The inverse of parse_response (for tests and Python hooks that speak JSON)."""
    document: dict[str, Any] = {
        "HTTPResponse": {"StatusCode": response.status or 0, "Body": response.body, "Header": response.headers},
        "RejectUpload": response.reject_upload, "RejectTermination": response.reject_termination,
        "StopUpload": response.stop_upload,
    }
    if response.changes is not None:
        document["ChangeFileInfo"] = {"ID": response.changes.id or "", "MetaData": response.changes.metadata,
                                      "Storage": {"Path": response.changes.storage_path} if
                                      response.changes.storage_path else None}
    return json.dumps(document).encode()


def parse_changes(document: Any) -> FileInfoChanges:
    """ChangeFileInfo, validated: an id of 1-128 [A-Za-z0-9_-], string metadata, a safe relative path."""
    document = _object(document, "ChangeFileInfo")
    upload_id = document.get("ID") or None
    if upload_id is not None and not (isinstance(upload_id, str) and is_valid_upload_id(upload_id)):
        raise HookFailure("ChangeFileInfo.ID must be 1-128 characters of A-Z a-z 0-9 _ -")
    metadata = document.get("MetaData")
    if metadata is not None:
        metadata = _object(metadata, "ChangeFileInfo.MetaData")
        if not all(isinstance(value, str) and _valid_key(key) for key, value in metadata.items()):
            raise HookFailure("ChangeFileInfo.MetaData must map keys to strings")
    path = _object(document.get("Storage"), "ChangeFileInfo.Storage").get("Path") or None
    if path is not None and not (isinstance(path, str) and is_safe_storage_path(path)):
        raise HookFailure("ChangeFileInfo.Storage.Path must be a relative path inside the upload directory")
    return FileInfoChanges(upload_id, metadata, path)


def is_safe_storage_path(path: str) -> bool:
    parts = path.split("/")
    return (0 < len(path) <= 1024 and not path.startswith("/") and "\0" not in path and "\\" not in path
            and not parts[-1].endswith((".info", ".staged"))
            and not any(part in ("", ".", "..") or part.startswith(".") for part in parts))


def rejection(event: HookEvent, response: HookResponse) -> HookRejected | None:
    """The client's answer if a blocking hook's response rejects the request, else None."""
    rejected = {
        HookEvent.PRE_CREATE: response.reject_upload,
        HookEvent.PRE_FINISH: response.reject_upload,
        HookEvent.PRE_TERMINATE: response.reject_termination,
        HookEvent.PRE_ACCESS: response.reject_access or response.reject_upload,
    }.get(event, False)
    if not rejected and not (response.status is not None and response.status >= 400):
        return None
    status, body = _DEFAULT_REJECTIONS.get(event, (400, "rejected by hook"))
    if response.status is not None and 300 <= response.status <= 599:
        status = response.status
    return HookRejected(status, response.body or body, safe_headers(response.headers))


def safe_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """A hook's response headers that can go to the client: valid, and none that frame the message."""
    return [(name, value) for name, value in headers.items()
            if _TOKEN.fullmatch(name) and _FIELD_VALUE.fullmatch(value) and name.lower() not in _DROPPED_HEADERS]


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HookFailure(f"{name} must be a JSON object")
    return value


def _status(value: Any) -> int | None:
    if value in (None, 0):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise HookFailure("HTTPResponse.StatusCode must be an HTTP status")
    return value


def _valid_key(key: str) -> bool:
    return bool(key) and " " not in key and "," not in key and key.isprintable()
