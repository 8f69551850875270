"""The CLI surface (flags, environment variables, --version, errors), the transports it offers
(Unix socket, TLS), and the embedding API."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import StartServer
from tests.support.tls import self_signed
from tusfast import Config, TusServer, __version__

TUS = {"Tus-Resumable": "1.0.0"}


def tusfast(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tusfast", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_version() -> None:
    result = tusfast("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tusfast {__version__}"


@pytest.mark.parametrize("args, message", [
    (["--max-size", "lots"], "invalid size"),
    (["--port", "70000"], "port"),
    (["--dir-layout", "{year}/../x"], "dir layout"),
    (["--tls-cert", "cert.pem"], "--tls-key"),
    (["--log-level", "chatty"], "log level"),
    (["--read-timeout", "soon"], "invalid duration"),
])
def test_bad_flags_fail_with_a_clear_message(args: list[str], message: str) -> None:
    result = tusfast("serve", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = tusfast("serve", "--port", str(taken.getsockname()[1]), "--upload-dir", str(tmp_path))
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_environment_variables_configure_the_server(start_server: StartServer) -> None:
    server = start_server(env={"TUSFAST_MAX_SIZE": "1K", "TUSFAST_BASE_PATH": "/api/up/",
                               "TUSFAST_DISABLE_TERMINATION": "true"})
    assert server.url.endswith("/api/up/")
    reply = requests.options(server.url)
    assert reply.headers["Tus-Max-Size"] == "1024"
    assert "termination" not in reply.headers["Tus-Extension"].split(",")


def test_flags_win_over_environment(start_server: StartServer) -> None:
    server = start_server("--max-size", "2K", env={"TUSFAST_MAX_SIZE": "1K"})
    assert requests.options(server.url).headers["Tus-Max-Size"] == "2048"


def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "tus.sock")
    process = subprocess.Popen([sys.executable, "-m", "tusfast", "serve", "--unix-socket", path,
                                "--upload-dir", str(tmp_path / "data")], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on" in line:
                break
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(path)
            client.sendall(b"POST /files/ HTTP/1.1\r\nHost: uploads.example\r\nTus-Resumable: 1.0.0\r\n"
                           b"Upload-Length: 3\r\nContent-Type: application/offset+octet-stream\r\n"
                           b"Content-Length: 3\r\n\r\nabc")
            reply = client.recv(4096)
        assert reply.startswith(b"HTTP/1.1 201 ")
        assert b"Location: http://uploads.example/files/" in reply and b"Upload-Offset: 3" in reply
    finally:
        process.terminate()
        assert process.wait(20) == 0



def test_tls(start_server: StartServer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = start_server("--tls-cert", cert, "--tls-key", key)
    assert server.url.startswith("https://")
    created = requests.post(server.url, headers={**TUS, "Upload-Length": "5"}, verify=cert)
    assert created.status_code == 201 and created.headers["Location"].startswith("https://127.0.0.1:")
    patched = requests.patch(created.headers["Location"], data=b"hello", verify=cert,
                             headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert patched.status_code == 204 and patched.headers["Upload-Offset"] == "5"
    with pytest.raises(requests.exceptions.SSLError):
        requests.options(server.url, verify=True)    # really TLS, with our certificate


def test_embedded_server_start_upload_stop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TusServer(Config(port=0, upload_dir=tmp_path, max_size=100)) as server:
            port = server.port
            assert server.url == f"http://127.0.0.1:{port}/files/"
            status, headers = await asyncio.to_thread(_create_and_upload, port)
            assert status == 204 and headers["Upload-Offset"] == "4"
        with pytest.raises(OSError):     # stopped: nothing listens any more
            await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 2)
    asyncio.run(scenario())
    infos = list(tmp_path.glob("*.info"))
    assert len(infos) == 1 and Path(str(infos[0])[:-5]).read_bytes() == b"data"


def _create_and_upload(port: int) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/files/", headers={**TUS, "Upload-Length": "4"})
    created = connection.getresponse()
    created.read()
    location = created.getheader("Location", "")
    connection.request("PATCH", location, body=b"data",
                       headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    reply = connection.getresponse()
    reply.read()
    return reply.status, dict(reply.getheaders())


def test_embedded_graceful_stop_lets_a_request_finish(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = TusServer(Config(port=0, upload_dir=tmp_path))
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 6\r\n"
                     b"Content-Type: application/offset+octet-stream\r\nContent-Length: 6\r\n\r\nhal")
        await writer.drain()
        await asyncio.sleep(0.2)
        stopping = asyncio.create_task(server.stop(timeout=10))
        await asyncio.sleep(0.2)
        writer.write(b"f!!")    # the rest of the body arrives after stop() began
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await stopping
        assert head.startswith(b"HTTP/1.1 201 ") and b"Upload-Offset: 6" in head
        writer.close()
    asyncio.run(scenario())


def test_drop_in_for_a_rustus_deployment(start_server: StartServer) -> None:
    """A rustus unit's environment and tusd-style flags run tusfast unchanged."""
    server = start_server("-max-size", "100", env={"RUSTUS_PREFIX": "/api/upload/resumable_upload",
                                                   "RUSTUS_LOG_LEVEL": "DEBUG"})
    assert server.url.endswith("/api/upload/resumable_upload/")
    options = requests.options(server.url)
    assert options.status_code == 204 and options.headers["Tus-Max-Size"] == "100"
    created = requests.post(server.url, headers={**TUS, "Upload-Length": "5"})
    assert created.status_code == 201 and "/api/upload/resumable_upload/" in created.headers["Location"]
