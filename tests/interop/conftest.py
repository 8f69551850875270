"""Fixtures for the interop tests: node_modules for tus-js-client, a runner, source files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.interop.helpers import (
    JS_DIR,
    JsResult,
    RunningJsClient,
    make_source,
    run_js_client,
    spawn_js_client,
)


@pytest.fixture(scope="session")
def js_client_installed() -> Path:
    """Make sure tests/interop/js/node_modules is installed (npm ci from the lockfile).

    A missing node/npm or a failing `npm ci` is an error, not a skip: these tests are the
    only thing that checks the server against tus-js-client.
    """
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required for the tus-js-client interop tests", pytrace=False)
    if not (JS_DIR / "node_modules" / "tus-js-client" / "package.json").is_file():
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"`npm ci` in {JS_DIR} failed (exit {proc.returncode}):\n"
                        f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    return JS_DIR


@pytest.fixture
def js_client(js_client_installed: Path) -> Any:
    """`js_client(**options)` runs client.mjs to completion; `.spawn(**options)` in background."""
    spawned: list[RunningJsClient] = []

    class _Runner:
        def __call__(self, **options: Any) -> JsResult:
            return run_js_client(**options)

        def spawn(self, **options: Any) -> RunningJsClient:
            running = spawn_js_client(**options)
            spawned.append(running)
            return running

    yield _Runner()
    for running in spawned:
        running.kill()


@pytest.fixture
def source_factory(tmp_path: Path) -> Iterator[Any]:
    """`source_factory(size, name=...)` writes os.urandom(size) bytes to a file under tmp_path."""
    sources = tmp_path / "sources"
    sources.mkdir()

    def make(size: int, name: str = "source.bin") -> Path:
        return make_source(sources, size, name)

    yield make
