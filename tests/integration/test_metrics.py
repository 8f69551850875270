"""--metrics end to end: real tusfast processes, real uploads, a real scrape parsed by prometheus_client."""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartServer
from tests.support.server_process import ServerProcess

V = {"Tus-Resumable": "1.0.0"}
OCTETS = {**V, "Content-Type": "application/offset+octet-stream"}
BIG = 1024 * 1024           # above the splice threshold: these bytes bypass the transport

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(server: ServerProcess) -> str:
    parts = urlsplit(server.url)
    return f"{parts.scheme}://{parts.netloc}/metrics"


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def create(server: ServerProcess, length: int) -> str:
    response = requests.post(server.url, headers={**V, "Upload-Length": str(length)}, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.headers["Location"])


def patch(url: str, offset: int, data: bytes, expect: int = 204) -> None:
    response = requests.patch(url, headers={**OCTETS, "Upload-Offset": str(offset)}, data=data, timeout=30)
    assert response.status_code == expect, response.text


def test_counts_match_what_happened(start_server: StartServer) -> None:
    server = start_server("--metrics")
    big = bytes(range(256)) * (BIG // 256)

    done = create(server, BIG)                  # finished in one spliced PATCH, then downloaded
    patch(done, 0, big)
    download = requests.get(done, headers=V, timeout=30)
    assert download.status_code == 200 and download.content == big

    deleted_done = create(server, 5)            # finished, then terminated
    patch(deleted_done, 0, b"hello")
    deleted_partial = create(server, 10)        # unfinished, then terminated
    patch(deleted_partial, 0, b"abc")
    for url in (deleted_done, deleted_partial):
        assert requests.delete(url, headers=V, timeout=10).status_code == 204

    left = create(server, 10)                   # unfinished and left alone
    patch(left, 0, b"abcd")
    patch(left, 0, b"zz", expect=409)           # wrong offset
    assert requests.head(left, headers=V, timeout=10).status_code == 200
    assert requests.request("BREW", server.url, headers=V, timeout=10).status_code in (404, 405)

    samples = scrape(metrics_url(server))
    assert value(samples, "tusfast_uploads_created_total") == 4
    assert value(samples, "tusfast_uploads_finished_total") == 2
    assert value(samples, "tusfast_uploads_terminated_total") == 2
    assert value(samples, "tusfast_uploads_expired_total") == 0
    assert value(samples, "tusfast_uploads_active") == 1

    requests_total = {dict(labels)["method"] + " " + dict(labels)["status"]: count
                      for (name, labels), count in samples.items() if name == "tusfast_http_requests_total"}
    statuses = {key: count for key, count in requests_total.items() if not key.startswith("other")}
    assert statuses == {"POST 201": 4, "PATCH 204": 4, "PATCH 409": 1, "GET 200": 1, "DELETE 204": 2,
                        "HEAD 200": 1}
    assert sum(count for key, count in requests_total.items() if key.startswith("other ")) == 1
    assert value(samples, "tusfast_http_request_duration_seconds_count", method="PATCH") == 5

    body_bytes = BIG + 5 + 3 + 4 + 2
    assert value(samples, "tusfast_http_received_bytes_total") >= body_bytes
    assert value(samples, "tusfast_http_sent_bytes_total") >= BIG          # the download, by sendfile
    assert value(samples, "tusfast_http_connections_open") >= 1            # the scrape's own

    # A scrape is not a tus request: it is not counted.
    again = scrape(metrics_url(server))
    assert value(again, "tusfast_http_requests_total", method="GET", status="200") == 1


def test_no_metrics_without_the_flag(server: ServerProcess) -> None:
    response = requests.get(metrics_url(server), timeout=10)
    assert response.status_code == 404
    assert "tusfast_" not in response.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_separate_listener(start_server: StartServer) -> None:
    port = free_port()
    server = start_server("--metrics", "--metrics-listen", f"127.0.0.1:{port}")
    patch(create(server, 3), 0, b"abc")
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "tusfast_uploads_finished_total") == 1
    assert value(samples, "tusfast_http_requests_total", method="POST", status="201") == 1
    assert requests.get(metrics_url(server), timeout=10).status_code == 404     # not on the main listener
    assert requests.get(f"http://127.0.0.1:{port}/files/", timeout=10).status_code == 404
    assert any("metrics on http://127.0.0.1:" in line for line in server.log)


def test_expiry_is_counted(start_server: StartServer) -> None:
    server = start_server("--metrics", "--expire-after", "1s")
    patch(create(server, 10), 0, b"abc")
    done = create(server, 2)
    patch(done, 0, b"ok")
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(metrics_url(server))
        if value(samples, "tusfast_uploads_expired_total") >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value(samples, "tusfast_uploads_expired_total") == 1
    assert value(samples, "tusfast_uploads_created_total") == 2
    assert value(samples, "tusfast_uploads_active") == 0


def test_hook_calls_and_failures(start_server: StartServer, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for event, code in (("pre-create", 0), ("post-create", 1)):
        script = hooks / event
        script.write_text(f"#!/bin/sh\ncat > /dev/null\nexit {code}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    server = start_server("--metrics", "--hooks-dir", str(hooks), "--hooks-enabled", "pre-create,post-create",
                          "--hooks-http-retries", "0")
    create(server, 5)
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(metrics_url(server))
        if value(samples, "tusfast_hook_calls_total", event="post-create") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert value(samples, "tusfast_hook_calls_total", event="pre-create") == 1
    assert value(samples, "tusfast_hook_failures_total", event="pre-create") == 0
    assert value(samples, "tusfast_hook_calls_total", event="post-create") == 1
    assert value(samples, "tusfast_hook_failures_total", event="post-create") == 1
    assert value(samples, "tusfast_hook_duration_seconds_count", event="pre-create") == 1


def test_requests_refused_by_the_http_layer_are_counted(start_server: StartServer) -> None:
    server = start_server("--metrics", "--max-head-size", "4K")
    port = urlsplit(server.url).port
    assert port is not None
    for head in (b"GARBAGE\r\n\r\n", b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 5000 + b"\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(head)
            assert raw.recv(64).startswith(b"HTTP/1.1 4")
    samples = scrape(metrics_url(server))
    assert value(samples, "tusfast_http_requests_total", method="other", status="400") == 1
    assert value(samples, "tusfast_http_requests_total", method="other", status="431") == 1
