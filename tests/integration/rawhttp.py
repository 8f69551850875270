"""A tiny HTTP/1.1 client over a raw socket, for tests that need control over the bytes on the wire.

`requests` normalises too much (it adds headers, refuses malformed input, cannot pipeline, cannot stop
half-way through a body), so the HTTP-level tests talk through `RawConnection` instead.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping
from urllib.parse import urlsplit

import requests

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
TIMEOUT = 10.0


class ConnectionClosed(Exception):
    """The peer closed (or reset) the connection before a complete response arrived."""


@dataclass
class Response:
    status: int
    reason: str
    header_list: list[tuple[str, str]]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        merged: dict[str, str] = {}
        for name, value in self.header_list:
            key = name.lower()
            merged[key] = value if key not in merged else merged[key] + ", " + value
        self.headers = merged

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def count(self, name: str) -> int:
        return sum(1 for key, _ in self.header_list if key.lower() == name.lower())

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} {self.header_list} {self.body[:200]!r}>"


class RawConnection:
    def __init__(self, host: str, port: int, timeout: float = TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.eof = False

    @classmethod
    def to(cls, server_or_url: object, timeout: float = TIMEOUT) -> "RawConnection":
        url = server_or_url if isinstance(server_or_url, str) else server_or_url.url  # type: ignore[attr-defined]
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        return cls(parts.hostname, parts.port, timeout)

    # ---- writing -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, reporting False instead of raising when the server already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False

    def request(self, method: str, path: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                body: bytes = b"", host: str | None = None) -> None:
        self.send(build_request(method, path, headers, body, host or f"{self.host}:{self.port}"))

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading -----------------------------------------------------------------------------

    def _fill(self) -> None:
        if self.eof:
            raise ConnectionClosed("connection closed; buffered: %r" % self.buffer[:200])
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            self.eof = True
            raise ConnectionClosed(f"connection reset ({exc}); buffered: {self.buffer[:200]!r}") from exc
        if not data:
            self.eof = True
            raise ConnectionClosed("connection closed; buffered: %r" % self.buffer[:200])
        self.buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        index = self.buffer.index(marker)
        data, self.buffer = self.buffer[:index], self.buffer[index + len(marker):]
        return data

    def _read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_response(self, method: str = "GET", allow_interim: bool = False) -> Response:
        """Read one response. 1xx responses are skipped unless `allow_interim` is true."""
        while True:
            head = self._read_until(b"\r\n\r\n").decode("latin-1")
            lines = head.split("\r\n")
            match = re.match(r"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
            assert match, f"bad status line {lines[0]!r}"
            status = int(match.group(1))
            header_list = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                header_list.append((name.strip(), value.strip()))
            response = Response(status, match.group(2) or "", header_list)
            if 100 <= status < 200:
                if allow_interim:
                    return response
                continue
            break
        if method.upper() == "HEAD" or status in (204, 304):
            return response
        if "chunked" in (response.header("Transfer-Encoding") or "").lower():
            body = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._read_until(b"\r\n"):
                        pass
                    break
                body += self._read_exact(size)
                self._read_until(b"\r\n")
            response.body = body
        elif response.header("Content-Length") is not None:
            response.body = self._read_exact(int(response.header("Content-Length") or "0"))
        else:
            while True:
                try:
                    self._fill()
                except ConnectionClosed:
                    break
            response.body, self.buffer = self.buffer, b""
        return response

    def is_closed(self, wait: float = 5.0) -> bool:
        """True if the server closes the connection (EOF or reset) within `wait` seconds and sends
        nothing more than what is already buffered."""
        if self.eof:
            return True
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            self.eof = True
            return True
        except (socket.timeout, TimeoutError):
            return False
        finally:
            self.sock.settimeout(old)
        if data:
            self.buffer += data
            return False
        self.eof = True
        return True

    def closed_within(self, seconds: float) -> float | None:
        """Seconds until EOF/reset, discarding any data; None if still open after `seconds`."""
        start = time.monotonic()
        deadline = start + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ConnectionAbortedError):
                return time.monotonic() - start
            except (socket.timeout, TimeoutError):
                return None
            if not data:
                self.eof = True
                return time.monotonic() - start
            self.buffer += data


def build_request(method: str, path: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                  body: bytes = b"", host: str = "localhost") -> bytes:
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    names = {name.lower() for name, _ in items}
    lines = [f"{method} {path} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in items]
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*parts: bytes, trailer: str = "") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part)
    return out + b"0\r\n" + trailer.encode("latin-1") + b"\r\n"


# ---- tus helpers over `requests` -----------------------------------------------------------------


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def create(base_url: str, length: int | None = None, metadata: str | None = None, body: bytes | None = None,
           extra: Mapping[str, str] | None = None) -> str:
    """POST a new upload and return its absolute URL."""
    headers = dict(TUS)
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    if body is not None:
        headers["Content-Type"] = OCTET
    headers.update(extra or {})
    response = requests.post(base_url, headers=headers, data=body, timeout=TIMEOUT)
    assert response.status_code == 201, (response.status_code, response.headers, response.text)
    location = response.headers["Location"]
    assert location.startswith(base_url), location
    assert UPLOAD_ID.match(location[len(base_url):]), location
    return location


def head(url: str, **headers: str) -> requests.Response:
    return requests.head(url, headers={**TUS, **headers}, timeout=TIMEOUT)


def offset_of(url: str) -> int:
    response = head(url)
    assert response.status_code == 200, (response.status_code, response.headers)
    return int(response.headers["Upload-Offset"])


def patch(url: str, offset: int, body: bytes, **headers: str) -> requests.Response:
    return requests.patch(url, data=body, timeout=TIMEOUT,
                          headers={**TUS, "Content-Type": OCTET, "Upload-Offset": str(offset), **headers})


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def patch_headers(offset: int, length: int) -> list[tuple[str, str]]:
    """The head of a PATCH with a Content-Length body, for RawConnection.request."""
    return [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", str(offset)), ("Content-Length", str(length))]
