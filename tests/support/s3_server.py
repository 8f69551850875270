"""A real S3-compatible server for tests: moto in server mode, as a subprocess on 127.0.0.1.

moto keeps S3's 5 MiB minimum part size (we make sure S3_UPLOAD_PART_MIN_SIZE is not inherited),
so a backend that completes a multipart upload with a small inner part fails here as on AWS.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import boto3
import pytest

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": REGION}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]
    buckets: list[str] = field(default_factory=list)

    def client(self) -> Any:
        """A plain (synchronous) boto3 client, to look at what the backend stored."""
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self) -> str:
        name = f"tusfast-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def env(self) -> dict[str, str]:
        """Environment for a tusfast process talking to this server."""
        return {**CREDENTIALS, "TUSFAST_S3_ENDPOINT": self.endpoint}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_moto() -> MotoServer:
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if key != "S3_UPLOAD_PART_MIN_SIZE"}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("moto server exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return MotoServer(endpoint, process)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start within 30 s")


def list_keys(client: Any, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def open_multipart_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> str:
    """A fresh, empty bucket per test."""
    return moto_server.new_bucket()
