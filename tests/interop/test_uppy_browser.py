"""Uppy (@uppy/core 6.3.1 + @uppy/tus 6.0.0, i.e. tus-js-client 4.3.1's browser build) in headless
Chromium against a real tusfast process.

The page is served from another origin than tusfast (see browser_support.py), so every upload goes
through real CORS preflights and the browser only lets Uppy read the headers tusfast exposes. The
stored bytes are compared with the source files by sha256; the server's JSON access log shows what
the browser really sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartServer
from tests.interop.browser_support import (
    DIST_DIR,
    StaticSite,
    access_records,
    install_and_build,
    patch_bytes,
    run_driver,
)
from tests.interop.helpers import (
    MiB,
    assert_complete,
    assert_stored_equals,
    stored_file,
    upload_id,
)
from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.interop

CHUNK = 256 * 1024


@pytest.fixture(scope="session")
def uppy_site() -> Iterator[StaticSite]:
    """npm ci + esbuild once, then the page's origin for the whole session."""
    install_and_build()
    static = StaticSite(DIST_DIR).start()
    yield static
    static.stop()


def json_logging_server(start_server: StartServer, *flags: str) -> ServerProcess:
    return start_server("--log-format", "json", *flags)


def read_info(server: ServerProcess, ident: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((Path(server.upload_dir) / f"{ident}.info").read_text())
    return info


def url_by_name(successful: list[dict[str, Any]]) -> dict[str, str]:
    return {entry["name"]: entry["uploadURL"] for entry in successful}


def test_single_upload_in_chunks(start_server: StartServer, uppy_site: StaticSite, source_factory: Any) -> None:
    server = json_logging_server(start_server)
    source = source_factory(3 * MiB + 12345, "single upload.bin")
    size = source.stat().st_size
    session = run_driver(uppy_site, [source], endpoint=server.url, chunkSize=CHUNK).sessions[0]

    assert session.failed == [] and len(session.successful) == 1, session.outcome
    url = session.successful[0]["uploadURL"]
    assert_stored_equals(server, url, source)
    assert_complete(url, size)
    assert read_info(server, upload_id(server, url))["MetaData"]["filename"] == "single upload.bin"

    # The browser let Uppy read Upload-Offset on every reply: it is an exposed header.
    expected = [min(size, (i + 1) * CHUNK) for i in range(-(-size // CHUNK))]
    assert [int(r["uploadOffset"]) for r in session.responses("PATCH")] == expected
    records = access_records(server)
    patches = [r for r in records if r["method"] == "PATCH"]
    assert [(r["status"], r["bytes_in"]) for r in patches] == [
        (204, end - start) for start, end in zip([0, *expected], expected)]


def test_several_files_upload_concurrently(start_server: StartServer, uppy_site: StaticSite,
                                           source_factory: Any) -> None:
    server = json_logging_server(start_server)
    sources = [source_factory(n * MiB + n, f"file-{n}.bin") for n in (1, 2, 3)]
    session = run_driver(uppy_site, sources, endpoint=server.url, chunkSize=CHUNK, limit=3).sessions[0]

    assert session.failed == [] and len(session.successful) == 3, session.outcome
    urls = url_by_name(session.successful)
    for source in sources:
        assert_stored_equals(server, urls[source.name], source)
    assert session.snapshot["maxActive"] == 3, "Uppy never had all three files in flight"

    # Server side: all three uploads were created before any of them received its last chunk.
    records = access_records(server)
    created = [i for i, r in enumerate(records) if r["method"] == "POST" and r["status"] == 201]
    assert len(created) == 3
    last_patch = {r["upload_id"]: i for i, r in enumerate(records) if r["method"] == "PATCH"}
    assert set(last_patch) == {upload_id(server, url) for url in urls.values()}
    assert max(created) < min(last_patch.values()), [(r["method"], r["upload_id"]) for r in records]


def test_parallel_uploads_are_concatenated(start_server: StartServer, uppy_site: StaticSite,
                                           source_factory: Any) -> None:
    server = json_logging_server(start_server)
    sources = [source_factory(2 * MiB + 5, "split-a.bin"), source_factory(3 * MiB + 7, "split-b.bin")]
    session = run_driver(uppy_site, sources, endpoint=server.url, chunkSize=CHUNK, limit=2,
                         parallelUploads=2).sessions[0]

    assert session.failed == [] and len(session.successful) == 2, session.outcome
    urls = url_by_name(session.successful)
    for source in sources:
        final = upload_id(server, urls[source.name])
        assert_stored_equals(server, urls[source.name], source)
        info = read_info(server, final)
        assert info["IsFinal"] is True and len(info["PartialUploads"]) == 2, info
        partial_sizes = [stored_file(server, server.url + p).stat().st_size for p in info["PartialUploads"]]
        assert all(read_info(server, p)["IsPartial"] for p in info["PartialUploads"])
        assert sum(partial_sizes) == source.stat().st_size and min(partial_sizes) > 0
    concat = [r["uploadConcat"] for r in session.requests("POST")]
    assert concat.count("partial") == 4 and sum(c.startswith("final;") for c in concat) == 2, concat
    records = access_records(server)
    assert sum(r["method"] == "POST" and r["status"] == 201 for r in records) == 6


def test_pause_and_resume(start_server: StartServer, uppy_site: StaticSite, source_factory: Any) -> None:
    server = json_logging_server(start_server)
    source = source_factory(4 * MiB, "paused.bin")
    size = source.stat().st_size
    result = run_driver(uppy_site, [source], "pause", endpoint=server.url, chunkSize=CHUNK, pauseAtBytes=MiB)
    session, probe = result.sessions[0], result.pause_probe

    paused_at = probe["paused"]["offset"]
    assert 0 < paused_at < size
    assert probe["first"] == probe["second"] == {"status": 200, "offset": paused_at}, probe
    assert probe["requestsWhilePaused"] == 0, "the page sent requests while paused"
    assert session.failed == [] and len(session.successful) == 1, session.outcome
    url = session.successful[0]["uploadURL"]
    assert url == probe["url"]
    assert_stored_equals(server, url, source)

    # After the resume tus-js-client asked for the offset, then went on from there.
    sent = [(r["method"], r["uploadOffset"]) for r in session.snapshot["requests"]]
    resumed = sent.index(("HEAD", None))
    assert sent[resumed + 1] == ("PATCH", str(paused_at)), sent

    ident = upload_id(server, url)
    records = [r for r in access_records(server) if r["upload_id"] == ident]
    heads = [i for i, r in enumerate(records) if r["method"] == "HEAD"]
    assert len(heads) == 3, records                  # two probes while paused, one after resume
    assert not any(r["method"] == "PATCH" for r in records[heads[0]:heads[1]])
    assert sum(r["method"] == "POST" for r in records) == 1
    assert patch_bytes(records[:heads[0]], ident) == paused_at
    assert patch_bytes(records, ident) == size, "some bytes were sent twice"


def test_page_reload_resumes_from_the_stored_url(start_server: StartServer, uppy_site: StaticSite,
                                                 source_factory: Any) -> None:
    server = json_logging_server(start_server)
    source = source_factory(4 * MiB + 321, "reloaded.bin")
    size = source.stat().st_size
    # The page waits 100 ms before each PATCH so that the reload lands mid-upload: after the
    # 1 MiB notice, the driver has more than a second to reload.
    result = run_driver(uppy_site, [source], "reload", endpoint=server.url, chunkSize=CHUNK,
                        notifyAtBytes=MiB, requestDelayMs=100)
    first, second = result.sessions

    assert first.outcome is None
    assert len(first.snapshot["storedKeys"]) == 1, "tus-js-client stored no URL in localStorage"
    assert second.failed == [] and len(second.successful) == 1, second.outcome
    url = second.successful[0]["uploadURL"]
    assert any("Resuming upload" in line for line in second.snapshot["logs"]), second.snapshot["logs"]
    assert second.requests("POST") == [], "the second page created a new upload"
    head_reply = second.responses("HEAD")[0]
    assert head_reply["url"] == url
    resumed_at = int(head_reply["uploadOffset"])
    assert MiB <= resumed_at < size
    assert second.requests("PATCH")[0]["uploadOffset"] == str(resumed_at)
    assert_stored_equals(server, url, source)

    # Server side: one creation; before the second page's HEAD the server had taken exactly
    # `resumed_at` bytes, after it only the rest arrived.
    ident = upload_id(server, url)
    records = [r for r in access_records(server) if r["upload_id"] == ident]
    assert sum(r["method"] == "POST" for r in records) == 1
    split = next(i for i, r in enumerate(records) if r["method"] == "HEAD")
    assert patch_bytes(records[:split], ident) == resumed_at
    assert patch_bytes(records[split:], ident) == size - resumed_at


def test_preflights_from_the_page_origin(start_server: StartServer, uppy_site: StaticSite,
                                         source_factory: Any) -> None:
    server = json_logging_server(start_server, "--cors-origin", uppy_site.origin)
    source = source_factory(MiB + 1, "preflighted.bin")
    session = run_driver(uppy_site, [source], endpoint=server.url, chunkSize=CHUNK).sessions[0]

    assert session.failed == [] and len(session.successful) == 1, session.outcome
    url = session.successful[0]["uploadURL"]
    assert_stored_equals(server, url, source)
    records = access_records(server)
    calls = [(r["method"], r["path"], r["status"]) for r in records]
    upload_path = "/files/" + upload_id(server, url)
    # Chromium asked before the POST and before the first PATCH (a custom-header request to a
    # new URL), and only the page's origin is allowed: the answers let it go on.
    assert calls.index(("OPTIONS", "/files/", 204)) < calls.index(("POST", "/files/", 201)), calls
    assert calls.index(("OPTIONS", upload_path, 204)) < calls.index(("PATCH", upload_path, 204)), calls


def test_preflight_refused_for_another_origin(start_server: StartServer, uppy_site: StaticSite,
                                              source_factory: Any) -> None:
    server = json_logging_server(start_server, "--cors-origin", "http://127.0.0.1:9")
    source = source_factory(64 * 1024, "refused.bin")
    result = run_driver(uppy_site, [source], endpoint=server.url, retryDelays=None, allow_console_errors=True)
    session = result.sessions[0]

    assert session.successful == [] and len(session.failed) == 1, session.outcome
    assert any("CORS" in message for message in result.raw["console"]), result.raw["console"]
    calls = [(r["method"], r["path"]) for r in access_records(server)]
    assert ("OPTIONS", "/files/") in calls
    assert "POST" not in {method for method, _ in calls}, calls
