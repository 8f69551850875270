"""tusfast.core.headers: integer, metadata and header-collection parsing (checklist A2, 46, 84)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tusfast.core.errors import ErrorKind, TusError
from tusfast.core.headers import (MAX_INT, OFFSET_STREAM, SINGLE_VALUED, TUS_VERSION, collect_headers,
                                  format_metadata, is_supported_version, media_type, parse_defer_length,
                                  parse_length, parse_metadata, parse_offset, parse_uint)

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
