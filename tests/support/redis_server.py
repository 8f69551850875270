"""A real redis-server for the tests: one per test session, on 127.0.0.1 and a free port, without
persistence. Tests share it through a unique key prefix each (fixture `redis_prefix`); tests that
need Redis down stop it and start it again on the same port (`redis_down`).

Import the fixtures into a test module: `from tests.support.redis_server import redis_server, ...`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server); "
                        "the Redis locker tests need a real one")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "RedisServer":
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                error = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}: {error}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Like a crash of the Redis host: SIGKILL, nothing saved (there is no persistence anyway)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:        # a test that stopped it and failed must not break the rest
        redis_server.start()
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """Keys and channels of one test: tests share the server, never each other's locks."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_down(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The server, for tests that stop it; it runs again after the test whatever happened."""
    yield redis_server
    if not redis_server.running:
        redis_server.start()
