"""kill -9 of the server while 50 uploads stream in, then a restart on the same directory: every
upload resumes from what HEAD reports and ends byte for byte identical to its source (issue 6)."""

from __future__ import annotations

import hashlib
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.integration.rawhttp import OCTET, TIMEOUT, TUS, create, upload_id, wait_until

from .conftest import GroupServer, MiB, StartGroupServer

UPLOADS = 50
SIZE = 3 * MiB
# Bodies above and below the splice threshold (256 KiB), so both write paths are cut by the kill
# (above it: O_DIRECT by default, splice with --direct-io off).
CHUNKS = (640 * 1024, 100 * 1024, 384 * 1024, 48 * 1024)


@dataclass
class Upload:
    payload: bytes
    url: str = ""
    sent: int = 0           # bytes put on the wire so far, the body in flight included
    acked: int = 0          # Upload-Offset of the last 204
    after_restart: int = -1
    size_after_restart: int = -1
    errors: list[str] = field(default_factory=list)


def patch(session: requests.Session, url: str, offset: int, body: bytes) -> requests.Response:
    return session.patch(url, data=body, timeout=TIMEOUT, headers={
        **TUS, "Content-Type": OCTET, "Upload-Offset": str(offset)})


def send_until_killed(upload: Upload, rng: random.Random, started: threading.Barrier,
                      progress: threading.Semaphore) -> None:
    """PATCH piece by piece until the server goes away (or the upload is done)."""
    started.wait()
    with requests.Session() as session:
        while upload.acked < len(upload.payload):
            size = rng.choice(CHUNKS)
            body = upload.payload[upload.acked:upload.acked + size]
            upload.sent = upload.acked + len(body)
            try:
                response = patch(session, upload.url, upload.acked, body)
            except requests.ConnectionError:
                return
            if response.status_code != 204:
                upload.errors.append(f"PATCH before the kill: {response.status_code} {response.text!r}")
                return
            upload.acked = int(response.headers["Upload-Offset"])
            progress.release()


def resume_after_restart(upload: Upload, directory: Path) -> None:
    """What a client does after the restart: HEAD, check, send the rest."""
    with requests.Session() as session:
        response = session.head(upload.url, headers=TUS, timeout=TIMEOUT)
        assert response.status_code == 200, response.status_code
        offset = int(response.headers["Upload-Offset"])
        upload.after_restart = offset
        stored = (directory / upload_id(upload.url)).read_bytes()
        upload.size_after_restart = len(stored)
        assert stored == upload.payload[:len(stored)], "stored bytes are not a prefix of the source"
        while offset < len(upload.payload):
            response = patch(session, upload.url, offset, upload.payload[offset:offset + MiB])
            assert response.status_code == 204, (response.status_code, response.text)
            offset = int(response.headers["Upload-Offset"])


def run_crash_and_recover(server: GroupServer, seed: int) -> None:
    rng = random.Random(seed)
    uploads = [Upload(rng.randbytes(SIZE)) for _ in range(UPLOADS)]
    for upload in uploads:
        upload.url = create(server.url, SIZE)
    started = threading.Barrier(UPLOADS + 1)
    progress = threading.Semaphore(0)
    with ThreadPoolExecutor(UPLOADS) as pool:
        senders = [pool.submit(send_until_killed, upload, random.Random(seed + i), started, progress)
                   for i, upload in enumerate(uploads)]
        started.wait()
        # Kill once a third of all PATCHes were answered: most uploads are then mid-way, many mid-body.
        for _ in range(UPLOADS * SIZE // (3 * 300 * 1024)):
            assert progress.acquire(timeout=60), "the uploads made no progress"
        server.kill_group()
        for sender in senders:
            sender.result()
    assert not [error for upload in uploads for error in upload.errors]
    for upload in uploads:      # while the server is down: nothing ran ahead of the client
        assert upload.acked <= (server.upload_dir / upload_id(upload.url)).stat().st_size <= upload.sent
    assert any(upload.sent < SIZE for upload in uploads), "every upload finished before the kill"

    server.restart()
    with ThreadPoolExecutor(UPLOADS) as pool:
        list(pool.map(lambda upload: resume_after_restart(upload, server.upload_dir), uploads))
    for upload in uploads:
        assert upload.acked <= upload.after_restart <= upload.sent, (upload.acked, upload.after_restart, upload.sent)
        assert upload.after_restart == upload.size_after_restart
        response = requests.head(upload.url, headers=TUS, timeout=TIMEOUT)
        assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(SIZE)
        stored = (server.upload_dir / upload_id(upload.url)).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(upload.payload).hexdigest()
    assert any(0 < upload.after_restart < SIZE for upload in uploads), "no upload was cut mid-way"


def test_kill_9_during_50_uploads_then_resume(start_group_server: StartGroupServer) -> None:
    run_crash_and_recover(start_group_server(), seed=6_2)


@pytest.mark.parametrize("fsync", ["never", "every-patch"])
def test_kill_9_with_fsync_modes(start_group_server: StartGroupServer, fsync: str) -> None:
    run_crash_and_recover(start_group_server("--fsync", fsync), seed=6_3)


def test_kill_9_with_bodies_spliced_through_the_page_cache(start_group_server: StartGroupServer) -> None:
    """--direct-io off: large bodies take the splice path instead of O_DIRECT writes."""
    run_crash_and_recover(start_group_server("--direct-io", "off"), seed=6_5)


def test_kill_9_of_supervisor_and_workers_then_resume(start_group_server: StartGroupServer) -> None:
    server = start_group_server("--workers", "2")
    assert wait_until(lambda: len(server.group_members()) == 3, 10), server.group_members()
    run_crash_and_recover(server, seed=6_4)
    assert wait_until(lambda: len(server.group_members()) == 3, 10), "the restarted server has no workers"
