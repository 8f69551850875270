"""The six scenarios. Each run() times only the transfer; verify() checks the result afterwards.

A run gets a server whose upload directory holds nothing but what prepare() left for it, and
returns what was moved, the wall time and the load generator's CPU time for the timed part.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .loadgen import (
    Connection,
    CpuClock,
    ProtocolError,
    SourceFile,
    create,
    file_sha256,
    head_offset,
    patch,
)
from .servers import RunningServer, ServerSpec

MB_PER_S = "MB/s"
UPLOADS_PER_S = "uploads/s"


@dataclass(frozen=True)
class Sizes:
    size: int                   # scenarios 1, 2, 5, 6: one upload of this size
    chunk: int                  # scenarios 2 and 6: PATCH size
    concurrency: int            # scenarios 3 and 4: parallel connections
    each_size: int              # scenario 3: size of each concurrent upload
    small_count: int            # scenario 4: number of small uploads
    small_size: int             # scenario 4: size of each small upload
    sha256: bool = True         # scenario 1: compare the stored file's SHA-256 with the source

    @property
    def source_size(self) -> int:
        return max(self.size, self.each_size, self.small_size, self.chunk)


@dataclass
class Timed:
    """What one timed run moved and what it cost the load generator."""

    wall: float
    loadgen_cpu: float
    nbytes: int
    uploads: int
    paths: list[str] = field(default_factory=list)


Runner = Callable[[RunningServer, SourceFile, Sizes], Timed]
Verifier = Callable[[RunningServer, SourceFile, Sizes, Timed], str]
Preparer = Callable[[RunningServer, SourceFile, Sizes], None]
RowChooser = Callable[[list[ServerSpec], list[str]], list[ServerSpec]]     # (common rows, notes)


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    unit: str
    run: Runner
    verify: Verifier
    prepare: Preparer | None = None
    needs: str | None = None            # tus extension the server must announce in OPTIONS
    servers: RowChooser | None = None   # rows of its own, made from the common ones (scenarios 7, 8)

    def missing(self, server: RunningServer) -> str | None:
        """Why the server cannot run this scenario, or None."""
        if self.needs == "checksum" and ("checksum" not in server.extensions
                                         or "sha1" not in server.checksum_algorithms):
            return "no sha1 checksum in OPTIONS"
        return None

    def keep(self, server: RunningServer) -> set[str]:
        """Upload ids that cleaning between runs must leave alone."""
        return {path.rstrip("/").rsplit("/", 1)[-1] for path in server.prepared.values()}


def human(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def build(sizes: Sizes) -> list[Scenario]:
    size, chunk = human(sizes.size), human(sizes.chunk)
    return [
        Scenario(1, f"one {size} upload in a single PATCH", MB_PER_S, single_patch, verify_single),
        Scenario(2, f"{size} in {chunk} PATCHes on one connection", MB_PER_S, chunked, verify_offsets),
        Scenario(3, f"{sizes.concurrency} concurrent uploads of {human(sizes.each_size)}", MB_PER_S,
                 concurrent, verify_offsets),
        Scenario(4, f"{sizes.small_count} small uploads ({human(sizes.small_size)} POST + HEAD), "
                    f"{sizes.concurrency} at a time", UPLOADS_PER_S, small_uploads, verified_by_head),
        Scenario(5, f"GET of a finished {size} upload", MB_PER_S, download, verified_by_length,
                 prepare=prepare_download),
        Scenario(6, f"{size} in {chunk} PATCHes with sha1 Upload-Checksum", MB_PER_S,
                 chunked_checksum, verify_offsets, needs="checksum"),
    ]


# -- helpers ----------------------------------------------------------------------------------------

def connect(server: RunningServer) -> Connection:
    return Connection(server.host, server.port)


def timed(work: Callable[[], tuple[int, int, list[str]]]) -> Timed:
    start = CpuClock.now()
    nbytes, uploads, paths = work()
    end = CpuClock.now()
    return Timed(end.wall - start.wall, end.cpu - start.cpu, nbytes, uploads, paths)


def in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run work(0) ... work(count - 1) in parallel threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as error:      # noqa: BLE001 - reported to the caller below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def upload_whole(conn: Connection, server: RunningServer, source: SourceFile, size: int) -> str:
    path = create(conn, server.collection, size)
    patch(conn, path, 0, source.slice(0, size))
    return path


def upload_chunked(conn: Connection, server: RunningServer, source: SourceFile, sizes: Sizes,
                   checksum: bool) -> str:
    path = create(conn, server.collection, sizes.size)
    for offset in range(0, sizes.size, sizes.chunk):
        count = min(sizes.chunk, sizes.size - offset)
        header = source.sha1_header(offset, count) if checksum else None
        patch(conn, path, offset, source.slice(offset, count), header)
    return path


# -- scenarios ------------------------------------------------------------------------------------

def single_patch(server: RunningServer, source: SourceFile, sizes: Sizes) -> Timed:
    with connect(server) as conn:
        return timed(lambda: (sizes.size, 1, [upload_whole(conn, server, source, sizes.size)]))


def chunked(server: RunningServer, source: SourceFile, sizes: Sizes) -> Timed:
    with connect(server) as conn:
        return timed(lambda: (sizes.size, 1, [upload_chunked(conn, server, source, sizes, False)]))


def chunked_checksum(server: RunningServer, source: SourceFile, sizes: Sizes) -> Timed:
    for offset in range(0, sizes.size, sizes.chunk):           # digests outside the timed part
        source.sha1_header(offset, min(sizes.chunk, sizes.size - offset))
    with connect(server) as conn:
        return timed(lambda: (sizes.size, 1, [upload_chunked(conn, server, source, sizes, True)]))


def concurrent(server: RunningServer, source: SourceFile, sizes: Sizes) -> Timed:
    paths = [""] * sizes.concurrency

    def one(index: int) -> None:
        with connect(server) as conn:
            paths[index] = upload_whole(conn, server, source, sizes.each_size)

    def work() -> tuple[int, int, list[str]]:
        in_threads(sizes.concurrency, one)
        return sizes.each_size * sizes.concurrency, sizes.concurrency, paths

    return timed(work)


def small_uploads(server: RunningServer, source: SourceFile, sizes: Sizes) -> Timed:
    counter = itertools.count()
    spread = source.size - sizes.small_size + 1

    def worker(_: int) -> None:
        with connect(server) as conn:
            while (index := next(counter)) < sizes.small_count:
                data = source.slice(index * sizes.small_size % spread, sizes.small_size)
                path = create(conn, server.collection, sizes.small_size, data)
                if head_offset(conn, path) != sizes.small_size:
                    raise ProtocolError(f"HEAD {path}: offset is not {sizes.small_size}")

    def work() -> tuple[int, int, list[str]]:
        in_threads(min(sizes.concurrency, sizes.small_count), worker)
        return sizes.small_count * sizes.small_size, sizes.small_count, []

    return timed(work)


def prepare_download(server: RunningServer, source: SourceFile, sizes: Sizes) -> None:
    """Upload the file that scenario 5 downloads, and download it once (warm-up)."""
    with connect(server) as conn:
        path = server.prepared["download"] = upload_whole(conn, server, source, sizes.size)
        conn.download(path)[0].expect(200)


def download(server: RunningServer, source: SourceFile, sizes: Sizes) -> Timed:
    path = server.prepared["download"]

    def work() -> tuple[int, int, list[str]]:
        reply, received = conn.download(path)
        reply.expect(200)
        if received != sizes.size:
            raise ProtocolError(f"GET {path} returned {received} bytes, not {sizes.size}")
        return received, 1, [path]

    with connect(server) as conn:
        return timed(work)


# -- verification (after the timed part) --------------------------------------------------------------

def verify_offsets(server: RunningServer, source: SourceFile, sizes: Sizes, run: Timed) -> str:
    expected = run.nbytes // len(run.paths)
    with connect(server) as conn:
        for path in run.paths:
            offset = head_offset(conn, path)
            if offset != expected:
                raise ProtocolError(f"HEAD {path}: offset {offset}, expected {expected}")
    return "HEAD offset"


def verify_single(server: RunningServer, source: SourceFile, sizes: Sizes, run: Timed) -> str:
    checked = verify_offsets(server, source, sizes, run)
    stored = server.stored_file(run.paths[0])
    if not sizes.sha256 or not stored.is_file():
        return checked
    if file_sha256(stored) != source.sha256(sizes.size):
        raise ProtocolError(f"{stored}: SHA-256 differs from the bytes sent")
    return checked + " + SHA-256"


def verified_by_head(server: RunningServer, source: SourceFile, sizes: Sizes, run: Timed) -> str:
    return "HEAD offset (in the run)"


def verified_by_length(server: RunningServer, source: SourceFile, sizes: Sizes, run: Timed) -> str:
    return "body length (in the run)"


def warm_up(server: RunningServer, source: SourceFile, sizes: Sizes) -> None:
    """A few small uploads and one chunk-sized upload, to wake every upload code path."""
    small = min(sizes.small_size, source.size)
    with connect(server) as conn:
        for _ in range(8):
            head_offset(conn, create(conn, server.collection, small, source.slice(0, small)))
        upload_whole(conn, server, source, min(sizes.chunk, source.size))
