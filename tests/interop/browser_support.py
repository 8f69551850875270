"""Helpers for the Uppy-in-Chromium interop tests: build the page, serve it, drive the browser.

The page (tests/interop/browser/page, bundled by esbuild into dist/) is served by a small static
server on its own 127.0.0.1 port, so the browser sees the tus server as another origin and sends
real CORS preflights. driver.mjs runs Debian's Chromium through playwright-core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.server_process import ServerProcess

BROWSER_DIR = Path(__file__).parent / "browser"
DIST_DIR = BROWSER_DIR / "dist"
DRIVER = BROWSER_DIR / "driver.mjs"
CHROMIUM = Path("/usr/bin/chromium")
DRIVER_TIMEOUT = 60.0
INSTALLED_MARKERS = ("@uppy/core", "@uppy/tus", "playwright-core", "esbuild")


# --------------------------------------------------------------------------- install and build


def install_and_build() -> None:
    """npm ci from the lockfile (when node_modules is incomplete), then bundle the page.

    Anything missing is a test failure, not a skip: nothing else checks tusfast against a browser.
    """
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the Uppy browser tests need Debian's chromium "
                    "(apt-get install chromium); no browser is downloaded", pytrace=False)
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required for the Uppy browser tests", pytrace=False)
    if not _installed():
        _run([npm, "ci", "--no-audit", "--no-fund"], "`npm ci`", timeout=600)
    _run([node, "build.mjs"], "the esbuild step (node build.mjs)", timeout=120)
    if not (DIST_DIR / "main.js").is_file():
        pytest.fail(f"the esbuild step wrote no {DIST_DIR / 'main.js'}", pytrace=False)


def _installed() -> bool:
    """node_modules holds our packages and is not older than the lockfile."""
    modules = BROWSER_DIR / "node_modules"
    hidden_lock = modules / ".package-lock.json"    # npm writes it on every install
    packages = [modules / name / "package.json" for name in INSTALLED_MARKERS]
    if not hidden_lock.is_file() or not all(package.is_file() for package in packages):
        return False
    return hidden_lock.stat().st_mtime >= (BROWSER_DIR / "package-lock.json").stat().st_mtime


def _run(command: list[str], what: str, timeout: float) -> None:
    proc = subprocess.run(command, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        pytest.fail(f"{what} in {BROWSER_DIR} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)


# --------------------------------------------------------------------------- the page's origin


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


class StaticSite:
    """dist/ over HTTP on 127.0.0.1 with an OS-chosen port: the page's origin."""

    def __init__(self, directory: Path) -> None:
        handler = partial(_QuietHandler, directory=str(directory))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def page_url(self) -> str:
        return self.origin + "/index.html"

    def start(self) -> StaticSite:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# --------------------------------------------------------------------------- the driver


@dataclass
class Session:
    """One page load: Uppy's outcome (None when the page was reloaded first) and what it saw."""

    outcome: dict[str, Any] | None
    snapshot: dict[str, Any]

    @property
    def successful(self) -> list[dict[str, Any]]:
        assert self.outcome is not None
        return list(self.outcome["successful"])

    @property
    def failed(self) -> list[dict[str, Any]]:
        assert self.outcome is not None
        return list(self.outcome["failed"])

    def requests(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.snapshot["requests"] if r["method"] == method]

    def responses(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.snapshot["responses"] if r["method"] == method]


@dataclass
class DriverResult:
    raw: dict[str, Any]
    stderr: str

    @property
    def sessions(self) -> list[Session]:
        return [Session(s["outcome"], s["snapshot"]) for s in self.raw["sessions"]]

    @property
    def pause_probe(self) -> dict[str, Any]:
        return dict(self.raw["pauseProbe"])

    def describe(self) -> str:
        text = json.dumps(self.raw, indent=1)
        return text[:6000] + ("\n..." if len(text) > 6000 else "") + (
            f"\nstderr: {self.stderr.strip()}" if self.stderr.strip() else "")


def run_driver(site: StaticSite, files: list[Path], scenario: str = "upload",
               allow_console_errors: bool = False, **setup: Any) -> DriverResult:
    """Open the page in Chromium, upload `files` with Uppy (`setup` goes to harness.setup())."""
    node = shutil.which("node")
    assert node is not None
    options = {"chromium": str(CHROMIUM), "pageUrl": site.page_url, "files": [str(f) for f in files],
               "scenario": scenario, "setup": setup, "timeoutMs": int((DRIVER_TIMEOUT - 10) * 1000)}
    # Its own process group, so that a hung driver goes down together with its Chromium.
    proc = subprocess.Popen([node, str(DRIVER), json.dumps(options)], cwd=BROWSER_DIR, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"driver.mjs did not finish within {DRIVER_TIMEOUT}s; "
                             f"stdout={stdout!r} stderr={stderr!r}") from exc
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert proc.returncode == 0 and lines, f"driver.mjs exited with {proc.returncode}:\n{stdout}\n{stderr}"
    result = DriverResult(json.loads(lines[-1]), stderr)
    assert result.raw["ok"], result.describe()
    if not allow_console_errors:
        assert not result.raw["console"], f"errors in the page: {result.raw['console']}"
    return result


# --------------------------------------------------------------------------- the access log


def access_records(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's access records (it runs with --log-format json), all of them.

    A HEAD on a marker path is sent last and awaited in the log, so every request the browser
    made before is in the list too (one process logs in order).
    """
    marker = f"access-log-marker-{uuid.uuid4().hex}"
    requests.head(server.url + marker, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in list(server.log) if '"tusfast.access"' in line]
        if any(r["path"].endswith(marker) for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert any(r["path"].endswith(marker) for r in records), "the marker HEAD never reached the log"
    return [r for r in records if not r["path"].endswith(marker)]


def patch_bytes(records: list[dict[str, Any]], upload_id: str) -> int:
    return sum(r["bytes_in"] for r in records if r["method"] == "PATCH" and r["upload_id"] == upload_id)
