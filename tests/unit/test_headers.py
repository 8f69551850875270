"""tusfast.core.headers: integer, metadata and header-collection parsing (checklist A2, 46, 84)."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from tusfast.core.checksum import ALGORITHMS
from tusfast.core.errors import ErrorKind, TusError
from tusfast.core.headers import (CHECKSUM_DIGEST_SIZES, MAX_INT, OFFSET_STREAM, SINGLE_VALUED, TUS_VERSION,
                                  collect_headers, format_metadata, is_supported_version, media_type,
                                  parse_checksum, parse_concat, parse_defer_length, parse_length, parse_metadata,
                                  parse_offset, parse_range, parse_uint)

# ---- parse_uint ------------------------------------------------------------------------------

VALID_UINTS = [
    ("0", 0),
    ("5", 5),
    ("05", 5),                          # leading zeros normalise (item 84: "consistently")
    ("1234567890", 1234567890),
    (str(2**63 - 1), 2**63 - 1),
    (str(2**32), 2**32),
]

INVALID_UINTS = [
    "",
    "-1",
    "-0",
    "+5",
    " 5",
    "5 ",
    "5\t",
    "\n5",
    "0x10",
    "ff",
    "1e3",
    "1.0",
    "1_000",
    "5,6",
    str(2**63),
    str(2**64),
    "9" * 19,
    "1" + "0" * 19,                     # 20 digits, way past 2^63
    "٥",                                # Arabic-Indic digit five: int() would accept it
    "５",                                # full-width five
    "1٥",
    "²",
    "é",
    "5\x00",
]


@pytest.mark.parametrize(("text", "expected"), VALID_UINTS)
def test_parse_uint_accepts(text: str, expected: int) -> None:
    assert parse_uint(text, ErrorKind.INVALID_LENGTH) == expected


@pytest.mark.parametrize("text", INVALID_UINTS)
@pytest.mark.parametrize("kind", [ErrorKind.INVALID_LENGTH, ErrorKind.INVALID_OFFSET])
def test_parse_uint_rejects_with_given_kind(text: str, kind: ErrorKind) -> None:
    with pytest.raises(TusError) as info:
        parse_uint(text, kind)
    assert info.value.kind is kind
    assert info.value.status == 400


def test_max_int_is_2_63_minus_1() -> None:
    assert MAX_INT == 2**63 - 1


@given(st.text())
@example("")
@example("+1")
@example("９")
@example(str(2**63))
def test_parse_uint_only_raises_tus_error(text: str) -> None:
    try:
        value = parse_uint(text, ErrorKind.INVALID_OFFSET)
    except TusError as error:
        assert error.kind is ErrorKind.INVALID_OFFSET
    else:
        # Anything accepted is plain ASCII decimal whose value is in range.
        assert text.isascii() and text.isdigit()
        assert value == int(text)
        assert 0 <= value <= MAX_INT


@given(st.from_regex(r"[0-9]+", fullmatch=True).filter(lambda s: int(s) <= MAX_INT))
@example("0" * 20)                      # zero, spelled with 20 digits
@example("0" * 19 + "5")                # "05" with more zeros
@example(str(MAX_INT))
def test_parse_uint_returns_int_of_any_in_range_digit_string(text: str) -> None:
    assert parse_uint(text, ErrorKind.INVALID_LENGTH) == int(text)


@given(st.integers(min_value=0, max_value=MAX_INT))
def test_parse_uint_round_trips_every_in_range_int(number: int) -> None:
    assert parse_uint(str(number), ErrorKind.INVALID_LENGTH) == number


@given(st.integers(min_value=MAX_INT + 1, max_value=10**30))
def test_parse_uint_rejects_every_too_large_int(number: int) -> None:
    with pytest.raises(TusError) as info:
        parse_uint(str(number), ErrorKind.INVALID_LENGTH)
    assert info.value.kind is ErrorKind.INVALID_LENGTH


# ---- parse_offset / parse_length / parse_defer_length ----------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ({"upload-offset": "0"}, 0),
    ({"upload-offset": "42"}, 42),
    ({"upload-offset": " 42 "}, 42),    # header values are trimmed (item 84)
    ({"upload-offset": str(MAX_INT)}, MAX_INT),
])
def test_parse_offset_accepts(headers: dict[str, str], expected: int) -> None:
    assert parse_offset(headers) == expected


@pytest.mark.parametrize(("headers", "kind"), [
    ({}, ErrorKind.MISSING_OFFSET),
    ({"upload-length": "5"}, ErrorKind.MISSING_OFFSET),
    ({"upload-offset": ""}, ErrorKind.INVALID_OFFSET),
    ({"upload-offset": "-1"}, ErrorKind.INVALID_OFFSET),
    ({"upload-offset": "+1"}, ErrorKind.INVALID_OFFSET),
    ({"upload-offset": "abc"}, ErrorKind.INVALID_OFFSET),
    ({"upload-offset": "1 2"}, ErrorKind.INVALID_OFFSET),
    ({"upload-offset": str(2**63)}, ErrorKind.INVALID_OFFSET),
])
def test_parse_offset_rejects(headers: dict[str, str], kind: ErrorKind) -> None:
    with pytest.raises(TusError) as info:
        parse_offset(headers)
    assert info.value.kind is kind
    assert info.value.status == 400


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, None),
    ({"upload-offset": "3"}, None),
    ({"upload-length": "0"}, 0),
    ({"upload-length": "100"}, 100),
    ({"upload-length": "\t100 "}, 100),
    ({"upload-length": str(MAX_INT)}, MAX_INT),
])
def test_parse_length_accepts(headers: dict[str, str], expected: int | None) -> None:
    assert parse_length(headers) == expected


@pytest.mark.parametrize("value", ["", "-5", "+5", "5.0", "0x5", "five", str(2**63), "1,2"])
def test_parse_length_rejects(value: str) -> None:
    with pytest.raises(TusError) as info:
        parse_length({"upload-length": value})
    assert info.value.kind is ErrorKind.INVALID_LENGTH
    assert info.value.status == 400


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, False),
    ({"upload-defer-length": "1"}, True),
    ({"upload-defer-length": " 1 "}, True),
])
def test_parse_defer_length_accepts(headers: dict[str, str], expected: bool) -> None:
    assert parse_defer_length(headers) is expected


@pytest.mark.parametrize("value", ["0", "", "2", "true", "01", "1,1", "yes"])
def test_parse_defer_length_rejects_anything_but_1(value: str) -> None:
    # Item 43: any other value should get 400.
    with pytest.raises(TusError) as info:
        parse_defer_length({"upload-defer-length": value})
    assert info.value.kind is ErrorKind.INVALID_DEFER_LENGTH
    assert info.value.status == 400


# ---- version and media type ------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ({"tus-resumable": "1.0.0"}, True),
    ({"tus-resumable": " 1.0.0 "}, True),
    ({}, False),
    ({"tus-resumable": ""}, False),
    ({"tus-resumable": "0.2.2"}, False),
    ({"tus-resumable": "1.0"}, False),
    ({"tus-resumable": "1.0.0, 0.2.2"}, False),
    ({"tus-version": "1.0.0"}, False),
])
def test_is_supported_version(headers: dict[str, str], expected: bool) -> None:
    assert TUS_VERSION == "1.0.0"
    assert is_supported_version(headers) is expected


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, ""),
    ({"content-type": "application/offset+octet-stream"}, OFFSET_STREAM),
    ({"content-type": "Application/Offset+Octet-Stream"}, OFFSET_STREAM),
    ({"content-type": "application/offset+octet-stream; charset=binary"}, OFFSET_STREAM),
    ({"content-type": " application/offset+octet-stream ;x=y"}, OFFSET_STREAM),
    ({"content-type": "application/octet-stream"}, "application/octet-stream"),
    ({"content-type": "text/plain;charset=utf-8"}, "text/plain"),
])
def test_media_type(headers: dict[str, str], expected: str) -> None:
    assert media_type(headers) == expected


# ---- collect_headers -------------------------------------------------------------------------

def test_collect_headers_lowercases_names_and_keeps_values() -> None:
    assert collect_headers([("Tus-Resumable", "1.0.0"), ("UPLOAD-OFFSET", "5"), ("X-Thing", "A b")]) == {
        "tus-resumable": "1.0.0", "upload-offset": "5", "x-thing": "A b"}


def test_collect_headers_joins_repeated_ordinary_headers() -> None:
    assert collect_headers([("Accept", "a"), ("accept", "b"), ("ACCEPT", "c")]) == {"accept": "a, b, c"}


@pytest.mark.parametrize("name", sorted(SINGLE_VALUED))
@pytest.mark.parametrize("second_spelling", [str.lower, str.upper, str.title])
def test_collect_headers_rejects_repeated_tus_headers(name: str, second_spelling) -> None:
    with pytest.raises(TusError) as info:
        collect_headers([(name, "1"), ("other", "x"), (second_spelling(name), "1")])
    assert info.value.kind is ErrorKind.DUPLICATE_HEADER
    assert info.value.status == 400


@pytest.mark.parametrize("name", ["Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Metadata",
                                  "Upload-Defer-Length", "Upload-Concat", "Upload-Checksum", "Content-Type",
                                  "Host", "X-HTTP-Method-Override"])
def test_security_relevant_headers_are_single_valued(name: str) -> None:
    assert name.lower() in SINGLE_VALUED


# ---- metadata (item 46) ----------------------------------------------------------------------

def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


VALID_METADATA = [
    pytest.param(None, {}, id="absent"),
    pytest.param("", {}, id="empty-header-is-no-metadata (tuspy)"),
    pytest.param("   ", {}, id="blank-header-is-no-metadata"),
    pytest.param("\t", {}, id="tab-only"),
    pytest.param("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential",
                 {"filename": b"world_domination_plan.pdf", "is_confidential": b""}, id="spec-example"),
    pytest.param("is_confidential", {"is_confidential": b""}, id="key-without-value"),
    pytest.param("flag ", {"flag": b""}, id="key-with-space-and-empty-value"),
    pytest.param("nonlatin c8WCb8WEY2U=", {"nonlatin": "słońce".encode()}, id="non-latin-value"),
    pytest.param(f"name {b64('a.txt')},type {b64('text/plain')},filetype {b64('text/plain')},"
                 f"filename {b64('a.txt')}",
                 {"name": b"a.txt", "type": b"text/plain", "filetype": b"text/plain", "filename": b"a.txt"},
                 id="uppy"),
    pytest.param("a YQ==, b Yg==", {"a": b"a", "b": b"b"}, id="space-after-comma"),
    pytest.param("bin AP8A/w==", {"bin": b"\x00\xff\x00\xff"}, id="binary-value"),
    pytest.param("k+/=!~ YQ==", {"k+/=!~": b"a"}, id="punctuation-key"),
    pytest.param("Key YQ==,key Yg==", {"Key": b"a", "key": b"b"}, id="keys-are-case-sensitive"),
]


@pytest.mark.parametrize(("header", "expected"), VALID_METADATA)
def test_parse_metadata_accepts(header: str | None, expected: dict[str, bytes]) -> None:
    assert parse_metadata(header) == expected


INVALID_METADATA = [
    pytest.param("a !!!!", id="invalid-base64-chars"),
    pytest.param("a YQ", id="missing-padding"),
    pytest.param("a YQ=", id="short-padding"),
    pytest.param("a YQ===", id="too-much-padding"),
    pytest.param("a Y", id="single-char"),
    pytest.param("a YQ==YQ==", id="padding-in-the-middle"),
    pytest.param("a YQ-_", id="urlsafe-alphabet"),
    pytest.param("a YQ==,a Yg==", id="duplicate-keys"),
    pytest.param("a,a", id="duplicate-flag-keys"),
    pytest.param("a YQ==,b,a", id="duplicate-keys-apart"),
    pytest.param(",a YQ==", id="empty-key-leading-comma"),
    pytest.param("a YQ==,", id="empty-key-trailing-comma"),
    pytest.param("a YQ==,,b Yg==", id="empty-key-double-comma"),
    pytest.param("a  YQ==", id="two-spaces"),
    pytest.param("a YQ== Yg==", id="two-values"),
    pytest.param("a YQ==\x00", id="nul-in-value"),
    pytest.param("ключ YQ==", id="cyrillic-key"),
    pytest.param("słońce YQ==", id="latin-ext-key"),
    pytest.param("café", id="non-ascii-flag-key"),
    pytest.param("a\tb YQ==", id="tab-in-key"),
    pytest.param("a\x7fb YQ==", id="del-in-key"),
    pytest.param("a\r\nX-Evil: 1", id="crlf-in-key"),
    pytest.param("a c8WCb8WEY2U=ś", id="non-ascii-in-value"),
]


@pytest.mark.parametrize("header", INVALID_METADATA)
def test_parse_metadata_rejects(header: str) -> None:
    with pytest.raises(TusError) as info:
        parse_metadata(header)
    assert info.value.kind is ErrorKind.INVALID_METADATA
    assert info.value.status == 400


@pytest.mark.parametrize(("metadata", "expected"), [
    ({}, ""),
    ({"flag": b""}, "flag"),
    ({"nonlatin": "słońce".encode()}, "nonlatin c8WCb8WEY2U="),
    ({"filename": b"world_domination_plan.pdf", "is_confidential": b""},
     "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential"),
])
def test_format_metadata(metadata: dict[str, bytes], expected: str) -> None:
    assert format_metadata(metadata) == expected


METADATA_KEYS = st.from_regex(r"[!-+\--~]+", fullmatch=True)


@given(st.dictionaries(METADATA_KEYS, st.binary(max_size=64), max_size=8))
def test_metadata_round_trip(metadata: dict[str, bytes]) -> None:
    header = format_metadata(metadata)
    assert parse_metadata(header) == metadata
    # The formatted header is safe to echo: ASCII, no control characters.
    assert header.isascii() and all(" " <= char < "\x7f" for char in header)


@given(st.text(max_size=40))
def test_parse_metadata_only_raises_tus_error(header: str) -> None:
    try:
        metadata = parse_metadata(header)
    except TusError as error:
        assert error.kind is ErrorKind.INVALID_METADATA
    else:
        for key in metadata:
            assert key and key.isascii() and " " not in key and "," not in key


# ---- Upload-Checksum (items 63-68) -----------------------------------------------------------

HELLO = b"hello world"
HELLO_DIGESTS = {
    "md5": hashlib.md5(HELLO).digest(),
    "sha1": hashlib.sha1(HELLO).digest(),
    "sha256": hashlib.sha256(HELLO).digest(),
    "sha512": hashlib.sha512(HELLO).digest(),
    "crc32": zlib.crc32(HELLO).to_bytes(4, "big"),
}


def b64bytes(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_checksum_algorithms_agree_everywhere() -> None:
    # The algorithms the parser accepts are the ones OPTIONS announces and Checksum computes.
    assert tuple(CHECKSUM_DIGEST_SIZES) == ALGORITHMS == ("md5", "sha1", "sha256", "sha512", "crc32")
    assert "sha1" in ALGORITHMS                                              # item 66: sha1 is a MUST
    assert {name: len(digest) for name, digest in HELLO_DIGESTS.items()} == CHECKSUM_DIGEST_SIZES


def test_parse_checksum_spec_example() -> None:
    # Item 63: `sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=` is "hello world".
    assert parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=") == ("sha1", HELLO_DIGESTS["sha1"])


@pytest.mark.parametrize("algorithm", sorted(HELLO_DIGESTS))
@pytest.mark.parametrize("template", ["{a} {d}", " {a} {d} ", "\t{a} {d}\t"])
def test_parse_checksum_accepts_every_algorithm(algorithm: str, template: str) -> None:
    value = template.format(a=algorithm, d=b64bytes(HELLO_DIGESTS[algorithm]))
    assert parse_checksum(value) == (algorithm, HELLO_DIGESTS[algorithm])


@given(st.sampled_from(ALGORITHMS), st.data())
def test_parse_checksum_round_trips_any_digest(algorithm: str, data: st.DataObject) -> None:
    size = CHECKSUM_DIGEST_SIZES[algorithm]
    digest = data.draw(st.binary(min_size=size, max_size=size))
    assert parse_checksum(f"{algorithm} {b64bytes(digest)}") == (algorithm, digest)


SHA1 = b64bytes(HELLO_DIGESTS["sha1"])


@pytest.mark.parametrize("value", [
    "SHA1 " + SHA1,                 # item 66: names are lower-case
    "Sha1 " + SHA1,
    "sha-1 " + SHA1,
    "sha224 " + b64bytes(hashlib.sha224(HELLO).digest()),
    "crc32c " + b64bytes(b"1234"),
    "blake2b " + SHA1,
    "x " + SHA1,
    "",
    " " + SHA1,                     # no algorithm at all
])
def test_parse_checksum_unknown_algorithm_is_400_with_algorithm_list(value: str) -> None:
    with pytest.raises(TusError) as info:
        parse_checksum(value)
    assert info.value.kind is ErrorKind.UNSUPPORTED_CHECKSUM
    assert info.value.status == 400                                          # item 64
    assert info.value.headers == [("Tus-Checksum-Algorithm", ",".join(ALGORITHMS))]


@pytest.mark.parametrize("value", [
    "sha1",                                          # missing space and digest
    "sha1 ",                                         # empty digest
    "sha1  " + SHA1,                                 # two spaces
    "sha1 " + SHA1.rstrip("="),                      # missing padding
    "sha1 " + SHA1 + "=",                            # too much padding
    "sha1 " + SHA1.replace("+", "-"),                # url-safe alphabet
    "sha1 " + SHA1[:10] + " " + SHA1[10:],           # space inside the digest
    "sha1 " + SHA1 + " " + SHA1,                     # two digests
    "sha1 !!!!",
    "sha1 " + SHA1[:-4] + "\u00e9===",              # non-ASCII
    "sha1 " + b64bytes(HELLO_DIGESTS["md5"]),        # wrong digest length: a 16-byte md5 digest
    "md5 " + SHA1,                                   # a 20-byte digest for md5
    "crc32 " + b64bytes(b"12345"),
    "crc32 " + b64bytes(b"123"),
    "sha512 " + b64bytes(HELLO_DIGESTS["sha256"]),
    "sha256 " + b64bytes(HELLO_DIGESTS["sha256"] + b"\x00"),
])
def test_parse_checksum_malformed_is_400(value: str) -> None:
    with pytest.raises(TusError) as info:
        parse_checksum(value)
    assert info.value.kind is ErrorKind.INVALID_CHECKSUM                     # item 68
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["sha1" + SHA1, "sha1\t" + SHA1, "sha1," + SHA1])
def test_parse_checksum_without_separating_space_is_400(value: str) -> None:
    # Item 68: no space -> 400. The name then runs into the digest, so it reads as an unknown algorithm.
    with pytest.raises(TusError) as info:
        parse_checksum(value)
    assert info.value.kind in (ErrorKind.INVALID_CHECKSUM, ErrorKind.UNSUPPORTED_CHECKSUM)
    assert info.value.status == 400


@given(st.text(max_size=120))
@example("sha1 " + SHA1)
@example("crc32 AAAAAA==")
def test_parse_checksum_only_raises_400s(value: str) -> None:
    try:
        algorithm, digest = parse_checksum(value)
    except TusError as error:
        assert error.kind in (ErrorKind.UNSUPPORTED_CHECKSUM, ErrorKind.INVALID_CHECKSUM)
        assert error.status == 400
    else:
        assert algorithm in ALGORITHMS
        assert len(digest) == CHECKSUM_DIGEST_SIZES[algorithm]


# ---- Upload-Concat (items 76-77) -------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("partial", None),
    (" partial ", None),
    ("final;/files/a", ("/files/a",)),
    ("final;/files/a /files/b", ("/files/a", "/files/b")),
    ("final;http://h/files/a https://h:8443/files/b /files/c",
     ("http://h/files/a", "https://h:8443/files/b", "/files/c")),
    ("final;b a", ("b", "a")),                                  # list order is kept (item 77)
    ("final;a a", ("a", "a")),                                  # a partial may be reused (item 79)
    (" final;a b ", ("a", "b")),                               # header values are trimmed (item 84)
    pytest.param("final;" + " ".join(f"/files/{i}" for i in range(100)), tuple(f"/files/{i}" for i in range(100)),
                 id="100-urls"),
])
def test_parse_concat_accepts(value: str, expected: tuple[str, ...] | None) -> None:
    assert parse_concat(value) == expected


@pytest.mark.parametrize("value", [
    "",
    " ",
    "final",
    "final;",
    "final; ",
    "final; a",                     # a space right after ';' is an empty URL
    "final;a  b",                   # double space
    "finalx",
    "finalx;a",
    "final ;a",
    "final:a",
    "Final;a",
    "FINAL;a",
    "Partial",
    "partial;a",
    "partials",
    "partial final;a",
    ";a",
])
def test_parse_concat_rejects(value: str) -> None:
    with pytest.raises(TusError) as info:
        parse_concat(value)
    assert info.value.kind is ErrorKind.INVALID_CONCAT
    assert info.value.status == 400


@given(st.lists(st.text(st.characters(blacklist_characters=" ", blacklist_categories=("Cs", "Z", "Cc")),
                        min_size=1, max_size=30), min_size=1, max_size=10))
def test_parse_concat_round_trips_url_lists(urls: list[str]) -> None:
    value = "final;" + " ".join(urls)
    assume(value.strip() == value)
    assert parse_concat(value) == tuple(urls)


# ---- Range (downloads) -----------------------------------------------------------------------

@pytest.mark.parametrize(("value", "size", "expected"), [
    ("bytes=0-0", 10, (0, 1)),                  # the first byte
    ("bytes=0-9", 10, (0, 10)),
    ("bytes=2-5", 10, (2, 6)),
    ("bytes=9-9", 10, (9, 10)),                 # the last byte
    ("bytes=3-", 10, (3, 10)),                  # open end
    ("bytes=0-", 10, (0, 10)),
    ("bytes=-1", 10, (9, 10)),                  # suffix: the last byte
    ("bytes=-3", 10, (7, 10)),
    ("bytes=-10", 10, (0, 10)),
    ("bytes=-1000", 10, (0, 10)),               # suffix longer than the content: all of it
    ("bytes=5-1000", 10, (5, 10)),              # past the end: clamped
    ("bytes=0-" + "9" * 30, 10, (0, 10)),
    ("bytes=0-0", 1, (0, 1)),
    ("bytes=0-05", 10, (0, 6)),
    (" bytes=1-2 ", 10, (1, 3)),
    ("Bytes=1-2", 10, (1, 3)),                  # range units are case-insensitive
])
def test_parse_range(value: str, size: int, expected: tuple[int, int]) -> None:
    assert parse_range(value, size) == expected


@pytest.mark.parametrize(("value", "size"), [
    ("bytes=10-", 10),                          # starts at the end
    ("bytes=10-20", 10),
    ("bytes=11-11", 10),
    ("bytes=" + "9" * 30 + "-", 10),
    ("bytes=-0", 10),                           # an empty suffix
    ("bytes=0-0", 0),                           # nothing is satisfiable in an empty file
    ("bytes=0-", 0),
    ("bytes=-5", 0),
])
def test_parse_range_unsatisfiable_is_416_with_content_range(value: str, size: int) -> None:
    with pytest.raises(TusError) as info:
        parse_range(value, size)
    assert info.value.kind is ErrorKind.RANGE_NOT_SATISFIABLE
    assert info.value.status == 416
    assert info.value.headers == [("Content-Range", f"bytes */{size}")]


@pytest.mark.parametrize("value", [
    "bytes=0-1,3-4",                            # multiple ranges: the whole content is sent instead
    "bytes=0-1, 3-4",
    "bytes=-1,0-0",
    "items=0-1",                                # other units
    "pages=1-2",
    "bytes 0-1",
    "bytes=",
    "bytes=-",
    "bytes=a-b",
    "bytes=1-b",
    "bytes=a-1",
    "bytes=--1",
    "bytes=1--2",
    "bytes=+1-2",
    "bytes=0x1-2",
    "bytes=1.5-2",
    "bytes=1",
    "=0-1",
    "",
    "garbage",
])
def test_parse_range_ignores_what_it_does_not_support(value: str) -> None:
    # RFC 9110 14.2: a server may ignore Range; None means "send the full content".
    assert parse_range(value, 10) is None


@pytest.mark.parametrize("value", ["bytes=5-3", "bytes=9-0"])
def test_parse_range_backwards_range_is_ignored_or_416(value: str) -> None:
    # last-pos < first-pos makes the range invalid (RFC 9110 14.1.1): ignoring it or answering 416
    # are both fine, serving a piece of content is not.
    try:
        assert parse_range(value, 10) is None
    except TusError as error:
        assert error.status == 416


@pytest.mark.parametrize("value", [
    "bytes=\u00b2-",                            # '²' (latin-1 0xB2): str.isdigit() is True, int() fails
    "bytes=-\u00b3",
    "bytes=0-\u00b9",
    "bytes=\u00b21-5",
    pytest.param("bytes=" + "1" * 5000 + "-", id="5000-digit-first"),   # more digits than int() converts
    pytest.param("bytes=0-" + "9" * 5000, id="5000-digit-last"),
    pytest.param("bytes=-" + "9" * 5000, id="5000-digit-suffix"),
])
def test_parse_range_never_raises_on_odd_digits(value: str) -> None:
    # Header values arrive latin-1 decoded, so superscript digits are reachable from the wire, and a
    # request head may hold thousands of digits. Expected: None (ignore the Range) or a 416, never a
    # ValueError (a 500 from the handler).
    try:
        result = parse_range(value, 10)
    except TusError as error:
        assert error.status == 416
    else:
        assert result is None or 0 <= result[0] < result[1] <= 10


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**40),
       st.one_of(st.none(), st.integers(min_value=0, max_value=2**41)))
def test_parse_range_first_last_property(size: int, first: int, last: int | None) -> None:
    value = f"bytes={first}-{'' if last is None else last}"
    if last is not None and last < first:
        return                                   # backwards: covered above
    if first >= size:
        with pytest.raises(TusError) as info:
            parse_range(value, size)
        assert info.value.status == 416
        return
    start, end = parse_range(value, size)
    assert 0 <= start < end <= size              # always within [0, size)
    assert start == first
    assert end == (size if last is None else min(last + 1, size))


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**41))
def test_parse_range_suffix_property(size: int, count: int) -> None:
    if count == 0 or size == 0:
        with pytest.raises(TusError) as info:
            parse_range(f"bytes=-{count}", size)
        assert info.value.status == 416
        return
    start, end = parse_range(f"bytes=-{count}", size)
    assert 0 <= start < end == size
    assert end - start == min(count, size)


@given(st.text(st.characters(max_codepoint=0xFF), max_size=60), st.integers(min_value=0, max_value=1000))
@example("bytes=\u00b2-", 10)
def test_parse_range_only_returns_a_range_none_or_416(value: str, size: int) -> None:
    try:
        result = parse_range(value, size)
    except TusError as error:
        assert error.kind is ErrorKind.RANGE_NOT_SATISFIABLE
        assert error.headers == [("Content-Range", f"bytes */{size}")]
    else:
        assert result is None or 0 <= result[0] < result[1] <= size
