#!/usr/bin/env python
"""Micro-benchmark of tusfast.nativeio: native (cffi) vs pure-Python writes.

    python benchmarks/bench_io.py --size 512M [--dir /var/tmp] [--chunks 64K,1M] [--iov 16] [--repeat 3]

For each implementation, call and chunk size it writes --size bytes to a fresh
file (pwrite_all: one chunk per call; pwritev_all: --iov chunks per call),
then fdatasync()s it, and prints a Markdown table.  MB/s is 10**6 bytes per
wall-clock second including the fdatasync; CPU s/GiB is user+system time of
this process per GiB written, which is where the implementations differ (the
disk is the same for both).  The best of --repeat runs is reported.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"), help="bytes per run, e.g. 256M, 1G")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary files")
    parser.add_argument("--chunks", default="64K,1M", help="comma-separated chunk sizes")
    parser.add_argument("--iov", type=int, default=16, help="chunks per pwritev_all call")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the lowest CPU time is shown")
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
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"{args.size / (1 << 20):,.0f} MiB per run, pwritev_all with {args.iov} buffers per call, "
          f"fdatasync included; directory {args.dir or tempfile.gettempdir()}\n")
    print("| implementation | call | chunk | MB/s | CPU s/GiB |")
    print("|---|---|---|---:|---:|")
    for result in rows:
        print(result.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
