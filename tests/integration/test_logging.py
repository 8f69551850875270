"""The access log and --log-format json, read from a real server's stderr."""

from __future__ import annotations

import json
import re
import time

import requests

from tests.conftest import StartServer
from tests.support.server_process import ServerProcess

TUS = {"Tus-Resumable": "1.0.0"}
SECRETS = {"Authorization": "Bearer s3cr3t-auth", "Cookie": "session=s3cr3t-cookie", "X-Api-Key": "s3cr3t-key"}


def upload(server: ServerProcess, data: bytes, query: str = "") -> str:
    created = requests.post(server.url + query, headers={**TUS, **SECRETS, "Upload-Length": str(len(data)),
                                                         "X-Forwarded-For": "203.0.113.9, 10.0.0.1"})
    assert created.status_code == 201
    url = created.headers["Location"]
    patched = requests.patch(url, data=data, headers={**TUS, **SECRETS, "Upload-Offset": "0",
                                                       "Content-Type": "application/offset+octet-stream"})
    assert patched.status_code == 204
    return url


def access_lines(server: ServerProcess, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in server.log if "tusfast.access" in line]
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    return [line for line in server.log if "tusfast.access" in line]


def test_one_text_line_per_request_without_secrets(start_server: StartServer) -> None:
    server = start_server()
    url = upload(server, b"hello", "?token=s3cr3t-query")
    upload_id = url.rsplit("/", 1)[-1]
    lines = access_lines(server, 2)
    assert len(lines) == 2
    assert '"POST /files/" 201' in lines[0] and f"id={upload_id}" in lines[0]
    assert re.search(rf'"PATCH /files/{upload_id}" 204 in=5 out=0 \d+\.\dms id={upload_id}\b', lines[1])
    assert lines[0].split("tusfast.access: ")[1].startswith("127.0.0.1 ")     # proxies not trusted
    assert not any("s3cr3t" in line for line in server.log)


def test_json_lines_with_fields_and_forwarded_client(start_server: StartServer) -> None:
    server = start_server("--log-format", "json", "--behind-proxy")
    url = upload(server, b"0123456789")
    records = [json.loads(line) for line in access_lines(server, 2)]
    assert [(r["method"], r["status"]) for r in records] == [("POST", 201), ("PATCH", 204)]
    assert records[1]["bytes_in"] == 10 and records[1]["upload_id"] == url.rsplit("/", 1)[-1]
    assert records[0]["remote"] == "203.0.113.9"
    assert all(isinstance(json.loads(line), dict) for line in server.log if line.strip())
    assert not any("s3cr3t" in line for line in server.log)


def test_access_log_can_be_turned_off(start_server: StartServer) -> None:
    server = start_server("--no-access-log")
    upload(server, b"abc")
    time.sleep(0.3)
    assert access_lines(server, 1) == []
    assert any("upload finished" in line for line in server.log)
