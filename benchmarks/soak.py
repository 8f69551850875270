"""python -m benchmarks.soak: hundreds of misbehaving tus clients against one server for minutes.

Starts `tusfast serve` (or uses --url), then runs --clients asyncio clients on raw HTTP/1.1 for
--duration. Each client loops: create an upload of a random size (some with deferred length, some
with data in the POST, some with Upload-Checksum), PATCH it in random pieces, cut connections
mid-body (FIN or RST) and resume via HEAD, sometimes DELETE, and check every finished upload
byte for byte (GET, or the stored file with --disable-download). Meanwhile it samples the
server's RSS and open file descriptors from /proc (summed over its worker processes).

Writes a Markdown report to stdout and soak.json/soak.md to --out; the exit status is 1 when an
invariant fails: no lost or corrupted upload; no 5xx, neither received nor in the started server's
access log (it runs at --log-level info, so replies to clients that had gone count too); no other
unexpected status, dropped connection or timeout; RSS flat; no descriptor left open once the
server idles; the server alive with no ERROR line or traceback in its log.

    python -m benchmarks.soak                               # 200 clients, 5 minutes
    python -m benchmarks.soak --clients 200 --duration 3m --workers 2
    python -m benchmarks.soak --server-arg=--fsync=never --server-arg=--disable-download
    python -m benchmarks.soak --url http://127.0.0.1:1080/files/ --pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tusfast.config import parse_duration
from tusfast.http import splice

from .__main__ import parse_size
from .loadgen import path_of
from .servers import HOST, RunningServer, ServerError, ServerSpec, process_tree

MIB = 1 << 20
REQUEST_TIMEOUT = 60.0          # one request (head, body and reply) may take this long
STOP_GRACE = 60.0               # after --duration, clients get this long to finish their upload
RSS_SLACK = 8 * MIB             # absolute slack of the RSS verdict, on top of --rss-tolerance
# tusfast's body threads (at most 32 a process, started as concurrency peaks, kept) each keep a
# read buffer: RSS that comes with more threads is allowed at this much a thread.
THREAD_RSS = splice.BUFFER_SIZE + MIB
EXAMPLES = 20                   # problem descriptions kept for the report
SEND_BLOCK = 256 << 10          # bodies are written in pieces of this size
CHECKSUMS = ("sha256", "sha1", "md5", "sha512", "crc32")
WARM_UP = (8, 4)                # clients and uploads each, before the baseline is taken
NEWER_REQUEST = b"interrupted by a newer request"     # tusfast's 400 for a PATCH another one stopped

# Per PATCH: chance of cutting the connection, of a deliberately wrong checksum, of giving up
# with a DELETE. Per upload: chance of deferring the length, of data in the POST, of checksums,
# of a DELETE after the upload was verified (which also keeps the disk from filling up).
P_INTERRUPT = 0.12
P_BAD_CHECKSUM = 0.05
P_DELETE_MIDWAY = 0.02
P_DEFER = 0.25
P_WITH_UPLOAD = 0.3
P_CHECKSUM = 0.3
P_DELETE_AFTER = 0.5
P_DECLARE = 0.3                 # deferred length: chance to declare it on a PATCH before the last


# -- command line -------------------------------------------------------------------------------------

def duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r}")
    return seconds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200, help="concurrent clients (200)")
    p.add_argument("--duration", type=duration, default=300.0, help="how long clients start uploads (5m)")
    p.add_argument("--max-size", type=parse_size, default=2 * MIB,
                   help="largest upload; sizes are log-uniform up to it (2M)")
    p.add_argument("--workers", type=int, default=1, help="--workers of the started server (1)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `tusfast serve`, repeatable: --server-arg=--fsync=never")
    p.add_argument("--url", help="collection URL of a running server instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS and descriptors")
    p.add_argument("--upload-dir", type=Path,
                   help="with --url: its upload directory, to check uploads when GET is disabled")
    p.add_argument("--sample-interval", type=duration, default=2.0, help="/proc sampling period (2s)")
    p.add_argument("--settle", type=duration, default=20.0,
                   help="after the clients stop, wait at most this long for descriptors to close (20s)")
    p.add_argument("--rss-tolerance", type=float, default=0.2,
                   help="flat RSS: last-quarter median <= first-quarter median * (1 + this) + 8 MiB "
                        "+ 5 MiB per thread the server added meanwhile (0.2)")
    p.add_argument("--fd-slack", type=int, default=0,
                   help="descriptors the idle server may hold beyond its count before the run (0)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, reported)")
    p.add_argument("--out", type=Path, default=Path("soak-results"), help="where soak.json and soak.md go")
    p.add_argument("--tmp-dir", type=Path, default=None, help="parent of the started server's upload dir")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.clients < 1 or args.workers < 1:
        parser().error("--clients and --workers must be at least 1")
    if args.url and urlsplit(args.url).scheme != "http":
        parser().error("--url must be an http:// collection URL")
    if args.url and (args.workers != 1 or args.server_arg or args.tmp_dir):
        parser().error("--workers, --server-arg and --tmp-dir are for the server the soak starts, not --url")
    if not args.url and (args.pid or args.upload_dir):
        parser().error("--pid and --upload-dir go with --url (a started server is measured anyway)")
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    return args


# -- /proc: RSS and open descriptors of the server's process tree ------------------------------------

@dataclass(frozen=True)
class ProcSample:
    """The server's process tree at one moment; counts are summed over its processes."""

    at: float                   # seconds since the clients started
    rss: int                    # VmRSS bytes
    fds: int                    # entries of /proc/<pid>/fd
    pipes: int                  # of which pipes
    threads: int
    processes: int


def _vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _fd_targets(pid: int) -> list[str]:
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):      # closed between listdir and readlink
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    return targets


def sample_tree(root: int, at: float) -> ProcSample:
    rss = fds = pipes = threads = count = 0
    for pid in process_tree(root):
        try:
            rss += _vm_rss(pid)
            targets = _fd_targets(pid)
            threads += len(os.listdir(f"/proc/{pid}/task"))
        except (OSError, ValueError):
            continue                            # the process ended meanwhile
        fds += len(targets)
        pipes += sum(target.startswith("pipe:") for target in targets)
        count += 1
    return ProcSample(at, rss, fds, pipes, threads, count)


def fd_leak(before: ProcSample, after: ProcSample, slack: int) -> int:
    """Descriptors the idle server holds beyond its count before the clients (<= 0: none).

    A pipe pair may come with each new thread: tusfast's splice threads keep one for reuse
    (at most 32 threads a process), so pipes are allowed to grow by two per thread started.
    """
    others = (after.fds - after.pipes) - (before.fds - before.pipes)
    pipes = after.pipes - before.pipes - 2 * max(0, after.threads - before.threads)
    return max(others, 0) + max(pipes, 0) - slack


# -- statistics -------------------------------------------------------------------------------------

@dataclass
class Stats:
    created: int = 0
    finished: int = 0           # every byte acknowledged and the length known
    verified: int = 0           # downloaded (or read from disk) and compared
    interruptions: int = 0      # connections cut by a client mid-request
    interrupted_uploads: int = 0
    deleted: int = 0
    abandoned: int = 0          # given up after an unexpected answer
    bad_checksums: int = 0      # deliberately wrong Upload-Checksum (must be 460)
    bytes_sent: int = 0         # request body bytes written to sockets
    bytes_finished: int = 0
    bytes_verified: int = 0
    statuses: Counter[str] = field(default_factory=Counter)      # "PATCH 204"
    unexpected: Counter[str] = field(default_factory=Counter)    # statuses no rule allows
    transport: Counter[str] = field(default_factory=Counter)     # dropped connections, timeouts
    lost: int = 0
    corrupt: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{time.strftime('%H:%M:%S')} {text}")

    @property
    def server_errors(self) -> int:
        return sum(count for key, count in self.statuses.items() if key.split()[1].startswith("5"))


class Abandon(Exception):
    """The current upload cannot go on (the reason is already counted)."""


# -- a raw HTTP/1.1 client on asyncio streams ---------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]     # lower-case names
    body: bytes = b""
    length: int = 0             # body bytes received
    sha256: str = ""            # hex digest of the body (GET only)

    def offset(self) -> int | None:
        value = self.headers.get("upload-offset", "")
        return int(value) if value.isdigit() else None


class Conn:
    """One keep-alive connection, opened on first use and again after a close."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.phase = ""             # where a request stands, for the report of one that failed

    def where(self) -> str:
        """The phase and the local port, to find a stuck request in the server's view (ss -tn)."""
        name = self._writer.get_extra_info("sockname") if self._writer is not None else None
        return f"while {self.phase}" + (f", local port {name[1]}" if isinstance(name, tuple) else "")

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self.phase = "connecting"
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    def close(self, reset: bool = False) -> None:
        """Drop the connection; reset=True sends an RST instead of a FIN."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        if reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()

    def _head(self, method: str, path: str, headers: dict[str, str], length: int | None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Tus-Resumable: 1.0.0",
                 *(f"{name}: {value}" for name, value in headers.items())]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, method: str, path: str, headers: dict[str, str], body: memoryview | None,
                   upto: int | None = None) -> int:
        """Write the request; with upto, only that many body bytes. Returns body bytes written."""
        _, writer = await self._open()
        self.phase = "sending"
        writer.write(self._head(method, path, headers, None if body is None else len(body)))
        end = len(body) if body is not None and upto is None else (upto or 0)
        for start in range(0, end, SEND_BLOCK):
            assert body is not None
            writer.write(body[start:min(end, start + SEND_BLOCK)])
            await writer.drain()
        await writer.drain()
        return end

    async def receive(self, method: str) -> Reply:
        reader, _ = await self._open()
        self.phase = "waiting for the reply"
        status, headers = await self._read_head(reader)
        while 100 <= status < 200:
            status, headers = await self._read_head(reader)
        reply = Reply(status, headers)
        digest = hashlib.sha256() if method == "GET" else None
        if method != "HEAD" and status not in (204, 304):
            await self._read_body(reader, reply, digest)
        if digest is not None:
            reply.sha256 = digest.hexdigest()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ConnectionError(f"bad status line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def _read_body(self, reader: asyncio.StreamReader, reply: Reply,
                         digest: Any) -> None:
        keep: list[bytes] = []

        def take(data: bytes) -> None:
            reply.length += len(data)
            if digest is not None:
                digest.update(data)
            elif len(keep) < 4:
                keep.append(data)       # error texts for the report; nothing else is read

        if "chunked" in reply.headers.get("transfer-encoding", "").lower():
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                take((await reader.readexactly(size + 2))[:-2])
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass                    # trailers
        elif "content-length" in reply.headers:
            remaining = int(reply.headers["content-length"])
            while remaining:
                data = await reader.read(min(remaining, SEND_BLOCK))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                take(data)
        else:
            while data := await reader.read(SEND_BLOCK):
                take(data)
            self.close()
        reply.body = b"".join(keep)[:300]


# -- one client -------------------------------------------------------------------------------------

@dataclass
class Target:
    host: str
    port: int
    collection: str
    extensions: set[str]
    algorithms: list[str]       # checksum algorithms both sides know
    max_size: int
    upload_dir: Path | None     # to read stored files when GET is disabled
    downloads: bool = True


@dataclass
class Upload:
    data: memoryview
    deferred: bool
    checksum: str | None
    path: str = ""
    acked: int = 0              # highest offset the server has reported
    high: int = 0               # most bytes that may have reached the server (cut requests too)
    ends: set[int] = field(default_factory=set)     # where whole pieces that were sent end
    declared: bool = True       # the server knows the length
    cut: bool = False           # a request of this upload was cut (it may reach the server late)

    @property
    def size(self) -> int:
        return len(self.data)


def checksum_header(algorithm: str, data: memoryview) -> str:
    if algorithm == "crc32":
        raw = zlib.crc32(data).to_bytes(4, "big")
    else:
        raw = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(raw).decode('ascii')}"


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    """An integer in [low, high], small values as likely per decade as large ones."""
    if high <= low:
        return low
    return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))


class Client:
    def __init__(self, target: Target, pool: bytes, stats: Stats, seed: int) -> None:
        self.target, self.pool, self.stats = target, memoryview(pool), stats
        self.rng = random.Random(seed)
        self.conn = Conn(target.host, target.port)

    async def run(self, deadline: float) -> None:
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(Abandon):
                    await self.one_upload()
        finally:
            self.conn.close()

    # -- requests --------------------------------------------------------------------------------

    async def request(self, method: str, path: str, headers: dict[str, str], body: memoryview | None,
                      allowed: Iterable[int]) -> Reply:
        """One request and its reply; an answer outside allowed, or a dropped connection, abandons."""
        try:
            self.stats.bytes_sent += len(body) if body is not None else 0
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self.conn.send(method, path, headers, body)
                reply = await self.conn.receive(method)
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, TimeoutError, ValueError) as error:
            where = self.conn.where()
            self.conn.close()
            self.stats.transport[f"{method} {type(error).__name__}"] += 1
            self.stats.note(f"{method} {path}: {type(error).__name__} {where}: {error}")
            raise Abandon from None
        self.stats.statuses[f"{method} {reply.status}"] += 1
        if reply.status not in allowed:
            self.unexpected(method, path, reply)
        return reply

    def unexpected(self, method: str, path: str, reply: Reply) -> None:
        self.stats.unexpected[f"{method} {reply.status}"] += 1
        self.stats.note(f"{method} {path} -> {reply.status} {reply.body.decode('latin-1')!r}")
        self.stats.abandoned += 1
        raise Abandon

    async def patch_after_cut(self, upload: Upload, headers: dict[str, str], body: memoryview,
                              allowed: tuple[int, ...]) -> Reply:
        """A PATCH, which may meet a cut request of ours that reached the server only now, even
        after later requests (409; 423; or 400 when that request, newer to the server, stopped
        this one). Such answers only make us resume; the offset and content checks stay strict."""
        if not upload.cut:
            return await self.request("PATCH", upload.path, headers, body, allowed)
        reply = await self.request("PATCH", upload.path, headers, body, (*allowed, 400, 409, 423))
        if reply.status == 400 and NEWER_REQUEST not in reply.body:
            self.unexpected("PATCH", upload.path, reply)
        return reply

    async def cut(self, path: str, headers: dict[str, str], body: memoryview) -> int:
        """Send a PATCH and drop the connection (FIN or RST) somewhere in the body or right after
        it; returns how many body bytes may have reached the server."""
        upto = self.rng.randrange(len(body) + 1)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                self.stats.bytes_sent += await self.conn.send("PATCH", path, headers, body, upto)
        except (OSError, ConnectionError, TimeoutError) as error:
            if self.conn.phase == "connecting":     # once connected, the server may see the cut first
                self.stats.transport[f"PATCH {type(error).__name__}"] += 1
                self.stats.note(f"PATCH {path}: {type(error).__name__} {self.conn.where()}: {error}")
        self.conn.close(reset=self.rng.random() < 0.5)
        self.stats.interruptions += 1
        return upto

    # -- one upload ------------------------------------------------------------------------------

    def new_upload(self) -> Upload:
        rng, target = self.rng, self.target
        size = 0 if rng.random() < 0.02 else log_uniform(rng, 1, target.max_size)
        start = rng.randrange(len(self.pool) - size + 1)
        deferred = "creation-defer-length" in target.extensions and rng.random() < P_DEFER
        checksum = (rng.choice(target.algorithms)
                    if target.algorithms and rng.random() < P_CHECKSUM else None)
        return Upload(self.pool[start:start + size], deferred, checksum, declared=not deferred)

    async def one_upload(self) -> None:
        upload = self.new_upload()
        await self.create(upload)
        while upload.acked < upload.size or not upload.declared:
            if "termination" in self.target.extensions and self.rng.random() < P_DELETE_MIDWAY:
                await self.delete(upload)
                return
            if upload.checksum and self.rng.random() < P_BAD_CHECKSUM:
                await self.bad_checksum(upload)
            elif upload.acked < upload.size and self.rng.random() < P_INTERRUPT:
                await self.interrupt(upload)
            else:
                await self.patch(upload)
        await self.check_finished(upload)
        if "termination" in self.target.extensions and self.rng.random() < P_DELETE_AFTER:
            await self.delete(upload)

    def piece(self, upload: Upload) -> memoryview:
        remaining = upload.size - upload.acked
        if remaining == 0:
            return upload.data[:0]          # a deferred length still to declare
        count = remaining if self.rng.random() < 0.3 else log_uniform(self.rng, 1, remaining)
        return upload.data[upload.acked:upload.acked + count]

    def patch_headers(self, upload: Upload, body: memoryview) -> dict[str, str]:
        headers = {"Upload-Offset": str(upload.acked), "Content-Type": "application/offset+octet-stream"}
        last = upload.acked + len(body) == upload.size
        if not upload.declared and (last or self.rng.random() < P_DECLARE):
            headers["Upload-Length"] = str(upload.size)
        if upload.checksum:
            headers["Upload-Checksum"] = checksum_header(upload.checksum, body)
        return headers

    async def create(self, upload: Upload) -> None:
        headers = {"Upload-Defer-Length": "1"} if upload.deferred else {"Upload-Length": str(upload.size)}
        body = None
        if "creation-with-upload" in self.target.extensions and self.rng.random() < P_WITH_UPLOAD:
            body = self.piece(upload)
            headers["Content-Type"] = "application/offset+octet-stream"
            if upload.checksum:
                headers["Upload-Checksum"] = checksum_header(upload.checksum, body)
        reply = await self.request("POST", self.target.collection, headers, body, (201,))
        location = reply.headers.get("location", "")
        if not location:
            self.problem("corrupt", "POST -> 201 without a Location")
        upload.path = path_of(location)
        self.stats.created += 1
        sent = len(body) if body is not None else 0
        offset = reply.offset()
        if offset is None and body is not None:
            self.problem("corrupt", f"POST {upload.path} with {sent} bytes: no Upload-Offset in the 201")
        if offset is not None and offset != sent:
            self.problem("lost", f"POST {upload.path} with {sent} bytes answered Upload-Offset {offset}")
        upload.acked = upload.high = sent

    async def patch(self, upload: Upload) -> None:
        body = self.piece(upload)
        headers = self.patch_headers(upload, body)
        self.sent_whole(upload, body)
        reply = await self.patch_after_cut(upload, headers, body, (204,))
        if reply.status != 204:
            await asyncio.sleep(0.05)
            await self.resume(upload)
            return
        offset = reply.offset()
        if offset != upload.acked + len(body):
            self.problem("lost" if offset is None or offset < upload.acked + len(body) else "corrupt",
                         f"PATCH {upload.path} at {upload.acked} with {len(body)} bytes -> offset {offset}")
        upload.acked += len(body)
        upload.declared = upload.declared or "Upload-Length" in headers

    async def interrupt(self, upload: Upload) -> None:
        body = self.piece(upload)
        headers = self.patch_headers(upload, body)
        reached = await self.cut(upload.path, headers, body)
        if reached == len(body):
            self.sent_whole(upload, body)
        upload.high = max(upload.high, upload.acked + reached)
        self.stats.interrupted_uploads += not upload.cut
        upload.cut = True
        await self.resume(upload)

    async def bad_checksum(self, upload: Upload) -> None:
        body = self.piece(upload)
        headers = self.patch_headers(upload, body)
        assert upload.checksum is not None
        headers["Upload-Checksum"] = checksum_header(upload.checksum, memoryview(b"not " + bytes(body)))
        headers.pop("Upload-Length", None)      # a rejected PATCH must not declare it either
        self.stats.bad_checksums += 1
        reply = await self.patch_after_cut(upload, headers, body, (460,))
        await self.resume(upload, high=upload.acked if reply.status == 460 else None)

    def sent_whole(self, upload: Upload, body: memoryview) -> None:
        upload.ends.add(upload.acked + len(body))
        upload.high = max(upload.high, upload.acked + len(body))

    async def resume(self, upload: Upload, high: int | None = None) -> None:
        """HEAD after a cut: the offset lies between what was acknowledged and what may have
        arrived; with checksums only whole pieces count (a cut piece is all or nothing)."""
        reply = await self.request("HEAD", upload.path, {}, None, (200,))
        offset, high = reply.offset(), upload.high if high is None else high
        if offset is None or offset < upload.acked:
            self.problem("lost", f"HEAD {upload.path}: offset {offset} below the acknowledged {upload.acked}")
        assert offset is not None
        whole = offset == upload.acked or offset in upload.ends
        if offset > high or (upload.checksum and not whole):
            self.problem("corrupt", f"HEAD {upload.path}: offset {offset}, acknowledged {upload.acked}, "
                                    f"at most {high} sent" + (" in whole pieces" if upload.checksum else ""))
        upload.acked = offset
        upload.declared = "upload-length" in reply.headers

    async def delete(self, upload: Upload) -> None:
        await self.request("DELETE", upload.path, {}, None, (204,))
        await self.request("HEAD", upload.path, {}, None, (404, 410))
        self.stats.deleted += 1

    async def check_finished(self, upload: Upload) -> None:
        reply = await self.request("HEAD", upload.path, {}, None, (200,))
        if reply.offset() != upload.size or reply.headers.get("upload-length") != str(upload.size):
            self.problem("lost", f"HEAD {upload.path} of a finished {upload.size}-byte upload: offset "
                                 f"{reply.offset()}, length {reply.headers.get('upload-length')}")
        self.stats.finished += 1
        self.stats.bytes_finished += upload.size
        length, digest = await self.fetch(upload)
        if length != upload.size or digest != hashlib.sha256(upload.data).hexdigest():
            self.problem("corrupt", f"{upload.path}: {length} bytes stored with sha256 {digest[:16]}..., "
                                    f"sent {upload.size} bytes")
        self.stats.verified += 1
        self.stats.bytes_verified += length

    async def fetch(self, upload: Upload) -> tuple[int, str]:
        """Length and SHA-256 of what the server kept: by GET, or from its file."""
        if self.target.downloads:
            reply = await self.request("GET", upload.path, {}, None, (200, 405))
            if reply.status == 200:
                return reply.length, reply.sha256
            self.target.downloads = False       # --disable-download: read the file instead
        if self.target.upload_dir is None:
            self.stats.unexpected["GET 405 (pass --upload-dir to read the files)"] += 1
            raise Abandon
        return await asyncio.to_thread(stored_digest, self.target.upload_dir,
                                       upload.path.rstrip("/").rsplit("/", 1)[-1])

    def problem(self, kind: str, text: str) -> None:
        """Count a lost or corrupted upload and give it up."""
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        self.stats.note(f"{kind}: {text}")
        raise Abandon


def stored_digest(upload_dir: Path, upload_id: str) -> tuple[int, str]:
    """Length and SHA-256 of <dir>/<id>, or of the data file under a --dir-layout; (-1, "") if none."""
    direct = upload_dir / upload_id
    for path in [direct] if direct.is_file() else upload_dir.rglob(upload_id):
        if path.is_file():
            data = path.read_bytes()
            return len(data), hashlib.sha256(data).hexdigest()
    return -1, ""


# -- the server ------------------------------------------------------------------------------------

# The started server logs at info, so its access log shows 5xx replies that never reached a
# client (one that had gone); text format: ... tusfast.access: 127.0.0.1 "PATCH /files/x" 503 in=...
ACCESS_5XX = re.compile(r'tusfast\.access: .*" (5\d\d) ')
ERROR_LINE = re.compile(r" (ERROR|CRITICAL) ")


@dataclass
class ServerLog:
    """What the started server's process and log say after the run."""

    alive: bool = True
    exit_note: str = ""
    tracebacks: int = 0
    errors: int = 0                             # ERROR and CRITICAL records
    access_5xx: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.alive and not self.tracebacks and not self.errors

    def describe(self) -> str:
        state = "alive" if self.alive else f"DIED: {self.exit_note}"
        return f"{state}; {self.errors} ERROR line(s), {self.tracebacks} traceback(s) in its log"


def server_spec(args: argparse.Namespace) -> ServerSpec:
    argv = [sys.executable, "-m", "tusfast", "serve", "--host", HOST, "--port", "{port}",
            "--upload-dir", "{dir}", "--log-level", "info", "--workers", str(args.workers),
            *args.server_arg]
    label = " ".join(["tusfast", *(["--workers", str(args.workers)] if args.workers > 1 else []),
                      *args.server_arg])
    return ServerSpec(label, "tusfast", "", tuple(argv), cwd=Path(__file__).resolve().parents[1])


def wait_for_workers(server: RunningServer, workers: int) -> None:
    """OPTIONS answered by one worker does not mean all are up: wait for the whole tree."""
    deadline = time.monotonic() + 30
    while workers > 1 and len(process_tree(server.pid)) < workers + 1 and time.monotonic() < deadline:
        time.sleep(0.1)


async def discover(host: str, port: int, collection: str, max_size: int,
                   upload_dir: Path | None) -> Target:
    conn = Conn(host, port)
    try:
        await conn.send("OPTIONS", collection, {}, None)
        reply = await conn.receive("OPTIONS")
    finally:
        conn.close()
    if reply.status not in (200, 204):
        raise ServerError(f"OPTIONS {collection} answered {reply.status}")
    extensions = {item.strip() for item in reply.headers.get("tus-extension", "").split(",")}
    offered = {item.strip() for item in reply.headers.get("tus-checksum-algorithm", "").split(",")}
    algorithms = [name for name in CHECKSUMS if name in offered] if "checksum" in extensions else []
    limit = reply.headers.get("tus-max-size", "")
    if limit.isdigit():
        max_size = min(max_size, int(limit))
    return Target(host, port, collection, extensions, algorithms, max_size, upload_dir)


# -- the run ---------------------------------------------------------------------------------------

@dataclass
class Run:
    stats: Stats = field(default_factory=Stats)
    samples: list[ProcSample] = field(default_factory=list)
    before: ProcSample | None = None            # idle, before the clients start
    after: ProcSample | None = None             # idle, after they stopped
    hung_clients: int = 0
    wall: float = 0.0


async def sample_every(pid: int, interval: float, started: float, into: list[ProcSample]) -> None:
    while True:
        into.append(await asyncio.to_thread(sample_tree, pid, time.monotonic() - started))
        await asyncio.sleep(interval)


async def settle(pid: int, before: ProcSample, slack: int, limit: float, started: float) -> ProcSample:
    """Wait (at most limit seconds) for the idle server's descriptors to come back to before."""
    deadline = time.monotonic() + limit
    while True:
        await asyncio.sleep(0.5)
        sample = await asyncio.to_thread(sample_tree, pid, time.monotonic() - started)
        if fd_leak(before, sample, slack) <= 0 or time.monotonic() > deadline:
            return sample


async def run_clients(target: Target, args: argparse.Namespace, pid: int | None, run: Run) -> None:
    pool = random.Random(args.seed).randbytes(max(2 * target.max_size, 8 * MIB))
    await warm_up(target, pool, run.stats, args.seed)
    if pid is not None:
        await asyncio.sleep(1.0)                # the warm-up's connections close
        run.before = await asyncio.to_thread(sample_tree, pid, 0.0)
    started = time.monotonic()
    sampler = (asyncio.create_task(sample_every(pid, args.sample_interval, started, run.samples))
               if pid is not None else None)
    deadline = started + args.duration
    clients = [asyncio.create_task(Client(target, pool, run.stats, args.seed + 1 + i).run(deadline))
               for i in range(args.clients)]
    progress = asyncio.create_task(report_progress(run, started, args.duration))
    done, pending = await asyncio.wait(clients, timeout=args.duration + STOP_GRACE)
    run.wall = time.monotonic() - started
    run.hung_clients = len(pending)
    for task in [*pending, progress, *([sampler] if sampler else [])]:
        task.cancel()
    await asyncio.gather(*pending, progress, *([sampler] if sampler else []), return_exceptions=True)
    for task in done:
        task.result()                           # a bug in the client shows itself here
    if pid is not None and run.before is not None:
        run.after = await settle(pid, run.before, args.fd_slack, args.settle, started)


async def warm_up(target: Target, pool: bytes, stats: Stats, seed: int) -> None:
    """Uploads before the baseline, so what a server process opens on first use (tusfast's lock
    file and release socket, threads) counts in it. A new connection per upload spreads them over
    the --workers (SO_REUSEPORT picks a process per connection)."""
    async def one(index: int) -> None:
        client = Client(target, pool, stats, seed - 1 - index)
        for _ in range(WARM_UP[1]):
            with contextlib.suppress(Abandon):
                await client.one_upload()
            client.conn.close()

    await asyncio.gather(*(one(index) for index in range(WARM_UP[0])))


async def report_progress(run: Run, started: float, length: float) -> None:
    stream = sys.stderr
    while True:
        await asyncio.sleep(10)
        s = run.stats
        last = run.samples[-1] if run.samples else None
        proc = f", RSS {last.rss / MIB:.0f} MiB, {last.fds} fds" if last else ""
        print(f"[{time.monotonic() - started:4.0f}/{length:.0f}s] created {s.created}, finished {s.finished}, "
              f"cut {s.interruptions}, deleted {s.deleted}, problems {s.lost + s.corrupt}, "
              f"5xx {s.server_errors}{proc}", file=stream, flush=True)


# -- verdicts and the report -------------------------------------------------------------------------

def rss_verdict(run: Run, tolerance: float) -> dict[str, Any]:
    """Flat: the median of the last quarter of the samples under load is at most the median of
    the first quarter times (1 + tolerance), plus RSS_SLACK, plus THREAD_RSS per thread added."""
    during = [sample.rss for sample in run.samples]
    if not during or run.before is None or run.after is None:
        return {"measured": False}
    quarter = max(1, len(during) // 4)
    first, last = statistics.median(during[:quarter]), statistics.median(during[-quarter:])
    threads = [sample.threads for sample in run.samples]
    added = max(0.0, statistics.median(threads[-quarter:]) - statistics.median(threads[:quarter]))
    limit = first * (1 + tolerance) + RSS_SLACK + added * THREAD_RSS
    return {"measured": True, "threads_added": added, "idle_before_mib": run.before.rss / MIB, "start_mib": during[0] / MIB,
            "end_mib": during[-1] / MIB, "peak_mib": max(during) / MIB, "idle_after_mib": run.after.rss / MIB,
            "first_quarter_median_mib": first / MIB, "last_quarter_median_mib": last / MIB,
            "limit_mib": limit / MIB, "samples": len(during), "flat": last <= limit}


def invariants(run: Run, rss: dict[str, Any], fds: dict[str, Any], log: ServerLog | None) -> dict[str, Any]:
    s = run.stats
    logged_5xx = sum(log.access_5xx.values()) if log else 0
    in_log = "not read" if log is None else str(logged_5xx)
    checks = {
        "no lost uploads": (s.lost == 0, str(s.lost)),
        "no corrupted uploads": (s.corrupt == 0, str(s.corrupt)),
        "no 5xx": (s.server_errors == 0 and logged_5xx == 0,
                   (f"{s.server_errors} received; {in_log} in the server's access log "
                    "(also replies to clients that had gone)")),
        "no other unexpected status": (not s.unexpected, _counts(s.unexpected)),
        "no dropped connection or timeout": (not s.transport, _counts(s.transport)),
        "every client finished": (run.hung_clients == 0,
                                  f"{run.hung_clients} still running after {STOP_GRACE:.0f} s of grace"),
        "some uploads verified": (s.verified > 0, str(s.verified)),
        "server alive, no error logged": (log is None or log.ok,
                                          "not started by the soak" if log is None else log.describe()),
    }
    if rss["measured"]:
        checks["RSS flat"] = (rss["flat"], (f"last-quarter median {rss['last_quarter_median_mib']:.1f} MiB "
                                            f"vs limit {rss['limit_mib']:.1f} MiB ({rss['threads_added']:g} "
                                            "threads added)"))
    if fds["measured"]:
        checks["no descriptor leak"] = (fds["leaked"] <= 0, (
            f"{fds['before']} before, {fds['after']} idle after ({fds['pipes_before']} and "
            f"{fds['pipes_after']} pipes, {fds['threads_before']} and {fds['threads_after']} threads)"))
    return {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()}


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}: {count}" for key, count in counter.most_common()) or "none"


def build_report(run: Run, args: argparse.Namespace, label: str, log: ServerLog | None) -> dict[str, Any]:
    s = run.stats
    rss = rss_verdict(run, args.rss_tolerance)
    fds: dict[str, Any] = {"measured": run.before is not None and run.after is not None}
    if run.before is not None and run.after is not None:
        fds.update(before=run.before.fds, after=run.after.fds, slack=args.fd_slack,
                   peak=max((sample.fds for sample in run.samples), default=run.before.fds),
                   pipes_before=run.before.pipes, pipes_after=run.after.pipes,
                   threads_before=run.before.threads, threads_after=run.after.threads,
                   leaked=fd_leak(run.before, run.after, args.fd_slack), processes=run.before.processes)
    checks = invariants(run, rss, fds, log)
    counts = {name: getattr(s, name) for name in (
        "created", "finished", "verified", "interruptions", "interrupted_uploads", "deleted", "abandoned",
        "bad_checksums", "bytes_sent", "bytes_finished", "bytes_verified", "lost", "corrupt")}
    counts["server_errors_5xx"] = s.server_errors
    return {
        "ok": all(check["ok"] for check in checks.values()),
        "meta": {"server": label, "clients": args.clients, "duration_s": args.duration,
                 "wall_s": round(run.wall, 1), "max_size": args.max_size, "seed": args.seed,
                 "sample_interval_s": args.sample_interval, "rss_tolerance": args.rss_tolerance},
        "counts": counts,
        "invariants": checks,
        "statuses": dict(sorted(s.statuses.items())),
        "unexpected": dict(s.unexpected),
        "transport_errors": dict(s.transport),
        "rss": rss,
        "fds": fds,
        "samples": [sample.__dict__ for sample in run.samples],
        "examples": s.examples,
        "server_log": None if log is None else {
            "alive": log.alive, "exit": log.exit_note, "tracebacks": log.tracebacks, "error_lines": log.errors,
            "access_5xx": dict(log.access_5xx), "examples": log.examples},
    }


def markdown(report: dict[str, Any]) -> str:
    meta, c = report["meta"], report["counts"]
    lines = [f"# Soak: {meta['server']}, {meta['clients']} clients, {meta['duration_s']:.0f} s",
             f"(seed {meta['seed']}; {meta['wall_s']:.0f} s with the stragglers)", "",
             f"**{'PASS' if report['ok'] else 'FAIL'}**", "",
             "| invariant | ok | detail |", "| --- | --- | --- |"]
    lines += [f"| {name} | {'yes' if check['ok'] else '**NO**'} | {check['detail']} |"
              for name, check in report["invariants"].items()]
    lines += ["", "| count | value |", "| --- | --- |"]
    lines += [f"| {name.replace('_', ' ')} | {value:,} |" for name, value in c.items()]
    rss, fds = report["rss"], report["fds"]
    if rss["measured"]:
        lines += ["", (f"RSS (all server processes, {rss['samples']} samples): {rss['idle_before_mib']:.1f} MiB "
                       f"idle before, {rss['start_mib']:.1f} MiB at the start, {rss['end_mib']:.1f} MiB at the "
                       f"end, peak {rss['peak_mib']:.1f} MiB, {rss['idle_after_mib']:.1f} MiB idle after; "
                       f"median of the first quarter {rss['first_quarter_median_mib']:.1f} MiB, of the last "
                       f"{rss['last_quarter_median_mib']:.1f} MiB ({'flat' if rss['flat'] else 'GROWING'}).")]
    if fds["measured"]:
        lines += [(f"Open descriptors ({fds['processes']} processes): {fds['before']} before the clients, "
                   f"peak {fds['peak']} under load, {fds['after']} once idle after.")]
    lines += ["", "Statuses: " + ", ".join(f"{key} ×{count}" for key, count in report["statuses"].items())]
    if report["examples"]:
        lines += ["", "First problems:", *(f"- `{text[:200]}`" for text in report["examples"])]
    if report["server_log"] and report["server_log"]["examples"]:
        lines += ["", "Server log:", *(f"- `{text[:200]}`" for text in report["server_log"]["examples"])]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------

def soak(args: argparse.Namespace) -> dict[str, Any]:
    if args.url:
        return soak_url(args)
    if args.tmp_dir is not None:
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tusfast-soak-", dir=args.tmp_dir))
    server = RunningServer(server_spec(args), workdir)
    try:
        server.start()
        wait_for_workers(server, args.workers)
        run = Run()
        asyncio.run(_discover_and_run(HOST, server.port, server.collection, args, server.upload_dir,
                                      server.pid, run))
        found = read_server_log(server)
        report = build_report(run, args, server.spec.label, found)
        if not report["ok"]:
            keep_log(server, args.out)
        return report
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def soak_url(args: argparse.Namespace) -> dict[str, Any]:
    parts = urlsplit(args.url)
    run = Run()
    asyncio.run(_discover_and_run(parts.hostname or HOST, parts.port or 80, parts.path or "/", args,
                                  args.upload_dir, args.pid, run))
    return build_report(run, args, args.url, None)


async def _discover_and_run(host: str, port: int, collection: str, args: argparse.Namespace,
                            upload_dir: Path | None, pid: int | None, run: Run) -> None:
    target = await discover(host, port, collection, args.max_size, upload_dir)
    await run_clients(target, args, pid, run)


def read_server_log(server: RunningServer) -> ServerLog:
    found = ServerLog()
    try:
        server.check_alive()
    except ServerError as error:
        found.alive, found.exit_note = False, str(error).splitlines()[0]
    with open(server.log_path, errors="replace") as log:
        for line in log:
            if access := ACCESS_5XX.search(line):
                found.access_5xx[access.group(1)] += 1
            elif ERROR_LINE.search(line):
                found.errors += 1
                if len(found.examples) < EXAMPLES:
                    found.examples.append(line.strip()[:300])
            elif line.startswith("Traceback"):
                found.tracebacks += 1
    return found


def keep_log(server: RunningServer, out: Path) -> None:
    """The server's log (with its access log) goes with the results of a failed run."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(server.log_path, out / "server.log")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _use_uvloop()
    report = soak(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "soak.md").write_text(text)
    print(text)
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.md'}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    sys.exit(main())
