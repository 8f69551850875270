"""Rows made of several processes: N instances of one server plus a helper server (Redis, S3).

A Cluster stands in for a RunningServer in the harness: its CPU time and peak RSS are summed over
all instances, the helper's CPU is reported apart (aux_usage), and cleaning between runs empties the
shared upload directory and the bucket. Every instance shares the Cluster's work directory, so they
share one upload directory and one log file (appended to by all of them).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .servers import (
    HOST,
    RunningServer,
    ServerError,
    ServerSpec,
    Usage,
    free_port,
    reset_peak_rss,
    stop_group,
    tree_usage,
)

START_TIMEOUT = 60.0
S3_REGION = "us-east-1"
S3_CREDENTIALS = (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                  ("AWS_DEFAULT_REGION", S3_REGION))
HELPER_LABELS = {"redis": "Redis", "moto": "moto (S3)"}


@dataclass(frozen=True)
class ClusterSpec(ServerSpec):
    """instances copies of argv; {redis}, {s3_endpoint} and {s3_bucket} in it are filled in at start."""

    instances: int = 1
    helper: str = ""            # "", "redis" or "moto": started first, stopped last
    chunk: int = 0              # PATCH size for the S3 scenario; 0: the whole upload in one PATCH
    unavailable: str = ""       # why this row cannot run here (then nothing is started)

    @property
    def helper_label(self) -> str:
        return HELPER_LABELS.get(self.helper, "")


def unavailable(spec: ServerSpec) -> str:
    return spec.unavailable if isinstance(spec, ClusterSpec) else ""


def make_server(spec: ServerSpec, workdir: Path) -> RunningServer:
    return Cluster(spec, workdir) if isinstance(spec, ClusterSpec) else RunningServer(spec, workdir)


def as_cluster(spec: ServerSpec, **changes: Any) -> ClusterSpec:
    """spec as a ClusterSpec, with changes (label, argv, instances, helper, ...)."""
    base = ClusterSpec(spec.label, spec.kind, spec.fsync, spec.argv, spec.version, spec.cwd, spec.env)
    return replace(base, **changes)


def not_available(label: str, kind: str, reason: str) -> ClusterSpec:
    return ClusterSpec(label, kind, "never", (), unavailable=reason)


# -- helper servers -----------------------------------------------------------------------------------

class HelperProcess:
    """A helper in its own process group, logging to a file in the work directory."""

    name = "helper"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          env=env, start_new_session=True)

    def wait_until(self, ready: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{self.name} did not come up on port {self.port} within "
                                  f"{START_TIMEOUT:.0f} s\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise ServerError(f"{self.name} exited with {self._proc.returncode}\n{self.log_tail()}")

    def usage(self) -> Usage:
        return tree_usage(self._proc.pid) if self._proc is not None else Usage(0.0, 0)

    def reset_peak_rss(self) -> None:
        if self._proc is not None:
            reset_peak_rss(self._proc.pid)

    def stop(self) -> None:
        if self._proc is not None:
            stop_group(self._proc)

    def clean(self, keep: Collection[str]) -> None:
        return None


def redis_missing() -> str:
    if shutil.which("redis-server") is None:
        return "redis-server is not on the PATH (Debian/Ubuntu: apt-get install redis-server)"
    if importlib.util.find_spec("redis") is None:
        return "redis-py is not installed (pip install 'tusfast[redis]')"
    return ""


class RedisHelper(HelperProcess):
    """redis-server on 127.0.0.1 without persistence: tusfast keeps only locks in it."""

    name = "redis"

    def start(self) -> dict[str, str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError(redis_missing())
        self.spawn([binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
                    "--dir", str(self.workdir), "--loglevel", "warning"])
        self.wait_until(self._pong)
        return {"redis": f"redis://{HOST}:{self.port}/0"}

    def _pong(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def moto_missing() -> str:
    for module, install in (("moto", "pip install 'moto[server]'"), ("boto3", "pip install boto3"),
                            ("aiobotocore", "pip install 'tusfast[s3]'")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({install})"
    if importlib.util.find_spec("flask") is None:
        return "moto's server mode needs flask (pip install 'moto[server]')"
    return ""


class MotoHelper(HelperProcess):
    """moto's S3 server (python -m moto.server) with one bucket; keeps S3's 5 MiB minimum part size."""

    name = "moto"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.bucket = f"tusfast-bench-{uuid.uuid4().hex[:8]}"
        self.endpoint = f"http://{HOST}:{self.port}"
        self._client: Any = None

    def start(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "S3_UPLOAD_PART_MIN_SIZE"}
        self.spawn([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)], env)
        self.wait_until(self._listening)
        self.client().create_bucket(Bucket=self.bucket)
        return {"s3_endpoint": self.endpoint, "s3_bucket": self.bucket}

    def _listening(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def client(self) -> Any:
        if self._client is None:
            import boto3  # type: ignore[import-untyped]  # only when an S3 scenario runs
            self._client = boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_REGION,
                                        aws_access_key_id="testing", aws_secret_access_key="testing")
        return self._client

    def clean(self, keep: Collection[str]) -> None:
        """Delete the objects and abort the multipart uploads of earlier runs."""
        s3 = self.client()
        for upload in s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []):
            if _upload_id(upload["Key"]) not in keep:
                s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                if _upload_id(item["Key"]) not in keep:
                    s3.delete_object(Bucket=self.bucket, Key=item["Key"])

    def object_size(self, key: str) -> int:
        return int(self.client().head_object(Bucket=self.bucket, Key=key)["ContentLength"])


def _upload_id(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


HELPERS: dict[str, type[RedisHelper | MotoHelper]] = {"redis": RedisHelper, "moto": MotoHelper}


# -- the cluster ----------------------------------------------------------------------------------------

@dataclass
class Cluster(RunningServer):
    members: list[RunningServer] = field(default_factory=list)
    helper: RedisHelper | MotoHelper | None = None

    @property
    def cluster_spec(self) -> ClusterSpec:
        assert isinstance(self.spec, ClusterSpec)
        return self.spec

    @property
    def pid(self) -> int:
        return self.members[0].pid

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(member.host, member.port) for member in self.members]

    def start(self) -> Cluster:
        spec = self.cluster_spec
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        values: dict[str, str] = {}
        try:
            if spec.helper:
                self.helper = HELPERS[spec.helper](self.workdir)
                values = self.helper.start()
            argv = tuple(_fill(arg, values) for arg in spec.argv)
            for _ in range(spec.instances):
                member = RunningServer(replace(spec, argv=argv), self.workdir)
                self.members.append(member)
                member.start()
        except BaseException:
            self.stop()
            raise
        first = self.members[0]
        self.port, self.extensions = first.port, first.extensions
        self.checksum_algorithms = first.checksum_algorithms
        return self

    def check_alive(self) -> None:
        for member in self.members:
            member.check_alive()
        if self.helper is not None:
            self.helper.check_alive()

    def usage(self) -> Usage:
        usages = [member.usage() for member in self.members]
        return Usage(sum(u.cpu for u in usages), sum(u.peak_rss for u in usages))

    def aux_usage(self) -> Usage:
        return self.helper.usage() if self.helper is not None else Usage(0.0, 0)

    def reset_peak_rss(self) -> bool:
        done = True
        for member in self.members:         # every one, even after one failed
            done = member.reset_peak_rss() and done
        if self.helper is not None:
            self.helper.reset_peak_rss()
        return done

    def clean(self, keep: Collection[str] = ()) -> None:
        super().clean(keep)
        if self.helper is not None:
            self.helper.clean(keep)

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        if self.helper is not None:
            self.helper.stop()

    def s3_object_size(self, upload_path: str) -> int:
        """Size of a finished upload's object in the bucket (tusfast runs without --s3-prefix)."""
        assert isinstance(self.helper, MotoHelper)
        return self.helper.object_size(upload_path.rstrip("/").rsplit("/", 1)[-1])


def _fill(arg: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        arg = arg.replace("{" + name + "}", value)
    return arg


def endpoints(server: RunningServer) -> list[tuple[str, int]]:
    """Where clients may send requests: every instance of a cluster, or the one server."""
    return server.endpoints if isinstance(server, Cluster) else [(server.host, server.port)]
