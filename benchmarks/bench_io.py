#!/usr/bin/env python
"""Micro-benchmark of tusfast.nativeio: native (cffi) vs pure-Python writes and copies.

    python benchmarks/bench_io.py --size 512M [--dir /var/tmp] [--chunks 64K,1M] [--iov 16] [--repeat 3]
                                  [--copy-size 256M] [--copy-from /dev/shm]

For each implementation, call and chunk size it writes --size bytes to a fresh
file (pwrite_all: one chunk per call; pwritev_all: --iov chunks per call),
then fdatasync()s it, and prints a Markdown table.  MB/s is 10**6 bytes per
wall-clock second including the fdatasync; CPU s/GiB is user+system time of
this process per GiB written, which is where the implementations differ (the
disk is the same for both).  The best of --repeat runs is reported.

A second table copies a --copy-size file (written and synced beforehand, so
it is in the page cache) into a fresh file with copy_range_all, against the
read/write loop a Python program would write (os.pread/os.pwrite, 1 MiB).
MB/s is given for the copy alone and with the destination's fdatasync.  The
source lives in --dir, or in --copy-from: on another file system the kernel
refuses (EXDEV) and copy_range_all measures its read/write fallback instead.
--copy-size 0 skips the table.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from tusfast import nativeio  # noqa: E402

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass
class Result:
    implementation: str
    call: str
    chunk: int
    nbytes: int
    wall: float
    cpu: float

    def row(self) -> str:
        mb_per_s = self.nbytes / self.wall / 1e6
        cpu_per_gib = self.cpu / (self.nbytes / (1 << 30))
        chunk = f"{self.chunk >> 10} KiB" if self.chunk % (1 << 20) else f"{self.chunk >> 20} MiB"
        return f"| {self.implementation} | {self.call} | {chunk} | {mb_per_s:,.0f} | {cpu_per_gib:.3f} |"


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1] if text and text[-1] in UNITS else ""
    return int(float(text[: len(text) - len(unit)]) * UNITS[unit])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_file(impl: Any, call: str, fd: int, data: bytes, nbytes: int, iov: int) -> None:
    chunk = len(data)
    if call == "pwrite_all":
        for offset in range(0, nbytes, chunk):
            impl.pwrite_all(fd, data, offset)
        return
    step = chunk * iov
    buffers = [data] * iov
    for offset in range(0, nbytes, step):
        count = min(iov, (nbytes - offset) // chunk)
        impl.pwritev_all(fd, buffers if count == iov else buffers[:count], offset)


def fs_type(path: Path) -> str:
    """The type of the file system holding path, from /proc/mounts (longest matching mount point)."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1].replace("\\040", " ")
                target = str(path.resolve())
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        pass
    return kind


def run_once(impl: Any, call: str, chunk: int, size: int, directory: Path, iov: int) -> Result:
    nbytes = size // chunk * chunk
    data = os.urandom(chunk)
    path = directory / f"bench-{impl.name}-{call}-{chunk}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        write_file(impl, call, fd, data, nbytes, iov)
        impl.fdatasync(fd)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    finally:
        os.close(fd)
        path.unlink()
    return Result(impl.name, call, chunk, nbytes, wall, cpu)


def best_of(repeat: int, *args: Any) -> Result:
    runs = [run_once(*args) for _ in range(repeat)]
    return min(runs, key=lambda result: result.cpu)


@dataclass
class CopyResult:
    method: str
    nbytes: int
    copy_wall: float
    wall: float
    cpu: float

    def row(self) -> str:
        cpu_per_gib = self.cpu / (self.nbytes / (1 << 30))
        return (f"| {self.method} | {self.nbytes / self.copy_wall / 1e6:,.0f} | "
                f"{self.nbytes / self.wall / 1e6:,.0f} | {cpu_per_gib:.3f} |")


def copy_by_read_write(src: int, dst: int, nbytes: int) -> int:
    """The baseline: the loop a Python program would write."""
    done = 0
    while done < nbytes:
        data = os.pread(src, min(1 << 20, nbytes - done), done)
        if not data:
            break
        os.pwrite(dst, data, done)  # a regular file: no short writes short of ENOSPC
        done += len(data)
    return done


def make_source(path: Path, nbytes: int) -> None:
    chunk = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for offset in range(0, nbytes, len(chunk)):
            nativeio.PurePythonIO.pwrite_all(fd, chunk[: nbytes - offset], offset)
        os.fdatasync(fd)  # its write-back must not run during the timed copies
    finally:
        os.close(fd)


def copy_once(method: str, source: Path, nbytes: int, directory: Path) -> CopyResult:
    path = directory / f"bench-copy-{method.split()[0]}.bin"
    src = os.open(source, os.O_RDONLY)
    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        if method.endswith("copy_range_all"):
            impl = nativeio.IMPLEMENTATIONS[method.split()[0]]
            copied = impl.copy_range_all(src, 0, dst, 0, nbytes)
        else:
            copied = copy_by_read_write(src, dst, nbytes)
        copy_wall = time.perf_counter() - wall0
        os.fdatasync(dst)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        assert copied == nbytes, (method, copied)
    finally:
        os.close(src)
        os.close(dst)
        path.unlink()
    return CopyResult(method, nbytes, copy_wall, wall, cpu)


def copy_table(size: int, copy_from: Path | None, directory: Path, repeat: int) -> list[CopyResult]:
    source_dir = Path(tempfile.mkdtemp(prefix="tusfast-bench-src-", dir=copy_from)) if copy_from else directory
    source = source_dir / "bench-copy-source.bin"
    try:
        make_source(source, size)
        methods = [f"{name} copy_range_all" for name in nativeio.IMPLEMENTATIONS]
        methods.append("python os.pread/os.pwrite loop, 1 MiB")
        copy_once(methods[-1], source, size, directory)  # untimed warm-up, as above
        return [
            min((copy_once(method, source, size, directory) for _ in range(repeat)), key=lambda r: r.cpu)
            for method in methods
        ]
    finally:
        source.unlink(missing_ok=True)
        if source_dir is not directory:
            shutil.rmtree(source_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"), help="bytes per run, e.g. 256M, 1G")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary files")
    parser.add_argument("--chunks", default="64K,1M", help="comma-separated chunk sizes")
    parser.add_argument("--iov", type=int, default=16, help="chunks per pwritev_all call")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the lowest CPU time is shown")
    parser.add_argument("--copy-size", type=parse_size, default=parse_size("256M"), help="file size for the copy table; 0 skips it")
    parser.add_argument("--copy-from", type=Path, default=None, help="directory of the copy's source (default: --dir)")
    args = parser.parse_args()
    chunks = [parse_size(chunk) for chunk in args.chunks.split(",")]

    if "native" not in nativeio.IMPLEMENTATIONS:
        print(f"note: native extension not loaded ({nativeio._NATIVE_IMPORT_ERROR!r})", file=sys.stderr)
    directory = Path(tempfile.mkdtemp(prefix="tusfast-bench-", dir=args.dir))
    try:
        # Untimed: the first run in a fresh process pays for faulting in page-cache memory.
        run_once(nativeio.PurePythonIO, "pwrite_all", chunks[-1], args.size, directory, args.iov)
        rows = [
            best_of(args.repeat, impl, call, chunk, args.size, directory, args.iov)
            for call in ("pwrite_all", "pwritev_all")
            for chunk in chunks
            for impl in nativeio.IMPLEMENTATIONS.values()
        ]
        copies = copy_table(args.copy_size, args.copy_from, directory, args.repeat) if args.copy_size else []
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"{args.size / (1 << 20):,.0f} MiB per run, pwritev_all with {args.iov} buffers per call, "
          f"fdatasync included; directory {args.dir or tempfile.gettempdir()}\n")
    print("| implementation | call | chunk | MB/s | CPU s/GiB |")
    print("|---|---|---|---:|---:|")
    for result in rows:
        print(result.row())
    if copies:
        source_dir = args.copy_from or directory
        print(f"\nCopy of {args.copy_size / (1 << 20):,.0f} MiB (source in the page cache) from "
              f"{fs_type(source_dir)} ({source_dir}) to {fs_type(directory)} ({directory})\n")
        print("| method | MB/s copy | MB/s copy + fdatasync | CPU s/GiB |")
        print("|---|---:|---:|---:|")
        for copy in copies:
            print(copy.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
