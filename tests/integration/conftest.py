from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One default server per test module: most tests need fresh uploads, not a fresh process."""
    process = ServerProcess(tmp_path_factory.mktemp("shared") / "data").start()
    yield process
    process.kill()


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    if not shared_server.alive:     # a test that crashed or killed it must not fail the rest
        shared_server.restart()
    return shared_server
