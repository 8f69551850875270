"""The load generator: a minimal HTTP/1.1 tus client on raw blocking sockets.

Request heads go out with one send() (MSG_MORE when a body follows), bodies with os.sendfile
from a pre-generated random file, downloads land in one reused buffer through recv_into.
Responses are parsed only as far as the benchmarks need (status, a few headers, Content-Length
or chunked framing), so the client spends its CPU in the kernel, not in Python.
"""

from __future__ import annotations

import base64
import hashlib
import os
import resource
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

IO_TIMEOUT = 300.0              # seconds a blocking send/recv may stall before the run fails
RECV_SIZE = 1 << 20             # recv_into buffer for downloads and response heads
SOURCE_BLOCK = 8 << 20          # random data is written in blocks of this size


class ProtocolError(Exception):
    """The server answered something a benchmark run cannot continue with."""


@dataclass(frozen=True)
class FileSlice:
    """A request body taken from an open file: count bytes from offset."""

    fd: int
    offset: int
    count: int


@dataclass
class Response:
    status: int
    headers: dict[str, str]     # lower-case names; the last value wins
    body: bytes = b""

    def expect(self, *statuses: int) -> Response:
        if self.status not in statuses:
            text = self.body[:200].decode("latin-1", "replace").strip()
            raise ProtocolError(f"expected {'/'.join(map(str, statuses))}, got {self.status} {text}")
        return self

    def int_header(self, name: str) -> int:
        value = self.headers.get(name)
        if value is None or not value.isdigit():
            raise ProtocolError(f"response {self.status} lacks a valid {name} header ({value!r})")
        return int(value)


class Connection:
    """One keep-alive connection to host:port; reconnects after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._pending = bytearray()                 # received bytes not yet consumed
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._pending.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            timeval = struct.pack("ll", int(IO_TIMEOUT), 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            self._sock = sock
        return self._sock

    def _head(self, method: str, path: str, headers: dict[str, str], length: int | None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Tus-Resumable: 1.0.0"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, method: str, path: str, headers: dict[str, str],
             body: bytes | FileSlice | None = None) -> None:
        sock = self._socket()
        if body is None:
            sock.sendall(self._head(method, path, headers, None))
        elif isinstance(body, bytes):
            sock.sendall(self._head(method, path, headers, len(body)) + body)
        else:
            sock.sendall(self._head(method, path, headers, body.count), socket.MSG_MORE)
            _sendfile_all(sock, body)

    # -- receiving --------------------------------------------------------------------------

    def _fill(self) -> None:
        """Append at least one byte from the socket to _pending."""
        n = self._socket().recv_into(self._buffer)
        if n == 0:
            raise ConnectionError("the server closed the connection")
        self._pending += self._view[:n]

    def _read_head(self) -> tuple[int, dict[str, str]]:
        while True:
            end = self._pending.find(b"\r\n\r\n")
            if end >= 0:
                break
            self._fill()
        lines = bytes(self._pending[:end]).decode("latin-1").split("\r\n")
        del self._pending[:end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _read_exact(self, count: int) -> bytes:
        while len(self._pending) < count:
            self._fill()
        data = bytes(self._pending[:count])
        del self._pending[:count]
        return data

    def _read_line(self) -> bytes:
        while (end := self._pending.find(b"\r\n")) < 0:
            self._fill()
        return self._read_exact(end + 2)[:-2]

    def _read_chunked(self, keep: bool) -> tuple[bytes, int]:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self._read_line().split(b";")[0], 16)
            if size == 0:
                while self._read_line():        # trailers up to the empty line
                    pass
                return b"".join(parts), total
            chunk = self._read_exact(size + 2)[:-2]
            total += size
            if keep:
                parts.append(chunk)

    def _read_until_close(self, keep: bool) -> tuple[bytes, int]:
        parts: list[bytes] = [bytes(self._pending)] if keep else []
        total = len(self._pending)
        self._pending.clear()
        sock = self._socket()
        while n := sock.recv_into(self._buffer):
            total += n
            if keep:
                parts.append(bytes(self._view[:n]))
        self.close()
        return b"".join(parts), total

    def _discard(self, count: int) -> int:
        """Read and drop count body bytes, straight into the reused buffer."""
        taken = min(count, len(self._pending))
        del self._pending[:taken]
        remaining = count - taken
        sock = self._socket()
        while remaining:
            n = sock.recv_into(self._buffer, min(remaining, RECV_SIZE))
            if n == 0:
                raise ConnectionError(f"the server closed the connection {remaining} bytes early")
            remaining -= n
        return count

    def receive(self, method: str, keep_body: bool = True) -> tuple[Response, int]:
        """Read one final response; returns it and the number of body bytes that came."""
        status, headers = self._read_head()
        while 100 <= status < 200:
            status, headers = self._read_head()
        body, size = b"", 0
        if method == "HEAD" or status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, size = self._read_chunked(keep_body)
        elif "content-length" in headers:
            size = int(headers["content-length"])
            body = self._read_exact(size) if keep_body else b""
            if not keep_body:
                self._discard(size)
        else:
            body, size = self._read_until_close(keep_body)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body), size

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | FileSlice | None = None) -> Response:
        self.send(method, path, headers or {}, body)
        return self.receive(method)[0]

    def download(self, path: str) -> tuple[Response, int]:
        """GET path, dropping the body as it arrives; returns the response and the body size."""
        self.send("GET", path, {})
        return self.receive("GET", keep_body=False)


def _sendfile_all(sock: socket.socket, body: FileSlice) -> None:
    offset, remaining = body.offset, body.count
    while remaining:
        sent = os.sendfile(sock.fileno(), body.fd, offset, remaining)
        if sent == 0:
            raise ProtocolError("the source file is shorter than the request body")
        offset += sent
        remaining -= sent


# -- tus operations ---------------------------------------------------------------------------

def path_of(location: str) -> str:
    """The path of an absolute or relative Location (all requests go to the same server)."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def create(conn: Connection, collection: str, length: int, data: FileSlice | None = None) -> str:
    """POST a new upload (with data: creation-with-upload); returns the upload's path."""
    headers = {"Upload-Length": str(length)}
    if data is not None:
        headers["Content-Type"] = "application/offset+octet-stream"
    reply = conn.request("POST", collection, headers, data).expect(201)
    location = reply.headers.get("location")
    if not location:
        raise ProtocolError("201 Created without a Location")
    if data is not None and reply.headers.get("upload-offset") not in (None, str(data.count)):
        raise ProtocolError(f"POST with {data.count} bytes answered Upload-Offset "
                            f"{reply.headers.get('upload-offset')}")
    return path_of(location)


def patch(conn: Connection, path: str, offset: int, data: FileSlice, checksum: str | None = None) -> int:
    """PATCH data at offset; returns the new offset (checked to be offset + data.count)."""
    headers = {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
    if checksum is not None:
        headers["Upload-Checksum"] = checksum
    new_offset = conn.request("PATCH", path, headers, data).expect(204).int_header("upload-offset")
    if new_offset != offset + data.count:
        raise ProtocolError(f"PATCH at {offset} with {data.count} bytes answered offset {new_offset}")
    return new_offset


def head_offset(conn: Connection, path: str) -> int:
    return conn.request("HEAD", path).expect(200).int_header("upload-offset")


def options(conn: Connection, collection: str) -> Response:
    return conn.request("OPTIONS", collection).expect(200, 204)


# -- the random source file ---------------------------------------------------------------------

class SourceFile:
    """Random bytes on disk that every request body is cut from; generated once and reused."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._fd = -1
        self._sha256: dict[int, str] = {}
        self._sha1: dict[tuple[int, int], str] = {}

    def open(self) -> SourceFile:
        if not self.path.exists() or self.path.stat().st_size < self.size:
            self._generate()
        self._fd = os.open(self.path, os.O_RDONLY)
        self._warm()
        return self

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _generate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as out:
            out.writelines(os.urandom(min(SOURCE_BLOCK, self.size - start))
                           for start in range(0, self.size, SOURCE_BLOCK))
        temporary.replace(self.path)

    def _warm(self) -> None:
        """Read the part we use once, so it sits in the page cache before anything is timed."""
        for _ in self._blocks(0, self.size):
            pass

    def _blocks(self, offset: int, count: int) -> Iterator[bytes]:
        end = offset + count
        while offset < end:
            block = os.pread(self._fd, min(SOURCE_BLOCK, end - offset), offset)
            if not block:
                raise ProtocolError(f"{self.path} is shorter than {end} bytes")
            offset += len(block)
            yield block

    def slice(self, offset: int, count: int) -> FileSlice:
        if offset + count > self.size:
            raise ValueError(f"slice {offset}+{count} beyond the source's {self.size} bytes")
        return FileSlice(self._fd, offset, count)

    def sha256(self, count: int) -> str:
        """Hex SHA-256 of the first count bytes (cached)."""
        if count not in self._sha256:
            digest = hashlib.sha256()
            for block in self._blocks(0, count):
                digest.update(block)
            self._sha256[count] = digest.hexdigest()
        return self._sha256[count]

    def sha1_header(self, offset: int, count: int) -> str:
        """`sha1 <base64>` for an Upload-Checksum header over this slice (cached)."""
        key = (offset, count)
        if key not in self._sha1:
            digest = hashlib.sha1()
            for block in self._blocks(offset, count):
                digest.update(block)
            self._sha1[key] = "sha1 " + base64.b64encode(digest.digest()).decode("ascii")
        return self._sha1[key]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(SOURCE_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# -- the load generator's own CPU ---------------------------------------------------------------

@dataclass(frozen=True)
class CpuClock:
    """user+system CPU of this whole process (all load-generator threads) and wall time."""

    cpu: float
    wall: float

    @staticmethod
    def now() -> CpuClock:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return CpuClock(usage.ru_utime + usage.ru_stime, time.perf_counter())
