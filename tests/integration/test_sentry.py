"""Sentry end to end: a real tusfast process reports to a local endpoint that speaks Sentry's envelope
protocol (no mocks of sentry_sdk); we provoke real 5xx replies and read what arrived."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.conftest import StartServer
from tusfast import __version__

V = {"Tus-Resumable": "1.0.0"}
SECRETS = {"Authorization": "Bearer s3cret-bearer-value", "Cookie": "a=b; session=c00kie-value",
           "X-Api-Key": "k-api-value-123", "X-Upload-Token": "tok-value-456",
           "Proxy-Authorization": "Basic cHJveHktdmFsdWU="}
SECRET_VALUES = ["s3cret-bearer-value", "c00kie-value", "a=b", "k-api-value-123", "tok-value-456",
                 "cHJveHktdmFsdWU="]


@dataclass
class Collector:
    """Sentry's ingestion endpoint, as far as tests need it, plus a hook receiver that never answers."""
    port: int = 0
    envelopes: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            raw = list(self.envelopes)
        return [payload for envelope in raw for kind, payload in parse_envelope(envelope) if kind == "event"]

    def wait_for_event(self, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no matching event; got {self.events()!r}")

    def all_bytes(self) -> bytes:
        with self.lock:
            return b"\n".join(self.envelopes)


def parse_envelope(data: bytes) -> list[tuple[str, Any]]:
    """Envelope: a JSON header line, then per item a JSON item header line and its payload."""
    items: list[tuple[str, Any]] = []
    _, _, rest = data.partition(b"\n")
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[:header["length"]], rest[header["length"]:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        else:
            payload, _, rest = rest.partition(b"\n")
        try:
            items.append((header.get("type", ""), json.loads(payload)))
        except ValueError:
            items.append((header.get("type", ""), payload))
    return items


@pytest.fixture
def collector() -> Iterator[Collector]:
    state = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/hooks"):
                time.sleep(3)       # longer than --hooks-http-timeout: the hook times out (504)
                try:
                    self._answer(200, b"{}")
                except OSError:     # tusfast gave up on us long ago
                    pass
                return
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding:
                self._answer(415, b"unsupported encoding")
                return
            if self.path.startswith("/api/") and self.path.rstrip("/").endswith("/envelope"):
                with state.lock:
                    state.envelopes.append(body)
                self._answer(200, b"{}")
            else:
                self._answer(404, b"{}")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_corrupt_upload_reports_500_with_context_and_no_credentials(start_server: StartServer,
                                                                     collector: Collector) -> None:
    server = start_server("--sentry-dsn", collector.dsn, "--sentry-environment", "ci")
    created = requests.post(server.url, headers={**V, "Upload-Length": "5"}, timeout=10)
    assert created.status_code == 201
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    (server.upload_dir / f"{upload_id}.info").write_bytes(b"{not json")

    reply = requests.patch(server.upload_url(upload_id), data=b"hello", timeout=10, headers={
        **V, **SECRETS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert reply.status_code == 500

    event = collector.wait_for_event(lambda e: e.get("tags", {}).get("status") == "500")
    tags = event["tags"]
    assert tags["upload_id"] == upload_id
    assert tags["method"] == "PATCH"
    assert tags["route"] == "/files/{id}"
    assert tags["offset"] == "0"
    assert event["contexts"]["tus"]["upload_id"] == upload_id
    assert event["release"] == f"tusfast@{__version__}"
    assert event["environment"] == "ci"
    assert event["request"]["url"] == "/files/{id}"       # the pattern, not the URL with the id
    headers = {name.lower(): value for name, value in event["request"]["headers"]}
    assert headers["upload-offset"] == "0"
    assert headers["authorization"] == headers["cookie"] == headers["x-api-key"] == "[Filtered]"
    assert headers["x-upload-token"] == "[Filtered]"
    raw = collector.all_bytes()
    for value in SECRET_VALUES:
        assert value.encode() not in raw, value
    assert server.stop() == 0


def test_hook_timeout_reports_504_with_hook_name(start_server: StartServer, collector: Collector) -> None:
    server = start_server("--sentry-dsn", collector.dsn, "--hooks-http", f"http://127.0.0.1:{collector.port}/hooks",
                          "--hooks-http-timeout", "1s", "--hooks-enabled", "pre-create")
    reply = requests.post(server.url, headers={**V, **SECRETS, "Upload-Length": "5"}, timeout=10)
    assert reply.status_code == 504

    event = collector.wait_for_event(lambda e: e.get("tags", {}).get("status") == "504")
    assert event["tags"]["hook"] == "pre-create"
    assert event["tags"]["method"] == "POST"
    assert event["tags"]["route"] == "/files/"
    assert event["tags"]["length"] == "5"
    assert "upload_id" not in event["tags"]
    raw = collector.all_bytes()
    for value in SECRET_VALUES:
        assert value.encode() not in raw, value


def test_client_errors_and_lock_timeouts_are_not_reported(start_server: StartServer, collector: Collector) -> None:
    server = start_server("--sentry-dsn", collector.dsn)
    assert requests.head(server.upload_url("0" * 32), headers=V, timeout=10).status_code == 404
    assert requests.post(server.url, headers={"Upload-Length": "5"}, timeout=10).status_code == 412
    assert server.stop() == 0         # flushes the queue on the way out
    assert collector.events() == []


@pytest.mark.parametrize("dsn", [None, "http://public@127.0.0.1:9/1"])
def test_sentry_sdk_is_imported_only_with_a_dsn(tmp_path: Path, dsn: str | None) -> None:
    code = (
        "import sys\n"
        "from tusfast import Config, TusServer\n"
        "import tusfast.cli, tusfast.handler, tusfast.observability.sentry\n"
        f"server = TusServer(Config(upload_dir={str(tmp_path)!r}, sentry_dsn={dsn!r}))\n"
        "print(type(server.reporter).__name__, 'sentry_sdk' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    expected = "NullReporter False" if dsn is None else "SentryReporter True"
    assert out.stdout.strip() == expected


def test_traces_sample_rate_one_sends_transactions_named_by_route(start_server: StartServer,
                                                                  collector: Collector) -> None:
    server = start_server("--sentry-dsn", collector.dsn, "--sentry-traces-sample-rate", "1")
    created = requests.post(server.url, headers={**V, "Upload-Length": "5"}, timeout=10)
    assert requests.head(created.headers["Location"], headers={**V, **SECRETS}, timeout=10).status_code == 200
    assert server.stop() == 0
    with collector.lock:
        raw = list(collector.envelopes)
    names = {payload.get("transaction") for envelope in raw for kind, payload in parse_envelope(envelope)
             if kind == "transaction"}
    assert {"POST /files/", "HEAD /files/{id}"} <= names
    for value in SECRET_VALUES:
        assert value.encode() not in collector.all_bytes(), value
