"""tusfast.http.body: framing decoders and the RequestBody stream (checklist items 30-32, 86, 87)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tusfast.http.body import (MAX_CHUNK_LINE, MAX_TRAILER_SIZE, BodyAborted, BodyError, BodyTimeout,
                               ChunkedDecoder, ClientDisconnected, ContentLengthDecoder, MalformedBody,
                               RequestBody)
from tusfast.http.flow import FlowControl

NEXT_REQUEST = b"HEAD /files/0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: x\r\n\r\n"


def feed_all(decoder, pieces) -> tuple[bytes, bytes]:
    """Feed pieces until the decoder is done, like the connection does; return (payload, leftover).
    Pieces that arrive after the end are leftover too (the connection never feeds them)."""
    out = bytearray()
    pieces = list(pieces)
    for index, piece in enumerate(pieces):
        for part in decoder.feed(piece):
            assert len(part) > 0
            out += part
        if decoder.done:
            return bytes(out), decoder.leftover + b"".join(pieces[index + 1:])
    return bytes(out), b""


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def pairs(data: bytes) -> list[bytes]:
    return [data[i:i + 2] for i in range(0, len(data), 2)]


SPLITS = [whole, bytewise, pairs]


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n" + trailer + b"\r\n"


# ---- ContentLengthDecoder --------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(("length", "stream", "payload", "leftover"), [
    (5, b"hello", b"hello", b""),
    (5, b"hello" + NEXT_REQUEST, b"hello", NEXT_REQUEST),
    (3, b"abcdef", b"abc", b"def"),
    (1, b"\x00\xff", b"\x00", b"\xff"),
])
def test_content_length_decoder(split, length: int, stream: bytes, payload: bytes, leftover: bytes) -> None:
    decoder = ContentLengthDecoder(length)
    assert not decoder.done
    assert feed_all(decoder, split(stream)) == (payload, leftover)
    assert decoder.done
    assert decoder.trailers == []


def test_content_length_decoder_zero_is_done_at_once() -> None:
    decoder = ContentLengthDecoder(0)
    assert decoder.done and decoder.leftover == b""


def test_content_length_decoder_partial_feeds() -> None:
    decoder = ContentLengthDecoder(10)
    assert [bytes(p) for p in decoder.feed(b"1234")] == [b"1234"]
    assert not decoder.done
    assert [bytes(p) for p in decoder.feed(b"56789")] == [b"56789"]
    assert not decoder.done
    assert [bytes(p) for p in decoder.feed(b"0NEXT")] == [b"0"]
    assert decoder.done and decoder.leftover == b"NEXT"


def test_content_length_decoder_exact_end_has_no_empty_part() -> None:
    decoder = ContentLengthDecoder(4)
    decoder.feed(b"ab")
    assert [bytes(p) for p in decoder.feed(b"cd")] == [b"cd"]
    assert decoder.done and decoder.leftover == b""


# ---- ChunkedDecoder: valid streams -----------------------------------------------------------

VALID_CHUNKED = [
    pytest.param(b"0\r\n\r\n", b"", [], id="empty"),
    pytest.param(chunked(b"hello"), b"hello", [], id="one-chunk"),
    pytest.param(chunked(b"hello", b" ", b"world"), b"hello world", [], id="three-chunks"),
    pytest.param(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world", [], id="literal"),
    pytest.param(b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", [], id="uppercase-hex"),
    pytest.param(b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789", [], id="lowercase-hex"),
    pytest.param(b"0005\r\nhello\r\n0000\r\n\r\n", b"hello", [], id="leading-zeros"),
    pytest.param(b"5;name=value\r\nhello\r\n0;x\r\n\r\n", b"hello", [], id="extensions"),
    pytest.param(b"5 \t;ext\r\nhello\r\n0\r\n\r\n", b"hello", [], id="whitespace-before-extension"),
    pytest.param(b"3\r\n\r\n\n\r\n0\r\n\r\n", b"\r\n\n", [], id="crlf-inside-data"),
    pytest.param(b"5\r\nhello\r\n0\r\nUpload-Checksum: sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=\r\n\r\n", b"hello",
                 [("upload-checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")], id="trailer"),
    pytest.param(b"0\r\nA: 1\r\nB-Two:  spaced value \r\nEmpty:\r\n\r\n", b"",
                 [("a", "1"), ("b-two", "spaced value"), ("empty", "")], id="trailers"),
    pytest.param(chunked(bytes(range(256)) * 20), bytes(range(256)) * 20, [], id="binary-5120"),
]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("next_bytes", [b"", NEXT_REQUEST, b"P"])
@pytest.mark.parametrize(("stream", "payload", "trailers"), VALID_CHUNKED)
def test_chunked_decoder(split, next_bytes: bytes, stream: bytes, payload: bytes, trailers) -> None:
    decoder = ChunkedDecoder()
    assert feed_all(decoder, split(stream + next_bytes)) == (payload, next_bytes)
    assert decoder.done
    assert decoder.trailers == trailers


@pytest.mark.parametrize(("stream", "payload", "trailers"), VALID_CHUNKED)
def test_chunked_decoder_whole_and_bytewise_agree(stream: bytes, payload: bytes, trailers) -> None:
    results = []
    for split in SPLITS:
        decoder = ChunkedDecoder()
        results.append((feed_all(decoder, split(stream + NEXT_REQUEST)), decoder.trailers))
    assert results[0] == results[1] == results[2] == ((payload, NEXT_REQUEST), trailers)


def test_chunked_decoder_not_done_until_final_crlf() -> None:
    decoder = ChunkedDecoder()
    stream = chunked(b"abc")
    got = b"".join(bytes(p) for p in decoder.feed(stream[:-1]))
    assert got == b"abc" and not decoder.done
    assert decoder.feed(stream[-1:]) == [] and decoder.done and decoder.leftover == b""


def test_chunked_decoder_slices_without_copying() -> None:
    decoder = ChunkedDecoder()
    parts = decoder.feed(chunked(b"x" * 100))
    assert all(isinstance(part, memoryview) for part in parts)
    assert b"".join(bytes(p) for p in parts) == b"x" * 100


def split_before_lf(data: bytes) -> list[bytes]:
    """Two TCP segments, the first ending with the CR of the first line."""
    cut = data.index(b"\n")
    return [data[:cut], data[cut:]]


@pytest.mark.parametrize("split", [*SPLITS, split_before_lf])
def test_chunked_line_at_limit_is_accepted(split) -> None:
    # A size line of exactly MAX_CHUNK_LINE bytes is accepted (whole feed), whatever the segmentation.
    line = b"5;" + b"x" * (MAX_CHUNK_LINE - 2)
    assert len(line) == MAX_CHUNK_LINE
    decoder = ChunkedDecoder()
    assert feed_all(decoder, split(line + b"\r\nhello\r\n0\r\n\r\n")) == (b"hello", b"")


# ---- ChunkedDecoder: malformed streams -------------------------------------------------------

MALFORMED_CHUNKED = [
    pytest.param(b"g\r\n", id="bad-hex"),
    pytest.param(b"0x5\r\nhello\r\n0\r\n\r\n", id="0x-prefix"),
    pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="negative"),
    pytest.param(b"+5\r\nhello\r\n0\r\n\r\n", id="plus"),
    pytest.param(b" 5\r\nhello\r\n0\r\n\r\n", id="leading-space"),
    pytest.param(b"\r\nhello\r\n0\r\n\r\n", id="empty-size-line"),
    pytest.param(b"5\nhello\r\n0\r\n\r\n", id="bare-lf-after-size"),
    pytest.param(b"5\r\nhello\n0\r\n\r\n", id="bare-lf-after-data"),
    pytest.param(b"5\r\nhello\r\n0\n\r\n", id="bare-lf-after-last-chunk"),
    pytest.param(b"5\r\nhello\r\n0\r\n\n", id="bare-lf-final"),
    pytest.param(b"5\r\nhello\r\n0\r\nA: 1\n\r\n", id="bare-lf-trailer"),
    pytest.param(b"5\r\nhelloXX\r\n0\r\n\r\n", id="chunk-longer-than-size"),
    pytest.param(b"5\r\nhello0\r\n\r\n", id="missing-crlf-after-data"),
    pytest.param(b"3\r\nhello\r\n0\r\n\r\n", id="size-too-small"),
    pytest.param(b"5\rhello\r\n0\r\n\r\n", id="cr-without-lf"),
    pytest.param(b"1" * 16 + b"\r\n", id="size-over-15-hex-digits"),
    pytest.param(b"5" + b" " * (MAX_CHUNK_LINE + 10) + b"\r\nhello\r\n0\r\n\r\n", id="oversize-line-with-lf"),
    pytest.param(b"5;" + b"x" * (MAX_CHUNK_LINE + 100), id="oversize-line-no-lf"),
    pytest.param(b"5;" + b"x" * (MAX_CHUNK_LINE - 1) + b"\r\nhello\r\n0\r\n\r\n", id="line-one-over-limit"),
    pytest.param(b"0\r\nNo-Colon\r\n\r\n", id="trailer-without-colon"),
    pytest.param(b"0\r\n: value\r\n\r\n", id="trailer-without-name"),
    pytest.param(b"0\r\nName : value\r\n\r\n", id="trailer-space-before-colon"),
    pytest.param(b"0\r\n Name: value\r\n\r\n", id="trailer-obs-fold"),
    pytest.param(b"0\r\n" + b"X: " + b"v" * (MAX_TRAILER_SIZE + 1) + b"\r\n\r\n", id="trailer-too-big"),
    pytest.param(b"0\r\n" + b"X: " + b"v" * 4000 + b"\r\n" * 1 + (b"Y: " + b"v" * 4000 + b"\r\n") * 4 + b"\r\n",
                 id="trailers-too-big-together"),
]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("stream", MALFORMED_CHUNKED)
def test_chunked_decoder_rejects(split, stream: bytes) -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(MalformedBody):
        for piece in split(stream):
            decoder.feed(piece)
            assert not decoder.done, "a malformed body must not be accepted as complete"


def test_malformed_body_is_a_400_body_error() -> None:
    assert issubclass(MalformedBody, BodyError)
    assert MalformedBody("x").status == 400
    assert BodyTimeout("x").status == 408
    assert ClientDisconnected("x").status == 400
    assert issubclass(BodyAborted, BodyError)


# ---- ChunkedDecoder: property ----------------------------------------------------------------

def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=3000),
       chunk_cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
       feed_cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
       extensions=st.booleans(),
       trailers=st.lists(st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True),
                                   st.from_regex(r"[!-~]([ !-~]{0,20}[!-~])?", fullmatch=True)), max_size=3),
       after=st.binary(max_size=200))
def test_chunked_round_trip(payload: bytes, chunk_cuts: list[int], feed_cuts: list[int], extensions: bool,
                            trailers: list[tuple[str, str]], after: bytes) -> None:
    chunks = [c for c in _split(payload, chunk_cuts) if c]
    ext = b";n=v" if extensions else b""
    trailer_section = b"".join(f"{name}: {value}\r\n".encode() for name, value in trailers)
    stream = (b"".join(b"%X%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks) + b"0" + ext + b"\r\n"
              + trailer_section + b"\r\n")
    decoder = ChunkedDecoder()
    assert feed_all(decoder, _split(stream + after, feed_cuts)) == (payload, after)
    assert decoder.done
    assert decoder.trailers == [(name.lower(), value) for name, value in trailers]


# ---- RequestBody -----------------------------------------------------------------------------

class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def make_body(size: int | None = None, high_water: int = 100, send_continue=None):
    transport = FakeTransport()
    decoder = ChunkedDecoder() if size is None else ContentLengthDecoder(size)
    body = RequestBody(size, decoder, FlowControl(transport), high_water, send_continue)  # type: ignore[arg-type]
    return body, transport


def joined(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def run(coro):
    return asyncio.run(coro)


def test_read_returns_buffered_chunks_then_empty_at_end() -> None:
    async def main() -> None:
        body, _ = make_body(10)
        assert body.feed(b"abc") == b""
        assert body.feed(b"def") == b""
        chunks = await body.read()
        assert [bytes(c) for c in chunks] == [b"abc", b"def"]
        assert body.received == 6 and body.open and not body.complete
        assert body.feed(b"ghij" + NEXT_REQUEST) == NEXT_REQUEST
        assert body.complete and not body.open
        assert joined(await body.read()) == b"ghij"
        assert await body.read() == []
        assert await body.read() == []
        assert body.received == 10
    run(main())


def test_read_waits_for_data() -> None:
    async def main() -> None:
        body, _ = make_body(4)
        reader = asyncio.ensure_future(body.read())
        await asyncio.sleep(0)
        assert not reader.done()
        body.feed(b"ab")
        assert joined(await asyncio.wait_for(reader, 1)) == b"ab"
        reader = asyncio.ensure_future(body.read())
        await asyncio.sleep(0)
        body.feed(b"cd")
        assert joined(await asyncio.wait_for(reader, 1)) == b"cd"
        assert await asyncio.wait_for(body.read(), 1) == []
    run(main())


def test_empty_body_reads_empty_at_once() -> None:
    async def main() -> None:
        calls = []
        body, transport = make_body(0, send_continue=lambda: calls.append(1))
        assert body.complete and not body.open
        assert await asyncio.wait_for(body.read(), 1) == []
        assert calls == [] and transport.calls == []
    run(main())


def test_chunked_body_with_trailers_and_leftover() -> None:
    async def main() -> None:
        body, _ = make_body(None)
        assert body.size is None
        stream = chunked(b"hello", b"world", trailer=b"Upload-Checksum: sha1 x\r\n") + NEXT_REQUEST
        leftover = b"".join(body.feed(stream[i:i + 7]) for i in range(0, len(stream), 7))
        assert leftover == NEXT_REQUEST
        assert joined(await body.read()) == b"helloworld"
        assert await body.read() == []
        assert body.trailers == [("upload-checksum", "sha1 x")]
        assert body.received == 10
    run(main())


def test_chunked_body_leftover_is_exactly_the_next_request() -> None:
    async def main() -> None:
        body, _ = make_body(None)
        assert body.feed(chunked(b"abc") + NEXT_REQUEST) == NEXT_REQUEST
        assert joined(await body.read()) == b"abc"
    run(main())


def test_pauses_at_high_water_and_resumes_after_read() -> None:
    async def main() -> None:
        body, transport = make_body(1000, high_water=10)
        body.feed(b"12345")
        assert transport.calls == []
        body.feed(b"67890")                 # 10 buffered: high water reached
        assert transport.calls == ["pause"]
        body.feed(b"x")                     # already paused: no second call
        assert transport.calls == ["pause"]
        assert joined(await body.read()) == b"1234567890x"
        assert transport.calls == ["pause", "resume"]
        body.feed(b"abc")
        assert joined(await body.read()) == b"abc"
        assert transport.calls == ["pause", "resume"]   # never paused, so nothing to resume
    run(main())


def test_no_resume_on_closing_transport() -> None:
    async def main() -> None:
        body, transport = make_body(100, high_water=1)
        body.feed(b"ab")
        transport.closing = True
        assert joined(await body.read()) == b"ab"
        assert transport.calls == ["pause"]
    run(main())


@pytest.mark.parametrize("error", [None, BodyAborted("newer request"), ClientDisconnected("gone"),
                                   BodyTimeout("slow")])
def test_abort_hands_out_buffered_chunks_first(error: BodyError | None) -> None:
    async def main() -> None:
        body, transport = make_body(100)
        body.feed(b"kept")
        body.abort(error)
        assert "pause" in transport.calls
        assert not body.open
        assert joined(await body.read()) == b"kept"          # nothing received is lost (item 32)
        with pytest.raises(type(error) if error else BodyAborted) as raised:
            await body.read()
        if error is not None:
            assert raised.value is error
        with pytest.raises(BodyError):                        # and it keeps raising
            await body.read()
    run(main())


def test_abort_wakes_a_pending_read() -> None:
    async def main() -> None:
        body, _ = make_body(100)
        reader = asyncio.ensure_future(body.read())
        await asyncio.sleep(0)
        body.abort()
        with pytest.raises(BodyAborted):
            await asyncio.wait_for(reader, 1)
    run(main())


def test_after_abort_bytes_are_dropped_but_leftover_kept() -> None:
    async def main() -> None:
        body, _ = make_body(6)
        body.feed(b"ab")
        body.abort()
        assert body.feed(b"cd") == b""
        assert body.feed(b"ef" + NEXT_REQUEST) == NEXT_REQUEST
        assert body.complete
        assert joined(await body.read()) == b"ab"
        with pytest.raises(BodyAborted):
            await body.read()
        assert body.received == 2
    run(main())


def test_fail_client_disconnected() -> None:
    async def main() -> None:
        body, _ = make_body(100)
        body.feed(b"part1")
        body.feed(b"part2")
        body.fail(ClientDisconnected("gone"))
        body.fail(BodyTimeout("later errors do not replace the first"))
        assert not body.open
        assert joined(await body.read()) == b"part1part2"
        with pytest.raises(ClientDisconnected):
            await body.read()
    run(main())


def test_fail_wakes_a_pending_read() -> None:
    async def main() -> None:
        body, _ = make_body(100)
        reader = asyncio.ensure_future(body.read())
        await asyncio.sleep(0)
        body.fail(ClientDisconnected("gone"))
        with pytest.raises(ClientDisconnected):
            await asyncio.wait_for(reader, 1)
    run(main())


def test_fail_after_complete_is_ignored() -> None:
    async def main() -> None:
        body, _ = make_body(3)
        body.feed(b"abc")
        body.fail(ClientDisconnected("closed after sending everything"))
        assert joined(await body.read()) == b"abc"
        assert await body.read() == []
    run(main())


@pytest.mark.parametrize("split", SPLITS)
def test_malformed_chunked_body_fails_the_read(split) -> None:
    async def main() -> None:
        body, _ = make_body(None)
        stream = b"3\r\nabc\r\nZZ\r\n0\r\n\r\n"
        for piece in split(stream):
            assert body.feed(piece) == b""
        assert not body.open
        assert joined(await body.read()) == b"abc"
        with pytest.raises(MalformedBody):
            await body.read()
    run(main())


def test_continue_sent_once_on_first_read_that_waits() -> None:
    async def main() -> None:
        calls: list[int] = []
        body, _ = make_body(6, send_continue=lambda: calls.append(1))
        assert body.continue_pending
        assert calls == []                  # not before the application asks for the body
        reader = asyncio.ensure_future(body.read())
        await asyncio.sleep(0)
        assert calls == [1]
        assert not body.continue_pending
        body.feed(b"abc")
        assert joined(await asyncio.wait_for(reader, 1)) == b"abc"
        reader = asyncio.ensure_future(body.read())
        await asyncio.sleep(0)
        body.feed(b"def")
        assert joined(await asyncio.wait_for(reader, 1)) == b"def"
        assert await body.read() == []
        assert calls == [1]
    run(main())


def test_no_continue_without_callback() -> None:
    async def main() -> None:
        body, _ = make_body(3)
        assert not body.continue_pending
        reader = asyncio.ensure_future(body.read())
        await asyncio.sleep(0)
        body.feed(b"abc")
        assert joined(await asyncio.wait_for(reader, 1)) == b"abc"
    run(main())


def test_no_continue_when_never_read() -> None:
    calls: list[int] = []
    body, _ = make_body(3, send_continue=lambda: calls.append(1))
    body.abort()
    assert calls == []
    assert body.continue_pending
