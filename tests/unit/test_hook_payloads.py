"""The pure hook payload builders and parsers, in tusd's v2 and v1 shapes."""

from __future__ import annotations

import json

import pytest

from tusfast.core.model import UploadInfo
from tusfast.hooks import FileInfoChanges, HookContext, HookEvent, HookFailure, HookRequest, HookResponse
from tusfast.hooks.dispatcher import parse_events
from tusfast.hooks.payload import (decode_response, encode_request, encode_response, is_safe_storage_path,
                                   parse_changes, parse_response, rejection, request_headers, safe_headers)

UID = "0123456789abcdef0123456789abcdef"
INFO = UploadInfo(UID, 10, 4, {"filename": b"a.txt", "raw": b"\xff"}, storage={
    "Type": "filestore", "Path": "/d/" + UID, "InfoPath": "/d/" + UID + ".info"})
REQUEST = HookRequest("PATCH", "/files/" + UID, "10.0.0.1:5000",
                      {"x-api-key": "secret", "cookie": "a=1", "tus-resumable": "1.0.0"})
CONTEXT = HookContext(HookEvent.POST_RECEIVE, INFO, REQUEST)


def test_v2_request_shape() -> None:
    document = json.loads(encode_request(CONTEXT, "tusd"))
    assert set(document) == {"Type", "Event"} and document["Type"] == "post-receive"
    assert set(document["Event"]) == {"Upload", "HTTPRequest"}
    assert document["Event"]["Upload"] == {
        "ID": UID, "Size": 10, "SizeIsDeferred": False, "Offset": 4,
        "MetaData": {"filename": "a.txt", "raw": "\ufffd"}, "IsPartial": False, "IsFinal": False,
        "PartialUploads": None, "Storage": {"Type": "filestore", "Path": "/d/" + UID, "InfoPath": "/d/" + UID + ".info"}}
    assert document["Event"]["HTTPRequest"] == {
        "Method": "PATCH", "URI": "/files/" + UID, "RemoteAddr": "10.0.0.1:5000",
        "Header": {"X-Api-Key": ["secret"], "Cookie": ["a=1"], "Tus-Resumable": ["1.0.0"]}}


def test_v1_request_shape_and_deferred_final_upload() -> None:
    final = UploadInfo(UID, None, 0, concat="final;/files/a /files/b", partials=("a", "b"))
    document = json.loads(encode_request(HookContext(HookEvent.PRE_CREATE, final, REQUEST), "tusd-v1"))
    assert set(document) == {"Upload", "HTTPRequest"}
    upload = document["Upload"]
    assert (upload["Size"], upload["SizeIsDeferred"], upload["IsFinal"], upload["PartialUploads"]) == \
        (0, True, True, ["a", "b"])


def test_hook_request_headers_name_the_hook_and_forward_only_the_listed_headers() -> None:
    headers = dict(request_headers(CONTEXT, ("X-Api-Key", "Authorization")))
    assert headers == {"Content-Type": "application/json", "Hook-Name": "post-receive", "X-Api-Key": "secret"}


def test_response_round_trip() -> None:
    response = HookResponse(403, "nope", {"X-Why": "policy"}, reject_upload=True, stop_upload=True,
                            changes=FileInfoChanges("my-id", {"name": "x"}, "a/b.bin"))
    assert parse_response(json.loads(encode_response(response))) == response


def test_empty_and_v1_bodies_accept() -> None:
    assert decode_response(HookEvent.PRE_CREATE, 200, b"", "tusd") == HookResponse()
    assert decode_response(HookEvent.PRE_CREATE, 204, b"{\"RejectUpload\": true}", "tusd-v1") == HookResponse()


@pytest.mark.parametrize("format", ["tusd", "tusd-v1"])
def test_non_2xx_rejects_with_the_receivers_status_and_body(format: str) -> None:
    response = decode_response(HookEvent.PRE_CREATE, 451, b"blocked", format)
    rejected = rejection(HookEvent.PRE_CREATE, response)
    assert rejected is not None and (rejected.status, rejected.body) == (451, "blocked")


@pytest.mark.parametrize(("event", "document", "status"), [
    (HookEvent.PRE_CREATE, {"RejectUpload": True}, 400),
    (HookEvent.PRE_FINISH, {"RejectUpload": True}, 400),
    (HookEvent.PRE_TERMINATE, {"RejectTermination": True}, 400),
    (HookEvent.PRE_ACCESS, {"RejectAccess": True}, 403),
    (HookEvent.PRE_CREATE, {"HTTPResponse": {"StatusCode": 429}}, 429),
    (HookEvent.PRE_CREATE, {"RejectUpload": True, "HTTPResponse": {"StatusCode": 200}}, 400),
])
def test_rejections(event: HookEvent, document: dict[str, object], status: int) -> None:
    rejected = rejection(event, parse_response(document))
    assert rejected is not None and rejected.status == status and rejected.body


@pytest.mark.parametrize(("event", "document"), [
    (HookEvent.PRE_CREATE, {}),
    (HookEvent.PRE_CREATE, {"RejectTermination": True}),
    (HookEvent.PRE_TERMINATE, {"RejectUpload": True}),
    (HookEvent.PRE_CREATE, {"HTTPResponse": {"StatusCode": 200, "Body": "fine"}}),
])
def test_not_rejections(event: HookEvent, document: dict[str, object]) -> None:
    assert rejection(event, parse_response(document)) is None


def test_unsafe_response_headers_are_dropped() -> None:
    assert safe_headers({"X-Ok": "1", "Content-Length": "9", "Bad Name": "x", "X-Split": "a\r\nb",
                         "Transfer-Encoding": "chunked", "Content-Type": "application/json"}) == \
        [("X-Ok", "1"), ("Content-Type", "application/json")]


@pytest.mark.parametrize("document", [
    {"ID": "ok_id-1", "MetaData": {"a": "b"}, "Storage": {"Path": "x/y/z.bin"}},
    {"ID": "A" * 128}, {"ID": ""}, {"MetaData": {}}, {"Storage": None},
])
def test_valid_changes(document: dict[str, object]) -> None:
    changes = parse_changes(document)
    assert changes.id == (document.get("ID") or None)


@pytest.mark.parametrize("document", [
    {"ID": "a" * 129}, {"ID": "../x"}, {"ID": "a.b"}, {"ID": "a/b"}, {"ID": "a\0"}, {"ID": 7},
    {"MetaData": {"a": 1}}, {"MetaData": {"a b": "c"}}, {"MetaData": ["x"]},
    {"Storage": {"Path": "/etc/passwd"}}, {"Storage": {"Path": "../up"}}, {"Storage": {"Path": "a/../../b"}},
    {"Storage": {"Path": ".locks/x"}}, {"Storage": {"Path": "a//b"}}, {"Storage": {"Path": "x.info"}},
    {"Storage": {"Path": "a\\..\\b"}}, {"Storage": "x"}, [],
])
def test_invalid_changes(document: object) -> None:
    with pytest.raises(HookFailure):
        parse_changes(document)


@pytest.mark.parametrize("body", [b"not json", b"[1]", b"{\"HTTPResponse\": {\"StatusCode\": \"x\"}}",
                                  b"{\"HTTPResponse\": {\"StatusCode\": 1000}}", b"{\"HTTPResponse\": []}"])
def test_malformed_v2_responses_fail(body: bytes) -> None:
    with pytest.raises(HookFailure):
        decode_response(HookEvent.PRE_CREATE, 200, body, "tusd")


def test_safe_storage_paths() -> None:
    assert is_safe_storage_path("2026/report.pdf")
    assert not is_safe_storage_path("") and not is_safe_storage_path("a/.hidden")


def test_parse_events() -> None:
    assert parse_events("pre-create, post-finish") == (HookEvent.PRE_CREATE, HookEvent.POST_FINISH)
    assert parse_events("all") == tuple(HookEvent)
    assert parse_events("") == ()
    with pytest.raises(ValueError):
        parse_events("pre-create,post-nothing")
