"""Incremental digests for Upload-Checksum. hashlib releases the GIL for large buffers, so update()
is meant to run in a worker thread while the body keeps streaming in."""

from __future__ import annotations

import hashlib
import zlib
from typing import Protocol, Sequence, Union

Buffer = Union[bytes, bytearray, memoryview]
ALGORITHMS = ("md5", "sha1", "sha256", "sha512", "crc32")


class _Hash(Protocol):
    def update(self, data: Buffer, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def _new_hash(algorithm: str) -> _Hash:
    return _Crc32() if algorithm == "crc32" else hashlib.new(algorithm)


class Checksum:
    """The digest a client announced, and the one the received bytes produce."""

    def __init__(self, algorithm: str, expected: bytes) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self._hash = _new_hash(algorithm)

    def update(self, chunks: Sequence[Buffer]) -> None:
        for chunk in chunks:
            self._hash.update(chunk)

    def matches(self) -> bool:
        return self._hash.digest() == self.expected
