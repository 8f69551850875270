"""Byte-level fuzzing of request heads and bodies.

In-process: tusfast's body decoders (tusfast/http/body.py) get random and mutated chunked streams
fed in random pieces. Whatever the split, the result must be exactly what an independent reference
decoder says: the right bytes (and trailers, and the next request's bytes), or MalformedBody after
the same bytes, or "not done yet". Mutated request heads go through h11 and tusfast's own framing
and tus parsing, which may refuse them only with their clean errors.

Live: requests from a corpus of valid ones, mutated (byte flips, insertions, deletions,
duplications) and sent in random pieces to a real server, which must answer each with anything
but a 5xx, or close, and never hang; it must still answer OPTIONS afterwards.

The budget is in fuzz_settings.py (`TUSFAST_FUZZ=long` for a long run).
"""

from __future__ import annotations

import re
import signal
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Iterator

import h11
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.integration.rawhttp import RawConnection, build_request, chunked, path_of
from tests.reliability.fuzz_settings import fuzz_settings
from tests.support.server_process import ServerProcess
from tusfast.core import protocol as tus
from tusfast.core.errors import TusError
from tusfast.http.body import MAX_CHUNK_LINE, MAX_TRAILER_SIZE, ChunkedDecoder, ContentLengthDecoder, MalformedBody
from tusfast.http.exchange import BadFraming, body_decoder

HANG_LIMIT = 10.0       # seconds; far beyond anything a healthy parser or server needs here

# ---- a reference chunked decoder (whole input at once; RFC 9112 section 7.1, strict) --------------

_SIZE_LINE = re.compile(rb"[0-9A-Fa-f]{1,15}[ \t]*(;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")


@dataclass
class Outcome:
    payload: bytes
    done: bool = False
    malformed: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    leftover: bytes = b""


def reference_decode(stream: bytes) -> Outcome:
    out, pos, trailer_bytes, remaining = bytearray(), 0, 0, 0
    trailers: list[tuple[str, str]] = []
    state = "size"
    while True:
        if state == "data":
            take = min(remaining, len(stream) - pos)
            out += stream[pos:pos + take]
            pos += take
            remaining -= take
            if remaining:
                return Outcome(bytes(out))
            state = "data-end"
            continue
        end = stream.find(b"\n", pos)
        if end < 0:
            malformed = len(stream) - pos > MAX_CHUNK_LINE + 1
            return Outcome(bytes(out), malformed=malformed)
        line, pos = stream[pos:end + 1], end + 1
        if len(line) > MAX_CHUNK_LINE + 2 or not line.endswith(b"\r\n"):
            return Outcome(bytes(out), malformed=True)
        line = line[:-2]
        if state == "size":
            if not _SIZE_LINE.fullmatch(line):
                return Outcome(bytes(out), malformed=True)
            remaining = int(re.match(rb"[0-9A-Fa-f]+", line).group(), 16)  # type: ignore[union-attr]
            state = "data" if remaining else "trailer"
        elif state == "data-end":
            if line:
                return Outcome(bytes(out), malformed=True)
            state = "size"
        elif not line:
            return Outcome(bytes(out), done=True, trailers=trailers, leftover=stream[pos:])
        else:
            trailer_bytes += len(line)
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name) or trailer_bytes > MAX_TRAILER_SIZE \
                    or not _FIELD_VALUE.fullmatch(value):
                return Outcome(bytes(out), malformed=True)
            trailers.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))


def incremental_decode(stream: bytes, cuts: list[int]) -> Outcome:
    """Feed tusfast's decoder the stream in pieces, as the socket would."""
    decoder = ChunkedDecoder()
    out = bytearray()
    bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    for start, end in zip(bounds, bounds[1:]):
        try:
            parts = decoder.feed(stream[start:end])
        except MalformedBody as error:
            out += b"".join(bytes(part) for part in error.decoded)
            return Outcome(bytes(out), malformed=True)
        out += b"".join(bytes(part) for part in parts)
        if decoder.done:
            return Outcome(bytes(out), done=True, trailers=decoder.trailers,
                           leftover=decoder.leftover + stream[end:])
    return Outcome(bytes(out))


@contextmanager
def no_hang(seconds: float = HANG_LIMIT) -> Iterator[None]:
    """Fail (instead of blocking the run forever) if the code under test loops."""
    def expired(signum: int, frame: FrameType | None) -> None:
        raise AssertionError(f"no result within {seconds} s: the parser hangs")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---- strategies: valid streams, and mutations of them ---------------------------------------------

INTERESTING = [b"\r\n", b"\n", b"\r", b"\x00", b";", b":", b" ", b"\t", b"0", b"f" * 16, b"0\r\n\r\n",
               b"-1", b"+5", b"0x10", b"\xff", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n",
               b"\r\n\r\n", b"GET / HTTP/1.1\r\n", b"9" * 20, b"a=\"b\"", b"Upload-Offset: 0\r\n"]


@st.composite
def chunked_streams(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[str, str]], bytes]:
    """(stream, payload, trailers, next request bytes) of a valid chunked body."""
    payload = draw(st.binary(max_size=600))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=6)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)]) if b > a]
    body = bytearray()
    for part in parts:
        size = draw(st.sampled_from(["%x", "%X", "%04x"])) % len(part)
        ext = draw(st.sampled_from(["", ";a", ";name=value", ';q="x y"', " ;x", "\t;y=1"]))
        body += size.encode() + ext.encode() + b"\r\n" + part + b"\r\n"
    trailers = draw(st.lists(st.tuples(st.sampled_from(["upload-checksum", "x-a", "etag"]),
                                       st.text("abcXYZ019 +/=", max_size=20).map(str.strip)), max_size=3))
    body += b"0\r\n" + b"".join(f"{name}: {value}\r\n".encode() for name, value in trailers) + b"\r\n"
    after = draw(st.sampled_from([b"", b"OPTIONS /files/ HTTP/1.1\r\n\r\n", b"x"]))
    return bytes(body) + after, payload, trailers, after


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "replace"]))
        if kind == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[where:where] = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=8)))
        elif kind == "delete":
            del data[where:where + draw(st.integers(1, 8))]
        elif kind == "duplicate":
            data[where:where] = data[where:where + draw(st.integers(1, 40))]
        elif kind == "replace" and where < len(data):
            data[where] = draw(st.sampled_from(b"\r\n\x00;: 0fFg\t\x7f\x80"))
    return bytes(data)


CUTS = st.lists(st.integers(0, 10_000), max_size=12)


# ---- in-process: body decoders --------------------------------------------------------------------

@fuzz_settings(ci_examples=300, long_examples=50_000)
@given(stream=chunked_streams(), cuts=CUTS)
def test_valid_chunked_streams_decode_exactly_whatever_the_split(
        stream: tuple[bytes, bytes, list[tuple[str, str]], bytes], cuts: list[int]) -> None:
    raw, payload, trailers, after = stream
    with no_hang():
        outcome = incremental_decode(raw, cuts)
    assert outcome == Outcome(payload, done=True, trailers=trailers, leftover=after)
    assert reference_decode(raw) == outcome, "the reference decoder disagrees with a valid stream"


@fuzz_settings(ci_examples=500, long_examples=100_000)
@given(data=st.data(), stream=chunked_streams(), cuts=CUTS)
@example(data=None, stream=(b"5;a\rb\r\nhello\r\n0\r\n\r\n", b"", [], b""), cuts=[])
@example(data=None, stream=(b"5;a\x00\r\nhello\r\n0\r\n\r\n", b"", [], b""), cuts=[3])
@example(data=None, stream=(b"0\r\nx-a: b\rc\r\n\r\n", b"", [], b""), cuts=[])
@example(data=None, stream=(b"0\r\nx a: b\r\n\r\n", b"", [], b""), cuts=[])
def test_mutated_chunked_streams_decode_as_the_reference_or_fail_cleanly(
        data: st.DataObject | None, stream: tuple[bytes, bytes, list[tuple[str, str]], bytes],
        cuts: list[int]) -> None:
    raw = stream[0] if data is None else data.draw(mutated(stream[0]), label="mutated")
    with no_hang():
        outcome = incremental_decode(raw, cuts)     # any exception but MalformedBody fails the test
    assert outcome == reference_decode(raw), raw


@fuzz_settings(ci_examples=200, long_examples=20_000)
@given(raw=st.binary(max_size=300)
       | st.lists(st.sampled_from([b"1", b"a", b"F", b"0", b"\r\n", b"\r", b"\n", b";", b":", b"x", b" "]),
                  max_size=60).map(b"".join),
       cuts=CUTS)
def test_random_bytes_as_chunked_body_never_crash_or_hang(raw: bytes, cuts: list[int]) -> None:
    with no_hang():
        outcome = incremental_decode(raw, cuts)
    assert outcome == reference_decode(raw), raw


@fuzz_settings(ci_examples=200, long_examples=20_000)
@given(length=st.integers(0, 2000), stream=st.binary(max_size=3000), cuts=CUTS)
def test_content_length_decoder_takes_exactly_its_length(length: int, stream: bytes, cuts: list[int]) -> None:
    decoder = ContentLengthDecoder(length)
    out = bytearray()
    bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    rest = b""
    for start, end in zip(bounds, bounds[1:]):
        if decoder.done:
            rest += stream[start:end]
            continue
        out += b"".join(bytes(part) for part in decoder.feed(stream[start:end]))
        rest += decoder.leftover
    assert bytes(out) == stream[:length]
    assert decoder.done == (len(stream) >= length)
    assert rest == stream[length:]


@pytest.mark.parametrize("stream", [
    pytest.param(b"5;a\rb\r\nhello\r\n0\r\n\r\n", id="bare-cr-in-extension"),
    pytest.param(b"5;a\x00\r\nhello\r\n0\r\n\r\n", id="nul-in-extension"),
    pytest.param(b"5;a=\x1b\r\nhello\r\n0\r\n\r\n", id="escape-in-extension"),
    pytest.param(b"0\r\nUpload-Checksum: sha1 x\ry\r\n\r\n", id="bare-cr-in-trailer-value"),
    pytest.param(b"0\r\nX-A: \x00\r\n\r\n", id="nul-in-trailer-value"),
    pytest.param(b"0\r\nUpload Checksum: sha1 x\r\n\r\n", id="space-in-trailer-name"),
    pytest.param(b"0\r\nX(A): 1\r\n\r\n", id="separator-in-trailer-name"),
])
def test_control_characters_in_chunk_extensions_and_trailers_are_refused(stream: bytes) -> None:
    """Found by the fuzzer: these were accepted. A bare CR, which some parsers in front of us take for
    a line end, must not be allowed to mean something else here (RFC 9112 7.1.1, 7.1.2)."""
    for cuts in ([], list(range(len(stream)))):
        assert incremental_decode(stream, cuts).malformed, (stream, cuts)


def test_tabs_and_quoted_extensions_and_plain_trailers_still_decode() -> None:
    stream = b'5\t;a="b c";d\r\nhello\r\n0\r\nUpload-Checksum:\tsha1 x \r\n\r\n'
    assert incremental_decode(stream, []) == Outcome(b"hello", done=True,
                                                     trailers=[("upload-checksum", "sha1 x")])


# ---- in-process: request heads through h11 and tusfast's framing and tus parsing ------------------

HOST = "127.0.0.1:1080"
UPLOAD = "/files/" + "ab" * 16
HEAD_CORPUS = [
    build_request("OPTIONS", "/files/", {}, host=HOST),
    build_request("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Length": "10",
                                      "Upload-Metadata": "filename d29ybGQ=,is_confidential"}, host=HOST),
    build_request("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Defer-Length": "1",
                                      "Content-Type": "application/offset+octet-stream", "Content-Length": "3",
                                      "Upload-Checksum": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="}, host=HOST),
    build_request("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Concat": f"final;{UPLOAD} "
                                      f"http://{HOST}{UPLOAD}"}, host=HOST),
    build_request("PATCH", UPLOAD, {"Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Upload-Length": "9",
                                    "Content-Type": "application/offset+octet-stream",
                                    "Transfer-Encoding": "chunked", "Trailer": "Upload-Checksum"}, host=HOST),
    build_request("HEAD", UPLOAD, {"Tus-Resumable": "1.0.0", "X-HTTP-Method-Override": "GET"}, host=HOST),
    build_request("GET", UPLOAD, {"Range": "bytes=0-4", "If-Range": '"x"', "If-None-Match": "*"}, host=HOST),
    build_request("DELETE", UPLOAD, {"Tus-Resumable": "1.0.0", "X-Forwarded-Host": "example.com",
                                     "Forwarded": "for=1.2.3.4;proto=https;host=a.example"}, host=HOST),
]
SETTINGS = tus.ProtocolSettings(behind_proxy=True)


def parse_head(raw: bytes) -> None:
    """What the server does with a head before any I/O; raises only the layers' clean errors."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    parser.receive_data(raw)
    event = parser.next_event()
    if not isinstance(event, h11.Request):
        return
    size, _ = body_decoder(event)
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers]
    head = tus.RequestHead.parse(event.method.decode("ascii"), event.target.decode("latin-1"), headers,
                                 "http", size)
    tus.interpret(head, SETTINGS)


@fuzz_settings(ci_examples=400, long_examples=50_000)
@given(data=st.data(), original=st.sampled_from(HEAD_CORPUS))
def test_mutated_heads_are_parsed_or_refused_cleanly(data: st.DataObject, original: bytes) -> None:
    raw = data.draw(mutated(original), label="mutated")
    with no_hang():
        try:
            parse_head(raw)
        except (h11.RemoteProtocolError, BadFraming, TusError):
            pass


# ---- live: mutated requests against one real server -----------------------------------------------

_STATUS = re.compile(rb"(?:^|\r\n)HTTP/1\.1 (\d{3}) ")


@dataclass
class LiveTarget:
    server: ServerProcess
    corpus: list[bytes]


def live_corpus(server: ServerProcess, upload: str, final_of: str) -> list[bytes]:
    host = f"127.0.0.1:{server.port}"
    tus_header = {"Tus-Resumable": "1.0.0"}
    octet = {"Content-Type": "application/offset+octet-stream"}
    missing = "/files/" + "0" * 32
    return [
        build_request("OPTIONS", "/files/", {}, host=host),
        build_request("POST", "/files/", {**tus_header, "Upload-Length": "5", "Upload-Metadata": "filename YQ=="},
                      host=host),
        build_request("POST", "/files/", {**tus_header, **octet, "Upload-Length": "5"}, b"hello", host=host),
        build_request("POST", "/files/", {**tus_header, "Upload-Concat": f"final;{final_of}"}, host=host),
        build_request("HEAD", upload, tus_header, host=host),
        build_request("PATCH", upload, {**tus_header, **octet, "Upload-Offset": "0"}, b"abc", host=host),
        build_request("PATCH", upload, {**tus_header, **octet, "Upload-Offset": "0", "Transfer-Encoding": "chunked",
                                        "Trailer": "Upload-Checksum"},
                      chunked(b"ab", b"c", trailer="Upload-Checksum: sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=\r\n"),
                      host=host),
        build_request("PATCH", upload, {**tus_header, **octet, "Upload-Offset": "0", "Expect": "100-continue",
                                        "Upload-Checksum": "md5 kAFQmDzST7DWlj99KOF/cg=="}, b"abc", host=host),
        build_request("GET", missing, {"Range": "bytes=1-2"}, host=host),
        build_request("DELETE", missing, tus_header, host=host),
        # Two pipelined requests: mutations may blur where one ends and the next begins.
        build_request("HEAD", upload, tus_header, host=host) + build_request("OPTIONS", "/files/", {}, host=host),
    ]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTarget]:
    directory: Path = tmp_path_factory.mktemp("parser-fuzz")
    server = ServerProcess(directory).start()
    try:
        with RawConnection("127.0.0.1", server.port) as conn:
            host = f"127.0.0.1:{server.port}"
            conn.request("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Defer-Length": "1"}, host=host)
            upload = conn.read_response("POST").header("Location") or ""
            conn.request("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Length": "3",
                                             "Upload-Concat": "partial"}, host=host)
            partial = conn.read_response("POST").header("Location") or ""
        path = path_of(upload)
        yield LiveTarget(server, live_corpus(server, path, partial))
    finally:
        server.kill()


def exchange(server: ServerProcess, raw: bytes, cuts: list[int]) -> bytes:
    """Send raw in pieces, close our side, and read everything until the server closes."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=HANG_LIMIT)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bounds = sorted({0, len(raw), *(cut % (len(raw) + 1) for cut in cuts)})
        try:
            for start, end in zip(bounds, bounds[1:]):
                sock.sendall(raw[start:end])
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass    # the server refused and closed early: allowed
        received = bytearray()
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"server neither answered nor closed within {HANG_LIMIT} s: {raw!r}") from None
            if not data:
                break
            received += data
        return bytes(received)
    finally:
        sock.close()


def assert_answers_options(server: ServerProcess) -> None:
    with RawConnection("127.0.0.1", server.port, timeout=HANG_LIMIT) as conn:
        conn.request("OPTIONS", "/files/", {})
        response = conn.read_response("OPTIONS")
    assert response.status == 204, response


@fuzz_settings(ci_examples=500, long_examples=50_000)
@given(data=st.data(), index=st.integers(0, 100), cuts=st.lists(st.integers(0, 10_000), max_size=5))
def test_mutated_requests_get_a_clean_answer_or_a_close(live: LiveTarget, data: st.DataObject, index: int,
                                                        cuts: list[int]) -> None:
    original = live.corpus[index % len(live.corpus)]
    raw = data.draw(mutated(original), label="mutated")
    received = exchange(live.server, raw, cuts)
    if received:
        assert received.startswith(b"HTTP/1.1 "), received[:300]
    assert all(acceptable(status, received) for status in _STATUS.findall(received)), (raw, received[:2000])
    assert_answers_options(live.server)


def acceptable(status: bytes, received: bytes) -> bool:
    """Anything but a 5xx; except 501 for a transfer coding we do not implement, as RFC 9112
    section 6.1 asks (tests/integration/test_http.py accepts it too)."""
    return int(status) < 500 or (int(status) == 501 and b"Only Transfer-Encoding: chunked is supported" in received)


def test_live_bare_cr_in_a_chunk_extension_is_refused_and_nothing_is_kept(live: LiveTarget) -> None:
    host = f"127.0.0.1:{live.server.port}"
    with RawConnection("127.0.0.1", live.server.port, timeout=HANG_LIMIT) as conn:
        conn.request("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Length": "5"}, host=host)
        path = path_of(conn.read_response("POST").header("Location") or "")
        conn.request("PATCH", path, {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream",
                                     "Upload-Offset": "0", "Transfer-Encoding": "chunked"},
                     b"5;x\rGET / HTTP/1.1\r\nhello\r\n0\r\n\r\n", host=host)
        response = conn.read_response("PATCH")
    assert response.status == 400, response
    with RawConnection("127.0.0.1", live.server.port, timeout=HANG_LIMIT) as conn:
        conn.request("HEAD", path, {"Tus-Resumable": "1.0.0"}, host=host)
        assert conn.read_response("HEAD").header("Upload-Offset") == "0"


def _early_reply_request(server: ServerProcess) -> bytes:
    """Refused before its body is read (405), and the body is cut short: 3 of 5 bytes."""
    return build_request("PMST", "/files/", {"Tus-Resumable": "1.0.0", "Content-Length": "5"},
                         host=f"127.0.0.1:{server.port}") + b"hel"


def test_live_half_close_before_an_early_reply_closes_at_once(live: LiveTarget) -> None:
    """Found by the fuzzer: the server waited for the rest of the body to drop it, although the
    client had already closed its side, until the read timeout (60 s)."""
    received = exchange(live.server, _early_reply_request(live.server), [])     # fails after HANG_LIMIT
    assert received.startswith(b"HTTP/1.1 405 "), received


def test_live_half_close_while_a_body_is_dropped_closes_at_once(live: LiveTarget) -> None:
    with RawConnection("127.0.0.1", live.server.port, timeout=HANG_LIMIT) as conn:
        conn.send(_early_reply_request(live.server))
        assert conn.read_response("PMST").status == 405
        conn.shutdown_write()
        assert conn.is_closed(wait=HANG_LIMIT), "the server kept a half-closed connection open"


def test_live_corpus_is_valid(live: LiveTarget) -> None:
    """Unmutated, every corpus request is answered (so mutations start from meaningful requests)."""
    for raw in live.corpus:
        received = exchange(live.server, raw, [])
        statuses = [int(code) for code in _STATUS.findall(received)]
        assert statuses and all(status < 500 for status in statuses), (raw, received[:500])


def test_live_server_log_is_clean(live: LiveTarget) -> None:
    """Runs after the fuzzers above (file order): no traceback, no 5xx in the access log."""
    log = "".join(live.server.log)
    assert "Traceback" not in log and "unhandled error" not in log, log[-4000:]
    assert not re.search(r'" 5\d\d in=', log), [line for line in live.server.log if re.search(r'" 5\d\d in=', line)]
