"""Hooks end to end: real tusfast processes calling a real HTTP receiver (or real executables)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import StartServer
from tests.support.server_process import ServerProcess

V = {"Tus-Resumable": "1.0.0"}
OCTETS = {**V, "Content-Type": "application/offset+octet-stream"}


@dataclass
class Call:
    event: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Answer:
    status: int = 200
    body: Any = None            # a dict is sent as JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Responder = Callable[[Call], Answer]


class Receiver:
    """A hook endpoint on 127.0.0.1: records every call and answers with `respond`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.respond: Responder = lambda call: Answer()
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                event = self.headers.get("Hook-Name") or body.get("Type", "")
                call = Call(event, dict(self.headers.items()), body)
                answer = receiver.respond(call)
                time.sleep(answer.delay)
                payload = answer.body if isinstance(answer.body, (bytes, str)) else json.dumps(answer.body or {})
                data = payload.encode() if isinstance(payload, str) else payload
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with receiver.arrived:
                    receiver.calls.append(call)
                    receiver.arrived.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [call.event for call in self.calls]

    def wait_for(self, event: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(found := [c for c in self.calls if c.event == event]) < count:
                if not self.arrived.wait(deadline - time.monotonic()) and time.monotonic() > deadline:
                    raise AssertionError(f"{event} x{count} did not arrive; got {self.events()}")
            return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


def create(server: ServerProcess, length: int = 5, metadata: str | None = None,
           headers: dict[str, str] | None = None) -> requests.Response:
    extra = {"Upload-Metadata": metadata} if metadata else {}
    return requests.post(server.url, headers={**V, "Upload-Length": str(length), **extra, **(headers or {})},
                         timeout=10)


def upload(server: ServerProcess, data: bytes = b"hello") -> str:
    created = create(server, len(data))
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    patched = requests.patch(location, data=data, headers={**OCTETS, "Upload-Offset": "0"}, timeout=10)
    assert patched.status_code == 204, patched.text
    return location


def hooks(receiver: Receiver, *args: str) -> tuple[str, ...]:
    return ("--hooks-http", receiver.url, "--hooks-http-timeout", "3s", *args)


# ---- blocking HTTP hooks (tusd v2 format) -------------------------------------------------------

def test_pre_create_rejection_reaches_the_client_and_creates_nothing(start_server: StartServer,
                                                                     receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(body={
        "RejectUpload": True,
        "HTTPResponse": {"StatusCode": 403, "Body": '{"message":"no pdfs"}',
                         "Header": {"Content-Type": "application/json", "X-Reason": "policy"}}})
    server = start_server(*hooks(receiver))
    response = create(server, metadata="filename ZG9jLnBkZg==")
    assert response.status_code == 403
    assert response.json() == {"message": "no pdfs"}
    assert response.headers["X-Reason"] == "policy"
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert [p.name for p in server.upload_dir.iterdir() if not p.name.startswith(".")] == []
    call = receiver.calls[0]
    assert call.body["Type"] == "pre-create"
    assert call.body["Event"]["Upload"]["MetaData"] == {"filename": "doc.pdf"}
    assert call.body["Event"]["Upload"]["Size"] == 5
    assert call.body["Event"]["HTTPRequest"]["Method"] == "POST"


def test_pre_create_sets_id_and_metadata(start_server: StartServer, receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(body={"ChangeFileInfo": {
        "ID": "invoice_42-a", "MetaData": {"filename": "renamed.txt", "owner": "ada"}}})
    server = start_server(*hooks(receiver))
    created = create(server, metadata="filename b3JpZy50eHQ=")
    assert created.status_code == 201
    assert created.headers["Location"] == server.url + "invoice_42-a"
    head = requests.head(created.headers["Location"], headers=V, timeout=10)
    assert head.status_code == 200
    metadata = dict(pair.split(" ") for pair in head.headers["Upload-Metadata"].split(","))
    assert metadata == {"filename": "cmVuYW1lZC50eHQ=", "owner": "YWRh"}
    assert (server.upload_dir / "invoice_42-a.info").exists()
    assert create(server).status_code == 409       # the same id again


def test_pre_create_chooses_the_storage_path(start_server: StartServer, receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(body={"ChangeFileInfo": {"Storage": {"Path": "team/a/report.bin"}}})
    server = start_server(*hooks(receiver))
    location = upload(server)
    assert (server.upload_dir / "team/a/report.bin").read_bytes() == b"hello"
    assert requests.get(location, timeout=10).content == b"hello"


def test_invalid_change_is_a_502(start_server: StartServer, receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(body={"ChangeFileInfo": {"ID": "../../etc"}})
    server = start_server(*hooks(receiver))
    response = create(server)
    assert response.status_code == 502
    assert "pre-create hook failed" in response.text


def test_forwarded_headers_arrive(start_server: StartServer, receiver: Receiver) -> None:
    server = start_server(*hooks(receiver, "--hooks-http-forward-headers", "X-Api-Key,Cookie"))
    assert create(server, headers={"X-Api-Key": "k-123", "Cookie": "s=1", "X-Other": "o"}).status_code == 201
    call = receiver.wait_for("pre-create")[0]
    assert call.headers["X-Api-Key"] == "k-123" and call.headers["Cookie"] == "s=1"
    assert "X-Other" not in call.headers
    assert call.body["Event"]["HTTPRequest"]["Header"]["X-Api-Key"] == ["k-123"]


def test_tusd_v1_format_names_the_hook_and_rejects_by_status(start_server: StartServer,
                                                              receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(418, "not today", {"X-Why": "teapot"})
    server = start_server(*hooks(receiver, "--hooks-format", "tusd-v1"))
    response = create(server)
    assert (response.status_code, response.text, response.headers.get("X-Why")) == (418, "not today", None)
    call = receiver.calls[0]
    assert call.headers["Hook-Name"] == "pre-create"
    assert set(call.body) == {"Upload", "HTTPRequest"}
    assert call.body["Upload"]["Size"] == 5 and call.body["Upload"]["SizeIsDeferred"] is False


def test_pre_access_rejects_a_head(start_server: StartServer, receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(
        body={"RejectAccess": True, "HTTPResponse": {"StatusCode": 401, "Body": "who are you"}}
        if call.event == "pre-access" and call.body["Event"]["HTTPRequest"]["Method"] == "HEAD" else {})
    server = start_server(*hooks(receiver, "--hooks-enabled", "pre-create,pre-access"))
    location = upload(server)
    head = requests.head(location, headers=V, timeout=10)
    assert head.status_code == 401
    assert receiver.wait_for("pre-access", 2)[-1].body["Event"]["Upload"]["Offset"] == 5


def test_pre_finish_rejection_keeps_the_data(start_server: StartServer, receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(
        body={"RejectUpload": True, "HTTPResponse": {"StatusCode": 422, "Body": "virus"}}
        if call.event == "pre-finish" else {})
    server = start_server(*hooks(receiver, "--hooks-enabled", "pre-finish,post-finish"))
    location = create(server).headers["Location"]
    patched = requests.patch(location, data=b"hello", headers={**OCTETS, "Upload-Offset": "0"}, timeout=10)
    assert (patched.status_code, patched.text) == (422, "virus")
    assert requests.head(location, headers=V, timeout=10).headers["Upload-Offset"] == "5"
    time.sleep(0.3)
    assert "post-finish" not in receiver.events()


# ---- post-* hooks --------------------------------------------------------------------------

def test_post_finish_carries_the_upload(start_server: StartServer, receiver: Receiver) -> None:
    server = start_server(*hooks(receiver))
    location = upload(server)
    upload_id = location.rsplit("/", 1)[1]
    finished = receiver.wait_for("post-finish")[0].body["Event"]["Upload"]
    assert finished["ID"] == upload_id
    assert (finished["Size"], finished["Offset"], finished["SizeIsDeferred"]) == (5, 5, False)
    assert (finished["IsPartial"], finished["IsFinal"], finished["PartialUploads"]) == (False, False, None)
    assert finished["Storage"]["Type"] == "filestore"
    assert Path(finished["Storage"]["Path"]).read_bytes() == b"hello"
    assert finished["Storage"]["InfoPath"] == finished["Storage"]["Path"] + ".info"
    assert {"pre-create", "post-create", "post-receive", "post-finish"} <= set(receiver.events())


def test_post_hooks_are_retried_until_the_receiver_answers(start_server: StartServer,
                                                            receiver: Receiver) -> None:
    attempts: list[str] = []

    def respond(call: Call) -> Answer:
        if call.event != "post-finish":
            return Answer()
        attempts.append(call.event)
        return Answer(500 if len(attempts) <= 2 else 200)

    receiver.respond = respond
    server = start_server(*hooks(receiver, "--hooks-enabled", "post-finish"))
    started = time.monotonic()
    upload(server)
    assert time.monotonic() - started < 1.0          # the request did not wait for the hook
    receiver.wait_for("post-finish", 3)
    time.sleep(0.5)
    assert len(attempts) == 3


def test_unreachable_receiver_fails_closed_or_open(start_server: StartServer, receiver: Receiver) -> None:
    url = receiver.url
    receiver.close()
    denied = start_server("--hooks-http", url)
    response = create(denied)
    assert response.status_code == 502 and "pre-create hook failed" in response.text
    allowed = start_server("--hooks-http", url, "--hooks-fallback", "allow")
    assert create(allowed).status_code == 201


def test_slow_receiver_is_a_504(start_server: StartServer, receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(delay=2.0)
    server = start_server("--hooks-http", receiver.url, "--hooks-http-timeout", "300ms")
    started = time.monotonic()
    response = create(server)
    assert response.status_code == 504 and "did not answer" in response.text
    assert time.monotonic() - started < 1.5


def test_queued_post_finish_is_delivered_before_exit(start_server: StartServer, receiver: Receiver) -> None:
    receiver.respond = lambda call: Answer(delay=1.0 if call.event == "post-finish" else 0.0)
    server = start_server(*hooks(receiver, "--hooks-enabled", "post-finish"))
    upload(server)
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
    assert "post-finish" in receiver.events()


# ---- file hooks ----------------------------------------------------------------------------

def script(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_file_hooks(start_server: StartServer, tmp_path: Path) -> None:
    hook_dir = tmp_path / "hooks"
    hook_dir.mkdir()
    seen = tmp_path / "finished.json"
    script(hook_dir, "pre-create", 'cat > /dev/null\n[ "$TUS_SIZE" = "13" ] && exit 1\nexit 0\n')
    script(hook_dir, "post-finish", f"cat > {seen}.tmp && mv {seen}.tmp {seen}\n")
    server = start_server("--hooks-dir", str(hook_dir))
    rejected = create(server, 13)
    assert rejected.status_code == 400 and "rejected by pre-create hook" in rejected.text
    location = upload(server)
    deadline = time.monotonic() + 10
    while not seen.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    document = json.loads(seen.read_text())
    assert document["Type"] == "post-finish"
    assert document["Event"]["Upload"]["ID"] == location.rsplit("/", 1)[1]
    assert document["Event"]["Upload"]["Offset"] == 5


def test_file_hook_stdout_can_change_the_upload(start_server: StartServer, tmp_path: Path) -> None:
    hook_dir = tmp_path / "hooks"
    hook_dir.mkdir()
    script(hook_dir, "pre-create", "cat > /dev/null\necho '{\"ChangeFileInfo\": {\"ID\": \"from-script\"}}'\n")
    server = start_server("--hooks-dir", str(hook_dir))
    assert create(server).headers["Location"].endswith("/from-script")
    assert os.path.exists(server.upload_dir / "from-script.info")


# ---- Python callables (embedding) ------------------------------------------------------------

def test_embedded_callable_hooks(tmp_path: Path) -> None:
    import asyncio

    from tusfast import Config, HookContext, HookEvent, HookRejected, TusServer
    from tusfast.hooks import FileInfoChanges, HookResponse

    seen: list[tuple[str, int]] = []

    async def hook(context: HookContext) -> HookResponse | None:
        seen.append((context.event.value, context.upload.offset))
        if context.event is HookEvent.PRE_CREATE and context.upload.length == 13:
            raise HookRejected(409, "unlucky")
        if context.event is HookEvent.PRE_CREATE:
            return HookResponse(changes=FileInfoChanges(id="embedded"))
        return None

    async def scenario() -> tuple[int, int, str]:
        async with TusServer(Config(port=0, upload_dir=tmp_path / "up"), hooks=hook) as server:
            rejected = await asyncio.to_thread(requests.post, server.url, headers={**V, "Upload-Length": "13"})
            created = await asyncio.to_thread(requests.post, server.url, headers={**V, "Upload-Length": "0"})
        return rejected.status_code, created.status_code, created.headers["Location"]

    rejected, created, location = asyncio.run(scenario())
    assert (rejected, created) == (409, 201) and location.endswith("/embedded")
    assert ("post-finish", 0) in seen and ("post-create", 0) in seen     # drained by stop()


def test_post_receive_reports_progress_during_one_large_patch(start_server: StartServer,
                                                              receiver: Receiver) -> None:
    """A large body of known length takes the splice path: progress must still be reported on the way."""
    server = start_server(*hooks(receiver, "--hooks-enabled", "post-receive", "--progress-interval", "50ms"))
    size, piece = 24 * 1024 * 1024, 4 * 1024 * 1024
    created = create(server, size)
    assert created.status_code == 201
    parts = urlsplit(created.headers["Location"])
    assert parts.port is not None
    with socket.create_connection(("127.0.0.1", parts.port), timeout=10) as raw:
        raw.sendall(f"PATCH {parts.path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                    f"Content-Type: application/offset+octet-stream\r\nContent-Length: {size}\r\n\r\n".encode())
        for _ in range(size // piece):
            raw.sendall(os.urandom(piece))
            time.sleep(0.15)        # the server's steps end between pieces
        assert raw.recv(4096).startswith(b"HTTP/1.1 204")
    offsets = [call.body["Event"]["Upload"]["Offset"] for call in receiver.wait_for("post-receive", 3)]
    assert offsets == sorted(offsets) and len(set(offsets)) >= 3
    assert 0 < offsets[0] < size and offsets[-1] <= size
