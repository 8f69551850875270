"""Helpers shared by the interop tests (tus-js-client, tuspy)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

JS_DIR = Path(__file__).parent / "js"
CLIENT_SCRIPT = JS_DIR / "client.mjs"
NODE_TIMEOUT = 90.0
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}

MiB = 1024 * 1024


# --------------------------------------------------------------------------- node / npm


@dataclass
class JsResult:
    """The JSON line printed by client.mjs, plus the process' exit code and stderr."""

    ok: bool
    url: str | None
    bytes_sent: int
    bytes_accepted: int
    error: str | None
    status: int | None
    aborted: bool
    previous_uploads: int | None
    requests: list[dict[str, Any]]
    raw: dict[str, Any]
    returncode: int
    stderr: str

    def requests_with(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]

    def describe(self) -> str:
        lines = [f"ok={self.ok} url={self.url} error={self.error} status={self.status}"]
        for r in self.requests:
            lines.append(f"  {r['method']} {r['url']} {r['headers']} -> {r['status']} "
                         f"{r['responseHeaders']}")
        if self.stderr.strip():
            lines.append("stderr: " + self.stderr.strip())
        return "\n".join(lines)


def _parse_js_output(stdout: str, stderr: str, returncode: int) -> JsResult:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"client.mjs printed nothing (exit {returncode}); stderr:\n{stderr}")
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise AssertionError(f"client.mjs printed no JSON ({exc}):\n{stdout}\n{stderr}") from exc
    return JsResult(
        ok=bool(data.get("ok")),
        url=data.get("url"),
        bytes_sent=int(data.get("bytesSent") or 0),
        bytes_accepted=int(data.get("bytesAccepted") or 0),
        error=data.get("error"),
        status=data.get("status"),
        aborted=bool(data.get("aborted")),
        previous_uploads=data.get("previousUploads"),
        requests=list(data.get("requests") or []),
        raw=data,
        returncode=returncode,
        stderr=stderr,
    )


def _node_command(options: dict[str, Any]) -> list[str]:
    node = shutil.which("node")
    assert node is not None
    return [node, str(CLIENT_SCRIPT), json.dumps(options)]


def run_js_client(timeout: float = NODE_TIMEOUT, **options: Any) -> JsResult:
    """Run client.mjs with `options` (see the header of client.mjs) and parse its result."""
    options.setdefault("timeoutMs", int((timeout - 5) * 1000))
    try:
        proc = subprocess.run(_node_command(options), cwd=JS_DIR, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"client.mjs did not finish within {timeout}s; "
                             f"stdout={exc.stdout!r} stderr={exc.stderr!r}") from exc
    result = _parse_js_output(proc.stdout, proc.stderr, proc.returncode)
    assert proc.returncode == 0, f"client.mjs exited with {proc.returncode}:\n{result.describe()}"
    return result


@dataclass
class RunningJsClient:
    """client.mjs started in the background (for tests that act on the server meanwhile)."""

    proc: subprocess.Popen[str]
    timeout: float
    _result: JsResult | None = field(default=None, init=False)

    def result(self) -> JsResult:
        if self._result is None:
            try:
                stdout, stderr = self.proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired as exc:
                self.proc.kill()
                stdout, stderr = self.proc.communicate()
                raise AssertionError(f"client.mjs did not finish within {self.timeout}s; "
                                     f"stdout={stdout!r} stderr={stderr!r}") from exc
            self._result = _parse_js_output(stdout, stderr, self.proc.returncode)
        return self._result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def spawn_js_client(timeout: float = NODE_TIMEOUT, **options: Any) -> RunningJsClient:
    options.setdefault("timeoutMs", int((timeout - 5) * 1000))
    proc = subprocess.Popen(_node_command(options), cwd=JS_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return RunningJsClient(proc, timeout)


# --------------------------------------------------------------------------- files / server


def make_source(directory: Path, size: int, name: str = "source.bin") -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upload_id(server: Any, url: str | None) -> str:
    """The id of an upload URL, checking it is `server.url + <32 hex chars>`."""
    assert url, "no upload URL"
    assert url.startswith(server.url), f"upload URL {url!r} is not under {server.url!r}"
    ident = url[len(server.url):]
    assert UPLOAD_ID.fullmatch(ident), f"upload id {ident!r} is not 32 lowercase hex chars"
    return ident


def stored_file(server: Any, url: str | None) -> Path:
    return Path(server.upload_dir) / upload_id(server, url)


def assert_stored_equals(server: Any, url: str | None, source: Path) -> None:
    """The data file of the upload is byte for byte the source, and its .info is JSON."""
    ident = upload_id(server, url)
    data = Path(server.upload_dir) / ident
    assert data.is_file(), f"no data file {data}"
    assert data.stat().st_size == source.stat().st_size, (
        f"stored {data.stat().st_size} bytes, source has {source.stat().st_size}")
    assert sha256_file(data) == sha256_file(source), "stored bytes differ from the source"
    info = Path(server.upload_dir) / f"{ident}.info"
    assert info.is_file(), f"no info file {info}"
    json.loads(info.read_text())


def head(url: str | None) -> requests.Response:
    assert url, "no upload URL"
    return requests.head(url, headers=TUS_HEADERS, timeout=10)


def head_offset(url: str | None) -> int:
    response = head(url)
    assert response.status_code in (200, 204), f"HEAD {url} -> {response.status_code}"
    return int(response.headers["Upload-Offset"])


def assert_complete(url: str | None, size: int) -> None:
    response = head(url)
    assert response.status_code in (200, 204), f"HEAD {url} -> {response.status_code}"
    assert response.headers.get("Tus-Resumable") == "1.0.0", response.headers
    assert int(response.headers["Upload-Offset"]) == size, response.headers
    assert int(response.headers["Upload-Length"]) == size, response.headers


def decode_metadata(header: str) -> dict[str, str | None]:
    """Parse an Upload-Metadata header: `key b64value,key2,...` (values are UTF-8 here)."""
    result: dict[str, str | None] = {}
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        result[key] = base64.b64decode(value, validate=True).decode("utf-8") if value else None
    return result


