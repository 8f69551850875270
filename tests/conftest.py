from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.server_process import ServerProcess

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Factory: start_server("--max-size", "100") starts a tusfast process with extra flags."""
    started: list[ServerProcess] = []

    def start(*args: str, upload_dir: Path | None = None, env: dict[str, str] | None = None) -> ServerProcess:
        directory = upload_dir or tmp_path / f"data{len(started)}"
        process = ServerProcess(directory, *args, env=env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """A tusfast process with default settings; `server.url` is the collection URL."""
    return start_server()
