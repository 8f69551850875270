"""tusfast.core.checksum: incremental digests for Upload-Checksum (checklist items 63-69)."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tusfast.core.checksum import ALGORITHMS, Checksum
from tusfast.core.headers import CHECKSUM_DIGEST_SIZES, parse_checksum
from tusfast.core.protocol import new_checksum


def reference(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def test_algorithms() -> None:
    assert ALGORITHMS == ("md5", "sha1", "sha256", "sha512", "crc32")


@pytest.mark.parametrize(("algorithm", "data", "digest_b64"), [
    ("sha1", b"hello world", "Kq5sNclPz7QV2+lfQIuc6R7oRu0="),        # the spec's example (item 63)
    ("md5", b"hello world", "XrY7u+Ae7tCTyyK7j1rNww=="),
    ("sha256", b"", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
    ("crc32", b"hello world", "DUoRhQ=="),                             # 0x0d4a1185, big-endian
    ("crc32", b"", "AAAAAA=="),
    ("crc32", b"123456789", "y/Q5Jg=="),                               # the CRC-32 check value 0xcbf43926
])
def test_known_vectors(algorithm: str, data: bytes, digest_b64: str) -> None:
    checksum = Checksum(algorithm, base64.b64decode(digest_b64))
    checksum.update([data])
    assert checksum.matches()


def test_crc32_digest_is_4_bytes_big_endian() -> None:
    data = b"hello world"
    expected = zlib.crc32(data).to_bytes(4, "big")
    assert expected == bytes.fromhex("0d4a1185")
    assert Checksum("crc32", expected).matches() is False            # nothing hashed yet
    checksum = Checksum("crc32", expected)
    checksum.update([data])
    assert checksum.matches()
    little = Checksum("crc32", expected[::-1])
    little.update([data])
    assert not little.matches()


@given(st.sampled_from(ALGORITHMS), st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=12),
       st.sampled_from([bytes, bytearray, memoryview]))
def test_checksum_matches_reference_over_any_chunking(algorithm: str, data: bytes, cuts: list[int],
                                                      kind: type) -> None:
    chunks = split(data, cuts)
    assert b"".join(chunks) == data
    expected = reference(algorithm, data)
    assert len(expected) == CHECKSUM_DIGEST_SIZES[algorithm]
    checksum = Checksum(algorithm, expected)
    for chunk in chunks:                   # many update() calls with batches of buffers
        checksum.update([kind(chunk)])
    assert checksum.matches()
    batched = Checksum(algorithm, expected)
    batched.update([kind(chunk) for chunk in chunks])
    assert batched.matches()


@given(st.sampled_from(ALGORITHMS), st.binary(min_size=1, max_size=1024), st.integers(0, 1023), st.integers(1, 255))
def test_checksum_detects_any_changed_byte(algorithm: str, data: bytes, position: int, flip: int) -> None:
    position %= len(data)
    corrupted = bytearray(data)
    corrupted[position] ^= flip
    checksum = Checksum(algorithm, reference(algorithm, data))
    checksum.update([bytes(corrupted)])
    assert not checksum.matches()          # a 460 (item 64); crc32 catches every single-byte error too


@given(st.sampled_from(ALGORITHMS), st.binary(max_size=256), st.binary(min_size=1, max_size=16))
def test_checksum_detects_extra_or_missing_bytes(algorithm: str, data: bytes, extra: bytes) -> None:
    longer = Checksum(algorithm, reference(algorithm, data))
    longer.update([data, extra])
    assert not longer.matches() or reference(algorithm, data + extra) == reference(algorithm, data)
    shorter = Checksum(algorithm, reference(algorithm, data + extra))
    shorter.update([data])
    assert not shorter.matches() or reference(algorithm, data + extra) == reference(algorithm, data)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_digest_does_not_match(algorithm: str) -> None:
    checksum = Checksum(algorithm, b"\0" * CHECKSUM_DIGEST_SIZES[algorithm])
    checksum.update([b"hello world"])
    assert not checksum.matches()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_new_checksum_from_parsed_header(algorithm: str) -> None:
    data = b"chunk of an upload"
    header = f"{algorithm} {base64.b64encode(reference(algorithm, data)).decode()}"
    checksum = new_checksum(parse_checksum(header))
    assert checksum is not None
    assert (checksum.algorithm, checksum.expected) == (algorithm, reference(algorithm, data))
    checksum.update([data[:5], memoryview(data)[5:]])
    assert checksum.matches()
    assert new_checksum(None) is None
