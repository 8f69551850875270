"""HTTP/1.1 behaviour of tusfast over raw sockets: keep-alive, pipelining, chunked bodies, malformed input,
limits, timeouts, Expect: 100-continue, early replies and graceful shutdown."""

from __future__ import annotations

import signal
import socket
import time

import pytest
import requests

from tests.support.server_process import ServerProcess

from .rawhttp import (OCTET, TIMEOUT, TUS, ConnectionClosed, RawConnection, build_request, chunked, create,
                      offset_of, path_of, upload_id)




def patch_headers(offset: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """PATCH headers; an `extra` header replaces a default one of the same name."""
    replaced = {name.lower() for name, _ in extra}
    defaults = [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", str(offset))]
    return [h for h in defaults if h[0].lower() not in replaced] + list(extra)


def data_of(server: ServerProcess, url: str) -> bytes:
    return (server.upload_dir / upload_id(url)).read_bytes()


# ---- keep-alive and pipelining [87] ------------------------------------------------------------------


def test_keep_alive_serves_several_requests(server) -> None:
    base = path_of(server.url)
    with RawConnection.to(server) as raw:
        raw.request("OPTIONS", base)
        assert raw.read_response("OPTIONS").status == 204
        raw.request("POST", base, [*TUS.items(), ("Upload-Length", "6")])
        created = raw.read_response("POST")
        assert created.status == 201, created
        path = path_of(created.header("Location") or "")
        raw.request("PATCH", path, patch_headers(0), b"abc")
        response = raw.read_response("PATCH")
        assert response.status == 204 and response.header("Upload-Offset") == "3"
        raw.request("HEAD", path, TUS)
        response = raw.read_response("HEAD")
        assert response.status == 200 and response.header("Upload-Offset") == "3"
        raw.request("PATCH", path, patch_headers(0), b"xyz")       # 409: an error keeps the connection
        response = raw.read_response("PATCH")
        assert response.status == 409 and response.header("Upload-Offset") == "3"
        raw.request("PATCH", path, patch_headers(3, ("Content-Type", "text/plain")), b"xyz")   # 415
        assert raw.read_response("PATCH").status == 415
        raw.request("PATCH", path, patch_headers(3), b"def")
        response = raw.read_response("PATCH")
        assert response.status == 204 and response.header("Upload-Offset") == "6"
        raw.request("DELETE", path, TUS)
        assert raw.read_response("DELETE").status == 204
        raw.request("OPTIONS", base)
        assert raw.read_response("OPTIONS").status == 204
        assert not raw.is_closed(0.2)


def test_pipelined_requests_answered_in_order(server) -> None:
    url = create(server.url, 9)
    path = path_of(url)
    batch = (build_request("PATCH", path, patch_headers(0), b"abc")
             + build_request("PATCH", path, patch_headers(3), b"def")
             + build_request("HEAD", path, TUS))
    with RawConnection.to(server) as raw:
        raw.send(batch)
        first, second, third = (raw.read_response(m) for m in ("PATCH", "PATCH", "HEAD"))
    assert (first.status, first.header("Upload-Offset")) == (204, "3")
    assert (second.status, second.header("Upload-Offset")) == (204, "6")
    assert (third.status, third.header("Upload-Offset")) == (200, "6")
    assert data_of(server, url) == b"abcdef"


def test_pipelined_error_in_the_middle(server) -> None:
    """A rejected PATCH's body must be consumed (or the connection closed), never parsed as a request."""
    url = create(server.url, 9)
    path = path_of(url)
    smuggled = build_request("DELETE", path, TUS)
    batch = (build_request("PATCH", path, patch_headers(0), b"abc")
             + build_request("PATCH", path, patch_headers(0), smuggled)            # 409, body looks like a request
             + build_request("PATCH", path, patch_headers(3, ("Content-Type", "x/y")), smuggled)   # 415
             + build_request("PATCH", path, patch_headers(3), b"def"))
    with RawConnection.to(server) as raw:
        raw.send(batch)
        statuses = []
        for _ in range(4):
            try:
                statuses.append(raw.read_response("PATCH").status)
            except ConnectionClosed:
                break
    assert statuses[:3] == [204, 409, 415], statuses
    assert offset_of(url) in (3, 6)
    assert statuses == [204, 409, 415, 204] or offset_of(url) == 3
    assert data_of(server, url) == b"abcdef"[:offset_of(url)]


def test_pipelined_post_with_body_then_head(server) -> None:
    base = path_of(server.url)
    with RawConnection.to(server) as raw:
        raw.send(build_request("POST", base, [*TUS.items(), ("Upload-Length", "4"), ("Content-Type", OCTET)], b"wxyz")
                 + build_request("OPTIONS", base))
        created = raw.read_response("POST")
        options = raw.read_response("OPTIONS")
    assert created.status == 201 and created.header("Upload-Offset") == "4"
    assert options.status == 204
    assert data_of(server, created.header("Location") or "") == b"wxyz"


def test_http_1_0_request(server) -> None:
    with RawConnection.to(server) as raw:
        raw.send(b"OPTIONS " + path_of(server.url).encode() + b" HTTP/1.0\r\n\r\n")
        response = raw.read_response("OPTIONS")
        assert response.status == 204
        assert raw.is_closed(3)


def test_connection_close_honoured(server) -> None:
    with RawConnection.to(server) as raw:
        raw.request("OPTIONS", path_of(server.url), [("Connection", "close")])
        assert raw.read_response("OPTIONS").status == 204
        assert raw.is_closed(3)


# ---- chunked bodies [30, 86] -------------------------------------------------------------------------


def test_chunked_patch_with_extensions_and_trailer(server) -> None:
    url = create(server.url, 12)
    path = path_of(url)
    body = (b"3;name=value\r\nabc\r\n"
            b"4 ; quoted=\"x;y\"\r\ndefg\r\n"
            b"5\r\nhijkl\r\n"
            b"0;last=1\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n")
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path, patch_headers(0, ("Transfer-Encoding", "chunked")), body)
        response = raw.read_response("PATCH")
        assert response.status == 204, response
        assert response.header("Upload-Offset") == "12"
        raw.request("HEAD", path, TUS)                 # the trailer was consumed; the connection goes on
        assert raw.read_response("HEAD").header("Upload-Offset") == "12"
    assert data_of(server, url) == b"abcdefghijkl"


def test_chunked_patch_upper_case_hex_and_many_chunks(server) -> None:
    payload = bytes(range(256)) * 8
    url = create(server.url, len(payload))
    parts = [payload[i:i + 100] for i in range(0, len(payload), 100)]
    body = b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Transfer-Encoding", "chunked")), body)
        response = raw.read_response("PATCH")
    assert response.status == 204, response
    assert response.header("Upload-Offset") == str(len(payload))
    assert data_of(server, url) == payload


def test_chunked_patch_sent_slowly(server) -> None:
    url = create(server.url, None)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Transfer-Encoding", "chunked")))
        for part in (b"ab", b"cd", b"ef"):
            raw.send(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.1)
        raw.send(b"0\r\n\r\n")
        response = raw.read_response("PATCH")
    assert response.status == 204 and response.header("Upload-Offset") == "6"
    assert data_of(server, url) == b"abcdef"


def test_content_length_and_transfer_encoding_is_400(server) -> None:
    url = create(server.url, 10)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url),
                    patch_headers(0, ("Content-Length", "3"), ("Transfer-Encoding", "chunked")), chunked(b"abc"))
        response = raw.read_response("PATCH")
        assert response.status == 400, response
        assert response.header("Tus-Resumable") == "1.0.0"
        assert raw.is_closed(3)
    assert offset_of(url) == 0
    assert data_of(server, url) == b""


@pytest.mark.parametrize("encoding", ["gzip", "chunked, gzip", "identity", "chunked, chunked"])
def test_unsupported_transfer_encoding_is_rejected(server, encoding: str) -> None:
    url = create(server.url, 10)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Transfer-Encoding", encoding)), chunked(b"abc"))
        response = raw.read_response("PATCH")
    assert response.status in (400, 501), response
    assert offset_of(url) == 0


@pytest.mark.parametrize("bad", [b"zz\r\nabc\r\n0\r\n\r\n",
                                 b"-3\r\nabc\r\n0\r\n\r\n",
                                 b"ffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
                                 b"3\r\nabcXX0\r\n\r\n",
                                 b"0x3\r\nabc\r\n0\r\n\r\n"])
def test_malformed_chunk_is_400_and_closes(server, bad: bytes) -> None:
    url = create(server.url, 10)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Transfer-Encoding", "chunked")), bad)
        try:
            response = raw.read_response("PATCH")
        except ConnectionClosed:
            pytest.fail("closed without a 400 response")
        assert response.status == 400, response
        assert response.header("Tus-Resumable") == "1.0.0"
        assert raw.is_closed(3)
    offset = offset_of(url)
    assert offset in (0, 3)
    assert data_of(server, url) == b"abc"[:offset]


def test_malformed_chunk_after_good_chunks_keeps_good_bytes(server) -> None:
    url = create(server.url, 20)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Transfer-Encoding", "chunked")),
                    b"4\r\nabcd\r\n3\r\nefg\r\nqq\r\n")
        response = raw.read_response("PATCH")
        assert response.status == 400, response
        assert raw.is_closed(3)
    offset = offset_of(url)
    assert offset <= 7
    assert data_of(server, url) == b"abcdefg"[:offset]


# ---- head limits -------------------------------------------------------------------------------------


def test_oversize_head_is_431(start_server) -> None:
    server = start_server("--max-head-size", "4K")
    url = create(server.url, 3)
    with RawConnection.to(server) as raw:        # a head under the limit is served
        raw.request("HEAD", path_of(url), [*TUS.items(), ("X-Pad", "p" * 3000)])
        assert raw.read_response("HEAD").status == 200
    before = sorted(p.name for p in server.upload_dir.iterdir())
    with RawConnection.to(server) as raw:
        raw.request("POST", path_of(server.url), [*TUS.items(), ("Upload-Length", "3"), ("X-Pad", "p" * 5000)])
        response = raw.read_response("POST")
        assert response.status == 431, response
        assert raw.is_closed(3)
    with RawConnection.to(server) as raw:        # many small headers add up as well
        raw.request("POST", path_of(server.url),
                    [*TUS.items(), ("Upload-Length", "3"), *[(f"X-H{i}", "v" * 60) for i in range(80)]])
        assert raw.read_response("POST").status == 431
    with RawConnection.to(server) as raw:        # and so does a long request line
        raw.request("HEAD", path_of(url) + "?" + "q" * 5000, TUS)
        assert raw.read_response("HEAD").status in (414, 431)
    assert sorted(p.name for p in server.upload_dir.iterdir()) == before
    assert requests.options(server.url, timeout=TIMEOUT).status_code == 204


def test_too_many_headers_is_431(server) -> None:
    url = create(server.url, 3)
    with RawConnection.to(server) as raw:
        raw.request("HEAD", path_of(url), [*TUS.items(), *[(f"X-H{i}", "v") for i in range(50)]])
        assert raw.read_response("HEAD").status == 200
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, *[(f"X-H{i}", "v") for i in range(150)]), b"abc")
        response = raw.read_response("PATCH")
        assert response.status == 431, response
        assert raw.is_closed(3)
    assert offset_of(url) == 0


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
                                     b"NOT HTTP AT ALL\r\n\r\n",
                                     b"PATCH /files/x HTTP/1.1\r\nBad Header Line\r\n\r\n",
                                     b"PATCH /files/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                                     b"PATCH /files/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n"])
def test_garbage_gets_4xx_or_close_never_5xx(server, garbage: bytes) -> None:
    with RawConnection.to(server) as raw:
        raw.send(garbage)
        try:
            response = raw.read_response("PATCH")
        except ConnectionClosed:
            return
        assert 400 <= response.status < 500 or response.status == 505, response
        assert raw.is_closed(3)
    assert requests.options(server.url, timeout=TIMEOUT).status_code == 204


# ---- Expect: 100-continue [56, 86] -------------------------------------------------------------------


def test_expect_100_continue_before_body(server) -> None:
    url = create(server.url, 5)
    with RawConnection.to(server, timeout=5) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Content-Length", "5"), ("Expect", "100-continue")))
        interim = raw.read_response("PATCH", allow_interim=True)      # nothing sent yet: must not hang
        assert interim.status == 100, interim
        raw.send(b"hello")
        response = raw.read_response("PATCH")
        assert response.status == 204 and response.header("Upload-Offset") == "5"
        raw.request("HEAD", path_of(url), TUS)                      # connection is still in sync
        assert raw.read_response("HEAD").header("Upload-Offset") == "5"
    assert data_of(server, url) == b"hello"


def test_expect_100_continue_with_chunked_body(server) -> None:
    url = create(server.url, 5)
    with RawConnection.to(server, timeout=5) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Transfer-Encoding", "chunked"),
                                                         ("Expect", "100-continue")))
        assert raw.read_response("PATCH", allow_interim=True).status == 100
        raw.send(chunked(b"hel", b"lo"))
        response = raw.read_response("PATCH")
    assert response.status == 204 and response.header("Upload-Offset") == "5"


@pytest.mark.parametrize("case", ["409", "404", "412", "415"])
def test_expect_100_continue_with_early_error_gets_final_status(server, case: str) -> None:
    url = create(server.url, 5)
    headers = patch_headers(2 if case == "409" else 0, ("Content-Length", "5"), ("Expect", "100-continue"))
    path = path_of(url)
    if case == "404":
        path = path_of(server.url) + "0" * 32
    elif case == "412":
        headers = [h for h in headers if h[0] != "Tus-Resumable"]
    elif case == "415":
        headers = patch_headers(0, ("Content-Type", "text/plain"), ("Content-Length", "5"),
                                ("Expect", "100-continue"))
    with RawConnection.to(server, timeout=5) as raw:
        raw.request("PATCH", path, headers)
        response = raw.read_response("PATCH", allow_interim=True)
    assert response.status == int(case), response
    assert offset_of(url) == 0


# ---- early replies with a body in flight [87] --------------------------------------------------------


@pytest.mark.parametrize("case", ["409", "404", "412", "415", "413"])
def test_early_error_with_large_body_is_readable(server, case: str) -> None:
    """The client writes the whole 8 MiB body and only then reads: the error must still be there (the
    server drains or lingers; closing with unread input would RST the connection and lose the reply)."""
    size = 8 * 1024 * 1024
    url = create(server.url, 100 if case == "413" else size)
    path, headers = path_of(url), patch_headers(0)
    if case == "409":
        headers = patch_headers(7)
    elif case == "404":
        path = path_of(server.url) + "1" * 32
    elif case == "412":
        headers = [h for h in headers if h[0] != "Tus-Resumable"]
    elif case == "415":
        headers = patch_headers(0, ("Content-Type", "text/plain"))
    with RawConnection.to(server, timeout=15) as raw:
        raw.request("PATCH", path, [*headers, ("Content-Length", str(size))])
        chunk = b"z" * 65536
        for _ in range(size // len(chunk)):
            if not raw.try_send(chunk):
                break
        try:
            response = raw.read_response("PATCH")
        except ConnectionClosed as exc:
            pytest.fail(f"error reply lost: {exc}")
    assert response.status == int(case), response
    assert response.header("Tus-Resumable") == "1.0.0"
    if case == "413":
        assert offset_of(url) in (0, 100)
        assert data_of(server, url) == b"z" * offset_of(url)
    else:
        assert offset_of(url) == 0
        assert data_of(server, url) == b""


# ---- timeouts [31, 86] -------------------------------------------------------------------------------


def test_idle_timeout_closes_keep_alive_connection(start_server) -> None:
    server = start_server("--idle-timeout", "1")
    with RawConnection.to(server) as raw:
        raw.request("OPTIONS", path_of(server.url))
        assert raw.read_response("OPTIONS").status == 204
        elapsed = raw.closed_within(5)
        assert elapsed is not None, "idle connection was not closed"
        assert 0.5 <= elapsed <= 3.5, elapsed
    with RawConnection.to(server) as raw:          # a connection that never sends anything
        assert raw.closed_within(5) is not None


def test_idle_timeout_spares_busy_connection(start_server) -> None:
    server = start_server("--idle-timeout", "1")
    url = create(server.url, 10)
    with RawConnection.to(server) as raw:
        for offset in range(6):                      # 3 s of activity, never idle for 1 s
            raw.request("PATCH", path_of(url), patch_headers(offset), b"x")
            assert raw.read_response("PATCH").status == 204
            time.sleep(0.5)
    assert offset_of(url) == 6


def test_head_timeout_cuts_slow_head(start_server) -> None:
    server = start_server("--head-timeout", "1", "--idle-timeout", "30")
    url = create(server.url, 10)
    start = time.monotonic()
    with RawConnection.to(server) as raw:
        raw.send(f"PATCH {path_of(url)} HTTP/1.1\r\nHost: x\r\n".encode())
        closed = False
        for index in range(60):                       # one header byte every 0.1 s: never idle, never done
            if not raw.try_send(b"X-Slow-%d: y\r\n" % index if index % 5 == 0 else b""):
                closed = True
                break
            if raw.closed_within(0.1) is not None:
                closed = True
                break
        elapsed = time.monotonic() - start
        assert closed, "slowloris head was not cut"
        assert elapsed < 4, elapsed
        if raw.buffer:
            assert raw.buffer.startswith(b"HTTP/1.1 408"), raw.buffer
    assert offset_of(url) == 0


def test_read_timeout_cuts_stalled_body_and_keeps_bytes(start_server) -> None:
    server = start_server("--read-timeout", "1")
    url = create(server.url, 100)
    payload = bytes(range(100))
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Content-Length", "100")))
        raw.send(payload[:40])
        start = time.monotonic()
        elapsed = raw.closed_within(6)
        assert elapsed is not None, "stalled body was not cut"
        assert elapsed < 4, elapsed
        if raw.buffer:
            assert raw.buffer.startswith(b"HTTP/1.1 4"), raw.buffer
    assert offset_of(url) == 40
    assert data_of(server, url) == payload[:40]
    # and the client resumes from there
    response = requests.patch(url, data=payload[40:], timeout=TIMEOUT,
                              headers={**TUS, "Content-Type": OCTET, "Upload-Offset": "40"})
    assert response.status_code == 204 and response.headers["Upload-Offset"] == "100"
    assert data_of(server, url) == payload
    assert time.monotonic() - start < 10


def test_read_timeout_spares_slow_steady_body(start_server) -> None:
    server = start_server("--read-timeout", "1")
    url = create(server.url, 8)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Content-Length", "8")))
        for byte in b"abcdefgh":
            raw.send(bytes([byte]))
            time.sleep(0.4)                            # 3.2 s in total, never 1 s without data
        response = raw.read_response("PATCH")
    assert response.status == 204 and response.header("Upload-Offset") == "8"
    assert data_of(server, url) == b"abcdefgh"


def test_read_timeout_cuts_stalled_chunked_body(start_server) -> None:
    server = start_server("--read-timeout", "1")
    url = create(server.url, None)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Transfer-Encoding", "chunked")))
        raw.send(b"5\r\nhello\r\n")
        assert raw.closed_within(6) is not None
    assert offset_of(url) == 5
    assert data_of(server, url) == b"hello"


# ---- connection limit --------------------------------------------------------------------------------


def test_max_connections(start_server) -> None:
    server = start_server("--max-connections", "2")
    base = path_of(server.url)
    first, second = RawConnection.to(server), RawConnection.to(server)
    try:
        for raw in (first, second):
            raw.request("OPTIONS", base)
            assert raw.read_response("OPTIONS").status == 204
        third = RawConnection.to(server, timeout=3)
        try:
            third.try_send(build_request("OPTIONS", base))
            try:
                response = third.read_response("OPTIONS")
                assert response.status == 503, response
            except (ConnectionClosed, socket.timeout, TimeoutError):
                pass
        finally:
            third.close()
        first.close()
        time.sleep(0.3)
        with RawConnection.to(server) as fourth:
            fourth.request("OPTIONS", base)
            assert fourth.read_response("OPTIONS").status == 204
        second.request("OPTIONS", base)          # the survivors are unaffected
        assert second.read_response("OPTIONS").status == 204
    finally:
        first.close()
        second.close()


# ---- graceful shutdown -------------------------------------------------------------------------------


def test_sigterm_lets_in_flight_patch_finish(start_server) -> None:
    server = start_server("--shutdown-timeout", "10")
    url = create(server.url, 1000)
    payload = bytes(range(250)) * 4
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Content-Length", "1000")))
        raw.send(payload[:500])
        time.sleep(0.3)
        server.signal(signal.SIGTERM)
        time.sleep(0.5)
        # no new connections once shutting down
        refused = False
        try:
            with RawConnection.to(server, timeout=2) as late:
                late.try_send(build_request("OPTIONS", path_of(server.url)))
                try:
                    late.read_response("OPTIONS")
                except (ConnectionClosed, socket.timeout, TimeoutError):
                    refused = True
        except (ConnectionRefusedError, ConnectionResetError):
            refused = True
        assert refused, "a new connection was served after SIGTERM"
        raw.send(payload[500:])
        response = raw.read_response("PATCH")
        assert response.status == 204, response
        assert response.header("Upload-Offset") == "1000"
    assert server.wait(15) == 0
    assert (server.upload_dir / upload_id(url)).read_bytes() == payload


def test_sigterm_with_idle_connections_exits_promptly(start_server) -> None:
    server = start_server("--shutdown-timeout", "10")
    idle = RawConnection.to(server)
    try:
        idle.request("OPTIONS", path_of(server.url))
        assert idle.read_response("OPTIONS").status == 204
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
        assert time.monotonic() - start < 5
        assert idle.is_closed(2)
    finally:
        idle.close()


def test_sigterm_stalled_body_cut_after_shutdown_timeout_keeps_bytes(start_server) -> None:
    server = start_server("--shutdown-timeout", "1")
    url = create(server.url, 1000)
    with RawConnection.to(server) as raw:
        raw.request("PATCH", path_of(url), patch_headers(0, ("Content-Length", "1000")))
        raw.send(b"q" * 300)
        time.sleep(0.3)
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
        assert time.monotonic() - start < 8
    server.start(server.port)
    assert offset_of(url) == 300
    assert (server.upload_dir / upload_id(url)).read_bytes() == b"q" * 300
