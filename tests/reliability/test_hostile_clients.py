"""Slow and malicious clients, black-box over raw sockets against real `tusfast serve` processes.

Slowloris heads, stalled bodies and clients that pipeline without reading are cut by their timeouts while
honest clients are served; malformed framing, smuggling attempts, conflicting tus headers, odd bytes and
path tricks get a clear 4xx (501 for an unknown transfer coding, as RFC 9112 asks) or a closed connection,
never a 500, a hang, or a file outside the upload directory; connection floods are
refused with 503 by --max-connections and --max-connections-per-ip, and both limits recover afterwards.
tests/integration/test_http.py and test_protocol.py hold the basic cases; this file adds the variants.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.integration.rawhttp import (OCTET, TIMEOUT, TUS, ConnectionClosed, RawConnection, Response,
                                       build_request, create, offset_of, path_of, upload_id, wait_until)
from tests.support.server_process import ServerProcess

SECOND_IP = "127.0.0.2"     # Linux routes all of 127/8 to lo: a second client address on one machine


# ---- helpers -----------------------------------------------------------------------------------------


class SourcedConnection(RawConnection):
    """A RawConnection whose socket is bound to a chosen local address (the server sees it as the client IP)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.eof = False


def connect(server: ServerProcess, source: str = "127.0.0.1", timeout: float = TIMEOUT) -> SourcedConnection:
    return SourcedConnection("127.0.0.1", server.port, source, timeout)


def tree(root: Path) -> set[str]:
    """Every path under `root` (files, directories, links), relative, for before/after comparisons."""
    found: set[str] = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


def answer(raw: RawConnection, method: str) -> Response | None:
    """The server's response, or None if it closed without one. A hang fails the test (socket timeout)."""
    try:
        return raw.read_response(method)
    except ConnectionClosed:
        return None


def assert_clear_refusal(response: Response | None, allowed: set[int]) -> None:
    """A 4xx from `allowed` with Tus-Resumable and a reason, or no answer at all; never a 5xx."""
    if response is None:
        return
    assert response.status in allowed, response
    assert response.header("Tus-Resumable") == "1.0.0", response


def options_ok(server: ServerProcess, source: str = "127.0.0.1") -> bool:
    with connect(server, source) as raw:
        raw.request("OPTIONS", path_of(server.url))
        return raw.read_response("OPTIONS").status == 204


def upload_via(server: ServerProcess, payload: bytes, source: str = "127.0.0.1") -> str:
    """A complete tus upload (POST, then two PATCHes) on one connection from `source`; returns its id."""
    with connect(server, source) as raw:
        raw.request("POST", path_of(server.url), [*TUS.items(), ("Upload-Length", str(len(payload)))])
        created = raw.read_response("POST")
        assert created.status == 201, created
        path = path_of(created.header("Location") or "")
        half = len(payload) // 2
        for offset, part in ((0, payload[:half]), (half, payload[half:])):
            raw.request("PATCH", path, [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", str(offset))], part)
            response = raw.read_response("PATCH")
            assert response.status == 204, response
        assert response.header("Upload-Offset") == str(len(payload))
        return upload_id(path)


def patch_head(path: str, *extra: bytes, offset: int = 0) -> bytes:
    """The head of a PATCH up to (not including) the blank line, with `extra` header lines appended."""
    lines = [b"PATCH " + path.encode() + b" HTTP/1.1", b"Host: x", b"Tus-Resumable: 1.0.0",
             b"Content-Type: " + OCTET.encode(), b"Upload-Offset: %d" % offset, *extra]
    return b"\r\n".join(lines) + b"\r\n"


def post_head(path: str, *extra: bytes) -> bytes:
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: x", b"Tus-Resumable: 1.0.0", *extra]
    return b"\r\n".join(lines) + b"\r\n"


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the malformed-input cases. The upload directory sits three levels down, so a path
    that escaped it (../../..) would land inside the watched tree, not in someone else's directory."""
    root = tmp_path_factory.mktemp("hostile")
    process = ServerProcess(root / "a" / "b" / "c" / "data", "--max-head-size", "8K").start()
    yield process
    process.kill()


@pytest.fixture
def server(hostile_server: ServerProcess) -> ServerProcess:
    if not hostile_server.alive:
        hostile_server.restart()
    return hostile_server


@pytest.fixture
def watched(server: ServerProcess) -> Iterator[Path]:
    """Fails the test if anything appears or disappears outside the upload directory (the whole tree
    above it, up to the test's own temporary root), or if the server died."""
    root = server.upload_dir.parents[3]
    outside = {path for path in tree(root) if not path.startswith("a/b/c/data")}
    yield root
    assert {path for path in tree(root) if not path.startswith("a/b/c/data")} == outside
    assert server.alive, "".join(server.log[-30:])
    assert not any("Traceback" in line for line in server.log), "".join(server.log[-60:])


# ---- slowloris: heads and bodies that never finish ----------------------------------------------------


class Dribbler(threading.Thread):
    """Sends one byte at a time to each connection, round after round, until told to stop or the
    server cuts them all. Remembers which connections were still open when `mark` was called."""

    def __init__(self, connections: list[RawConnection], data: bytes, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.connections = connections
        self.data = data
        self.interval = interval
        self.cut: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        position = 0
        while not self.stop.is_set() and len(self.cut) < len(self.connections) and position < len(self.data):
            for index, raw in enumerate(self.connections):
                if index not in self.cut and not raw.try_send(self.data[position:position + 1]):
                    self.cut.add(index)
            position += 1
            self.stop.wait(self.interval)


def test_slowloris_heads_are_cut_while_an_honest_upload_completes(start_server) -> None:
    server = start_server("--head-timeout", "4", "--idle-timeout", "60")
    slow = [connect(server) for _ in range(30)]
    try:
        head = patch_head(path_of(server.url) + "0" * 32) + b"".join(b"X-Slow-%d: y\r\n" % i for i in range(200))
        dribbler = Dribbler(slow, head)
        dribbler.start()
        time.sleep(0.5)                                     # every slow head has started
        payload = os.urandom(300_000)
        ident = upload_via(server, payload)
        assert (server.upload_dir / ident).read_bytes() == payload
        still_open = [raw for raw in slow if not raw.is_closed(0.01) and not raw.buffer]
        assert len(still_open) == len(slow), "slow heads were cut before the honest upload finished"
        for raw in slow:                                    # then each is cut: 408 or a plain close
            assert raw.closed_within(15) is not None, "slowloris head was never cut"
            if raw.buffer:
                assert raw.buffer.startswith(b"HTTP/1.1 408 "), raw.buffer[:100]
        dribbler.stop.set()
        dribbler.join(5)
        assert options_ok(server)
    finally:
        for raw in slow:
            raw.close()


def test_stalled_bodies_are_cut_keep_their_bytes_and_spare_honest_clients(start_server) -> None:
    server = start_server("--read-timeout", "3")
    stalled: list[tuple[str, RawConnection]] = []
    try:
        for index in range(20):
            url = create(server.url, 1000)
            raw = connect(server)
            raw.send(patch_head(path_of(url), b"Content-Length: 1000") + b"\r\n" + bytes([65 + index]) * 10)
            stalled.append((url, raw))
        payload = os.urandom(200_000)
        ident = upload_via(server, payload)             # served while twenty bodies hang
        assert (server.upload_dir / ident).read_bytes() == payload
        assert all(not raw.is_closed(0.01) for _, raw in stalled), "stalled bodies were cut too early"
        for url, raw in stalled:
            assert raw.closed_within(15) is not None, "stalled body was never cut"
            if raw.buffer:
                assert raw.buffer.startswith(b"HTTP/1.1 408 "), raw.buffer[:100]
        for index, (url, _) in enumerate(stalled):
            assert offset_of(url) == 10
            assert (server.upload_dir / upload_id(url)).read_bytes() == bytes([65 + index]) * 10
    finally:
        for _, raw in stalled:
            raw.close()


def test_stalled_chunk_header_and_trailer_are_cut(start_server) -> None:
    """A chunked body that stops inside a chunk-size line or inside the trailer section."""
    server = start_server("--read-timeout", "2")
    first, second = create(server.url, None), create(server.url, None)
    with connect(server) as one, connect(server) as two:
        one.send(patch_head(path_of(first), b"Transfer-Encoding: chunked") + b"\r\n3\r\nabc\r\n1")
        two.send(patch_head(path_of(second), b"Transfer-Encoding: chunked") + b"\r\n3\r\nxyz\r\n0\r\nX-Tr")
        assert one.closed_within(10) is not None and two.closed_within(10) is not None
    assert offset_of(first) in (0, 3) and offset_of(second) in (0, 3)
    assert (server.upload_dir / upload_id(first)).read_bytes() == b"abc"[:offset_of(first)]
    assert (server.upload_dir / upload_id(second)).read_bytes() == b"xyz"[:offset_of(second)]


def server_fds(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.pid}/fd"))


def test_pipelining_client_that_never_reads_is_closed(start_server) -> None:
    """Requests pipelined by the megabyte while no response is ever read: the server stops answering
    (and reading) once its responses pile up, and the idle timeout ends the connection, which a plain
    close could not (it would wait for the client to read what is buffered)."""
    server = start_server("--idle-timeout", "2", "--head-timeout", "30", "--no-access-log")
    baseline = server_fds(server)
    flood = [connect(server) for _ in range(3)]
    try:
        for raw in flood:
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.sock.setblocking(False)
        batch = build_request("OPTIONS", path_of(server.url)) * 1000
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for raw in flood:
                try:
                    raw.sock.send(batch)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    pass
            time.sleep(0.01)
        assert options_ok(server)                                     # others are served meanwhile
        assert wait_until(lambda: server_fds(server) <= baseline, timeout=20), "non-reading clients were kept"
    finally:
        close_all(flood)


def test_long_pipelined_backlog_is_served_in_order(start_server) -> None:
    """A backlog far beyond one head's worth (reading pauses while it is worked off) loses nothing."""
    server = start_server("--max-head-size", "4K", "--no-access-log")
    url = create(server.url, 5, body=b"hello")
    count = 5000
    requests_bytes = b"".join(build_request("HEAD", path_of(url), [*TUS.items(), ("X-Seq", str(i))])
                              for i in range(count))
    with connect(server, timeout=30) as raw:
        sender = threading.Thread(target=raw.sock.sendall, args=(requests_bytes,), daemon=True)
        sender.start()
        statuses = [raw.read_response("HEAD") for _ in range(count)]
        sender.join(30)
        assert all(r.status == 200 and r.header("Upload-Offset") == "5" for r in statuses)
        raw.request("OPTIONS", path_of(server.url))
        assert raw.read_response("OPTIONS").status == 204


# ---- malformed framing and smuggling ------------------------------------------------------------------

CHUNKED = b"Transfer-Encoding: chunked"

# (id, extra header lines, body bytes after the blank line, largest offset the upload may end with)
FRAMING_CASES = [
    ("chunk-size-plus-sign", [CHUNKED], b"+3\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-size-leading-space", [CHUNKED], b" 3\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-size-underscore", [CHUNKED], b"0_3\r\nabc\r\n0\r\n\r\n", 0),          # int("0_3", 16) == 3
    ("chunk-size-2^64", [CHUNKED], b"10000000000000000\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-size-16-f", [CHUNKED], b"ffffffffffffffff\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-size-sign-bit", [CHUNKED], b"8000000000000003\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-size-empty", [CHUNKED], b"\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-size-unicode-digit", [CHUNKED], "\u0663\r\nabc\r\n0\r\n\r\n".encode(), 0),
    ("chunk-size-line-endless", [CHUNKED], b"0" * 100_000 + b"3\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-extension-endless", [CHUNKED], b"3;" + b"e" * 100_000 + b"\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-data-no-crlf", [CHUNKED], b"3\r\nabc0\r\n\r\n", 3),
    ("chunk-data-bare-lf", [CHUNKED], b"3\r\nabc\n0\r\n\r\n", 3),
    ("chunk-longer-than-said", [CHUNKED], b"2\r\nabc\r\n0\r\n\r\n", 2),
    ("trailer-endless", [CHUNKED], b"3\r\nabc\r\n0\r\nX-T: " + b"t" * 100_000 + b"\r\n\r\n", 3),
    ("te-then-cl", [CHUNKED, b"Content-Length: 3"], b"3\r\nabc\r\n0\r\n\r\n", 0),
    ("cl-then-te-obfuscated", [b"Content-Length: 3", b"Transfer-Encoding: \tchunked"], b"abc", 0),
    ("te-two-headers", [CHUNKED, CHUNKED], b"3\r\nabc\r\n0\r\n\r\n", 0),
    ("te-space-before-colon", [b"Transfer-Encoding : chunked", b"Content-Length: 3"], b"abc", 0),
    ("te-unknown-coding", [b"Transfer-Encoding: xchunked"], b"3\r\nabc\r\n0\r\n\r\n", 0),
    ("cl-two-different", [b"Content-Length: 3", b"Content-Length: 5"], b"abcde", 0),
    ("cl-list-different", [b"Content-Length: 3, 5"], b"abcde", 0),
    ("cl-plus-sign", [b"Content-Length: +3"], b"abc", 0),
    ("cl-thirty-digits", [b"Content-Length: " + b"9" * 30], b"abc", 0),
    ("cl-hex", [b"Content-Length: 0x3"], b"abc", 0),
    ("cl-space-inside", [b"Content-Length: 1 0"], b"abc", 0),
    ("obs-fold-in-upload-offset", [b"Content-Length: 3", b"X-Pad: a\r\n Upload-Offset: 5"], b"abc", 0),
    ("obs-fold-in-content-length", [b"Content-Length: 3\r\n 3"], b"abc", 0),
    ("header-without-colon", [b"Content-Length: 3", b"NoColonHere"], b"abc", 0),
    ("header-name-with-space", [b"Content Length: 3"], b"abc", 0),
    ("header-value-nul", [b"Content-Length: 3", b"X-A: a\x00b"], b"abc", 0),
    ("header-value-bare-cr", [b"Content-Length: 3", b"X-A: a\rb"], b"abc", 0),
    ("header-name-non-ascii", [b"Content-Length: 3", b"X-\xff: a"], b"abc", 0),
]


@pytest.mark.parametrize("extra, body, max_offset", [case[1:] for case in FRAMING_CASES],
                         ids=[case[0] for case in FRAMING_CASES])
def test_malformed_framing_is_refused(server, watched, extra: list[bytes], body: bytes, max_offset: int) -> None:
    url = create(server.url, 10)
    with connect(server) as raw:
        raw.try_send(patch_head(path_of(url), *extra) + b"\r\n" + body)
        response = answer(raw, "PATCH")
        assert_clear_refusal(response, {400, 413, 431, 501})
        assert raw.is_closed(6), "connection kept open after malformed framing"
    offset = offset_of(url)
    assert offset <= max_offset
    assert (server.upload_dir / upload_id(url)).read_bytes() == b"abc"[:offset]
    assert options_ok(server)


# (id, raw request bytes) for request lines and heads the server must refuse or answer with a 4xx
HEAD_CASES = [
    ("method-only", b"HEAD\r\n\r\n"),
    ("no-version", b"HEAD /files/ \r\nHost: x\r\n\r\n"),
    ("lowercase-version", b"HEAD /files/ http/1.1\r\nHost: x\r\n\r\n"),
    ("version-garbage", b"HEAD /files/ HTTP/1.x\r\nHost: x\r\n\r\n"),
    ("extra-token", b"HEAD /files/ HTTP/1.1 extra\r\nHost: x\r\n\r\n"),
    ("double-spaces", b"HEAD  /files/  HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("tabs", b"HEAD\t/files/\tHTTP/1.1\r\nHost: x\r\n\r\n"),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("binary", bytes(range(256)) + b"\r\n\r\n"),
    ("only-blank-lines", b"\r\n" * 50),
    ("method-with-slash", b"HE/AD /files/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("space-in-target", b"HEAD /files/a b HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("nul-in-target", b"HEAD /files/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("non-utf8-in-target", b"HEAD /files/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("raw-utf8-in-target", "HEAD /files/\u00e9\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
    ("no-host", b"HEAD /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\n\r\n"),
    ("two-hosts", b"HEAD /files/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("header-before-request-line", b"Host: x\r\nHEAD /files/ HTTP/1.1\r\n\r\n"),
]


@pytest.mark.parametrize("data", [case[1] for case in HEAD_CASES], ids=[case[0] for case in HEAD_CASES])
def test_garbage_heads_get_4xx_or_close(server, watched, data: bytes) -> None:
    before = tree(server.upload_dir)
    with connect(server) as raw:
        raw.try_send(data)
        response = answer(raw, "HEAD")
        assert_clear_refusal(response, {400, 404, 405, 414, 431})
    assert tree(server.upload_dir) == before
    assert options_ok(server)


@pytest.mark.parametrize("head", [
    b"HEAD /files/ HTTP/1.1\r\nHost: x\r\nX-Marker-<script>: a\x00b\r\n\r\n",
    b"HEAD /files/<script>MARKER \x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /files/ HTTP/1.1\r\nHost: x\r\nMARKER<script> " + b"m" * 4000 + b"\r\n\r\n",
], ids=["header-value", "request-line", "long-header-line"])
def test_protocol_errors_give_a_reason_without_echoing_the_request(server, watched, head: bytes) -> None:
    with connect(server) as raw:
        raw.send(head)
        response = raw.read_response("GET")        # read the body of the 400, whatever the method
    assert response.status == 400, response
    assert response.header("Tus-Resumable") == "1.0.0"
    assert b"illegal" in response.body.lower() and len(response.body) < 100, response.body
    assert b"MARKER" not in response.body.upper() and b"<script>" not in response.body


def test_smuggled_request_in_a_body_is_never_run(server, watched) -> None:
    """CL.TE / TE.CL: bytes that only a second framing would read as a request must not run as one."""
    url = create(server.url, 100)
    victim = create(server.url, 5)
    smuggled = build_request("DELETE", path_of(victim), TUS)
    for extra, body in [([b"Content-Length: 5", b"Transfer-Encoding: chunked"], b"0\r\n\r\n" + smuggled),
                        ([CHUNKED, b"Content-Length: 4"], b"5c\r\n" + smuggled + b"\r\n0\r\n\r\n"),
                        ([b"Content-Length: 0", b"Content-Length: %d" % len(smuggled)], smuggled)]:
        with connect(server) as raw:
            raw.try_send(patch_head(path_of(url), *extra) + b"\r\n" + body)
            statuses = []
            while (response := answer(raw, "PATCH")) is not None:
                statuses.append(response.status)
        assert all(400 <= status < 500 for status in statuses), statuses
        assert len(statuses) <= 1, statuses
    assert offset_of(victim) == 0, "a smuggled DELETE ran"
    assert offset_of(url) == 0


# ---- conflicting and oversized tus headers -----------------------------------------------------------

DUPLICATES = [
    ("tus-resumable", [("Tus-Resumable", "0.2.2")]),
    ("tus-resumable-same", [("Tus-Resumable", "1.0.0")]),
    ("upload-length", [("Upload-Length", "3"), ("Upload-Length", "7")]),
    ("upload-length-same", [("Upload-Length", "3"), ("Upload-Length", "3")]),
    ("upload-length-and-defer", [("Upload-Length", "3"), ("Upload-Defer-Length", "1")]),
    ("upload-defer-length", [("Upload-Defer-Length", "1"), ("Upload-Defer-Length", "1")]),
    ("upload-metadata", [("Upload-Length", "3"), ("Upload-Metadata", "a YQ=="), ("Upload-Metadata", "b Yg==")]),
    ("upload-concat", [("Upload-Concat", "partial"), ("Upload-Concat", "partial"), ("Upload-Length", "3")]),
    ("content-type", [("Upload-Length", "3"), ("Content-Type", OCTET), ("Content-Type", "text/plain"),
                      ("Content-Length", "3")]),
    ("method-override", [("Upload-Length", "3"), ("X-HTTP-Method-Override", "POST"),
                         ("X-HTTP-Method-Override", "DELETE")]),
]


@pytest.mark.parametrize("headers", [case[1] for case in DUPLICATES], ids=[case[0] for case in DUPLICATES])
def test_duplicate_tus_headers_on_creation_create_nothing(server, watched, headers: list[tuple[str, str]]) -> None:
    """Sent twice, a tus header is 400 even with equal values: joined, `3, 3` is not an integer [5, 6],
    and proxies that keep only the first or the last copy would disagree with us on its meaning."""
    before = tree(server.upload_dir)
    body = b"abc" if ("Content-Length", "3") in headers else b""
    with connect(server) as raw:
        raw.request("POST", path_of(server.url), [*TUS.items(), *headers], body)
        response = raw.read_response("POST")
    assert_clear_refusal(response, {400, 412})
    assert response.header("Location") is None
    assert tree(server.upload_dir) == before


@pytest.mark.parametrize("headers", [
    [("Tus-Resumable", "0.2.2")],
    [("Upload-Offset", "0")],
    [("Upload-Offset", "3")],
    [("Upload-Length", "10"), ("Upload-Length", "3")],
    [("Upload-Checksum", "sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0="), ("Upload-Checksum", "md5 kAFQmDzST7DWlj99KOF/cg==")],
    [("Content-Type", OCTET)],
], ids=["tus-resumable", "offset-same", "offset-different", "length", "checksum", "content-type"])
def test_duplicate_tus_headers_on_patch_change_nothing(server, watched, headers: list[tuple[str, str]]) -> None:
    url = create(server.url, None)
    base = [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0")]
    with connect(server) as raw:
        raw.request("PATCH", path_of(url), [*base, *headers], b"abc")
        response = raw.read_response("PATCH")
    assert_clear_refusal(response, {400, 409, 412})
    assert offset_of(url) == 0
    assert (server.upload_dir / upload_id(url)).read_bytes() == b""


def test_huge_upload_metadata_is_431_and_a_big_allowed_one_round_trips(server, watched) -> None:
    before = tree(server.upload_dir)
    with connect(server) as raw:                      # beyond --max-head-size 8K
        raw.request("POST", path_of(server.url), [*TUS.items(), ("Upload-Length", "3"),
                                                  ("Upload-Metadata", "filename " + "QUFB" * 3000)])
        response = answer(raw, "POST")
        assert_clear_refusal(response, {431})
        assert raw.is_closed(6)
    assert tree(server.upload_dir) == before
    big = "filename " + "QUFB" * 1500 + ",other " + "QkJC" * 200 + ",flag"     # about 7 KB: allowed
    url = create(server.url, 3, metadata=big)
    response = requests.head(url, headers=TUS, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Upload-Metadata"] == big


@pytest.mark.parametrize("line", [
    b"Upload-Metadata: k\xe9y YQ==",                  # raw latin-1/non-UTF-8 key
    b"Upload-Metadata: filename \xff\xfe",            # raw bytes where base64 belongs
    b"Upload-Metadata: filename 8J+YgA==\xff",        # trailing garbage after valid base64
    b"Upload-Metadata: filename \xc3\xa9",            # raw UTF-8
    b"Upload-Length: 3\xff",
    b"Upload-Length: \xb3",                           # latin-1 superscript three: isdigit() is True
    b"Upload-Length: \xef\xbc\x93",                   # fullwidth digit three, UTF-8
    b"Upload-Concat: final;/files/\xff",
], ids=["metadata-key", "metadata-value", "metadata-tail", "metadata-utf8", "length-tail", "length-superscript",
        "length-fullwidth", "concat"])
def test_non_utf8_bytes_in_tus_headers_are_400(server, watched, line: bytes) -> None:
    before = tree(server.upload_dir)
    extra = [line] if line.startswith(b"Upload-Length") or line.startswith(b"Upload-Concat") \
        else [b"Upload-Length: 3", line]
    with connect(server) as raw:
        raw.send(post_head(path_of(server.url), *extra) + b"\r\n")
        response = answer(raw, "POST")
        assert response is not None
        assert_clear_refusal(response, {400})
    assert tree(server.upload_dir) == before


def test_non_utf8_bytes_survive_where_they_are_allowed(server, watched) -> None:
    """Binary metadata values (base64) round-trip; an unknown header with odd bytes is ignored."""
    metadata = "filename //7/AP8=,name 8J+YgMOp"            # \xff\xfe\xff\x00\xff and an emoji + é
    url = create(server.url, 3, metadata=metadata)
    assert requests.head(url, headers=TUS, timeout=TIMEOUT).headers["Upload-Metadata"] == metadata
    with connect(server) as raw:
        raw.send(patch_head(path_of(url), b"Content-Length: 3", b"X-Odd: \xff\xfe\x80") + b"\r\nabc")
        response = raw.read_response("PATCH")
    assert response.status == 204 and response.header("Upload-Offset") == "3"
    assert (server.upload_dir / upload_id(url)).read_bytes() == b"abc"


def test_host_header_with_odd_bytes_does_not_reach_location(server, watched) -> None:
    before = tree(server.upload_dir)
    for host in [b"a\xffb", b"\xc3\xa9.example", b"up\x00loads", b"a\x7fb"]:
        with connect(server) as raw:
            raw.send(b"POST /files/ HTTP/1.1\r\nHost: " + host + b"\r\nTus-Resumable: 1.0.0\r\n"
                     b"Upload-Length: 3\r\n\r\n")
            response = answer(raw, "POST")
            assert_clear_refusal(response, {400})
    assert tree(server.upload_dir) == before


# ---- upload ids and paths ----------------------------------------------------------------------------

BAD_TARGETS = [
    "..%5c..%5c{id}", "%2e%2e%5c{id}", "..\\..\\{id}", "{id}\\..\\x",            # backslashes
    "%c0%ae%c0%ae%2f{id}", "%e0%80%ae%e0%80%ae/{id}",                             # overlong UTF-8 dots
    "%ef%bc%8e%ef%bc%8e%ef%bc%8f{id}", "%e2%80%a5%2f{id}",                        # fullwidth / leader dots
    "%252e%252e%252f{id}", "%25252e%25252e%25252f", "{id}%2500", "{id}%252f..",   # double and triple encoding
    "{id}%00.info", "%00{id}", "{id}%0d%0aX-Injected:%201", "{id}%0aLocation:%20x",   # NUL, CR LF
    "{id};.info", "{id}/.", "{id}/..", "{id}/%2e%2e", "{id}.", "{id}%20",
    "{id}" + "0" * 5000, "a" * 7000, "../" * 1000, "%2e%2e%2f" * 500,            # overlong
    "%c3%a9" * 16, "\u00e9" * 16, "\U0001f600" * 8, "%f0%9f%98%80" * 8,           # unicode, raw and encoded
    "{upper_dots}", "~{id}", "{id}~", "{id}%7e",
    "../../{decoy}", "..%2f..%2f{decoy}", "%2e%2e/%2e%2e/{decoy}", "%2e%2e%2f%2e%2e%2f{decoy}",   # the decoy
    "..%252f..%252f{decoy}", "..\\..\\{decoy}", "%2e%2e%5c%2e%2e%5c{decoy}", "{decoy}%00",
]


@pytest.mark.parametrize("template", BAD_TARGETS)
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_path_tricks_never_reach_another_file(server, watched, template: str, method: str) -> None:
    url = create(server.url, 10, body=b"abc")
    ident = upload_id(url)
    decoy = watched / "a" / "b" / ("e" * 32)                     # a tus-looking file outside the upload dir
    decoy.write_bytes(b"secret")
    (watched / "a" / "b" / ("e" * 32 + ".info")).write_text('{"ID": "%s", "Size": 10, "Offset": 6}' % ("e" * 32))
    try:
        target = template.format(id=ident, upper_dots="..%2F..%2F..%2F" + "e" * 32, decoy="e" * 32)
        raw_target = path_of(server.url).encode() + target.encode("utf-8")
        headers = b"Host: x\r\nTus-Resumable: 1.0.0\r\n"
        if method == "PATCH":
            headers += b"Content-Type: " + OCTET.encode() + b"\r\nUpload-Offset: 3\r\nContent-Length: 3\r\n"
        with connect(server) as raw:
            raw.try_send(method.encode() + b" " + raw_target + b" HTTP/1.1\r\n" + headers + b"\r\n"
                         + (b"def" if method == "PATCH" else b""))
            response = answer(raw, method)
        assert_clear_refusal(response, {400, 404, 414, 431})
        if response is not None:
            assert response.header("Upload-Offset") is None, response
            assert response.header("X-Injected") is None and response.count("Location") == 0, response
            assert b"secret" not in response.body
        assert decoy.read_bytes() == b"secret"
        assert offset_of(url) == 3
        assert (server.upload_dir / ident).read_bytes() == b"abc"
    finally:
        decoy.unlink()
        (watched / "a" / "b" / ("e" * 32 + ".info")).unlink()


@pytest.mark.parametrize("reference", ["../../{decoy}", "/files/../../{decoy}", "/files/..%2f..%2f{decoy}",
                                       "/files/%2e%2e/%2e%2e/{decoy}", "/files/{decoy}%00", "/files/..\\..\\{decoy}",
                                       "http://127.0.0.1:1/files/{decoy}", "file:///etc/passwd"])
def test_concatenation_cannot_reference_files_outside(server, watched, reference: str) -> None:
    partial = create(server.url, 3, body=b"abc", extra={"Upload-Concat": "partial"})
    decoy = watched / "a" / "b" / ("e" * 32)
    decoy.write_bytes(b"sec")
    (watched / "a" / "b" / ("e" * 32 + ".info")).write_text(
        '{"ID": "%s", "Size": 3, "Offset": 3, "IsPartial": true}' % ("e" * 32))
    try:
        before = tree(server.upload_dir)
        concat = f"final;{path_of(partial)} {reference.format(decoy='e' * 32)}"
        with connect(server) as raw:
            raw.request("POST", path_of(server.url), [*TUS.items(), ("Upload-Concat", concat)])
            response = raw.read_response("POST")
        assert_clear_refusal(response, {400, 404})
        assert response.header("Location") is None
        assert tree(server.upload_dir) == before
        assert decoy.read_bytes() == b"sec"
    finally:
        decoy.unlink()
        (watched / "a" / "b" / ("e" * 32 + ".info")).unlink()


# ---- connection floods: --max-connections and --max-connections-per-ip ------------------------------


def open_many(server: ServerProcess, count: int, source: str = "127.0.0.1") -> list[SourcedConnection]:
    return [connect(server, source, timeout=5) for _ in range(count)]


def split_refused(connections: list[SourcedConnection], wait: float = 2.0) -> tuple[list[SourcedConnection],
                                                                                    list[Response]]:
    """(accepted, refusals): a refused connection gets its 503 right away, unasked; an accepted one
    stays silent. The first connections are checked after a short wait, the rest without waiting."""
    accepted, refusals = [], []
    deadline = time.monotonic() + wait
    for raw in connections:
        raw.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            refusals.append(raw.read_response("GET"))
        except (socket.timeout, TimeoutError):
            accepted.append(raw)
        except ConnectionClosed:
            refusals.append(Response(0, "closed", []))
        raw.sock.settimeout(5)
    return accepted, refusals


def assert_503(response: Response, reason: str) -> None:
    assert response.status == 503, response
    assert response.header("Retry-After") is not None and int(response.header("Retry-After") or "") > 0
    assert response.header("Tus-Resumable") == "1.0.0"
    assert response.header("Connection") == "close"
    assert reason.encode() in response.body, response


def close_all(connections: list[SourcedConnection]) -> None:
    for raw in connections:
        raw.close()


def admitted(server: ServerProcess, count: int, source: str = "127.0.0.1") -> int:
    """How many of `count` new connections from `source` the server keeps (then they are closed)."""
    connections = open_many(server, count, source)
    try:
        return len(split_refused(connections, wait=0.5)[0])
    finally:
        close_all(connections)


def test_connection_flood_is_refused_with_503_and_the_limit_recovers(start_server) -> None:
    server = start_server("--max-connections", "20", "--metrics")
    flood = open_many(server, 200)
    try:
        accepted, refusals = split_refused(flood)
        assert len(accepted) == 20 and len(refusals) == 180
        for response in refusals:
            assert_503(response, "too many connections")
        accepted[0].request("OPTIONS", path_of(server.url))    # the admitted ones are served
        assert accepted[0].read_response("OPTIONS").status == 204
    finally:
        close_all(flood)
    assert wait_until(lambda: admitted(server, 20) == 20, timeout=15)     # all 20 places are free again
    metrics = requests.get(server.url.replace("/files/", "/metrics"), timeout=TIMEOUT).text
    refused = re.search(r'^tusfast_http_requests_total\{method="other",status="503"\} (\S+)$', metrics, re.M)
    assert refused is not None and float(refused.group(1)) >= 180, metrics


def test_refused_connections_are_closed_even_if_the_client_never_closes(start_server) -> None:
    """A refused connection lingers (so the 503 is not lost to a reset), but not forever: otherwise a
    flood of never-closed refused sockets would exhaust the server's file descriptors."""
    server = start_server("--max-connections", "1")
    holder = connect(server)
    refused = open_many(server, 10)
    try:
        for raw in refused:
            assert_503(raw.read_response("GET"), "too many connections")
        gone = 0
        deadline = time.monotonic() + 20
        while gone < len(refused) and time.monotonic() < deadline:
            gone = 0
            for raw in refused:              # the server still reads (and drops) while lingering;
                if not raw.try_send(b"x"):   # once it has closed, a write is answered with a reset
                    gone += 1
            time.sleep(0.5)
        assert gone == len(refused), "refused connections were never closed by the server"
    finally:
        close_all(refused)
        holder.close()


def test_per_ip_limit_refuses_one_address_and_spares_others(start_server) -> None:
    server = start_server("--max-connections-per-ip", "5", "--idle-timeout", "60")
    held = open_many(server, 5)
    try:
        accepted, _ = split_refused(held, wait=0.5)
        assert len(accepted) == 5
        with connect(server) as sixth:
            response = answer(sixth, "GET")
            assert response is not None
            assert_503(response, "too many connections from your address")
        payload = os.urandom(100_000)                           # another address is not affected
        ident = upload_via(server, payload, source=SECOND_IP)
        assert (server.upload_dir / ident).read_bytes() == payload
        held.pop().close()                                       # one place frees up for 127.0.0.1
        assert wait_until(lambda: options_ok(server), timeout=10)
        held[0].request("OPTIONS", path_of(server.url))          # the held ones still work
        assert held[0].read_response("OPTIONS").status == 204
    finally:
        close_all(held)


def test_per_ip_flood_recovers_and_does_not_leak(start_server) -> None:
    server = start_server("--max-connections-per-ip", "5", "--idle-timeout", "4")
    for _ in range(3):                         # the count must come back to zero after every flood
        flood = open_many(server, 200)
        try:
            accepted, refusals = split_refused(flood, wait=1.0)
            assert len(accepted) == 5 and len(refusals) == 195
            assert all(response.status == 503 for response in refusals)
            assert options_ok(server, source=SECOND_IP)          # responsive for others meanwhile
        finally:
            close_all(flood)
        assert wait_until(lambda: admitted(server, 6) == 5, timeout=15)     # back to exactly five
    idle = open_many(server, 5)                # closed by the server's idle timeout, not by the client
    try:
        for raw in idle:
            assert raw.closed_within(15) is not None
        fresh = open_many(server, 5)
        try:
            accepted, _ = split_refused(fresh, wait=0.5)
            assert len(accepted) == 5, "connections closed by a timeout still counted against the address"
        finally:
            close_all(fresh)
    finally:
        close_all(idle)


def test_an_admitted_connection_keeps_serving_under_the_per_ip_limit(start_server) -> None:
    """The limit counts connections, not requests: an admitted keep-alive connection serves as many
    requests as it likes, while a second one from the same address is refused."""
    server = start_server("--max-connections-per-ip", "1")
    with connect(server) as only:
        for _ in range(20):
            only.request("OPTIONS", path_of(server.url))
            assert only.read_response("OPTIONS").status == 204
        with connect(server) as second:
            assert_503(answer(second, "GET") or Response(0, "", []), "from your address")


def test_unix_socket_connections_are_exempt_from_the_per_ip_limit(tmp_path: Path) -> None:
    path = str(tmp_path / "tus.sock")
    process = subprocess.Popen([sys.executable, "-m", "tusfast", "serve", "--unix-socket", path,
                                "--max-connections-per-ip", "1", "--upload-dir", str(tmp_path / "data")],
                               stderr=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on" in line:
                break
        for _ in range(5):
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(10)
            client.connect(path)
            clients.append(client)
        for client in clients:
            client.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: local\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 204 ")
    finally:
        for client in clients:
            client.close()
        process.terminate()
        assert process.wait(20) == 0


@pytest.mark.parametrize("value", ["-1", "x"])
def test_bad_per_ip_limit_is_a_usage_error(value: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tusfast", "serve", "--max-connections-per-ip", value,
                             "--upload-dir", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "max" in result.stderr.lower() and "connections" in result.stderr.lower()


def test_per_ip_limit_from_the_environment(start_server) -> None:
    server = start_server(env={"TUSFAST_MAX_CONNECTIONS_PER_IP": "2"})
    held = open_many(server, 2)
    try:
        with connect(server) as third:
            response = answer(third, "GET")
            assert response is not None
            assert_503(response, "from your address")
    finally:
        close_all(held)
