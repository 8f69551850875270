"""tusfast.core.protocol (+ errors, cors, model): the sans-IO tus rules, checked against the checklist Part A."""

from __future__ import annotations

import base64
import hashlib
import re
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tusfast.core import protocol as tus
from tusfast.core.cors import ALLOW_HEADERS, ALLOW_METHODS, EXPOSE_HEADERS, cors_headers
from tusfast.core.errors import ErrorKind, TusError
from tusfast.core.model import UploadInfo, is_valid_upload_id
from tusfast.core.protocol import (ALL_EXTENSIONS, DEFAULT_EXTENSIONS, REQUIRES, ROUTE_EXTENSION, ROUTES,
                                   VERSION_EXEMPT, Append, AppendPlan, Create, Download, GetOffset, Options,
                                   ProtocolSettings, RequestHead, Target, Terminate)

UID = "0123456789abcdef0123456789abcdef"
UPLOAD = "/files/" + UID
V = ("Tus-Resumable", "1.0.0")
OCTETS = ("Content-Type", "application/offset+octet-stream")

DEFAULT = ProtocolSettings()
LIMITED = ProtocolSettings(max_size=1000)
NO_DOWNLOAD = ProtocolSettings(download=False)
# every extension but concatenation and checksum: their headers must be refused, never half-served (item 4)
NO_CONCAT_NO_CHECKSUM = ProtocolSettings(extensions=("creation", "creation-with-upload", "creation-defer-length",
                                                     "termination"))


def head(method: str, target: str, *pairs: tuple[str, str], body_size: int | None = 0,
         scheme: str = "http") -> RequestHead:
    return RequestHead.parse(method, target, list(pairs), scheme=scheme, body_size=body_size)


def interpret(method: str, target: str, *pairs: tuple[str, str], body_size: int | None = 0,
              settings: ProtocolSettings = DEFAULT) -> tus.Intent:
    return tus.interpret(head(method, target, *pairs, body_size=body_size), settings)


def fails(kind: ErrorKind, method: str, target: str, *pairs: tuple[str, str], body_size: int | None = 0,
          settings: ProtocolSettings = DEFAULT) -> TusError:
    with pytest.raises(TusError) as info:
        interpret(method, target, *pairs, body_size=body_size, settings=settings)
    assert info.value.kind is kind, info.value.message
    assert info.value.status == kind.status
    return info.value


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in headers if key.lower() == name.lower()]
    assert len(values) <= 1, f"{name} appears {len(values)} times"
    return values[0] if values else None


# ---- the error table -------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "status"), [
    (ErrorKind.UNSUPPORTED_VERSION, 412),
    (ErrorKind.UNSUPPORTED_MEDIA_TYPE, 415),
    (ErrorKind.INVALID_OFFSET, 400),
    (ErrorKind.MISSING_OFFSET, 400),
    (ErrorKind.MISMATCHED_OFFSET, 409),
    (ErrorKind.INVALID_LENGTH, 400),
    (ErrorKind.MISSING_LENGTH, 400),
    (ErrorKind.AMBIGUOUS_LENGTH, 400),
    (ErrorKind.INVALID_DEFER_LENGTH, 400),
    (ErrorKind.LENGTH_ALREADY_SET, 400),
    (ErrorKind.MAX_SIZE_EXCEEDED, 413),
    (ErrorKind.SIZE_EXCEEDED, 413),
    (ErrorKind.INVALID_METADATA, 400),
    (ErrorKind.DUPLICATE_HEADER, 400),
    (ErrorKind.INVALID_HOST, 400),
    (ErrorKind.NOT_FOUND, 404),
    (ErrorKind.METHOD_NOT_ALLOWED, 405),
    (ErrorKind.UNSUPPORTED_CHECKSUM, 400),        # item 64
    (ErrorKind.INVALID_CHECKSUM, 400),            # item 68
    (ErrorKind.CHECKSUM_MISMATCH, 460),           # item 64
    (ErrorKind.INVALID_CONCAT, 400),
    (ErrorKind.INVALID_PARTIAL, 400),             # item 78
    (ErrorKind.UNFINISHED_PARTIAL, 400),          # item 78
    (ErrorKind.FINAL_WITH_LENGTH, 400),           # item 77
    (ErrorKind.FINAL_WITH_BODY, 400),
    (ErrorKind.FINAL_IS_READ_ONLY, 403),          # items 37, 80
    (ErrorKind.GONE, 410),                        # item 60
    (ErrorKind.NOT_FINISHED, 409),
    (ErrorKind.RANGE_NOT_SATISFIABLE, 416),
])
def test_error_kinds_map_to_checklist_statuses(kind: ErrorKind, status: int) -> None:
    assert kind.status == status
    assert TusError(kind).status == status
    assert kind.reason and "\n" not in kind.reason


def test_tus_error_carries_detail_and_headers() -> None:
    error = TusError(ErrorKind.MISMATCHED_OFFSET, "custom", headers=[("Upload-Offset", "7")])
    assert error.message == "custom" and str(error) == "custom"
    assert error.headers == [("Upload-Offset", "7")]
    assert TusError(ErrorKind.NOT_FOUND).message == ErrorKind.NOT_FOUND.reason
    assert TusError(ErrorKind.NOT_FOUND).headers == []


# ---- settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"base_path": "files/"},
    {"base_path": "/files"},
    {"base_path": ""},
    {"extensions": ("creation-with-upload",)},
    {"extensions": ("creation-with-upload", "termination")},
    {"extensions": ("creation", "concatenation-unfinished")},     # REQUIRES: needs concatenation
    {"extensions": ("creation", "checksum-trailer")},             # REQUIRES: needs checksum
    {"extensions": ("creation-defer-length",)},                    # REQUIRES: needs creation
    {"extensions": ("creation", "bogus")},                         # unknown names
    {"extensions": ("creation", "download")},                      # download is a flag, not a tus extension
    {"extensions": (*DEFAULT_EXTENSIONS, "expiration")},           # expiration without a period
    {"extensions": (*DEFAULT_EXTENSIONS, "expiration"), "expire_after": 0},
    {"expire_after": 60.0},                                        # a period without expiration
])
def test_protocol_settings_rejects(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ProtocolSettings(**kwargs)


def test_all_extensions_are_the_implemented_ones() -> None:
    # the nine tus 1.0.0 extensions, in the order OPTIONS lists them (checklist item 11)
    assert ALL_EXTENSIONS == ("creation", "creation-with-upload", "creation-defer-length", "expiration",
                              "checksum", "checksum-trailer", "termination", "concatenation",
                              "concatenation-unfinished")
    # expiration needs a period, so it is off unless one is given
    assert DEFAULT_EXTENSIONS == tuple(name for name in ALL_EXTENSIONS if name != "expiration")
    assert DEFAULT.extensions == DEFAULT_EXTENSIONS
    assert DEFAULT.expire_after is None and DEFAULT.download is True
    assert REQUIRES == {"creation-with-upload": "creation", "creation-defer-length": "creation",
                        "concatenation-unfinished": "concatenation", "checksum-trailer": "checksum"}
    assert ProtocolSettings(extensions=ALL_EXTENSIONS, expire_after=3600).extensions == ALL_EXTENSIONS


# ---- routing tables --------------------------------------------------------------------------

def test_routes_table() -> None:
    assert set(ROUTES) == {
        (Target.COLLECTION, "OPTIONS"), (Target.UPLOAD, "OPTIONS"), (Target.COLLECTION, "POST"),
        (Target.UPLOAD, "HEAD"), (Target.UPLOAD, "PATCH"), (Target.UPLOAD, "DELETE"), (Target.UPLOAD, "GET")}
    assert ROUTE_EXTENSION == {(Target.COLLECTION, "POST"): "creation", (Target.UPLOAD, "DELETE"): "termination",
                               (Target.UPLOAD, "GET"): "download"}
    assert VERSION_EXEMPT == {"OPTIONS", "GET"}


# ---- request head parsing --------------------------------------------------------------------

@pytest.mark.parametrize(("target", "path"), [
    ("/files/", "/files/"),
    ("/files/?a=b", "/files/"),
    (UPLOAD + "?x=1&y=/z", UPLOAD),
    ("http://example.com" + UPLOAD, UPLOAD),
    ("https://example.com:8443" + UPLOAD + "?q", UPLOAD),
    ("http://example.com", "/"),
])
def test_request_head_path(target: str, path: str) -> None:
    assert head("HEAD", target).path == path


@pytest.mark.parametrize(("method", "override", "expected"), [
    ("POST", "PATCH", "PATCH"),
    ("POST", "DELETE", "DELETE"),
    ("POST", "patch", "PATCH"),
    ("POST", " HEAD ", "HEAD"),
    ("POST", None, "POST"),
    ("POST", "", "POST"),
])
def test_method_override(method: str, override: str | None, expected: str) -> None:
    pairs = [] if override is None else [("X-HTTP-Method-Override", override)]
    assert head(method, UPLOAD, *pairs).method == expected


def test_method_override_routes_post_as_patch_and_delete() -> None:
    # Item 13: the override is the request's method, the real method is ignored.
    intent = interpret("POST", UPLOAD, V, OCTETS, ("Upload-Offset", "3"),
                       ("X-HTTP-Method-Override", "PATCH"), body_size=4)
    assert intent == Append(UID, 3, None, 4)
    intent = interpret("POST", UPLOAD, V, ("X-HTTP-Method-Override", "DELETE"))
    assert intent == Terminate(UID)


def test_method_override_still_needs_tus_resumable() -> None:
    error = fails(ErrorKind.UNSUPPORTED_VERSION, "POST", UPLOAD, ("X-HTTP-Method-Override", "DELETE"))
    assert ("Tus-Version", "1.0.0") in error.headers


def test_method_override_to_disabled_termination_is_405() -> None:
    settings = ProtocolSettings(extensions=("creation",))
    error = fails(ErrorKind.METHOD_NOT_ALLOWED, "POST", UPLOAD, V, ("X-HTTP-Method-Override", "DELETE"),
                  settings=settings)
    assert header(error.headers, "Allow") == "OPTIONS, HEAD, PATCH, GET"


@pytest.mark.parametrize("name", ["Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Metadata",
                                  "X-HTTP-Method-Override", "Content-Type", "Host"])
def test_duplicate_tus_header_rejected_when_parsing(name: str) -> None:
    with pytest.raises(TusError) as info:
        head("PATCH", UPLOAD, (name, "1"), (name.upper(), "1"))
    assert info.value.kind is ErrorKind.DUPLICATE_HEADER
    assert info.value.status == 400


@pytest.mark.parametrize(("body_size", "has_body"), [(0, False), (1, True), (None, True)])
def test_has_body(body_size: int | None, has_body: bool) -> None:
    assert head("POST", "/files/", body_size=body_size).has_body is has_body


# ---- 404 for unknown paths and invalid ids ---------------------------------------------------

BAD_PATHS = [
    "/",
    "/file",
    "/filesx",
    "/other/" + UID,
    "/files/../etc/passwd",
    "/files/../files/" + UID,
    "/files/" + UID + "/..",
    "/files/%2e%2e/" + UID,
    "/files/%2e%2e%2f" + UID[:24],
    "/files/" + UID[:-2] + "%66",           # percent-encoded last hex digit
    "/files/%30123456789abcdef0123456789abcdef",
    "/files/" + UID + "/",
    "/files/" + UID + "/info",
    "/files/" + UID + ".info",
    "/files/" + UID + "%00",
    "/files/" + UID + "\n",
    "/files//" + UID,
    "/files/./" + UID,
    "/files/" + "0" * 31 + " ",
    "/files/" + "٠" * 32,                   # Arabic-Indic zeros
    "/files/" + UID[:16] + "/" + UID[16:],
    "/files/" + "a" * 129,                  # ids a hook chooses: at most 128 characters
    "/files/a.b",
    "/files/.ids",
    "/files/a%2Fb",
    "//files/" + UID,
    "/FILES/" + UID,
    "files/" + UID,
]


@pytest.mark.parametrize("path", BAD_PATHS)
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "OPTIONS", "POST"])
def test_unknown_paths_are_404(path: str, method: str) -> None:
    fails(ErrorKind.NOT_FOUND, method, path, V, OCTETS, ("Upload-Offset", "0"))


@pytest.mark.parametrize("upload_id", [UID, "0" * 32, "f" * 32, "abcdef0123456789" * 2,
                                       # chosen by a pre-create hook: 1-128 of [A-Za-z0-9_-]
                                       UID.upper(), "x" * 32, "a", "my_upload-1", "Z" * 128])
def test_valid_ids(upload_id: str) -> None:
    assert is_valid_upload_id(upload_id)
    assert interpret("HEAD", "/files/" + upload_id, V) == GetOffset(upload_id)


@pytest.mark.parametrize("upload_id", ["", "../" + UID[3:], UID[:31] + "\n", UID[:31] + "/", "a" * 129, ".",
                                       "..", "a.info", "a\0", "a/b", "é", UID + " "])
def test_invalid_ids(upload_id: str) -> None:
    assert not is_valid_upload_id(upload_id)


@pytest.mark.parametrize(("base_path", "path", "target"), [
    ("/files/", "/files/", tus.Target.COLLECTION),
    ("/files/", "/files", tus.Target.COLLECTION),
    ("/api/v1/uploads/", "/api/v1/uploads/", tus.Target.COLLECTION),
    ("/api/v1/uploads/", "/api/v1/uploads/" + UID, tus.Target.UPLOAD),
    ("/", "/", tus.Target.COLLECTION),
    ("/", "/" + UID, tus.Target.UPLOAD),
])
def test_resolve_target(base_path: str, path: str, target: tus.Target) -> None:
    found, upload_id = tus.resolve_target(path, ProtocolSettings(base_path=base_path))
    assert found is target
    assert upload_id == ("" if target is tus.Target.COLLECTION else UID)


def test_custom_base_path_does_not_serve_default() -> None:
    settings = ProtocolSettings(base_path="/uploads/")
    fails(ErrorKind.NOT_FOUND, "HEAD", UPLOAD, V, settings=settings)
    assert interpret("HEAD", "/uploads/" + UID, V, settings=settings) == GetOffset(UID)


# ---- 405 + Allow -----------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "settings", "allow"), [
    ("HEAD", "/files/", DEFAULT, "OPTIONS, POST"),            # item 85
    ("PATCH", "/files/", DEFAULT, "OPTIONS, POST"),
    ("DELETE", "/files/", DEFAULT, "OPTIONS, POST"),
    ("GET", "/files/", DEFAULT, "OPTIONS, POST"),
    ("PUT", "/files/", DEFAULT, "OPTIONS, POST"),
    ("POST", UPLOAD, DEFAULT, "OPTIONS, HEAD, PATCH, DELETE, GET"),
    ("GET", UPLOAD, NO_DOWNLOAD, "OPTIONS, HEAD, PATCH, DELETE"),
    ("PUT", UPLOAD, DEFAULT, "OPTIONS, HEAD, PATCH, DELETE, GET"),
    ("patch", UPLOAD, DEFAULT, "OPTIONS, HEAD, PATCH, DELETE, GET"),   # methods are case-sensitive
    ("get", UPLOAD, DEFAULT, "OPTIONS, HEAD, PATCH, DELETE, GET"),
    ("BREW", UPLOAD, DEFAULT, "OPTIONS, HEAD, PATCH, DELETE, GET"),
    ("DELETE", UPLOAD, ProtocolSettings(extensions=("creation",)), "OPTIONS, HEAD, PATCH, GET"),
    ("POST", "/files/", ProtocolSettings(extensions=("termination",)), "OPTIONS"),
    ("POST", "/files/", ProtocolSettings(extensions=()), "OPTIONS"),
    ("DELETE", UPLOAD, ProtocolSettings(extensions=()), "OPTIONS, HEAD, PATCH, GET"),
    ("DELETE", UPLOAD, ProtocolSettings(extensions=(), download=False), "OPTIONS, HEAD, PATCH"),
])
def test_method_not_allowed(method: str, path: str, settings: ProtocolSettings, allow: str) -> None:
    error = fails(ErrorKind.METHOD_NOT_ALLOWED, method, path, V, OCTETS, ("Upload-Length", "5"),
                  settings=settings)
    assert header(error.headers, "Allow") == allow
    assert tus.error_reply(error).status == 405
    assert ("Allow", allow) in tus.error_reply(error).headers


@pytest.mark.parametrize(("target", "settings", "expected"), [
    (Target.COLLECTION, DEFAULT, "OPTIONS, POST"),
    (Target.UPLOAD, DEFAULT, "OPTIONS, HEAD, PATCH, DELETE, GET"),
    (Target.UPLOAD, NO_DOWNLOAD, "OPTIONS, HEAD, PATCH, DELETE"),
    (Target.COLLECTION, NO_DOWNLOAD, "OPTIONS, POST"),
    (Target.COLLECTION, ProtocolSettings(extensions=("termination",)), "OPTIONS"),
    (Target.UPLOAD, ProtocolSettings(extensions=("creation", "creation-with-upload")),
     "OPTIONS, HEAD, PATCH, GET"),
])
def test_allowed_methods(target: Target, settings: ProtocolSettings, expected: str) -> None:
    assert tus.allowed_methods(target, settings) == expected


# ---- 412 Tus-Resumable (items 8-10, 39) ------------------------------------------------------

REQUESTS = [
    ("POST", "/files/", [("Upload-Length", "5")]),
    ("PATCH", UPLOAD, [OCTETS, ("Upload-Offset", "0")]),
    ("HEAD", UPLOAD, []),
    ("DELETE", UPLOAD, []),
]
BAD_VERSIONS = [None, "", "0.2.2", "1.0", "1.0.1", "2.0.0", "1.0.0,0.2.2", "v1.0.0"]


@pytest.mark.parametrize(("method", "path", "pairs"), REQUESTS)
@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_missing_or_unsupported_version_is_412_with_tus_version(method, path, pairs, version) -> None:
    if version is not None:
        pairs = [*pairs, ("Tus-Resumable", version)]
    error = fails(ErrorKind.UNSUPPORTED_VERSION, method, path, *pairs)
    assert header(error.headers, "Tus-Version") == "1.0.0"
    reply = tus.error_reply(error)
    assert reply.status == 412
    assert ("Tus-Version", "1.0.0") in reply.headers
    assert not any(name.lower() in ("location", "upload-offset") for name, _ in reply.headers)


@pytest.mark.parametrize(("method", "path", "pairs", "intent"), [
    (*REQUESTS[0], Create(5)),
    (*REQUESTS[1], Append(UID, 0, None, 0)),
    (*REQUESTS[2], GetOffset(UID)),
    (*REQUESTS[3], Terminate(UID)),
])
def test_supported_version_passes(method, path, pairs, intent) -> None:
    assert interpret(method, path, V, *pairs) == intent
    assert interpret(method, path, ("tus-resumable", " 1.0.0 "), *pairs) == intent


@pytest.mark.parametrize("path", ["/files/", UPLOAD])
@pytest.mark.parametrize("version", BAD_VERSIONS + ["1.0.0"])
def test_options_ignores_tus_resumable(path: str, version: str | None) -> None:
    pairs = [] if version is None else [("Tus-Resumable", version)]
    assert interpret("OPTIONS", path, *pairs) == Options()


def test_version_check_comes_before_any_other_header_check() -> None:
    # Not processed at all (item 9): a bad body, length and metadata still give 412.
    fails(ErrorKind.UNSUPPORTED_VERSION, "POST", "/files/", ("Tus-Resumable", "0.2.2"), ("Upload-Length", "-1"),
          ("Upload-Metadata", "!!"), body_size=10)
    fails(ErrorKind.UNSUPPORTED_VERSION, "PATCH", UPLOAD, ("Content-Type", "text/plain"))


# ---- creation (items 41-49) -----------------------------------------------------------------

@pytest.mark.parametrize(("pairs", "body_size", "expected"), [
    ([("Upload-Length", "100")], 0, Create(100, {}, None, 0)),
    ([("Upload-Length", "0")], 0, Create(0, {}, None, 0)),
    ([("Upload-Defer-Length", "1")], 0, Create(None, {}, None, 0)),
    ([("Upload-Length", "100"), ("Upload-Metadata", "")], 0, Create(100, {}, None, 0)),
    ([("Upload-Length", "100"), ("Upload-Metadata", "name YQ==,flag")], 0,
     Create(100, {"name": b"a", "flag": b""}, "name YQ==,flag", 0)),
    ([("Upload-Length", "100"), OCTETS], 10, Create(100, {}, None, 10)),
    ([("Upload-Length", "100"), OCTETS], 100, Create(100, {}, None, 100)),
    ([("Upload-Length", "100"), OCTETS], None, Create(100, {}, None, None)),
    ([("Upload-Defer-Length", "1"), OCTETS], 10, Create(None, {}, None, 10)),
    ([("Upload-Length", "5"), ("Content-Type", "Application/Offset+Octet-Stream; x=y")], 5,
     Create(5, {}, None, 5)),
])
def test_create(pairs, body_size, expected: Create) -> None:
    assert interpret("POST", "/files/", V, *pairs, body_size=body_size) == expected


def test_create_on_collection_without_trailing_slash() -> None:
    assert interpret("POST", "/files", V, ("Upload-Length", "1")) == Create(1)


def test_create_echoes_metadata_header_exactly() -> None:
    raw = "b Yg==, a YQ==,c"
    intent = interpret("POST", "/files/", V, ("Upload-Length", "1"), ("Upload-Metadata", raw))
    assert isinstance(intent, Create)
    assert intent.metadata_header == raw
    assert intent.metadata == {"a": b"a", "b": b"b", "c": b""}


@pytest.mark.parametrize(("pairs", "body_size", "kind"), [
    ([], 0, ErrorKind.MISSING_LENGTH),
    ([("Upload-Metadata", "a YQ==")], 0, ErrorKind.MISSING_LENGTH),
    ([("Upload-Length", "5"), ("Upload-Defer-Length", "1")], 0, ErrorKind.AMBIGUOUS_LENGTH),
    ([("Upload-Length", "-1")], 0, ErrorKind.INVALID_LENGTH),
    ([("Upload-Length", "+5")], 0, ErrorKind.INVALID_LENGTH),
    ([("Upload-Length", "abc")], 0, ErrorKind.INVALID_LENGTH),
    ([("Upload-Length", "")], 0, ErrorKind.INVALID_LENGTH),
    ([("Upload-Length", str(2**63))], 0, ErrorKind.INVALID_LENGTH),
    ([("Upload-Defer-Length", "0")], 0, ErrorKind.INVALID_DEFER_LENGTH),
    ([("Upload-Defer-Length", "true")], 0, ErrorKind.INVALID_DEFER_LENGTH),
    ([("Upload-Length", "5"), ("Upload-Metadata", "a !!")], 0, ErrorKind.INVALID_METADATA),
    ([("Upload-Length", "5"), ("Upload-Metadata", "a YQ==,a YQ==")], 0, ErrorKind.INVALID_METADATA),
    # creation-with-upload needs the offset+octet-stream media type (item 56 -> 25)
    ([("Upload-Length", "5")], 5, ErrorKind.UNSUPPORTED_MEDIA_TYPE),
    ([("Upload-Length", "5"), ("Content-Type", "application/octet-stream")], 5,
     ErrorKind.UNSUPPORTED_MEDIA_TYPE),
    ([("Upload-Length", "5"), ("Content-Type", "text/plain")], None, ErrorKind.UNSUPPORTED_MEDIA_TYPE),
    # body longer than the declared length
    ([("Upload-Length", "5"), OCTETS], 6, ErrorKind.SIZE_EXCEEDED),
    ([("Upload-Length", "0"), OCTETS], 1, ErrorKind.SIZE_EXCEEDED),
])
def test_create_rejects(pairs, body_size, kind: ErrorKind) -> None:
    error = fails(kind, "POST", "/files/", V, *pairs, body_size=body_size)
    reply = tus.error_reply(error)
    assert reply.status == kind.status
    assert header(reply.headers, "Location") is None


@pytest.mark.parametrize(("pairs", "body_size"), [
    ([("Upload-Length", "5"), ("Upload-Concat", "partial")], 0),
    ([("Upload-Concat", "final;/files/a /files/b")], 0),
    ([("Upload-Concat", "final;/files/" + UID)], 0),
    ([("Upload-Length", "5"), ("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")], 0),
    ([("Upload-Length", "5"), ("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="), OCTETS], 5),
])
def test_create_with_header_of_disabled_extension_is_400(pairs, body_size) -> None:
    # Item 4: a header of an extension the server does not offer is rejected, not half-served.
    error = fails(ErrorKind.EXTENSION_DISABLED, "POST", "/files/", V, *pairs, body_size=body_size,
                  settings=NO_CONCAT_NO_CHECKSUM)
    reply = tus.error_reply(error)
    assert reply.status == 400
    assert header(reply.headers, "Location") is None


@pytest.mark.parametrize(("length", "ok"), [(0, True), (999, True), (1000, True), (1001, False),
                                            (2**63 - 1, False)])
def test_create_max_size(length: int, ok: bool) -> None:
    pairs = (V, ("Upload-Length", str(length)))
    if ok:
        assert interpret("POST", "/files/", *pairs, settings=LIMITED) == Create(length)
    else:
        error = fails(ErrorKind.MAX_SIZE_EXCEEDED, "POST", "/files/", *pairs, settings=LIMITED)
        assert header(error.headers, "Tus-Max-Size") == "1000"   # item 47


def test_create_max_size_checked_before_body() -> None:
    fails(ErrorKind.MAX_SIZE_EXCEEDED, "POST", "/files/", V, ("Upload-Length", "2000"), OCTETS, body_size=10,
          settings=LIMITED)


def test_create_deferred_with_body_over_max_size_is_413() -> None:
    # Item 47: over the maximum -> 413 and *create nothing*. With a deferred length and a Content-Length
    # larger than Tus-Max-Size, the size is already known to be too large before anything is created.
    fails(ErrorKind.MAX_SIZE_EXCEEDED, "POST", "/files/", V, ("Upload-Defer-Length", "1"), OCTETS,
          body_size=1001, settings=LIMITED)


def test_create_deferred_with_body_within_max_size() -> None:
    assert interpret("POST", "/files/", V, ("Upload-Defer-Length", "1"), OCTETS, body_size=1000,
                     settings=LIMITED) == Create(None, body_size=1000)


# ---- disabled extensions ---------------------------------------------------------------------

ONLY_CREATION = ProtocolSettings(extensions=("creation",))


def test_deferred_length_needs_its_extension() -> None:
    fails(ErrorKind.EXTENSION_DISABLED, "POST", "/files/", V, ("Upload-Defer-Length", "1"), settings=ONLY_CREATION)
    assert interpret("POST", "/files/", V, ("Upload-Length", "1"), settings=ONLY_CREATION) == Create(1)


def test_creation_with_upload_needs_its_extension() -> None:
    fails(ErrorKind.EXTENSION_DISABLED, "POST", "/files/", V, ("Upload-Length", "5"), OCTETS, body_size=5,
          settings=ONLY_CREATION)
    fails(ErrorKind.EXTENSION_DISABLED, "POST", "/files/", V, ("Upload-Length", "5"), OCTETS, body_size=None,
          settings=ONLY_CREATION)
    # an empty body is plain creation
    assert interpret("POST", "/files/", V, ("Upload-Length", "5"), OCTETS, body_size=0,
                     settings=ONLY_CREATION) == Create(5)


def test_termination_disabled() -> None:
    fails(ErrorKind.METHOD_NOT_ALLOWED, "DELETE", UPLOAD, V, settings=ONLY_CREATION)
    assert interpret("DELETE", UPLOAD, V) == Terminate(UID)


def test_creation_disabled_leaves_core() -> None:
    settings = ProtocolSettings(extensions=())
    fails(ErrorKind.METHOD_NOT_ALLOWED, "POST", "/files/", V, ("Upload-Length", "5"), settings=settings)
    assert interpret("HEAD", UPLOAD, V, settings=settings) == GetOffset(UID)
    assert interpret("PATCH", UPLOAD, V, OCTETS, ("Upload-Offset", "0"), settings=settings) == Append(UID, 0, None, 0)


# ---- HEAD / DELETE / OPTIONS intents ---------------------------------------------------------

def test_head_and_delete_intents() -> None:
    assert interpret("HEAD", UPLOAD, V) == GetOffset(UID)
    assert interpret("DELETE", UPLOAD, V) == Terminate(UID)
    assert interpret("OPTIONS", "/files/") == Options()
    assert interpret("OPTIONS", UPLOAD) == Options()


# ---- PATCH (items 24-36) --------------------------------------------------------------------

@pytest.mark.parametrize(("pairs", "body_size", "expected"), [
    ([OCTETS, ("Upload-Offset", "0")], 10, Append(UID, 0, None, 10)),
    ([OCTETS, ("Upload-Offset", "77")], None, Append(UID, 77, None, None)),
    ([OCTETS, ("Upload-Offset", " 77 ")], 0, Append(UID, 77, None, 0)),
    ([OCTETS, ("Upload-Offset", "5"), ("Upload-Length", "20")], 3, Append(UID, 5, 20, 3)),
    ([("Content-Type", "application/offset+octet-stream; charset=x"), ("Upload-Offset", "0")], 1,
     Append(UID, 0, None, 1)),
])
def test_append(pairs, body_size, expected: Append) -> None:
    assert interpret("PATCH", UPLOAD, V, *pairs, body_size=body_size) == expected


@pytest.mark.parametrize(("pairs", "kind"), [
    ([("Upload-Offset", "0")], ErrorKind.UNSUPPORTED_MEDIA_TYPE),
    ([("Content-Type", "application/octet-stream"), ("Upload-Offset", "0")], ErrorKind.UNSUPPORTED_MEDIA_TYPE),
    ([("Content-Type", "application/partial-upload"), ("Upload-Offset", "0")], ErrorKind.UNSUPPORTED_MEDIA_TYPE),
    ([("Content-Type", "text/plain"), ("Upload-Offset", "0")], ErrorKind.UNSUPPORTED_MEDIA_TYPE),
    ([OCTETS], ErrorKind.MISSING_OFFSET),
    ([OCTETS, ("Upload-Offset", "")], ErrorKind.INVALID_OFFSET),
    ([OCTETS, ("Upload-Offset", "-1")], ErrorKind.INVALID_OFFSET),
    ([OCTETS, ("Upload-Offset", "+1")], ErrorKind.INVALID_OFFSET),
    ([OCTETS, ("Upload-Offset", "0x10")], ErrorKind.INVALID_OFFSET),
    ([OCTETS, ("Upload-Offset", str(2**63))], ErrorKind.INVALID_OFFSET),
    ([OCTETS, ("Upload-Offset", "0"), ("Upload-Length", "-3")], ErrorKind.INVALID_LENGTH),
])
def test_append_rejects(pairs, kind: ErrorKind) -> None:
    fails(kind, "PATCH", UPLOAD, V, *pairs, body_size=5)


@pytest.mark.parametrize("pairs", [
    [OCTETS, ("Upload-Offset", "0"), ("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")],
    [OCTETS, ("Upload-Offset", "0"), ("Upload-Concat", "partial")],
])
def test_append_with_header_of_disabled_extension_is_400(pairs) -> None:
    fails(ErrorKind.EXTENSION_DISABLED, "PATCH", UPLOAD, V, *pairs, body_size=5, settings=NO_CONCAT_NO_CHECKSUM)


def test_append_length_over_max_size_is_413() -> None:
    # "deferred length over max size": the PATCH that settles the length must respect Tus-Max-Size (item 52).
    error = fails(ErrorKind.MAX_SIZE_EXCEEDED, "PATCH", UPLOAD, V, OCTETS, ("Upload-Offset", "0"),
                  ("Upload-Length", "1001"), settings=LIMITED)
    assert header(error.headers, "Tus-Max-Size") == "1000"
    assert interpret("PATCH", UPLOAD, V, OCTETS, ("Upload-Offset", "0"), ("Upload-Length", "1000"),
                     settings=LIMITED) == Append(UID, 0, 1000, 0)


# ---- plan_append -----------------------------------------------------------------------------

def info(length: int | None, offset: int = 0, **kwargs) -> UploadInfo:
    return UploadInfo(UID, length, offset, **kwargs)


@pytest.mark.parametrize(("intent", "upload", "settings", "plan"), [
    (Append(UID, 0, None, 10), info(100), DEFAULT, AppendPlan(100, ErrorKind.SIZE_EXCEEDED)),
    (Append(UID, 40, None, 60), info(100, 40), DEFAULT, AppendPlan(60, ErrorKind.SIZE_EXCEEDED)),
    (Append(UID, 40, None, None), info(100, 40), DEFAULT, AppendPlan(60, ErrorKind.SIZE_EXCEEDED)),
    (Append(UID, 100, None, 0), info(100, 100), DEFAULT, AppendPlan(0, ErrorKind.SIZE_EXCEEDED)),   # item 34
    (Append(UID, 0, None, 0), info(0, 0), DEFAULT, AppendPlan(0, ErrorKind.SIZE_EXCEEDED)),
    (Append(UID, 100, 100, 0), info(100, 100), DEFAULT, AppendPlan(0, ErrorKind.SIZE_EXCEEDED)),  # same length
    (Append(UID, 5, 100, 3), info(100, 5), DEFAULT, AppendPlan(95, ErrorKind.SIZE_EXCEEDED)),
    # deferred length
    (Append(UID, 0, None, 10), info(None), DEFAULT, AppendPlan(None, ErrorKind.SIZE_EXCEEDED)),
    (Append(UID, 0, None, None), info(None), DEFAULT, AppendPlan(None, ErrorKind.SIZE_EXCEEDED)),
    (Append(UID, 10, None, 5), info(None, 10), LIMITED, AppendPlan(990, ErrorKind.MAX_SIZE_EXCEEDED)),
    (Append(UID, 10, None, 990), info(None, 10), LIMITED, AppendPlan(990, ErrorKind.MAX_SIZE_EXCEEDED)),
    (Append(UID, 10, None, None), info(None, 10), LIMITED, AppendPlan(990, ErrorKind.MAX_SIZE_EXCEEDED)),
    # settling the deferred length
    (Append(UID, 10, 50, 40), info(None, 10), DEFAULT, AppendPlan(40, ErrorKind.SIZE_EXCEEDED, 50)),
    (Append(UID, 10, 10, 0), info(None, 10), DEFAULT, AppendPlan(0, ErrorKind.SIZE_EXCEEDED, 10)),
    (Append(UID, 0, 0, 0), info(None), DEFAULT, AppendPlan(0, ErrorKind.SIZE_EXCEEDED, 0)),
    (Append(UID, 10, 500, None), info(None, 10), LIMITED, AppendPlan(490, ErrorKind.SIZE_EXCEEDED, 500)),
])
def test_plan_append(intent: Append, upload: UploadInfo, settings: ProtocolSettings, plan: AppendPlan) -> None:
    assert tus.plan_append(intent, upload, settings) == plan


@pytest.mark.parametrize(("intent", "upload"), [
    (Append(UID, 0, None, 1), info(100, 10)),
    (Append(UID, 11, None, 1), info(100, 10)),
    (Append(UID, 9, None, 1), info(100, 10)),
    (Append(UID, 1, None, 0), info(None, 0)),
    (Append(UID, 0, 100, 0), info(100, 100)),
    (Append(UID, 5, 999, 0), info(100, 10)),      # mismatch reported before the length conflict
])
def test_plan_append_offset_mismatch_is_409_with_current_offset(intent: Append, upload: UploadInfo) -> None:
    with pytest.raises(TusError) as raised:
        tus.plan_append(intent, upload, DEFAULT)
    assert raised.value.kind is ErrorKind.MISMATCHED_OFFSET
    assert raised.value.headers == [("Upload-Offset", str(upload.offset))]   # item 26
    reply = tus.error_reply(raised.value)
    assert reply.status == 409
    assert header(reply.headers, "Upload-Offset") == str(upload.offset)


@pytest.mark.parametrize(("intent", "upload", "settings", "kind", "offset_header"), [
    # body longer than what is left (item 33)
    (Append(UID, 0, None, 101), info(100), DEFAULT, ErrorKind.SIZE_EXCEEDED, "0"),
    (Append(UID, 40, None, 61), info(100, 40), DEFAULT, ErrorKind.SIZE_EXCEEDED, "40"),
    (Append(UID, 100, None, 1), info(100, 100), DEFAULT, ErrorKind.SIZE_EXCEEDED, "100"),   # complete upload
    (Append(UID, 0, 10, 11), info(None), DEFAULT, ErrorKind.SIZE_EXCEEDED, "0"),
    (Append(UID, 4, 10, 7), info(None, 4), DEFAULT, ErrorKind.SIZE_EXCEEDED, "4"),
    # deferred length: Tus-Max-Size is the bound
    (Append(UID, 0, None, 1001), info(None), LIMITED, ErrorKind.MAX_SIZE_EXCEEDED, "0"),
    (Append(UID, 10, None, 991), info(None, 10), LIMITED, ErrorKind.MAX_SIZE_EXCEEDED, "10"),
])
def test_plan_append_limits_are_413(intent, upload, settings, kind, offset_header) -> None:
    with pytest.raises(TusError) as raised:
        tus.plan_append(intent, upload, settings)
    assert raised.value.kind is kind
    assert raised.value.status == 413
    assert header(raised.value.headers, "Upload-Offset") == offset_header


@pytest.mark.parametrize(("intent", "upload", "kind"), [
    (Append(UID, 0, 99, 0), info(100), ErrorKind.LENGTH_ALREADY_SET),        # item 52: never changes
    (Append(UID, 10, 101, 0), info(100, 10), ErrorKind.LENGTH_ALREADY_SET),
    (Append(UID, 10, 0, 0), info(100, 10), ErrorKind.LENGTH_ALREADY_SET),
    (Append(UID, 10, 9, 0), info(None, 10), ErrorKind.LENGTH_BELOW_OFFSET),
    (Append(UID, 10, 0, 0), info(None, 10), ErrorKind.LENGTH_BELOW_OFFSET),
])
def test_plan_append_length_conflicts_are_400(intent: Append, upload: UploadInfo, kind: ErrorKind) -> None:
    with pytest.raises(TusError) as raised:
        tus.plan_append(intent, upload, DEFAULT)
    assert raised.value.kind is kind
    assert raised.value.status == 400


# ---- replies ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "extension_header"), [
    (DEFAULT, "creation,creation-with-upload,creation-defer-length,checksum,checksum-trailer,termination,"
              "concatenation,concatenation-unfinished"),
    (ProtocolSettings(extensions=("creation",)), "creation"),
    (ProtocolSettings(extensions=("creation", "termination")), "creation,termination"),
    (ProtocolSettings(extensions=("termination", "creation")), "termination,creation"),
    (ProtocolSettings(extensions=()), None),             # item 11: omitted when there are none
])
def test_options_reply_lists_exactly_enabled_extensions(settings, extension_header) -> None:
    reply = tus.options_reply(settings)
    assert reply.status in (200, 204)
    assert header(reply.headers, "Tus-Version") == "1.0.0"
    assert header(reply.headers, "Tus-Extension") == extension_header
    if extension_header is not None:
        assert set(extension_header.split(",")) == set(settings.extensions)
    assert header(reply.headers, "Tus-Max-Size") is None
    assert reply.body == b""


@pytest.mark.parametrize("max_size", [0, 1, 1000, 2**63 - 1])
def test_options_reply_announces_max_size_only_when_set(max_size: int) -> None:
    reply = tus.options_reply(ProtocolSettings(max_size=max_size))
    assert header(reply.headers, "Tus-Max-Size") == str(max_size)


@pytest.mark.parametrize(("upload", "expected"), [
    (info(100, 0), {"Upload-Offset": "0", "Upload-Length": "100"}),
    (info(100, 100), {"Upload-Offset": "100", "Upload-Length": "100"}),       # item 14: even complete
    (info(0, 0), {"Upload-Offset": "0", "Upload-Length": "0"}),               # item 44
    (info(None, 0), {"Upload-Offset": "0", "Upload-Defer-Length": "1"}),      # item 20
    (info(None, 77), {"Upload-Offset": "77", "Upload-Defer-Length": "1"}),
])
def test_head_reply(upload: UploadInfo, expected: dict[str, str]) -> None:
    reply = tus.head_reply(upload, DEFAULT)
    assert reply.status in (200, 204)
    assert reply.body == b""
    assert header(reply.headers, "Cache-Control") == "no-store"            # item 18
    for name, value in expected.items():
        assert header(reply.headers, name) == value
    if upload.length is None:
        assert header(reply.headers, "Upload-Length") is None              # item 20
    else:
        assert header(reply.headers, "Upload-Defer-Length") is None         # item 51
    assert header(reply.headers, "Upload-Metadata") is None
    assert header(reply.headers, "Upload-Concat") is None
    assert header(reply.headers, "Upload-Expires") is None                # expiration is off


@pytest.mark.parametrize("upload", [info(100, 0), info(100, 40), info(None, 5), info(0, 0)])
def test_head_reply_content_length_copies_upload_length_or_is_omitted(upload: UploadInfo) -> None:
    # Item 23: a Content-Length on HEAD describes what GET would return: Upload-Length when known
    # (GET downloads are on), omitted otherwise.
    content_length = header(tus.head_reply(upload, DEFAULT).headers, "Content-Length")
    assert content_length == (None if upload.length is None else str(upload.length))


@pytest.mark.parametrize(("upload", "echo"), [
    (info(5, metadata={"name": b"a"}, metadata_header="name YQ=="), "name YQ=="),
    (info(5, metadata={"b": b"b", "a": b"a"}, metadata_header="b Yg==, a YQ=="), "b Yg==, a YQ=="),   # exact
    (info(5, metadata={"nonlatin": "słońce".encode(), "flag": b""}), "nonlatin c8WCb8WEY2U=,flag"),
    (info(None, metadata={"flag": b""}, metadata_header="flag"), "flag"),
])
def test_head_reply_echoes_metadata(upload: UploadInfo, echo: str) -> None:
    assert header(tus.head_reply(upload, DEFAULT).headers, "Upload-Metadata") == echo   # item 19


@pytest.mark.parametrize(("upload", "location"), [
    (info(100), "http://example.com/files/" + UID),
    (info(100, 40), "/files/" + UID),
    (info(0), "https://x/files/" + UID),
])
def test_created_reply(upload: UploadInfo, location: str) -> None:
    reply = tus.created_reply(upload, location, DEFAULT)
    assert reply.status == 201
    assert header(reply.headers, "Location") == location
    assert header(reply.headers, "Upload-Offset") == str(upload.offset)     # item 56
    assert header(reply.headers, "Content-Length") is None      # the HTTP layer frames every response
    assert header(reply.headers, "Upload-Expires") is None      # expiration is off
    assert reply.body == b""


def test_append_and_terminated_replies() -> None:
    reply = tus.append_reply(info(100, 64), DEFAULT)
    assert (reply.status, reply.headers, reply.body) == (204, [("Upload-Offset", "64")], b"")
    reply = tus.terminated_reply()
    assert (reply.status, reply.body) == (204, b"")
    assert header(reply.headers, "Upload-Offset") is None


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_error_reply_has_status_and_text_body(kind: ErrorKind) -> None:
    reply = tus.error_reply(TusError(kind, headers=[("X-Extra", "1")]))
    assert reply.status == kind.status
    assert ("X-Extra", "1") in reply.headers
    assert header(reply.headers, "Content-Type") == "text/plain; charset=utf-8"
    assert reply.body == kind.reason.encode() + b"\n"                      # item 83


# ---- model -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("upload", "complete", "remaining"), [
    (info(100, 0), False, 100),
    (info(100, 99), False, 1),
    (info(100, 100), True, 0),
    (info(0, 0), True, 0),
    (info(None, 0), False, None),
    (info(None, 500), False, None),
])
def test_upload_info_state(upload: UploadInfo, complete: bool, remaining: int | None) -> None:
    assert upload.is_complete is complete
    assert upload.remaining == remaining


def test_upload_info_copies() -> None:
    upload = info(None, 3)
    assert upload.with_offset(7) == info(None, 7)
    assert upload.with_length(10) == info(10, 3)
    assert upload == info(None, 3)            # frozen: the original is unchanged
    assert info(5).echo_metadata() is None


# ---- Location (item 48) ----------------------------------------------------------------------

def location(*pairs: tuple[str, str], settings: ProtocolSettings = DEFAULT, scheme: str = "http") -> str:
    return tus.upload_url(head("POST", "/files/", *pairs, scheme=scheme), settings, UID)


@pytest.mark.parametrize(("pairs", "scheme", "expected"), [
    ([("Host", "example.com")], "http", "http://example.com/files/"),
    ([("Host", "example.com:8080")], "http", "http://example.com:8080/files/"),
    ([("Host", "Example.COM")], "http", "http://Example.COM/files/"),
    ([("Host", " example.com ")], "http", "http://example.com/files/"),
    ([("Host", "example.com")], "https", "https://example.com/files/"),
    ([("Host", "127.0.0.1:1080")], "http", "http://127.0.0.1:1080/files/"),
    ([("Host", "[::1]")], "http", "http://[::1]/files/"),
    ([("Host", "[::1]:1080")], "http", "http://[::1]:1080/files/"),
    ([("Host", "[2001:db8::1]:443")], "https", "https://[2001:db8::1]:443/files/"),
    ([], "http", "/files/"),                                   # no Host: relative
    ([("Host", "")], "http", "/files/"),
    ([("Host", "  ")], "http", "/files/"),
])
def test_location_from_host(pairs, scheme: str, expected: str) -> None:
    assert location(*pairs, scheme=scheme) == expected + UID
    assert tus.collection_url(head("POST", "/files/", *pairs, scheme=scheme), DEFAULT) == expected


def test_location_uses_base_path() -> None:
    settings = ProtocolSettings(base_path="/api/up/")
    assert location(("Host", "h"), settings=settings) == "http://h/api/up/" + UID
    assert location(settings=settings) == "/api/up/" + UID


@pytest.mark.parametrize("host", [
    "evil.com/path",
    "evil.com?x",
    "evil.com#x",
    "user@evil.com",
    "a b",
    "evil.com:80:80",
    "evil.com:",
    "evil.com:123456",
    "::1",
    "[::1",
    "[::1]x",
    "[zz::1]",
    "evil.com\r\nX-Injected: 1",
    "évil.com",
    "evil.com\\x",
])
def test_invalid_host_is_400(host: str) -> None:
    with pytest.raises(TusError) as raised:
        location(("Host", host))
    assert raised.value.kind is ErrorKind.INVALID_HOST
    assert raised.value.status == 400


PROXY = ProtocolSettings(behind_proxy=True)
PROXY_PAIRS = [
    ([("Host", "internal:8080"), ("X-Forwarded-Host", "public.example")], "http://public.example/files/"),
    ([("Host", "internal:8080"), ("X-Forwarded-Proto", "https")], "https://internal:8080/files/"),
    ([("Host", "internal"), ("X-Forwarded-Proto", "HTTPS"), ("X-Forwarded-Host", "pub.example:8443")],
     "https://pub.example:8443/files/"),
    ([("Host", "internal"), ("X-Forwarded-Proto", "ftp")], "http://internal/files/"),       # unknown: ignored
    ([("Host", "internal"), ("X-Forwarded-Proto", "https, http")], "https://internal/files/"),
    ([("Host", "internal"), ("X-Forwarded-Host", "a.example, b.example")], "http://a.example/files/"),
    ([("Host", "internal"), ("X-Forwarded-Prefix", "/api")], "http://internal/api/files/"),
    ([("Host", "internal"), ("X-Forwarded-Prefix", "/api/v1/")], "http://internal/api/v1/files/"),
    ([("Host", "internal"), ("X-Forwarded-Prefix", "/")], "http://internal/files/"),
    ([("Host", "internal"), ("X-Forwarded-Prefix", "api")], "http://internal/files/"),     # not a path: dropped
    ([("Host", "internal"), ("X-Forwarded-Prefix", "//evil.example")], "http://internal/files/"),
    ([("Host", "internal"), ("X-Forwarded-Prefix", "/a b")], "http://internal/files/"),
    ([("Host", "internal"), ("X-Forwarded-Prefix", "/a\r\nX: y")], "http://internal/files/"),
    ([("X-Forwarded-Prefix", "/api")], "/api/files/"),                                    # still relative
    ([("Host", "internal"), ("Forwarded", "for=192.0.2.1;proto=https;host=pub.example")],
     "https://pub.example/files/"),
    ([("Host", "internal"), ("Forwarded", 'for="[2001:db8::1]";Proto=https;Host="pub.example:8443"')],
     "https://pub.example:8443/files/"),
    ([("Host", "internal"), ("Forwarded", "proto=https;host=first.example, proto=http;host=second.example")],
     "https://first.example/files/"),
    ([("Host", "internal"), ("Forwarded", "for=192.0.2.1")], "http://internal/files/"),
    ([("Host", "internal"), ("Forwarded", "host=[::1]:9000")], "http://[::1]:9000/files/"),
    # X-Forwarded-* win over Forwarded
    ([("Host", "internal"), ("Forwarded", "proto=http;host=fwd.example"), ("X-Forwarded-Proto", "https"),
      ("X-Forwarded-Host", "xfh.example")], "https://xfh.example/files/"),
    ([("Forwarded", "proto=https;host=pub.example")], "https://pub.example/files/"),     # no Host at all
]


@pytest.mark.parametrize(("pairs", "expected"), PROXY_PAIRS)
def test_location_behind_proxy(pairs, expected: str) -> None:
    assert location(*pairs, settings=PROXY) == expected + UID


@pytest.mark.parametrize(("pairs", "_"), PROXY_PAIRS)
def test_proxy_headers_ignored_when_not_behind_proxy(pairs, _) -> None:
    host = dict(pairs).get("Host")
    expected = f"http://{host}/files/" if host else "/files/"
    assert location(*pairs) == expected + UID


@pytest.mark.parametrize("forwarded_host", ["evil.com/x", "user@evil.com", "a b", "evil.com:99999999"])
def test_invalid_forwarded_host_is_400_behind_proxy(forwarded_host: str) -> None:
    with pytest.raises(TusError) as raised:
        location(("Host", "internal"), ("X-Forwarded-Host", forwarded_host), settings=PROXY)
    assert raised.value.kind is ErrorKind.INVALID_HOST
    # ...but it is never even looked at when the proxy is not trusted
    assert location(("Host", "internal"), ("X-Forwarded-Host", forwarded_host)) == "http://internal/files/" + UID


@pytest.mark.parametrize("settings", [
    ProtocolSettings(public_url="https://cdn.example/uploads/"),
    ProtocolSettings(public_url="https://cdn.example/uploads/", behind_proxy=True),
])
@pytest.mark.parametrize("pairs", [
    [],
    [("Host", "internal:1080")],
    [("Host", "internal"), ("X-Forwarded-Host", "other.example"), ("X-Forwarded-Proto", "http"),
     ("X-Forwarded-Prefix", "/p"), ("Forwarded", "host=fwd.example;proto=http")],
    [("Host", "in valid")],
])
def test_public_url_wins(settings: ProtocolSettings, pairs) -> None:
    assert location(*pairs, settings=settings) == "https://cdn.example/uploads/" + UID


# ---- CORS (item 40) --------------------------------------------------------------------------

REQUIRED_ALLOW_HEADERS = {"tus-resumable", "upload-length", "upload-metadata", "upload-offset",
                          "upload-defer-length", "upload-concat", "upload-checksum", "content-type",
                          "x-http-method-override", "x-requested-with"}
REQUIRED_EXPOSE_HEADERS = {"location", "upload-offset", "upload-length", "tus-version", "tus-resumable",
                           "tus-max-size", "tus-extension", "upload-metadata", "upload-defer-length",
                           "upload-concat", "upload-expires"}


def tokens(value: str | None) -> set[str]:
    assert value is not None
    return {token.strip().lower() for token in value.split(",")}


PREFLIGHT = {"origin": "https://app.example", "access-control-request-method": "PATCH",
             "access-control-request-headers": "tus-resumable,upload-offset,content-type"}


@pytest.mark.parametrize("allowed", [("*",), ("https://app.example",), ("https://other.example", "https://app.example")])
def test_cors_preflight(allowed: tuple[str, ...]) -> None:
    headers = cors_headers(PREFLIGHT, allowed, "OPTIONS")
    assert header(headers, "Access-Control-Allow-Origin") == "https://app.example"
    assert tokens(header(headers, "Access-Control-Allow-Methods")) >= {"post", "head", "patch", "delete", "options"}
    assert tokens(header(headers, "Access-Control-Allow-Headers")) >= REQUIRED_ALLOW_HEADERS
    assert header(headers, "Access-Control-Max-Age") is not None
    assert header(headers, "Access-Control-Expose-Headers") is None
    assert "origin" in tokens(header(headers, "Vary"))


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE", "OPTIONS"])
def test_cors_simple_response_exposes_tus_headers(method: str) -> None:
    # an OPTIONS without Access-Control-Request-Method is a plain tus OPTIONS, not a preflight
    headers = cors_headers({"origin": "https://app.example"}, ("*",), method)
    assert header(headers, "Access-Control-Allow-Origin") == "https://app.example"
    assert tokens(header(headers, "Access-Control-Expose-Headers")) >= REQUIRED_EXPOSE_HEADERS
    assert header(headers, "Access-Control-Allow-Methods") is None
    assert header(headers, "Access-Control-Allow-Headers") is None


def test_cors_header_constants_cover_the_checklist() -> None:
    assert tokens(ALLOW_METHODS) >= {"post", "head", "patch", "delete", "options"}
    assert tokens(ALLOW_HEADERS) >= REQUIRED_ALLOW_HEADERS
    assert tokens(EXPOSE_HEADERS) >= REQUIRED_EXPOSE_HEADERS


@pytest.mark.parametrize(("request_headers", "allowed", "method", "expected"), [
    # restricted: a foreign origin gets nothing but Vary
    (PREFLIGHT, ("https://other.example",), "OPTIONS", [("Vary", "Origin")]),
    ({"origin": "https://evil.example"}, ("https://app.example",), "PATCH", [("Vary", "Origin")]),
    ({"origin": "https://app.example.evil"}, ("https://app.example",), "PATCH", [("Vary", "Origin")]),
    ({"origin": "http://app.example"}, ("https://app.example",), "PATCH", [("Vary", "Origin")]),
    ({}, ("https://app.example",), "PATCH", [("Vary", "Origin")]),
    # open: no Origin, no CORS headers at all
    ({}, ("*",), "PATCH", []),
    ({"origin": ""}, ("*",), "PATCH", []),
    # CORS off
    (PREFLIGHT, (), "OPTIONS", []),
    ({"origin": "https://app.example"}, (), "PATCH", []),
])
def test_cors_not_granted(request_headers, allowed, method, expected) -> None:
    assert cors_headers(request_headers, allowed, method) == expected


# ---- GET (downloads) -------------------------------------------------------------------------

@pytest.mark.parametrize("pairs", [[], [V], [("Tus-Resumable", "0.2.2")]])
def test_get_is_a_download_and_exempt_from_tus_resumable(pairs) -> None:
    # Browsers follow links to uploads: GET needs no Tus-Resumable (item 10).
    assert interpret("GET", UPLOAD, *pairs) == Download(UID)


def test_get_carries_range_and_validators() -> None:
    intent = interpret("GET", UPLOAD, ("Range", "bytes=0-9"), ("If-Range", '"x"'), ("If-None-Match", '"y"'))
    assert intent == Download(UID, "bytes=0-9", '"x"', '"y"')


def test_get_with_downloads_off_is_405() -> None:
    error = fails(ErrorKind.METHOD_NOT_ALLOWED, "GET", UPLOAD, settings=NO_DOWNLOAD)
    assert header(error.headers, "Allow") == "OPTIONS, HEAD, PATCH, DELETE"


@pytest.mark.parametrize("path", BAD_PATHS)
def test_get_unknown_paths_are_404(path: str) -> None:
    fails(ErrorKind.NOT_FOUND, "GET", path)


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "POST"])
def test_only_get_and_options_are_exempt_from_tus_resumable(method: str) -> None:
    assert method not in VERSION_EXEMPT
    path = "/files/" if method == "POST" else UPLOAD
    fails(ErrorKind.UNSUPPORTED_VERSION, method, path, OCTETS, ("Upload-Offset", "0"), ("Upload-Length", "1"))


# ---- checksum on PATCH and POST (items 62-69) ------------------------------------------------

HELLO_SHA1 = "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="
HELLO_SHA1_DIGEST = hashlib.sha1(b"hello world").digest()


@pytest.mark.parametrize(("algorithm", "digest"), [
    ("md5", hashlib.md5(b"x").digest()),
    ("sha1", HELLO_SHA1_DIGEST),
    ("sha256", hashlib.sha256(b"x").digest()),
    ("sha512", hashlib.sha512(b"x").digest()),
    ("crc32", b"\x8c\xdc\x1a\x83"),
])
def test_append_parses_checksum(algorithm: str, digest: bytes) -> None:
    value = f"{algorithm} {base64.b64encode(digest).decode()}"
    intent = interpret("PATCH", UPLOAD, V, OCTETS, ("Upload-Offset", "0"), ("Upload-Checksum", value),
                       body_size=11)
    assert intent == Append(UID, 0, None, 11, (algorithm, digest), False)


def test_create_with_upload_parses_checksum() -> None:
    # item 56: the OpenAPI allows Upload-Checksum on a creation-with-upload POST
    intent = interpret("POST", "/files/", V, OCTETS, ("Upload-Length", "11"), ("Upload-Checksum", HELLO_SHA1),
                       body_size=11)
    assert intent == Create(11, body_size=11, checksum=("sha1", HELLO_SHA1_DIGEST))


@pytest.mark.parametrize(("method", "path", "pairs"), [
    ("PATCH", UPLOAD, [OCTETS, ("Upload-Offset", "0")]),
    ("POST", "/files/", [OCTETS, ("Upload-Length", "11")]),
])
@pytest.mark.parametrize(("value", "kind"), [
    ("sha3 " + "A" * 28, ErrorKind.UNSUPPORTED_CHECKSUM),
    ("SHA1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=", ErrorKind.UNSUPPORTED_CHECKSUM),
    ("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0", ErrorKind.INVALID_CHECKSUM),
    ("sha1 !!!", ErrorKind.INVALID_CHECKSUM),
    ("md5 Kq5sNclPz7QV2+lfQIuc6R7oRu0=", ErrorKind.INVALID_CHECKSUM),
])
def test_bad_checksum_header_is_400(method, path, pairs, value, kind) -> None:
    error = fails(kind, method, path, V, *pairs, ("Upload-Checksum", value), body_size=11)
    if kind is ErrorKind.UNSUPPORTED_CHECKSUM:
        assert header(error.headers, "Tus-Checksum-Algorithm") == "md5,sha1,sha256,sha512,crc32"


TRAILER = ("Trailer", "Upload-Checksum")
NO_TRAILER = ProtocolSettings(extensions=tuple(name for name in DEFAULT_EXTENSIONS if name != "checksum-trailer"))


@pytest.mark.parametrize(("pairs", "body_size", "settings", "trailer"), [
    ([TRAILER], None, DEFAULT, True),                                # chunked, announced trailer
    ([("Trailer", "X-Other, upload-checksum ")], None, DEFAULT, True),
    ([TRAILER], 11, DEFAULT, False),                                 # a sized body has no trailer section
    ([TRAILER], 0, DEFAULT, False),
    ([TRAILER, ("Upload-Checksum", HELLO_SHA1)], None, DEFAULT, False),    # already given as a header
    ([], None, DEFAULT, False),   # undeclared: not staged, so an interrupted body keeps its bytes (item 32)
    ([("Trailer", "X-Other")], None, DEFAULT, False),
])
def test_trailer_checksum(pairs, body_size, settings: ProtocolSettings, trailer: bool) -> None:
    patch = interpret("PATCH", UPLOAD, V, OCTETS, ("Upload-Offset", "0"), *pairs, body_size=body_size,
                      settings=settings)
    assert isinstance(patch, Append) and patch.trailer_checksum is trailer
    post = interpret("POST", "/files/", V, OCTETS, ("Upload-Length", "11"), *pairs, body_size=body_size,
                     settings=settings)
    assert isinstance(post, Create) and post.trailer_checksum is trailer


@pytest.mark.parametrize("settings", [NO_TRAILER, ProtocolSettings(extensions=("creation", "creation-with-upload"))])
def test_declared_trailer_is_refused_without_checksum_trailer(settings: ProtocolSettings) -> None:
    # item 4: an extension that is off is rejected, not half-served (the trailer would go unchecked)
    fails(ErrorKind.EXTENSION_DISABLED, "PATCH", UPLOAD, V, OCTETS, ("Upload-Offset", "0"), TRAILER,
          body_size=None, settings=settings)


@pytest.mark.parametrize(("settings", "algorithms"), [
    (DEFAULT, "md5,sha1,sha256,sha512,crc32"),
    (ProtocolSettings(extensions=("creation", "checksum")), "md5,sha1,sha256,sha512,crc32"),
    (NO_CONCAT_NO_CHECKSUM, None),
    (ProtocolSettings(extensions=()), None),
])
def test_options_announces_checksum_algorithms_only_with_checksum(settings, algorithms) -> None:
    # item 67: Tus-Checksum-Algorithm MUST be in OPTIONS when checksum is supported
    assert header(tus.options_reply(settings).headers, "Tus-Checksum-Algorithm") == algorithms


def test_options_lists_expiration_when_on() -> None:
    settings = ProtocolSettings(extensions=ALL_EXTENSIONS, expire_after=60)
    assert header(tus.options_reply(settings).headers, "Tus-Extension") == ",".join(ALL_EXTENSIONS)   # item 57


# ---- concatenation: creation (items 75-81) ---------------------------------------------------

P1, P2, P3 = "1" * 32, "2" * 32, "3" * 32


@pytest.mark.parametrize(("pairs", "body_size", "expected"), [
    ([("Upload-Length", "5"), ("Upload-Concat", "partial")], 0, Create(5, concat="partial")),
    ([("Upload-Length", "5"), ("Upload-Concat", " partial ")], 0, Create(5, concat="partial")),
    ([("Upload-Defer-Length", "1"), ("Upload-Concat", "partial")], 0, Create(None, concat="partial")),
    ([("Upload-Length", "5"), ("Upload-Concat", "partial"), OCTETS], 5, Create(5, body_size=5, concat="partial")),
    ([("Upload-Length", "5"), ("Upload-Concat", "partial"), ("Upload-Metadata", "a YQ==")], 0,
     Create(5, {"a": b"a"}, "a YQ==", concat="partial")),
])
def test_create_partial(pairs, body_size, expected: Create) -> None:
    intent = interpret("POST", "/files/", V, *pairs, body_size=body_size)
    assert intent == expected
    assert isinstance(intent, Create) and intent.partials == ()


def final(value: str, *pairs: tuple[str, str], settings: ProtocolSettings = DEFAULT, scheme: str = "http",
          body_size: int | None = 0) -> tus.Intent:
    return tus.interpret(head("POST", settings.base_path, V, ("Upload-Concat", value), *pairs, scheme=scheme,
                              body_size=body_size), settings)


PUBLIC = ProtocolSettings(public_url="https://cdn.example/files/")


@pytest.mark.parametrize(("urls", "pairs", "settings", "scheme", "partials"), [
    # absolute, with our own scheme, host, port and base path (tus-js-client, item 81)
    (f"http://example.com/files/{P1} http://example.com/files/{P2}", [("Host", "example.com")], DEFAULT, "http",
     (P1, P2)),
    (f"http://127.0.0.1:1080/files/{P1}", [("Host", "127.0.0.1:1080")], DEFAULT, "http", (P1,)),
    (f"https://h:8443/files/{P2} https://h:8443/files/{P1}", [("Host", "h:8443")], DEFAULT, "https", (P2, P1)),
    (f"http://[::1]:1080/files/{P1}", [("Host", "[::1]:1080")], DEFAULT, "http", (P1,)),
    # relative
    (f"/files/{P1} /files/{P2} /files/{P3}", [("Host", "example.com")], DEFAULT, "http", (P1, P2, P3)),
    (f"/files/{P1}", [], DEFAULT, "http", (P1,)),
    (f"/files/{P1} http://h/files/{P2}", [("Host", "h")], DEFAULT, "http", (P1, P2)),     # mixed
    (f"/files/{P1} /files/{P1}", [], DEFAULT, "http", (P1, P1)),                          # reuse (item 79)
    (f"/up/{P1}", [("Host", "h")], ProtocolSettings(base_path="/up/"), "http", (P1,)),
    (f"http://h/up/{P1}", [("Host", "h")], ProtocolSettings(base_path="/up/"), "http", (P1,)),
    # behind a proxy: the URLs the client saw
    (f"https://pub.example/api/files/{P1}",
     [("Host", "internal"), ("X-Forwarded-Host", "pub.example"), ("X-Forwarded-Proto", "https"),
      ("X-Forwarded-Prefix", "/api")], PROXY, "http", (P1,)),
    (f"/api/files/{P1} /api/files/{P2}", [("Host", "internal"), ("X-Forwarded-Prefix", "/api")], PROXY, "http",
     (P1, P2)),
    (f"https://pub.example/files/{P1}", [("Host", "internal"), ("Forwarded", "proto=https;host=pub.example")],
     PROXY, "http", (P1,)),
    # a configured public URL
    (f"https://cdn.example/files/{P1}", [("Host", "internal:1080")], PUBLIC, "http", (P1,)),
    (f"/files/{P1}", [("Host", "internal:1080")], PUBLIC, "http", (P1,)),
])
def test_create_final(urls: str, pairs, settings: ProtocolSettings, scheme: str, partials) -> None:
    intent = final("final;" + urls, *pairs, settings=settings, scheme=scheme)
    assert intent == Create(None, concat="final;" + urls, partials=partials)


def test_create_final_keeps_metadata_and_exact_concat_value() -> None:
    value = f"final;/files/{P1} http://h/files/{P2}"
    intent = final(value, ("Host", "h"), ("Upload-Metadata", "filename YS50eHQ="))
    assert isinstance(intent, Create)
    assert intent.concat == value                                   # echoed byte for byte on HEAD (item 80)
    assert intent.metadata == {"filename": b"a.txt"} and intent.metadata_header == "filename YS50eHQ="
    assert intent.length is None and intent.body_size == 0


@pytest.mark.parametrize(("urls", "pairs", "settings", "scheme"), [
    (f"http://evil.example/files/{P1}", [("Host", "example.com")], DEFAULT, "http"),          # foreign host
    (f"http://example.com:8080/files/{P1}", [("Host", "example.com")], DEFAULT, "http"),      # foreign port
    (f"http://example.com/files/{P1}", [("Host", "example.com:8080")], DEFAULT, "http"),
    (f"https://example.com/files/{P1}", [("Host", "example.com")], DEFAULT, "http"),          # foreign scheme
    (f"http://example.com/files/{P1}", [("Host", "example.com")], DEFAULT, "https"),
    (f"ftp://example.com/files/{P1}", [("Host", "example.com")], DEFAULT, "http"),
    (f"http://example.com.evil/files/{P1}", [("Host", "example.com")], DEFAULT, "http"),
    (f"http://example.com/files/{P1}", [], DEFAULT, "http"),                                  # we have no host
    (f"http://example.com/other/{P1}", [("Host", "example.com")], DEFAULT, "http"),           # foreign path
    (f"/other/{P1}", [], DEFAULT, "http"),
    (f"/files/{P1}/x", [], DEFAULT, "http"),
    (f"/files/{P1[:-1]}.", [], DEFAULT, "http"),                                              # not an id
    (f"/files/{UID}.info", [], DEFAULT, "http"),
    (f"/files/../files/{P1}", [], DEFAULT, "http"),
    ("/files/", [], DEFAULT, "http"),
    (f"files/{P1}", [], DEFAULT, "http"),
    (P1, [], DEFAULT, "http"),
    (f"/files/{P1} /files/no.pe", [], DEFAULT, "http"),                                        # one bad URL
    (f"//evil.example/files/{P1}", [], DEFAULT, "http"),
    (f"http://internal/files/{P1}", [("Host", "internal")], PUBLIC, "http"),                  # not the public URL
    (f"http://internal/files/{P1}", [("Host", "internal"), ("X-Forwarded-Host", "pub.example")], PROXY, "http"),
    (f"/api/files/{P1}", [("Host", "internal"), ("X-Forwarded-Prefix", "/api")], DEFAULT, "http"),  # untrusted
])
def test_create_final_with_foreign_or_bad_url_is_invalid_partial(urls, pairs, settings, scheme) -> None:
    with pytest.raises(TusError) as raised:
        final("final;" + urls, *pairs, settings=settings, scheme=scheme)
    assert raised.value.kind is ErrorKind.INVALID_PARTIAL
    assert raised.value.status == 400


def test_create_final_relative_url_under_public_url_path() -> None:
    # Item 81: relative URLs map back too. With a public URL whose path differs from base_path (a proxy
    # that rewrites /uploads/ to /files/), the client-visible relative path is /uploads/<id>, just as
    # X-Forwarded-Prefix paths are accepted behind a proxy.
    settings = ProtocolSettings(public_url="https://cdn.example/uploads/")
    assert final(f"final;https://cdn.example/uploads/{P1}", settings=settings) == \
        Create(None, concat=f"final;https://cdn.example/uploads/{P1}", partials=(P1,))
    assert final(f"final;/uploads/{P1}", settings=settings) == \
        Create(None, concat=f"final;/uploads/{P1}", partials=(P1,))


@pytest.mark.parametrize(("pairs", "body_size", "kind"), [
    ([("Upload-Length", "10")], 0, ErrorKind.FINAL_WITH_LENGTH),                # item 77
    ([("Upload-Length", "0")], 0, ErrorKind.FINAL_WITH_LENGTH),
    ([("Upload-Defer-Length", "1")], 0, ErrorKind.FINAL_WITH_LENGTH),
    ([OCTETS], 5, ErrorKind.FINAL_WITH_BODY),
    ([OCTETS], None, ErrorKind.FINAL_WITH_BODY),
    ([("Content-Type", "text/plain")], 5, ErrorKind.FINAL_WITH_BODY),
])
def test_create_final_rejects_length_and_body(pairs, body_size, kind: ErrorKind) -> None:
    with pytest.raises(TusError) as raised:
        final(f"final;/files/{P1}", *pairs, body_size=body_size)
    assert raised.value.kind is kind
    assert raised.value.status == 400


@pytest.mark.parametrize("value", ["final;", "final; /files/" + P1, "finalx;/files/" + P1,
                                   f"final;/files/{P1}  /files/{P2}", "", "partial;/files/" + P1, "Final;/x"])
def test_create_with_malformed_concat_is_400(value: str) -> None:
    with pytest.raises(TusError) as raised:
        final(value, ("Upload-Length", "5"))
    assert raised.value.kind is ErrorKind.INVALID_CONCAT
    assert raised.value.status == 400


def test_create_final_needs_concatenation() -> None:
    fails(ErrorKind.EXTENSION_DISABLED, "POST", "/files/", V, ("Upload-Concat", f"final;/files/{P1}"),
          settings=NO_CONCAT_NO_CHECKSUM)


# ---- concatenation: plan_final ---------------------------------------------------------------

def partial(length: int | None, offset: int | None = None, upload_id: str = P1) -> UploadInfo:
    return UploadInfo(upload_id, length, length or 0 if offset is None else offset, concat="partial")


UNFINISHED_OK = DEFAULT                                                    # concatenation-unfinished is on
FINISHED_ONLY = ProtocolSettings(extensions=("creation", "concatenation"))


@pytest.mark.parametrize(("partials", "settings", "length"), [
    ([partial(5), partial(7, upload_id=P2)], FINISHED_ONLY, 12),           # item 77: the sum
    ([partial(5), partial(5)], FINISHED_ONLY, 10),                         # the same partial twice
    ([partial(0)], FINISHED_ONLY, 0),
    ([partial(5), partial(7, 0, P2)], UNFINISHED_OK, 12),                  # item 82
    ([partial(5, 2), partial(7, 0, P2)], UNFINISHED_OK, 12),
    ([partial(5), partial(None, 3, P2)], UNFINISHED_OK, None),             # deferred: length unknown yet
    ([partial(None, 0), partial(None, 0, P2)], UNFINISHED_OK, None),
])
def test_plan_final(partials, settings: ProtocolSettings, length: int | None) -> None:
    assert tus.plan_final(partials, settings) == length


@pytest.mark.parametrize(("partials", "settings", "kind"), [
    ([UploadInfo(P1, 5, 5)], UNFINISHED_OK, ErrorKind.INVALID_PARTIAL),    # not a partial upload
    ([partial(5), UploadInfo(P2, 5, 5)], UNFINISHED_OK, ErrorKind.INVALID_PARTIAL),
    ([UploadInfo(P1, 5, 5, concat=f"final;/files/{P2}", partials=(P2,))], UNFINISHED_OK,
     ErrorKind.INVALID_PARTIAL),                                           # a final is not a partial
    ([partial(5, 4)], FINISHED_ONLY, ErrorKind.UNFINISHED_PARTIAL),        # item 78
    ([partial(5), partial(7, 0, P2)], FINISHED_ONLY, ErrorKind.UNFINISHED_PARTIAL),
    ([partial(None, 0)], FINISHED_ONLY, ErrorKind.UNFINISHED_PARTIAL),
])
def test_plan_final_rejects(partials, settings: ProtocolSettings, kind: ErrorKind) -> None:
    with pytest.raises(TusError) as raised:
        tus.plan_final(partials, settings)
    assert raised.value.kind is kind
    assert raised.value.status == 400


@pytest.mark.parametrize("settings", [ProtocolSettings(max_size=1000),
                                      ProtocolSettings(max_size=1000, extensions=("creation", "concatenation"))])
def test_plan_final_over_max_size_is_413(settings: ProtocolSettings) -> None:
    # Item 47: an upload longer than Tus-Max-Size gets 413 and is not created. Each partial is within
    # the limit, but the final they add up to (1200 bytes) is not.
    with pytest.raises(TusError) as raised:
        tus.plan_final([partial(600), partial(600, upload_id=P2)], settings)
    assert raised.value.kind is ErrorKind.MAX_SIZE_EXCEEDED
    assert raised.value.status == 413
    assert tus.plan_final([partial(600), partial(400, upload_id=P2)], settings) == 1000


@given(st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=20))
def test_plan_final_length_is_the_sum(lengths: list[int]) -> None:
    partials = [partial(length) for length in lengths]
    assert tus.plan_final(partials, FINISHED_ONLY) == sum(lengths)


# ---- concatenation: PATCH on a final, HEAD and 201 -------------------------------------------

FINAL_CONCAT = f"final;/files/{P1} /files/{P2}"


def final_info(length: int | None, offset: int = 0, **kwargs) -> UploadInfo:
    return UploadInfo(UID, length, offset, concat=FINAL_CONCAT, partials=(P1, P2), **kwargs)


@pytest.mark.parametrize(("intent", "upload"), [
    (Append(UID, 0, None, 5), final_info(10)),                   # unfinished
    (Append(UID, 10, None, 0), final_info(10, 10)),              # finished, empty body at the end
    (Append(UID, 3, None, 5), final_info(10)),                   # 403 comes before the offset check
    (Append(UID, 0, 10, 0), final_info(None)),
])
def test_plan_append_on_final_is_403(intent: Append, upload: UploadInfo) -> None:
    with pytest.raises(TusError) as raised:
        tus.plan_append(intent, upload, DEFAULT)
    assert raised.value.kind is ErrorKind.FINAL_IS_READ_ONLY     # items 37, 80
    assert raised.value.status == 403


def test_plan_append_on_partial_is_normal() -> None:
    upload = UploadInfo(UID, 10, 4, concat="partial")
    assert tus.plan_append(Append(UID, 4, None, 6), upload, DEFAULT) == AppendPlan(6, ErrorKind.SIZE_EXCEEDED)


@pytest.mark.parametrize(("upload", "expected", "absent"), [
    # item 80: no Upload-Offset on a final before it is joined; Upload-Length whenever it is known
    (final_info(10, 0), {"Upload-Length": "10", "Upload-Concat": FINAL_CONCAT, "Content-Length": "10"},
     ["Upload-Offset", "Upload-Defer-Length"]),
    (final_info(None, 0), {"Upload-Concat": FINAL_CONCAT},
     ["Upload-Offset", "Upload-Length", "Upload-Defer-Length", "Content-Length"]),
    # joined: Upload-Offset and Upload-Length both present and equal
    (final_info(10, 10), {"Upload-Offset": "10", "Upload-Length": "10", "Upload-Concat": FINAL_CONCAT},
     ["Upload-Defer-Length"]),
    (final_info(0, 0), {"Upload-Offset": "0", "Upload-Length": "0"}, ["Upload-Defer-Length"]),
    # a partial always has Upload-Offset and echoes Upload-Concat
    (UploadInfo(UID, 10, 3, concat="partial"), {"Upload-Offset": "3", "Upload-Length": "10",
                                                "Upload-Concat": "partial"}, ["Upload-Defer-Length"]),
    (UploadInfo(UID, None, 3, concat="partial"), {"Upload-Offset": "3", "Upload-Defer-Length": "1",
                                                  "Upload-Concat": "partial"}, ["Upload-Length"]),
])
def test_head_reply_concatenation(upload: UploadInfo, expected: dict[str, str], absent: list[str]) -> None:
    reply = tus.head_reply(upload, DEFAULT)
    assert reply.status == 200 and reply.body == b""
    for name, value in expected.items():
        assert header(reply.headers, name) == value
    for name in absent:
        assert header(reply.headers, name) is None


def test_head_reply_echoes_concat_byte_for_byte() -> None:
    value = f"final;http://h/files/{P1} /files/{P2}"
    reply = tus.head_reply(UploadInfo(UID, 4, 4, concat=value, partials=(P1, P2)), DEFAULT)
    assert header(reply.headers, "Upload-Concat") == value


@pytest.mark.parametrize(("upload", "offset"), [
    (final_info(10, 0), None),
    (final_info(None, 0), None),
    (final_info(10, 10), "10"),
    (UploadInfo(UID, 10, 0, concat="partial"), "0"),
])
def test_created_reply_concatenation(upload: UploadInfo, offset: str | None) -> None:
    reply = tus.created_reply(upload, "http://h/files/" + UID, DEFAULT)
    assert reply.status == 201
    assert header(reply.headers, "Location") == "http://h/files/" + UID
    assert header(reply.headers, "Upload-Offset") == offset
    assert header(reply.headers, "Upload-Concat") == upload.concat            # item 77 [DE-FACTO]


# ---- expiration (items 57-61) ----------------------------------------------------------------

DAY = 86400.0
EXPIRING = ProtocolSettings(extensions=ALL_EXTENSIONS, expire_after=DAY)
T0 = 1_700_000_000.0


@pytest.mark.parametrize(("upload", "settings", "expected"), [
    (info(100, 10, created_at=T0, updated_at=T0 + 500), EXPIRING, T0 + 500 + DAY),   # sliding from last write
    (info(100, 10, created_at=T0), EXPIRING, T0 + DAY),                             # falls back to creation
    (info(None, 10, created_at=T0, updated_at=T0 + 1), EXPIRING, T0 + 1 + DAY),
    (info(100, 100, created_at=T0, updated_at=T0), EXPIRING, None),                 # item 61: finished
    (info(0, 0, created_at=T0), EXPIRING, None),
    (info(100, 10, created_at=T0, updated_at=T0 + 500), DEFAULT, None),            # expiration off
    (final_info(10, 0, created_at=T0), EXPIRING, T0 + DAY),
    (final_info(10, 10, created_at=T0), EXPIRING, None),
])
def test_expires_at(upload: UploadInfo, settings: ProtocolSettings, expected: float | None) -> None:
    assert tus.expires_at(upload, settings) == expected


@pytest.mark.parametrize(("upload", "now", "gone"), [
    (info(100, 10, created_at=T0, updated_at=T0 + 500), T0 + 500 + DAY - 1, False),
    (info(100, 10, created_at=T0, updated_at=T0 + 500), T0 + 500 + DAY, True),
    (info(100, 10, created_at=T0, updated_at=T0 + 500), T0 + DAY + 1, False),      # the write pushed it back
    (info(100, 10, created_at=T0), T0 + DAY + 1, True),
    (info(100, 100, created_at=T0), T0 + 1000 * DAY, False),                      # finished uploads never expire
])
def test_check_not_expired(upload: UploadInfo, now: float, gone: bool) -> None:
    if gone:
        with pytest.raises(TusError) as raised:
            tus.check_not_expired(upload, EXPIRING, now)
        assert raised.value.kind is ErrorKind.GONE
        assert raised.value.status == 410                                          # item 60
    else:
        tus.check_not_expired(upload, EXPIRING, now)
    tus.check_not_expired(upload, DEFAULT, now + 1000 * DAY)                       # off: nothing expires


@pytest.mark.parametrize(("timestamp", "expected"), [
    (1403712000, "Wed, 25 Jun 2014 16:00:00 GMT"),           # item 59's example
    (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
    (1_767_582_245.75, "Mon, 05 Jan 2026 03:04:05 GMT"),     # zero-padded, fraction dropped
])
def test_http_date(timestamp: float, expected: str) -> None:
    assert tus.http_date(timestamp) == expected


IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                         r"[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT")


@given(st.floats(min_value=0, max_value=253402300799, allow_nan=False))
def test_http_date_is_imf_fixdate(timestamp: float) -> None:
    value = tus.http_date(timestamp)
    assert IMF_FIXDATE.fullmatch(value), value
    assert parsedate_to_datetime(value).timestamp() == int(timestamp)


@pytest.mark.parametrize("kwargs", [
    {"expire_after": -1.0},
    {"expire_after": -DAY},
    {"expire_after": float("nan")},
])
def test_protocol_settings_expiration_needs_a_positive_period(kwargs: dict) -> None:
    # "expiration" in extensions iff expire_after is positive: a negative period would make every
    # unfinished upload expire at once (410 right after creation).
    with pytest.raises(ValueError):
        ProtocolSettings(extensions=ALL_EXTENSIONS, **kwargs)
    with pytest.raises(ValueError):
        ProtocolSettings(**kwargs)


def test_replies_carry_upload_expires_while_the_upload_can_expire() -> None:
    unfinished = info(100, 40, created_at=T0, updated_at=T0 + 5)
    expires = tus.http_date(T0 + 5 + DAY)
    location = "http://h/files/" + UID
    # item 49: in the 201; item 58: in every PATCH response; item 22: optional on HEAD
    assert header(tus.created_reply(unfinished, location, EXPIRING).headers, "Upload-Expires") == expires
    assert header(tus.append_reply(unfinished, EXPIRING).headers, "Upload-Expires") == expires
    assert header(tus.head_reply(unfinished, EXPIRING).headers, "Upload-Expires") == expires
    assert tus.append_reply(unfinished, EXPIRING).headers == [("Upload-Offset", "40"), ("Upload-Expires", expires)]
    finished = info(100, 100, created_at=T0, updated_at=T0 + 5)
    for reply in (tus.created_reply(finished, location, EXPIRING), tus.append_reply(finished, EXPIRING),
                  tus.head_reply(finished, EXPIRING)):
        assert header(reply.headers, "Upload-Expires") is None
    for reply in (tus.created_reply(unfinished, location, DEFAULT), tus.append_reply(unfinished, DEFAULT),
                  tus.head_reply(unfinished, DEFAULT)):
        assert header(reply.headers, "Upload-Expires") is None
