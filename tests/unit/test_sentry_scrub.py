"""The pure parts of the Sentry reporter: credential scrubbing, routes, request context."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import requests

from tusfast import Config, TusServer
from tusfast.http.messages import HttpRequest
from tusfast.observability.sentry import (FILTERED, NullReporter, is_sensitive, request_context, route_of,
                                          scrub_event, scrub_headers)
from tusfast.storage import FileStorage


@pytest.mark.parametrize("name", ["Authorization", "cookie", "Set-Cookie", "Proxy-Authorization", "X-Api-Key",
                                  "X-Upload-Token", "x-client-secret", "Api-Key", "TOKEN", "X-KEY-ID"])
def test_sensitive_names(name: str) -> None:
    assert is_sensitive(name)


@pytest.mark.parametrize("name", ["Upload-Offset", "Upload-Length", "Tus-Resumable", "Content-Type", "Host",
                                  "User-Agent", "Upload-Metadata"])
def test_ordinary_names(name: str) -> None:
    assert not is_sensitive(name)


def test_scrub_header_pairs_and_mappings() -> None:
    pairs = [("authorization", "Bearer x"), ("upload-offset", "5"), ("cookie", "a=b")]
    assert scrub_headers(pairs) == [["authorization", FILTERED], ["upload-offset", "5"], ["cookie", FILTERED]]
    mapping = {"X-Api-Key": ["k"], "Upload-Length": ["5"]}       # hook payload style: lists of values
    assert scrub_headers(mapping) == {"X-Api-Key": FILTERED, "Upload-Length": ["5"]}
    assert scrub_headers("not headers") == "not headers"


def test_scrub_event_everywhere() -> None:
    event: dict[str, Any] = {
        "request": {"headers": {"Authorization": "Bearer x", "Accept": "*/*"}, "cookies": {"a": "b"},
                    "query_string": "token=abc&page=2", "env": {"SECRET_KEY": "s"}},
        "contexts": {"hook": {"HTTPRequest": {"Header": {"Cookie": ["a=b"], "Upload-Length": ["5"]}}},
                     "tus": {"upload_id": "abc", "api_token": "t"}},
        "extra": {"headers": [["Set-Cookie", "sid=1"], ["Content-Type", "text/plain"]]},
        "tags": {"route": "/files/{id}", "x-secret": "s"},
        "breadcrumbs": {"values": [{"message": "m", "data": {"Proxy-Authorization": "Basic p"}}]},
    }
    scrubbed = scrub_event(event, None)
    assert scrubbed["request"]["headers"] == {"Authorization": FILTERED, "Accept": "*/*"}
    assert "cookies" not in scrubbed["request"]
    assert scrubbed["request"]["query_string"] == f"token={FILTERED}&page=2"
    assert scrubbed["request"]["env"] == {"SECRET_KEY": FILTERED}
    header = scrubbed["contexts"]["hook"]["HTTPRequest"]["Header"]
    assert header == {"Cookie": FILTERED, "Upload-Length": ["5"]}
    assert scrubbed["contexts"]["tus"] == {"upload_id": "abc", "api_token": FILTERED}
    assert scrubbed["extra"]["headers"] == [["Set-Cookie", FILTERED], ["Content-Type", "text/plain"]]
    assert scrubbed["tags"] == {"route": "/files/{id}", "x-secret": FILTERED}
    assert scrubbed["breadcrumbs"]["values"][0]["data"] == {"Proxy-Authorization": FILTERED}
    text = repr(scrubbed)
    for value in ("Bearer x", "a=b", "sid=1", "Basic p", "abc&"):
        assert value not in text


def test_routes_are_patterns() -> None:
    assert route_of("/files/", "/files/") == ("/files/", None)
    assert route_of("/files", "/files/") == ("/files/", None)
    assert route_of("/files/abc123", "/files/") == ("/files/{id}", "abc123")
    assert route_of("/other/abc", "/files/") == ("(unmatched)", None)
    assert route_of("/files/a/b", "/files/") == ("(unmatched)", None)


class _Body:
    size = 0


def test_request_context() -> None:
    request = HttpRequest("POST", "/files/abc?x=1", [("x-http-method-override", "PATCH"), ("upload-offset", "7"),
                                                       ("authorization", "Bearer x")], _Body())  # type: ignore[arg-type]
    context = request_context(request, "/files/", status=503, hook=None)
    assert context["method"] == "PATCH"
    assert context["route"] == "/files/{id}"
    assert context["upload_id"] == "abc"
    assert context["offset"] == "7"
    assert context["length"] is None
    assert context["status"] == 503
    assert context["request"]["url"] == "/files/{id}"
    assert ["authorization", FILTERED] in context["request"]["headers"]


class _Recorder(NullReporter):
    """Our own ErrorReporter protocol (not sentry): records what the server reports."""
    enabled = True

    def __init__(self) -> None:
        self.exceptions: list[tuple[BaseException, dict[str, Any]]] = []
        self.replies: list[tuple[int, str, dict[str, Any]]] = []

    def capture_exception(self, exc: BaseException, context: Any) -> None:
        self.exceptions.append((exc, dict(context)))

    def capture_5xx(self, status: int, message: str, context: Any) -> None:
        self.replies.append((status, message, dict(context)))


class _BrokenStorage(FileStorage):
    async def get_info(self, upload_id: str) -> Any:
        raise RuntimeError("bug in storage")


def test_unhandled_exception_goes_to_the_reporter(tmp_path: Path) -> None:
    recorder = _Recorder()

    async def run() -> int:
        config = Config(port=0, upload_dir=tmp_path)
        async with TusServer(config, storage=_BrokenStorage(tmp_path), reporter=recorder) as server:
            url = server.url + "0123456789abcdef0123456789abcdef"
            reply = await asyncio.to_thread(requests.head, url, headers={"Tus-Resumable": "1.0.0",
                                                                         "Cookie": "a=b"}, timeout=10)
            return reply.status_code

    assert asyncio.run(run()) == 500
    assert len(recorder.exceptions) == 1
    exc, context = recorder.exceptions[0]
    assert isinstance(exc, RuntimeError)
    assert context["upload_id"] == "0123456789abcdef0123456789abcdef"
    assert context["route"] == "/files/{id}" and context["method"] == "HEAD" and context["status"] == 500
    assert ["cookie", FILTERED] in context["request"]["headers"]
