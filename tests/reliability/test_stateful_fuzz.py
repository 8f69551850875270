"""Stateful fuzzing of one live `tusfast serve`: random sequences of tus requests against a model.

A hypothesis RuleBasedStateMachine creates uploads (known, deferred, with data, partial, final),
PATCHes them with right and wrong offsets, sizes, checksums and framings, interrupts bodies
half-way (FIN or RST), downloads with and without Range, and deletes. The model holds, per upload,
the bytes the server acknowledged. After every step each upload is checked with HEAD (and GET once
finished): the server never answers 5xx, offsets never go back or past what was sent, a finished
upload's content is exactly the acknowledged bytes, a final upload is exactly its partials joined.

The budget is in fuzz_settings.py (`TUSFAST_FUZZ=long` for a long run).
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import socket
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.integration.rawhttp import (
    OCTET,
    ConnectionClosed,
    RawConnection,
    Response,
    build_request,
    chunked,
    path_of,
)
from tests.reliability.fuzz_settings import fuzz_settings
from tests.support.server_process import ServerProcess
from tusfast.http.splice import MIN_SPLICE

TUS = "1.0.0"
MAX_UPLOADS = 8         # live ones; with deleted ones at most twice that
ALGORITHMS = ("md5", "sha1", "sha256", "sha512", "crc32")

# Mostly small bodies, some of them large enough to take the splice / hashed-read paths.
SIZES = st.one_of(st.integers(0, 16), st.integers(0, 4000), st.integers(MIN_SPLICE, MIN_SPLICE + 64 * 1024))
SEEDS = st.integers(0, 2**32 - 1)
CHECKSUM_MODES = st.sampled_from([None, None, "right", "wrong", "bogus"])


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return struct.pack(">I", zlib.crc32(data))
    return hashlib.new(algorithm, data).digest()


def checksum_header(mode: str, algorithm: str, data: bytes) -> str:
    if mode == "bogus":
        return "whirlpool " + base64.b64encode(b"x" * 16).decode()
    signed = data if mode == "right" else data + b"!"
    return f"{algorithm} {base64.b64encode(digest(algorithm, signed)).decode()}"


@dataclass(eq=False)
class Upload:
    path: str
    length: int | None
    data: bytearray = field(default_factory=bytearray, repr=False)     # what the server acknowledged
    partial: bool = False
    parts: list[Upload] | None = None     # a final upload's partials, in order
    concat: str | None = None
    deleted: bool = False
    seen: int = 0               # highest offset the server reported
    downloaded: bool = False    # content checked by GET since it finished

    def __repr__(self) -> str:     # the bytes themselves would drown a falsifying example
        kind = "final" if self.final else "partial" if self.partial else "upload"
        return f"<{kind} {self.path} length={self.length} offset={self.offset}{' deleted' if self.deleted else ''}>"

    @property
    def offset(self) -> int:
        return len(self.data)

    @property
    def final(self) -> bool:
        return self.parts is not None

    @property
    def complete(self) -> bool:
        return self.length is not None and len(self.data) == self.length

    @property
    def room(self) -> int | None:
        return None if self.length is None else self.length - len(self.data)


# What the run exercised ("PATCH 460", "interrupt rst", ...): a fuzzer that silently stopped
# reaching a path would otherwise keep passing.
COVERED: Counter[str] = Counter()
MUST_COVER = {"POST 201", "POST 400", "POST 460", "PATCH 204", "PATCH 400", "PATCH 403", "PATCH 404", "PATCH 409",
              "PATCH 413", "PATCH 460", "HEAD 200", "HEAD 404", "GET 200", "GET 206", "GET 409", "GET 416",
              "DELETE 204", "interrupt fin", "interrupt rst", "final joined", "final waiting"}


class Client:
    """One keep-alive connection, reopened only after the server announced it would close."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.conn: RawConnection | None = None

    def connection(self) -> RawConnection:
        if self.conn is None or self.conn.eof:
            self.conn = RawConnection("127.0.0.1", self.server.port)
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def call(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> Response | None:
        """Send one request; None when the server closed the connection without an answer."""
        conn = self.connection()
        conn.try_send(build_request(method, path, [("Tus-Resumable", TUS), *headers], body,
                                    f"127.0.0.1:{self.server.port}"))
        try:
            response = conn.read_response(method)
        except ConnectionClosed:
            self.drop()
            return None
        check_response(response, method, path)
        COVERED[f"{method} {response.status}"] += 1
        if (response.header("Connection") or "").lower() == "close":
            self.drop()
        return response


def check_response(response: Response, method: str, path: str) -> None:
    assert response.status < 500, f"{method} {path} -> {response!r}"
    assert response.header("Tus-Resumable") == TUS, response


def choose(data: st.DataObject, pool: list[Upload], label: str) -> Upload:
    """pool[i] for a drawn i. The draw's bounds must not depend on the pool: the pool follows from
    what the server answered (how much an interrupted body kept), and hypothesis requires the same
    choices to be drawn the same way from one run of a test case to the next."""
    return pool[data.draw(st.integers(0, 2 * MAX_UPLOADS - 1), label=label) % len(pool)]


def chunked_body(data: bytes, seed: int, trailer: str = "") -> bytes:
    """`data` as a chunked body cut at random places."""
    rng = random.Random(seed)
    parts, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 7, 100, 5000, 70000])
        parts.append(data[pos:pos + step])
        pos += step
    return chunked(*parts, trailer=trailer)


class TusMachine(RuleBasedStateMachine):
    server: ServerProcess       # set by the test before running the machine

    def __init__(self) -> None:
        super().__init__()
        self.client = Client(self.server)
        self.uploads: list[Upload] = []
        self.base = path_of(self.server.url)

    def teardown(self) -> None:
        self.client.drop()

    # ---- model helpers --------------------------------------------------------------------

    def live(self) -> list[Upload]:
        return [upload for upload in self.uploads if not upload.deleted]

    def room_for_more(self) -> bool:
        return len(self.live()) < MAX_UPLOADS and len(self.uploads) < 2 * MAX_UPLOADS

    def pick(self, data: st.DataObject) -> Upload:
        """Mostly a live upload, newest first (hypothesis prefers the first choice); sometimes any."""
        live = self.live()
        stale = data.draw(st.integers(0, 15), label="stale?") == 5 or not live
        return choose(data, list(reversed(self.uploads if stale else live)), "upload")

    def interruptible(self) -> list[Upload]:
        return [upload for upload in self.live() if not upload.final and (upload.room is None or upload.room > 0)]

    def settle_finals(self) -> None:
        """A final upload is joined as soon as its last partial finishes."""
        for final in self.live():
            if final.final and not final.complete and self.joinable(final):
                assert final.parts is not None
                final.data = bytearray(b"".join(bytes(part.data) for part in final.parts))
                final.length = len(final.data)
                COVERED["final joined"] += 1

    @staticmethod
    def joinable(final: Upload) -> bool:
        assert final.parts is not None
        return all(part.complete and not part.deleted for part in final.parts)

    def acknowledge(self, upload: Upload, response: Response, sent: bytes) -> None:
        """The server kept the first (reported offset - model offset) bytes of what was sent."""
        reported = int(response.header("Upload-Offset") or "-1")
        assert upload.offset <= reported <= upload.offset + len(sent), (upload.offset, reported, len(sent))
        upload.data += sent[:reported - upload.offset]

    # ---- rules ----------------------------------------------------------------------------

    @precondition(lambda self: self.room_for_more())
    @rule(deferred=st.booleans(), partial=st.booleans(), size=SIZES, extra=st.sampled_from([0, 0, 1, 9, 5000]),
          with_data=st.sampled_from([None, "length", "chunked"]),
          fraction=st.sampled_from([1.0, 0.0, 0.5]) | st.floats(0, 1), seed=SEEDS,
          checksum=CHECKSUM_MODES, algorithm=st.sampled_from(ALGORITHMS), as_trailer=st.booleans())
    def create(self, deferred: bool, partial: bool, size: int, extra: int, with_data: str | None, fraction: float,
               seed: int, checksum: str | None, algorithm: str, as_trailer: bool) -> None:
        length = None if deferred else size + extra
        body = payload(seed, int(size * fraction)) if with_data else b""
        headers = [("Upload-Defer-Length", "1")] if deferred else [("Upload-Length", str(length))]
        if partial:
            headers.append(("Upload-Concat", "partial"))
        wire = b""
        if with_data:
            headers.append(("Content-Type", OCTET))
            wire = body
        if with_data == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
            wire = chunked_body(body, seed)
        elif with_data == "length":
            headers.append(("Content-Length", str(len(body))))
        has_body = with_data == "chunked" or bool(body)
        checksum = checksum if has_body else None
        if checksum is not None:
            value = checksum_header(checksum, algorithm, body)
            if with_data == "chunked" and as_trailer and checksum != "bogus":
                headers.append(("Trailer", "Upload-Checksum"))
                wire = chunked_body(body, seed, trailer=f"Upload-Checksum: {value}\r\n")
            else:
                headers.append(("Upload-Checksum", value))
        response = self.client.call("POST", self.base, headers, wire)
        assert response is not None
        if checksum in ("wrong", "bogus"):
            # Refused as a whole: no Location, nothing acknowledged (tusfast removes the upload again).
            assert response.status == (460 if checksum == "wrong" else 400), response
            return
        assert response.status == 201, response
        upload = Upload(path=path_of(response.header("Location") or ""), length=length, partial=partial,
                        concat="partial" if partial else None)
        self.acknowledge(upload, response, body)
        assert upload.offset == len(body), "a creation with data that completed must keep all of it"
        self.uploads.append(upload)
        self.settle_finals()

    @precondition(lambda self: bool(self.uploads))
    @rule(data=st.data(), size=SIZES, seed=SEEDS, fit=st.sampled_from(["fill", "fit", "any"]),
          delta=st.sampled_from([0, 0, 0, 0, 0, 0, 1, -1, 3, -1000]),
          framing=st.sampled_from(["length", "chunked", "trailer", "undeclared-trailer"]),
          checksum=CHECKSUM_MODES, algorithm=st.sampled_from(ALGORITHMS),
          declare=st.sampled_from([None, None, None, "exact", "more", "below", "other"]))
    def patch(self, data: st.DataObject, size: int, seed: int, fit: str, delta: int, framing: str,
              checksum: str | None, algorithm: str, declare: str | None) -> None:
        upload = self.pick(data)
        offset = upload.offset + delta
        if offset < 0:
            offset = upload.offset + 1
        room = upload.room
        if fit != "any" and room is not None and delta == 0:
            size = room if fit == "fill" else min(size, room)
        body = payload(seed, size)
        headers = [("Content-Type", OCTET), ("Upload-Offset", str(offset))]
        declared = self.declared_length(upload, declare, size)
        if declared is not None:
            headers.append(("Upload-Length", str(declared)))
        trailer = ""
        checksum_value = None if checksum is None else checksum_header(checksum, algorithm, body)
        if framing == "length":
            wire = body
            headers.append(("Content-Length", str(len(body))))
        else:
            headers.append(("Transfer-Encoding", "chunked"))
            if checksum_value is not None and framing in ("trailer", "undeclared-trailer"):
                trailer = f"Upload-Checksum: {checksum_value}\r\n"
                if framing == "trailer":
                    headers.append(("Trailer", "Upload-Checksum"))
            wire = chunked_body(body, seed, trailer)
        if checksum_value is not None and not trailer:
            headers.append(("Upload-Checksum", checksum_value))
        response = self.client.call("PATCH", upload.path, headers, wire)
        self.expect_patch(upload, response, offset, body, framing, checksum, bool(trailer), declared)

    def declared_length(self, upload: Upload, declare: str | None, size: int) -> int | None:
        if declare is None:
            return None
        if declare == "exact":
            return upload.offset + size
        if declare == "more":
            return upload.offset + size + 10
        if declare == "below":
            return max(upload.offset - 1, 0) if upload.offset else None
        return (upload.length or 0) + 1 if upload.length is not None else None     # "other"

    def expect_patch(self, upload: Upload, response: Response | None, offset: int, body: bytes, framing: str,
                     checksum: str | None, in_trailer: bool, declared: int | None) -> None:
        """The server's checks, in its order: checksum syntax, existence, final, offset, length, limit, digest."""
        bogus_header = checksum == "bogus" and not in_trailer
        status = response.status if response is not None else None
        if bogus_header:
            assert status == 400, response
            return
        if upload.deleted:
            assert status == 404, response
            return
        if upload.final:
            assert status == 403, response
            return
        assert response is not None, "an answer was expected"
        if offset != upload.offset:
            assert status == 409, response
            assert response.header("Upload-Offset") == str(upload.offset), response
            return
        if declared is not None:
            if upload.length is not None and declared != upload.length or upload.length is None and declared < upload.offset:
                assert status == 400, response
                return
            upload.length = declared
        room = upload.room
        staged = checksum is not None and (framing == "length" or not in_trailer or framing == "trailer")
        if room is not None and len(body) > room:
            assert status == 413, response
            if framing != "length" and not staged:
                # A chunked body past the length: what fits was received and is kept.
                self.acknowledge(upload, response, body[:room])
                assert upload.complete
                self.settle_finals()
            else:
                assert response.header("Upload-Offset") == str(upload.offset), response
            return
        if checksum in ("wrong", "bogus"):
            assert status == (460 if checksum == "wrong" else 400), response
            assert response.header("Upload-Offset") == str(upload.offset), response
            return
        assert status == 204, response
        self.acknowledge(upload, response, body)
        assert upload.offset == offset + len(body)
        self.settle_finals()

    @precondition(lambda self: bool(self.interruptible()))
    @rule(data=st.data(), size=SIZES, seed=SEEDS, how=st.sampled_from(["fin", "rst"]),
          framing=st.sampled_from(["length", "chunked", "trailer"]), checksum=st.sampled_from([None, None, "right"]),
          algorithm=st.sampled_from(ALGORITHMS))
    def interrupt(self, data: st.DataObject, size: int, seed: int, how: str, framing: str, checksum: str | None,
                  algorithm: str) -> None:
        """Start a PATCH, send part of its body, then go away. The server keeps what it received
        (nothing, with a checksum) and reports no more than that."""
        upload = choose(data, list(reversed(self.interruptible())), "upload")
        room = upload.room
        size = max(1, size if room is None else min(size, room))
        sent = int(size * data.draw(st.floats(0, 1, exclude_max=True), label="part sent"))
        body = payload(seed, size)
        headers = [("Tus-Resumable", TUS), ("Content-Type", OCTET), ("Upload-Offset", str(upload.offset)),
                   ("Expect", "100-continue")]
        if checksum is not None and framing != "trailer":
            headers.append(("Upload-Checksum", checksum_header(checksum, algorithm, body)))
        if framing == "trailer":    # a declared trailer stages the body like a checksum header
            headers.append(("Trailer", "Upload-Checksum"))
            checksum = "right"
        if framing == "length":
            headers.append(("Content-Length", str(size)))
            prefix = body[:sent]
        else:
            headers.append(("Transfer-Encoding", "chunked"))
            prefix = b"%x\r\n" % size + body[:sent]
        with RawConnection("127.0.0.1", self.server.port) as conn:
            conn.send(build_request("PATCH", upload.path, headers, host=f"127.0.0.1:{self.server.port}"))
            # The 100 comes once the server holds the upload and wants the body: from then on
            # it owns the request, so the HEAD below sees the outcome, not a race.
            interim = conn.read_response("PATCH", allow_interim=True)
            assert interim.status == 100, interim
            conn.try_send(prefix)
            answered = None
            if how == "fin":
                conn.shutdown_write()
                try:
                    answered = conn.read_response("PATCH")
                except ConnectionClosed:
                    pass
                else:
                    check_response(answered, "PATCH", upload.path)
                    assert answered.status in (400, 408), answered
            else:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        COVERED[f"interrupt {how}"] += 1
        head = self.head(upload)
        kept = body[:sent] if checksum is None else b""
        self.acknowledge(upload, head, kept)
        if answered is not None:
            assert answered.header("Upload-Offset") == str(upload.offset), (answered, upload.offset)
        self.settle_finals()

    @precondition(lambda self: self.room_for_more() and any(u.partial for u in self.uploads))
    @rule(data=st.data(), absolute=st.booleans())
    def concatenate(self, data: st.DataObject, absolute: bool) -> None:
        candidates = [upload for upload in reversed(self.uploads) if upload.partial]
        if data.draw(st.booleans(), label="include a non-partial"):
            candidates = list(reversed(self.uploads))
        picks = data.draw(st.lists(st.integers(0, 2 * MAX_UPLOADS - 1), min_size=1, max_size=4), label="parts")
        parts = [candidates[pick % len(candidates)] for pick in picks]
        prefix = f"http://127.0.0.1:{self.server.port}" if absolute else ""
        concat = "final;" + " ".join(prefix + part.path for part in parts)
        response = self.client.call("POST", self.base, [("Upload-Concat", concat)])
        assert response is not None
        if any(part.deleted or not part.partial for part in parts):
            assert response.status == 400, response
            return
        assert response.status == 201, response
        assert response.header("Upload-Concat") == concat, response
        lengths = [part.length for part in parts]
        final = Upload(path=path_of(response.header("Location") or ""), concat=concat, parts=parts,
                       length=None if None in lengths else sum(length or 0 for length in lengths))
        self.uploads.append(final)
        if self.joinable(final):
            final.data = bytearray(b"".join(bytes(part.data) for part in parts))
            assert response.header("Upload-Offset") == str(final.length), response
            COVERED["final joined"] += 1
        else:
            assert response.header("Upload-Offset") is None, response
            COVERED["final waiting"] += 1

    @precondition(lambda self: bool(self.uploads))
    @rule(data=st.data(), kind=st.sampled_from([None, None, "span", "from", "suffix", "beyond"]),
          first=st.integers(0, 5000), span=st.integers(0, 5000))
    def download(self, data: st.DataObject, kind: str | None, first: int, span: int) -> None:
        finished = [upload for upload in self.live() if upload.complete]
        prefer_finished: bool = data.draw(st.integers(0, 3), label="a finished one?") != 3
        if prefer_finished and finished:
            upload = choose(data, list(reversed(finished)), "upload")
        else:
            upload = self.pick(data)
        size = upload.length or 0
        first = min(first, size + 2)
        spec = {None: None, "span": f"bytes={first}-{first + span}", "from": f"bytes={first}-",
                "suffix": f"bytes=-{span}", "beyond": f"bytes={size}-"}[kind]
        self.get(upload, spec)

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        upload = self.pick(data)
        response = self.client.call("DELETE", upload.path, [])
        assert response is not None
        assert response.status == (404 if upload.deleted else 204), response
        upload.deleted = True

    # ---- checks ---------------------------------------------------------------------------

    def head(self, upload: Upload) -> Response:
        response = self.client.call("HEAD", upload.path, [])
        assert response is not None
        assert response.status == 200, response
        return response

    def get(self, upload: Upload, spec: str | None = None) -> None:
        response = self.client.call("GET", upload.path, [("Range", spec)] if spec else [])
        assert response is not None
        if upload.deleted:
            assert response.status == 404, response
            return
        if not upload.complete:
            assert response.status == 409, (response, "a final upload must be joined once its partials are")
            return
        content = bytes(upload.data)
        if spec is None:
            assert response.status == 200, response
            assert response.body == content, "download differs from the acknowledged bytes"
            upload.downloaded = True
            return
        expected = expected_range(spec, len(content))
        if expected is None:
            assert response.status == 416, response
            return
        assert response.status == 206, response
        assert response.body == content[expected[0]:expected[1]], "range differs from the acknowledged bytes"

    @invariant()
    def server_agrees_with_the_model(self) -> None:
        for upload in self.uploads:
            if upload.deleted:
                response = self.client.call("HEAD", upload.path, [])
                assert response is not None and response.status == 404, response
                continue
            if (upload.final and not upload.complete) or (upload.complete and not upload.downloaded):
                self.get(upload)    # for a final: before HEAD, which would also join it
            self.check_head(upload)

    def check_head(self, upload: Upload) -> None:
        response = self.head(upload)
        offset = response.header("Upload-Offset")
        if upload.final and not upload.complete:
            assert offset is None, response
        else:
            assert offset is not None, response
            assert int(offset) >= upload.seen, ("offset went back", upload.seen, response)
            assert int(offset) == upload.offset, (upload.offset, response)
            upload.seen = int(offset)
        if upload.length is not None:
            assert response.header("Upload-Length") == str(upload.length), (upload.length, response)
        else:
            assert response.header("Upload-Length") is None, response
        if upload.concat is not None:
            assert response.header("Upload-Concat") == upload.concat, response


def expected_range(spec: str, size: int) -> tuple[int, int] | None:
    """(start, end) of a satisfiable single range, None for 416."""
    first, _, last = spec.removeprefix("bytes=").partition("-")
    if not first:
        count = int(last)
        return (max(0, size - count), size) if count and size else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    return (start, end) if start < size and end > start else None


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """ONE server for the whole run: state left by one example is part of the next one's world."""
    directory: Path = tmp_path_factory.mktemp("stateful-fuzz")
    process = ServerProcess(directory).start()      # with the access log: it shows 5xx sent to nobody
    yield process
    process.kill()


def test_stateful_fuzz(fuzz_server: ServerProcess) -> None:
    TusMachine.server = fuzz_server
    COVERED.clear()
    budget = fuzz_settings(ci_examples=60, long_examples=2000, ci_steps=40, long_steps=80)
    run_state_machine_as_test(TusMachine, settings=budget)  # type: ignore[no-untyped-call]
    assert fuzz_server.alive
    assert_clean_log(fuzz_server)
    assert MUST_COVER <= set(COVERED), (MUST_COVER - set(COVERED), sorted(COVERED.items()))


def assert_clean_log(server: ServerProcess) -> None:
    """No 5xx even to clients that already left (an interrupted body's reply goes nowhere), no traceback."""
    log = "".join(server.log)
    assert "Traceback" not in log and "unhandled error" not in log, log[-4000:]
    errors = [line for line in server.log if re.search(r'" 5\d\d in=', line)]
    assert not errors, errors[:20]


# ---- bugs the machine found, as plain examples ---------------------------------------------------


def _create(server: ServerProcess, length: int, *extra: tuple[str, str]) -> str:
    response = Client(server).call("POST", "/files/", [("Upload-Length", str(length)), *extra])
    assert response is not None and response.status == 201, response
    return path_of(response.header("Location") or "")


def _offset(server: ServerProcess, path: str) -> int:
    response = Client(server).call("HEAD", path, [])
    assert response is not None and response.status == 200, response
    return int(response.header("Upload-Offset") or "-1")


def _chunked_patch_head(path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("Tus-Resumable", TUS), ("Content-Type", OCTET), ("Upload-Offset", "0"),
            ("Transfer-Encoding", "chunked"), *extra]


def test_declared_trailer_body_past_the_length_reports_only_what_is_stored(fuzz_server: ServerProcess) -> None:
    """A staged body (declared Upload-Checksum trailer) that goes past the length is discarded:
    the 413 said Upload-Offset: 5 although the rollback had left 0 bytes."""
    path = _create(fuzz_server, 5)
    body = b"x" * 20
    value = checksum_header("right", "sha1", body)
    response = Client(fuzz_server).call("PATCH", path, _chunked_patch_head(path, ("Trailer", "Upload-Checksum"))[1:],
                                        chunked(body, trailer=f"Upload-Checksum: {value}\r\n"))
    assert response is not None and response.status == 413, response
    assert response.header("Upload-Offset") == "0", response
    assert _offset(fuzz_server, path) == 0


def test_interrupted_declared_trailer_body_reports_only_what_is_stored(fuzz_server: ServerProcess) -> None:
    path = _create(fuzz_server, 100)
    with RawConnection("127.0.0.1", fuzz_server.port) as conn:
        conn.send(build_request("PATCH", path, _chunked_patch_head(path, ("Trailer", "Upload-Checksum")),
                                b"20\r\n" + b"y" * 32 + b"\r\n", f"127.0.0.1:{fuzz_server.port}"))
        conn.shutdown_write()
        response = conn.read_response("PATCH")
    assert response.status == 400, response
    assert response.header("Upload-Offset") == "0", "staged bytes were reported as kept"
    assert _offset(fuzz_server, path) == 0


def _final_of(server: ServerProcess, partial: str) -> str:
    response = Client(server).call("POST", "/files/", [("Upload-Concat", f"final;{partial}")])
    assert response is not None and response.status == 201, response
    assert response.header("Upload-Offset") is None, "the partial is not finished yet"
    return path_of(response.header("Location") or "")


def _download(server: ServerProcess, path: str) -> Response:
    response = Client(server).call("GET", path, [])
    assert response is not None
    return response


def test_partial_completed_by_a_body_past_its_length_joins_its_final(fuzz_server: ServerProcess) -> None:
    """A chunked body longer than the upload keeps what fits (413); when that completes a partial,
    its final must be joined then, not only when somebody happens to HEAD the final."""
    partial = _create(fuzz_server, 5, ("Upload-Concat", "partial"))
    final = _final_of(fuzz_server, partial)
    response = Client(fuzz_server).call("PATCH", partial, _chunked_patch_head(partial)[1:], chunked(b"abcdefgh"))
    assert response is not None and response.status == 413, response
    assert response.header("Upload-Offset") == "5", response
    joined = _download(fuzz_server, final)
    assert joined.status == 200 and joined.body == b"abcde", joined


def test_partial_completed_by_a_chunked_body_cut_after_its_last_byte_joins_its_final(
        fuzz_server: ServerProcess) -> None:
    partial = _create(fuzz_server, 6, ("Upload-Concat", "partial"))
    final = _final_of(fuzz_server, partial)
    with RawConnection("127.0.0.1", fuzz_server.port) as conn:
        # All six bytes, but the client goes away before the last chunk.
        conn.send(build_request("PATCH", partial, _chunked_patch_head(partial), b"6\r\nsix by\r\n",
                                f"127.0.0.1:{fuzz_server.port}"))
        conn.shutdown_write()
        response = conn.read_response("PATCH")
    assert response.status == 400 and response.header("Upload-Offset") == "6", response
    joined = _download(fuzz_server, final)
    assert joined.status == 200 and joined.body == b"six by", joined
