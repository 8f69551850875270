"""Scale-out as a new user would try it (docs/scale-out.md, "Try it"): a real redis-server, an
S3-compatible server (moto) or one shared directory, three `tusfast serve` processes, and a
round-robin TCP balancer in front. Clients (tus-js-client under Node, tuspy, plain requests) only
know the balancer's URL. Their requests hop between instances, instances get killed with kill -9
and restarted, and every upload must come back byte for byte, through the balancer and straight
from the storage.

The balancer works per TCP connection, like HAProxy `mode tcp`: a keep-alive connection stays on
one instance. tuspy and our own loops open a connection per request, so they hop on every
request. Node keeps connections alive; the hop tests turn that off (an HTTP balancer such as
nginx's `upstream` would balance each request anyway), the kill test keeps it on.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from tusclient import client as tus_client

from tests.conftest import StartServer
from tests.interop.conftest import js_client_installed  # noqa: F401
from tests.interop.helpers import JsResult, run_js_client, spawn_js_client
from tests.support.redis_server import redis_prefix, redis_server, redis_url  # noqa: F401
from tests.support.round_robin_proxy import RoundRobinProxy
from tests.support.s3_server import MotoServer, moto_server, open_multipart_uploads  # noqa: F401
from tests.support.server_process import ServerProcess

from .rawhttp import OCTET, TIMEOUT, TUS, RawConnection, path_of, upload_id, wait_until

MiB = 1024 * 1024
BASE = "/files/"
S3_PREFIX = "uploads/"
PART = 5 * MiB
# Our own clients' patience: generous, since two shared cores run moto, Redis, three instances and
# ten clients at once; a request that hangs still fails the test.
CLIENT_TIMEOUT = 60.0

# Flags every instance gets on top of its storage and Redis flags; one cluster per entry.
INSTANCE_FLAGS = [
    pytest.param((), id="info-in-storage"),
    pytest.param(("--info-store", "redis"), id="info-in-redis"),
]

# Node's global agent keeps connections alive (Node >= 19); this makes it open one per request.
NO_KEEPALIVE = "const http = require('node:http'); http.globalAgent = new http.Agent({ keepAlive: false })\n"


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    storage: str                  # "s3" or "file"
    proxy: RoundRobinProxy
    servers: list[ServerProcess]
    s3: Any = None                # boto3 client (S3 only)
    bucket: str = ""
    shared_dir: Path | None = None
    redis_url: str = ""
    redis_prefix: str = ""
    info_in_redis: bool = False
    statuses: Counter[int] = field(default_factory=Counter)    # of our own requests

    @property
    def url(self) -> str:
        return self.proxy.url(BASE)

    def stored(self, ident: str) -> bytes:
        """The finished upload, straight from the storage."""
        if self.storage == "s3":
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=S3_PREFIX + ident)["Body"].read())
        assert self.shared_dir is not None
        return (self.shared_dir / ident).read_bytes()

    def recorded_offset(self, ident: str) -> int | None:
        """The acknowledged offset in Redis (--info-store redis); None when the info is in storage."""
        if not self.info_in_redis:
            return None
        recorded = redis.Redis.from_url(self.redis_url).hget(f"{self.redis_prefix}upload:{ident}", "offset")
        return None if recorded is None else int(recorded)

    def serving(self, method: str, ident: str) -> set[int]:
        """Instances whose access log has a successful `method` on the upload."""
        line = f'"{method} {BASE}{ident}" 20'
        return {index for index, server in enumerate(self.servers) if any(line in entry for entry in server.log)}

    def logs(self) -> str:
        """Warnings, errors and unsuccessful requests of each instance, for failure messages."""
        def notable(line: str) -> bool:
            return " INFO " not in line or ("tusfast.access" in line and '" 20' not in line)
        return "\n".join(f"--- instance {index}:\n" + "".join(filter(notable, server.log))
                         for index, server in enumerate(self.servers))


def build_cluster(proxy: RoundRobinProxy, storage: str, flags: tuple[str, ...], start_server: StartServer,
                  tmp_path: Path, redis: str, prefix: str, moto: MotoServer | None) -> Cluster:
    common = ["--redis-url", redis, "--redis-prefix", prefix, "--redis-lock-lease", "1s", *flags]
    if storage == "s3":
        assert moto is not None
        bucket = moto.new_bucket()
        # A TCP balancer forwards no X-Forwarded-* headers: the operator names the public URL.
        args = [*common, "--public-url", proxy.url(BASE), "--storage", "s3", "--s3-bucket", bucket,
                "--s3-prefix", S3_PREFIX, "--s3-part-size", "5M"]
        servers = [start_server(*args, env=moto.env()) for _ in range(3)]
        cluster = Cluster("s3", proxy, servers, s3=moto.client(), bucket=bucket)
    else:
        shared = tmp_path / "shared"
        # --behind-proxy: Location from the Host header clients sent to the balancer.
        servers = [start_server(*common, "--behind-proxy", upload_dir=shared) for _ in range(3)]
        cluster = Cluster("file", proxy, servers, shared_dir=shared)
    cluster.redis_url, cluster.redis_prefix = redis, prefix
    cluster.info_in_redis = "redis" in flags
    for server in servers:
        proxy.add(server.port)
    return cluster


@pytest.fixture(params=INSTANCE_FLAGS)
def instance_flags(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return tuple(request.param)


@pytest.fixture
def make_cluster(start_server: StartServer, tmp_path: Path, redis_url: str, redis_prefix: str,  # noqa: F811
                 instance_flags: tuple[str, ...], request: pytest.FixtureRequest) -> Iterator[Callable[[str], Cluster]]:
    proxies: list[RoundRobinProxy] = []

    def make(storage: str) -> Cluster:
        moto = request.getfixturevalue("moto_server") if storage == "s3" else None
        proxies.append(RoundRobinProxy().start())
        return build_cluster(proxies[-1], storage, instance_flags, start_server, tmp_path, redis_url, redis_prefix,
                             moto)

    yield make
    for proxy in proxies:       # the instances are stopped by start_server
        proxy.stop()


@pytest.fixture
def no_keepalive_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preload = tmp_path / "no-keepalive.cjs"
    preload.write_text(NO_KEEPALIVE)
    monkeypatch.setenv("NODE_OPTIONS", f"--require {preload}")


# --------------------------------------------------------------------------- helpers


def source(tmp_path: Path, size: int, name: str = "source.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def assert_delivered(cluster: Cluster, url: str | None, data: bytes) -> str:
    """The upload's URL points at the balancer, and GET through it and the storage itself both
    give the exact bytes."""
    assert url is not None and url.startswith(cluster.url), (url, cluster.url)
    ident = upload_id(url)
    download = requests.get(url, timeout=TIMEOUT)
    assert download.status_code == 200, (download.status_code, download.text)
    assert download.content == data, "GET through the balancer differs from the source"
    assert cluster.stored(ident) == data, "the stored object differs from the source"
    if cluster.storage == "s3":
        assert [item for item in open_multipart_uploads(cluster.s3, cluster.bucket)
                if item["Key"] == S3_PREFIX + ident] == []
    return ident


def no_server_errors(result: JsResult) -> None:
    statuses = [request["status"] for request in result.requests if request["status"] is not None]
    assert all(status < 500 for status in statuses), result.describe()


def upload_with_resume(cluster: Cluster, data: bytes, chunk: int, progress: list[int], slot: int,
                       pause_at: int | None = None, resume: threading.Event | None = None) -> str:
    """Our own tus client: POST, then HEAD + PATCH until done, each request on a new connection
    (so each may land on another instance). A broken connection (an instance killed under it)
    means: ask the offset again and go on. Every status seen goes to `cluster.statuses`."""
    url = ""
    while not url:
        try:
            response = requests.post(cluster.url, headers={**TUS, "Upload-Length": str(len(data))},
                                     timeout=CLIENT_TIMEOUT)
        except requests.ConnectionError:
            continue        # maybe created, maybe not: an orphan is harmless, we create another
        cluster.statuses[response.status_code] += 1
        assert response.status_code == 201, (response.status_code, response.text)
        url = response.headers["Location"]
    offset = 0
    while offset < len(data):
        if pause_at is not None and resume is not None and offset >= pause_at:
            resume.wait(60)
        try:
            response = requests.head(url, headers=TUS, timeout=CLIENT_TIMEOUT)
            cluster.statuses[response.status_code] += 1
            assert response.status_code == 200, (response.status_code, response.headers)
            offset = int(response.headers["Upload-Offset"])
            if offset == len(data):
                break
            response = requests.patch(url, data=data[offset:offset + chunk], timeout=CLIENT_TIMEOUT, headers={
                **TUS, "Content-Type": OCTET, "Upload-Offset": str(offset)})
            cluster.statuses[response.status_code] += 1
            assert response.status_code == 204, (response.status_code, response.text)
            offset = int(response.headers["Upload-Offset"])
            progress[slot] = offset
        except requests.ConnectionError:
            cluster.statuses[0] += 1       # the instance died under us: HEAD again
    return url


# --------------------------------------------------------------------------- the balancer itself


def test_proxy_pipes_large_bodies_both_ways_and_keeps_half_close() -> None:
    """An echo backend that answers after the client's EOF: the proxy must pass that EOF on and
    still carry the whole reply back."""
    listener = socket.create_server(("127.0.0.1", 0))

    def echo_until_eof() -> None:
        conn, _ = listener.accept()
        with conn:
            received = bytearray()
            while block := conn.recv(65536):
                received += block
            conn.sendall(bytes(received) + b"|%d" % len(received))

    thread = threading.Thread(target=echo_until_eof, daemon=True)
    thread.start()
    payload = os.urandom(12 * MiB)
    with RoundRobinProxy() as proxy, listener:
        proxy.add(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as client:
            reply = bytearray()
            reader = threading.Thread(target=receive_all, args=(client, reply), daemon=True)
            reader.start()
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            reader.join(TIMEOUT)
        thread.join(TIMEOUT)
        assert bytes(reply) == payload + b"|%d" % len(payload)
        (record,) = proxy.records()
        assert record.backend == 0 and record.bytes_up == len(payload) and not record.open


def receive_all(sock: socket.socket, into: bytearray) -> None:
    while block := sock.recv(65536):
        into += block


def test_proxy_skips_a_dead_backend_and_goes_round_robin(server: ServerProcess) -> None:
    with socket.socket() as probe:      # a port nobody listens on: a killed instance
        probe.bind(("127.0.0.1", 0))
        dead = int(probe.getsockname()[1])
    with RoundRobinProxy() as proxy:
        proxy.fail_timeout = 0.0        # try the dead one at each turn: its refusals are countable
        for port in (server.port, dead, server.port):
            proxy.add(port)
        for _ in range(6):
            response = requests.options(proxy.url(BASE), headers=TUS, timeout=TIMEOUT)
            assert response.status_code == 204
        # Turns 0 1 2 0 1 2: each turn of the dead one fails over to the next backend, 2.
        assert proxy.served() == Counter({0: 2, 2: 4})
        assert proxy.refused() == Counter({1: 2})


def test_log_names_the_bound_port_and_the_public_url(start_server: StartServer) -> None:
    """An operator behind a balancer sets --public-url and may let the OS pick the port (--port 0,
    as here): the start line must say where the instance really listens, to point the balancer at."""
    public = "https://uploads.example.com/files/"
    server = start_server("--public-url", public)       # ServerProcess reads the port from that line
    (line,) = [line for line in server.log if "listening on" in line]
    assert f"listening on http://127.0.0.1:{server.port}/files/" in line and f"public URL {public}" in line
    response = requests.post(server.url, headers={**TUS, "Upload-Length": "1"}, timeout=TIMEOUT)
    assert response.status_code == 201 and response.headers["Location"].startswith(public)


# --------------------------------------------------------------------------- hops


@pytest.mark.interop
@pytest.mark.parametrize("storage", ["s3", "file"])
def test_tus_js_client_upload_hops_between_instances(storage: str, make_cluster: Callable[[str], Cluster],
                                                     js_client_installed: Path,  # noqa: F811
                                                     no_keepalive_node: None, tmp_path: Path) -> None:
    cluster = make_cluster(storage)
    path, data = source(tmp_path, 6 * MiB + 123)
    result = run_js_client(endpoint=cluster.url, file=str(path), chunkSize=MiB)
    assert result.ok, result.describe()
    no_server_errors(result)
    ident = assert_delivered(cluster, result.url, data)
    assert len(result.requests_with("PATCH")) == 7, result.describe()
    # Each request came on its own connection, and the balancer spread them over all three.
    assert sorted(cluster.proxy.served()) == [0, 1, 2]
    assert wait_until(lambda: cluster.serving("PATCH", ident) == {0, 1, 2}), [s.log for s in cluster.servers]


@pytest.mark.interop
@pytest.mark.parametrize("storage", ["s3", "file"])
def test_tuspy_upload_hops_between_instances(storage: str, make_cluster: Callable[[str], Cluster],
                                             tmp_path: Path) -> None:
    cluster = make_cluster(storage)
    path, data = source(tmp_path, 5 * MiB + 4321)
    uploader = tus_client.TusClient(cluster.url).uploader(str(path), chunk_size=512 * 1024)
    uploader.upload()
    assert uploader.offset == len(data)
    ident = assert_delivered(cluster, uploader.url, data)
    assert wait_until(lambda: cluster.serving("PATCH", ident) == {0, 1, 2}), [s.log for s in cluster.servers]
    assert min(cluster.proxy.served()[index] for index in range(3)) >= 3     # 11 PATCHes, a POST, a GET


# --------------------------------------------------------------------------- kill -9


def wait_for_connection(proxy: RoundRobinProxy, skip: int, min_up: int) -> int:
    """The backend of the first connection after `skip` that carried at least `min_up` bytes."""
    def found() -> int | None:
        for record in proxy.records()[skip:]:
            if record.backend is not None and record.bytes_up >= min_up and record.open:
                return record.backend
        return None
    assert wait_until(lambda: found() is not None, 60, 0.01), proxy.records()
    backend = found()
    assert backend is not None
    return backend


@pytest.mark.interop
def test_kill_9_mid_upload_tus_js_client_resumes_on_the_survivors(make_cluster: Callable[[str], Cluster],
                                                                  js_client_installed: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    cluster = make_cluster("s3")
    path, data = source(tmp_path, 12 * MiB + 5)
    # Keep-alive (Node's default): the whole upload rides one connection, so on one instance.
    running = spawn_js_client(endpoint=cluster.url, file=str(path), chunkSize=2 * MiB, requestDelayMs=50)
    try:
        victim = wait_for_connection(cluster.proxy, 0, 5 * MiB)
        cluster.servers[victim].kill()
        killed_at = len(cluster.proxy.records())
        result = running.result()
    finally:
        running.kill()
    assert result.ok, result.describe()
    no_server_errors(result)
    # The client got a broken connection, asked the offset again (on a survivor) and went on.
    assert result.requests_with("HEAD"), result.describe()
    assert assert_delivered(cluster, result.url, data)
    # New connections keep coming; once the dead instance's turn is tried again (it is skipped
    # for fail_timeout after a refusal), its connect fails and the next instance serves.
    def dead_one_tried() -> bool:
        assert requests.options(cluster.url, headers=TUS, timeout=TIMEOUT).status_code == 204
        return any(victim in record.refused_by for record in cluster.proxy.records()[killed_at:])
    assert wait_until(dead_one_tried, 30, 0.1)
    after = cluster.proxy.records()[killed_at:]
    assert all(record.backend not in (victim, None) for record in after), after


def test_kill_9_mid_patch_body_offset_is_what_s3_holds_and_the_rest_resumes(
        make_cluster: Callable[[str], Cluster]) -> None:
    cluster = make_cluster("s3")
    data = os.urandom(12 * MiB)
    created = requests.post(cluster.url, headers={**TUS, "Upload-Length": str(len(data))}, timeout=TIMEOUT)
    assert created.status_code == 201
    url = created.headers["Location"]
    key = S3_PREFIX + upload_id(url)
    raw = RawConnection.to(cluster.url)
    try:
        raw.request("PATCH", path_of(url), [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0"),
                                            ("Content-Length", str(len(data)))])
        raw.send(data[:7 * MiB])
        victim = cluster.proxy.records()[-1].backend
        assert victim is not None

        def first_part_in_s3() -> bool:
            uploads = [item for item in open_multipart_uploads(cluster.s3, cluster.bucket) if item["Key"] == key]
            return any(cluster.s3.list_parts(Bucket=cluster.bucket, Key=key, UploadId=item["UploadId"]).get("Parts")
                       for item in uploads)

        def first_part_counted() -> bool:
            # With an info store a stored part counts once its offset is recorded, a moment after S3
            # took it: a kill inside that moment rightly leaves the offset at 0. Read the record
            # itself; a HEAD would make the PATCH give up its lock and store its tail.
            return first_part_in_s3() and cluster.recorded_offset(upload_id(url)) in (None, PART)
        assert wait_until(first_part_counted, 30)
        cluster.servers[victim].kill()
        assert raw.closed_within(TIMEOUT) is not None       # the balancer passes the break on
    finally:
        raw.close()
    # The 2 MiB after the first part were only in the dead instance: not counted, sent again.
    response = requests.head(url, headers=TUS, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["Upload-Offset"] == str(PART)
    response = requests.patch(url, data=data[PART:], timeout=TIMEOUT,
                              headers={**TUS, "Content-Type": OCTET, "Upload-Offset": str(PART)})
    assert response.status_code == 204, (response.status_code, response.text)
    assert response.headers["Upload-Offset"] == str(len(data))
    assert_delivered(cluster, url, data)


# --------------------------------------------------------------------------- many at once


@pytest.mark.parametrize("storage", ["s3", "file"])
def test_concurrent_uploads_survive_an_instance_killed_and_restarted(
        storage: str, make_cluster: Callable[[str], Cluster]) -> None:
    cluster = make_cluster(storage)
    uploads = [os.urandom(2 * MiB + 1000 * index) for index in range(10)]
    total = sum(len(data) for data in uploads)
    progress = [0] * len(uploads)
    restarted = threading.Event()
    urls: list[str | None] = [None] * len(uploads)
    errors: list[BaseException] = []

    def run(slot: int) -> None:
        try:
            urls[slot] = upload_with_resume(cluster, uploads[slot], 512 * 1024, progress, slot,
                                            pause_at=len(uploads[slot]) * 2 // 3, resume=restarted)
        except Exception as exc:    # noqa: BLE001 - any failure is reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(slot,), daemon=True) for slot in range(len(uploads))]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: sum(progress) >= total // 4 or bool(errors), 120), progress
        cluster.servers[1].kill()
        assert wait_until(lambda: sum(progress) >= total // 2 or bool(errors), 120), progress
        cluster.servers[1].restart()
        back_at = len(cluster.proxy.records())
        cluster.proxy.restore(1)        # its health check passes again
    finally:
        restarted.set()
        for thread in threads:
            thread.join(120)
    assert not errors, (errors, cluster.logs())
    assert not any(thread.is_alive() for thread in threads)
    for url, data in zip(urls, uploads):
        assert_delivered(cluster, url, data)
    assert all(status < 500 for status in cluster.statuses), cluster.statuses
    # The restarted instance took its share of the last third.
    assert any(record.backend == 1 for record in cluster.proxy.records()[back_at:])
