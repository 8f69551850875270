"""Large bodies take one of two ways to the disk: read into aligned buffers and written with
O_DIRECT (--direct-io auto, where the upload directory takes it), or spliced through the page
cache (--direct-io off). Both must store every byte where it belongs, whatever the offsets."""

from __future__ import annotations

import base64
import hashlib
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.server_process import ServerProcess
from tests.integration.rawhttp import TIMEOUT, TUS, create, offset_of, patch, upload_id

KiB = 1024
MiB = 1024 * KiB
# Bodies below, at and above the 256 KiB splice threshold, starting on and off page boundaries.
CHUNKS = [300 * KiB + 1, 4 * KiB - 1, 2 * MiB + 5, 256 * KiB, 1, 3 * MiB, 100 * KiB, 777 * KiB + 13]


@pytest.fixture(scope="module", params=["auto", "off"], ids=["direct-io", "splice"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("paths") / "data", "--direct-io", request.param).start()
    yield process
    process.kill()


def sha1_header(body: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "sha1"])
def test_patches_of_every_size_and_alignment_store_the_exact_bytes(server: ServerProcess, checksum: bool) -> None:
    payload = random.Random(f"paths-{checksum}").randbytes(sum(CHUNKS))
    url = create(server.url, len(payload))
    offset = 0
    for size in CHUNKS:
        body = payload[offset:offset + size]
        headers = {"Upload-Checksum": sha1_header(body)} if checksum else {}
        response = patch(url, offset, body, **headers)
        assert response.status_code == 204, (response.status_code, response.text)
        offset += size
        assert int(response.headers["Upload-Offset"]) == offset == offset_of(url)
    stored = (server.upload_dir / upload_id(url)).read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(payload).digest()
    download = requests.get(url, timeout=TIMEOUT)
    assert download.status_code == 200 and download.content == payload


def test_a_checksum_mismatch_leaves_no_byte_behind(server: ServerProcess) -> None:
    payload = random.Random("mismatch").randbytes(2 * MiB + 99)
    url = create(server.url, 2 * len(payload))
    assert patch(url, 0, payload[:12_345]).status_code == 204
    wrong = sha1_header(b"something else")
    response = patch(url, 12_345, payload, **{"Upload-Checksum": wrong})
    assert response.status_code == 460, (response.status_code, response.text)
    assert offset_of(url) == 12_345
    assert (server.upload_dir / upload_id(url)).read_bytes() == payload[:12_345]


def test_the_log_says_which_way_large_bodies_go_and_why(server: ServerProcess) -> None:
    lines = [line for line in server.log if "direct I/O (O_DIRECT) for large bodies" in line]
    assert lines, "".join(server.log)
    if server.args[server.args.index("--direct-io") + 1] == "off":
        assert lines[0].rstrip().endswith(": off (--direct-io off)")
    else:
        assert re.search(r": (on|off) \(.*file system.*\)$", lines[0].rstrip()), lines[0]


def test_creation_with_upload_of_a_large_body(server: ServerProcess) -> None:
    payload = random.Random("cwu").randbytes(MiB + 3)
    response = requests.post(server.url, data=payload, timeout=TIMEOUT, headers={
        **TUS, "Upload-Length": str(len(payload)), "Content-Type": "application/offset+octet-stream"})
    assert response.status_code == 201 and int(response.headers["Upload-Offset"]) == len(payload)
    stored = Path(server.upload_dir / upload_id(response.headers["Location"])).read_bytes()
    assert stored == payload
