"""Tests for tusfast.nativeio; every behavioural test runs against both implementations."""

from __future__ import annotations

import array
import errno
import fcntl
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tusfast import nativeio

PURE_REQUESTED = os.environ.get("TUSFAST_PUREPYTHON", "") not in ("", "0")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_RW_COUNT = 0x7FFFF000  # Linux caps a single read/write syscall at this many bytes

Impl = Any  # type[NativeIO] | type[PurePythonIO]


def _get_impl(name: str) -> Impl:
    impl = nativeio.IMPLEMENTATIONS.get(name)
    if impl is None:
        pytest.skip(f"{name} implementation not loaded (TUSFAST_PUREPYTHON set or extension not built)")
    return impl


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest) -> Impl:
    return _get_impl(request.param)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    descriptor = os.open(tmp_path / "upload.bin", os.O_RDWR | os.O_CREAT, 0o600)
    yield descriptor
    os.close(descriptor)


def read_all(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size + 1, 0)


def closed_fd(tmp_path: Path) -> int:
    descriptor = os.open(tmp_path / "closed.bin", os.O_RDWR | os.O_CREAT, 0o600)
    os.close(descriptor)
    return descriptor


# --- selection of the implementation -----------------------------------------


@pytest.mark.skipif(PURE_REQUESTED, reason="TUSFAST_PUREPYTHON is set")
def test_native_extension_is_built_and_used() -> None:
    # A broken build must fail here, not silently run the slow fallback.
    assert nativeio.HAVE_NATIVE, f"tusfast._native did not import: {nativeio._NATIVE_IMPORT_ERROR!r}"
    assert nativeio.IMPLEMENTATION == "native"
    assert nativeio.pwrite_all is nativeio.NativeIO.pwrite_all
    assert nativeio.pwritev_all is nativeio.NativeIO.pwritev_all
    assert nativeio.fdatasync is nativeio.NativeIO.fdatasync
    assert nativeio.write_back is nativeio.NativeIO.write_back
    assert nativeio.copy_range_all is nativeio.NativeIO.copy_range_all
    assert nativeio.sendfile_some is nativeio.NativeIO.sendfile_some


def _implementation_in_subprocess(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "TUSFAST_PUREPYTHON"} | env
    script = f"{code}\nimport tusfast.nativeio as n\nprint(n.IMPLEMENTATION, n.HAVE_NATIVE)"
    result = subprocess.run(
        [sys.executable, "-c", script], env=full_env, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_env_var_forces_pure_python() -> None:
    assert _implementation_in_subprocess("", TUSFAST_PUREPYTHON="1") == "python False"


def test_falls_back_when_extension_cannot_be_imported() -> None:
    # sys.modules[name] = None makes "import name" raise ImportError.
    assert _implementation_in_subprocess("import sys; sys.modules['tusfast._native'] = None") == "python False"


# --- pwrite_all ----------------------------------------------------------------


def test_pwrite_all_writes_at_offsets(impl: Impl, fd: int) -> None:
    assert impl.pwrite_all(fd, b"hello", 0) == 5
    assert impl.pwrite_all(fd, b"world", 10) == 5
    assert impl.pwrite_all(fd, b"HE", 0) == 2
    assert read_all(fd) == b"HEllo\0\0\0\0\0world"
    assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # positional: the file offset is untouched


def test_pwrite_all_accepts_any_contiguous_buffer(impl: Impl, fd: int) -> None:
    numbers = array.array("I", [1, 2, 3])
    assert impl.pwrite_all(fd, bytearray(b"ab"), 0) == 2
    assert impl.pwrite_all(fd, memoryview(b"xxcdxx")[2:4], 2) == 2
    assert impl.pwrite_all(fd, memoryview(numbers), 4) == numbers.itemsize * 3
    assert read_all(fd) == b"abcd" + numbers.tobytes()


def test_pwrite_all_releases_the_buffer(impl: Impl, fd: int) -> None:
    data = bytearray(b"abc")
    impl.pwrite_all(fd, data, 0)
    data.extend(b"def")  # BufferError if the call still held an export
    impl.pwritev_all(fd, [data, data], 0)
    data.extend(b"ghi")


def test_zero_length_writes_do_nothing(impl: Impl, fd: int, tmp_path: Path) -> None:
    assert impl.pwrite_all(fd, b"", 100) == 0
    assert impl.pwritev_all(fd, [], 100) == 0
    assert impl.pwritev_all(fd, [b"", bytearray(), memoryview(b"")], 100) == 0
    assert os.fstat(fd).st_size == 0
    # No syscall is made, so not even a bad descriptor is noticed.
    assert impl.pwrite_all(closed_fd(tmp_path), b"", 0) == 0


def test_offset_minus_one_means_current_position(impl: Impl, fd: int) -> None:
    os.write(fd, b"abc")
    assert impl.pwrite_all(fd, b"de", -1) == 2
    assert impl.pwritev_all(fd, [b"f", b"gh"], -1) == 3
    assert read_all(fd) == b"abcdefgh"
    assert os.lseek(fd, 0, os.SEEK_CUR) == 8


def test_other_negative_offsets_are_einval(impl: Impl, fd: int) -> None:
    for call in (lambda: impl.pwrite_all(fd, b"x", -2), lambda: impl.pwritev_all(fd, [b"x"], -5)):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EINVAL


# --- pwritev_all ---------------------------------------------------------------


def test_pwritev_all_writes_buffers_back_to_back(impl: Impl, fd: int) -> None:
    buffers = [b"", b"abc", bytearray(b""), bytearray(b"defg"), memoryview(b"--hi--")[2:4], b"", b"j"]
    assert impl.pwritev_all(fd, buffers, 3) == 10
    assert read_all(fd) == b"\0\0\0abcdefghij"


def test_pwritev_all_batches_beyond_iov_max(impl: Impl, fd: int) -> None:
    count = 3 * 1024 + 7
    buffers = [i.to_bytes(4, "little") for i in range(count)]
    buffers[1500] = b""
    assert impl.pwritev_all(fd, buffers, 8) == 4 * (count - 1)
    assert read_all(fd) == b"\0" * 8 + b"".join(buffers)


def test_pwritev_all_from_many_threads(impl: Impl, fd: int) -> None:
    # Native calls run without the GIL and reuse per-thread iovec arrays.
    def worker(n: int) -> None:
        for round_ in range(50):
            parts = [bytes([n]) * 100, bytes([round_]) * 28]
            assert impl.pwritev_all(fd, parts, (n * 50 + round_) * 128) == 128

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    data = read_all(fd)
    for n in range(8):
        for round_ in range(50):
            start = (n * 50 + round_) * 128
            assert data[start : start + 128] == bytes([n]) * 100 + bytes([round_]) * 28


buffers_strategy = st.lists(st.binary(max_size=300), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(buffers_strategy, st.integers(0, 2000)), max_size=6))
def test_implementations_agree_with_a_model(tmp_path: Path, writes: list[tuple[list[bytes], int]]) -> None:
    expected = bytearray()
    for buffers, offset in writes:
        data = b"".join(buffers)
        if data:
            expected.extend(b"\0" * max(0, offset + len(data) - len(expected)))
            expected[offset : offset + len(data)] = data
    for name in nativeio.IMPLEMENTATIONS:
        impl = nativeio.IMPLEMENTATIONS[name]
        path = tmp_path / f"model-{name}.bin"
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for i, (buffers, offset) in enumerate(writes):
                data = b"".join(buffers)
                written = impl.pwritev_all(descriptor, buffers, offset) if i % 2 else impl.pwrite_all(descriptor, data, offset)
                assert written == len(data)
            assert read_all(descriptor) == expected, name
        finally:
            os.close(descriptor)


# --- short writes and EINTR ----------------------------------------------------


def _fill_pipe(wfd: int) -> int:
    os.set_blocking(wfd, False)
    filled = 0
    try:
        while True:
            filled += os.write(wfd, b"P" * 4096)
    except BlockingIOError:
        return filled
    finally:
        os.set_blocking(wfd, True)


def _write_while_interrupted(write: Callable[[int], int]) -> tuple[int, bytes, int]:
    """Run write(wfd) on a full one-page pipe while another thread signals this one.

    The first signal arrives while the writer is blocked having copied nothing,
    so write() fails with EINTR (Python handlers are installed without
    SA_RESTART).  Each later signal arrives after the reader freed one page and
    the writer copied it and blocked again, so write() returns a short count.
    Returns (write's result, bytes received after the pre-fill, signals handled).
    """
    rfd, wfd = os.pipe()
    fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, 4096)
    prefix = _fill_pipe(wfd)
    received = bytearray()
    handled: list[int] = []
    main = threading.get_ident()

    def reader() -> None:
        time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGUSR1)  # -> EINTR
        for _ in range(5):
            time.sleep(0.02)
            received.extend(os.read(rfd, 4096))
            time.sleep(0.02)
            signal.pthread_kill(main, signal.SIGUSR1)  # -> short write
        while chunk := os.read(rfd, 65536):
            received.extend(chunk)

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = write(wfd)
    finally:
        os.close(wfd)  # EOF for the reader even if write() raised
        thread.join()
        os.close(rfd)
        signal.signal(signal.SIGUSR1, previous)
    assert received[:prefix] == b"P" * prefix
    return result, bytes(received[prefix:]), len(handled)


@pytest.fixture
def count_short_writes(impl: Impl, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """For the Python implementation, record writes that wrote less than asked."""
    short: list[int] = []
    if impl is not nativeio.PurePythonIO:
        return short  # the C loop cannot be observed; see the report/strace check
    real_write, real_writev = os.write, os.writev

    def write(fd: int, data: Any) -> int:
        n = real_write(fd, data)
        if n < len(data):
            short.append(n)
        return n

    def writev(fd: int, buffers: Any) -> int:
        n = real_writev(fd, buffers)
        if n < sum(len(b) for b in buffers):
            short.append(n)
        return n

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "writev", writev)
    return short


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_pwrite_all_survives_eintr_and_short_writes(impl: Impl, count_short_writes: list[int]) -> None:
    payload = os.urandom(256 * 1024)
    result, received, signals = _write_while_interrupted(lambda wfd: impl.pwrite_all(wfd, payload, -1))
    # Python runs a handler per interruption; C retries without the GIL, so its
    # pending signals coalesce and are handled after the call.
    assert (signals == 6) if impl is nativeio.PurePythonIO else (1 <= signals <= 6)
    assert result == len(payload)
    assert received == payload
    if impl is nativeio.PurePythonIO:
        assert count_short_writes  # the retry loop really ran


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_pwritev_all_survives_eintr_and_short_writes_mid_buffer(impl: Impl, count_short_writes: list[int]) -> None:
    # Odd sizes so that interrupted writes end inside a buffer, not at its edge.
    buffers = [os.urandom(size) for size in (1, 4097, 0, 6000, 9999, 123_457, 3, 100_000)]
    result, received, signals = _write_while_interrupted(lambda wfd: impl.pwritev_all(wfd, buffers, -1))
    # Python runs a handler per interruption; C retries without the GIL, so its
    # pending signals coalesce and are handled after the call.
    assert (signals == 6) if impl is nativeio.PurePythonIO else (1 <= signals <= 6)
    assert result == sum(map(len, buffers))
    assert received == b"".join(buffers)
    if impl is nativeio.PurePythonIO:
        assert count_short_writes  # the retry loop really ran


@pytest.fixture
def huge_zero_buffer() -> Iterator[mmap.mmap]:
    # Read-only anonymous memory is neither committed nor touched: /dev/null ignores the data.
    if sys.maxsize < 2**40:
        pytest.skip("needs a 64-bit address space")
    try:
        buffer = mmap.mmap(-1, MAX_RW_COUNT + (1 << 29), flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    except OSError as exc:  # e.g. a ulimit -v
        pytest.skip(f"cannot map 2.5 GiB of address space: {exc}")
    yield buffer
    buffer.close()


def test_kernel_short_writes_beyond_max_rw_count(impl: Impl, huge_zero_buffer: mmap.mmap) -> None:
    # The kernel writes at most MAX_RW_COUNT bytes per call, a deterministic short
    # write; with two buffers the first pwritev stops in the middle of the second.
    size = len(huge_zero_buffer)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        assert os.pwrite(null, huge_zero_buffer, 0) == MAX_RW_COUNT  # precondition
        assert impl.pwrite_all(null, huge_zero_buffer, 0) == size
        assert impl.pwritev_all(null, [huge_zero_buffer, b"x", huge_zero_buffer], 7) == 2 * size + 1
    finally:
        os.close(null)


# --- errors --------------------------------------------------------------------


def test_bad_descriptor_raises_ebadf(impl: Impl, tmp_path: Path) -> None:
    bad = closed_fd(tmp_path)
    calls: list[Callable[[], object]] = [
        lambda: impl.pwrite_all(bad, b"x", 0),
        lambda: impl.pwrite_all(bad, b"x", -1),
        lambda: impl.pwritev_all(bad, [b"x", b"y"], 0),
        lambda: impl.fdatasync(bad),
        lambda: impl.write_back(bad, 4096, 4096),
        lambda: impl.write_back(bad, 0, 4096),
    ]
    for call in calls:
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF
        assert info.value.strerror == os.strerror(errno.EBADF)


def test_pipe_errors_match_the_os_module(impl: Impl) -> None:
    rfd, wfd = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            impl.pwrite_all(wfd, b"x", 0)
        assert info.value.errno == errno.ESPIPE
        with pytest.raises(OSError) as info:
            impl.pwritev_all(wfd, [b"x"], 0)
        assert info.value.errno == errno.ESPIPE
        with pytest.raises(OSError) as info:
            impl.fdatasync(wfd)
        assert info.value.errno == errno.EINVAL
        os.close(rfd)
        rfd = -1
        # No reader: EPIPE, raised as the same subclass os.write would raise.
        previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            with pytest.raises(BrokenPipeError):
                impl.pwrite_all(wfd, b"x", -1)
        finally:
            signal.signal(signal.SIGPIPE, previous)
    finally:
        os.close(wfd)
        if rfd >= 0:
            os.close(rfd)


# --- fdatasync and write_back ----------------------------------------------------


def test_fdatasync_regular_file(impl: Impl, fd: int) -> None:
    impl.pwrite_all(fd, b"data", 0)
    assert impl.fdatasync(fd) is None


def test_write_back_regular_file(impl: Impl, fd: int) -> None:
    chunk = 1 << 20
    for index in range(4):
        impl.pwrite_all(fd, os.urandom(chunk), index * chunk)
        assert impl.write_back(fd, index * chunk, chunk) is None
    impl.write_back(fd, 0, 0)
    impl.write_back(fd, 10 * chunk, chunk)  # beyond EOF is fine
    impl.write_back(fd, 100, 1000)  # unaligned, shorter than the offset
    assert os.fstat(fd).st_size == 4 * chunk


def test_write_back_is_best_effort_on_pipes_and_tmpfs(impl: Impl) -> None:
    rfd, wfd = os.pipe()
    try:
        impl.write_back(wfd, 0, 4096)  # ESPIPE ignored
        impl.write_back(wfd, 4096, 4096)
    finally:
        os.close(rfd)
        os.close(wfd)
    if os.path.isdir("/dev/shm"):
        shm = os.open("/dev/shm", os.O_RDWR | os.O_TMPFILE, 0o600)
        try:
            impl.pwrite_all(shm, b"x" * 8192, 0)
            impl.write_back(shm, 4096, 4096)
        finally:
            os.close(shm)


def test_write_back_rejects_negative_ranges(impl: Impl, fd: int) -> None:
    with pytest.raises(ValueError):
        impl.write_back(fd, -1, 10)
    with pytest.raises(ValueError):
        impl.write_back(fd, 0, -10)


# --- copy_range_all ----------------------------------------------------------------


def open_with(path: Path | str, data: bytes, flags: int = os.O_RDWR) -> int:
    descriptor = os.open(path, flags | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(descriptor, data)
    os.lseek(descriptor, 0, os.SEEK_SET)
    return descriptor


@pytest.fixture
def shm_fd(tmp_path: Path) -> Iterator[int]:
    """An empty file on another file system than tmp_path, so that copy_file_range between the two fails with EXDEV."""
    try:
        descriptor = os.open("/dev/shm", os.O_RDWR | os.O_TMPFILE, 0o600)
    except OSError as exc:
        pytest.skip(f"no tmpfs at /dev/shm: {exc}")
    try:
        if os.fstat(descriptor).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm and the temporary directory are the same file system")
        yield descriptor
    finally:
        os.close(descriptor)


@pytest.fixture
def count_fallback_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (offset, size) of every read of the read/write fallback (it is Python code in both implementations)."""
    reads: list[tuple[int, int]] = []
    real_preadv = os.preadv

    def preadv(fd: int, buffers: Any, offset: int) -> int:
        n = real_preadv(fd, buffers, offset)
        reads.append((offset, n))
        return n

    monkeypatch.setattr(os, "preadv", preadv)
    return reads


def test_copy_range_all_copies_between_files_at_offsets(impl: Impl, tmp_path: Path) -> None:
    source = os.urandom(100_000)
    src = open_with(tmp_path / "src.bin", source)
    dst = open_with(tmp_path / "dst.bin", b"D" * 50)
    try:
        assert impl.copy_range_all(src, 1000, dst, 20, 5000) == 5000
        assert impl.copy_range_all(src, 0, dst, 10_000, 7) == 7  # beyond the end: leaves a hole
        assert impl.copy_range_all(src, 99_999, dst, 0, 1) == 1
        assert read_all(dst) == source[99_999:] + b"D" * 19 + source[1000:6000] + b"\0" * 4980 + source[:7]
        # Positional: neither file offset moves.
        assert os.lseek(src, 0, os.SEEK_CUR) == 0
        assert os.lseek(dst, 0, os.SEEK_CUR) == 0
    finally:
        os.close(src)
        os.close(dst)


def test_copy_range_all_stops_at_end_of_source(impl: Impl, tmp_path: Path) -> None:
    source = os.urandom(3000)
    src = open_with(tmp_path / "src.bin", source)
    dst = open_with(tmp_path / "dst.bin", b"")
    try:
        assert impl.copy_range_all(src, 2900, dst, 0, 500) == 100
        assert impl.copy_range_all(src, 0, dst, 100, 1 << 40) == 3000
        assert impl.copy_range_all(src, 3000, dst, 0, 10) == 0  # at the end
        assert impl.copy_range_all(src, 10_000, dst, 0, 10) == 0  # beyond it
        assert read_all(dst) == source[2900:] + source
    finally:
        os.close(src)
        os.close(dst)


def test_copy_range_all_of_nothing_does_nothing(impl: Impl, tmp_path: Path) -> None:
    src = open_with(tmp_path / "src.bin", b"abc")
    dst = open_with(tmp_path / "dst.bin", b"")
    try:
        assert impl.copy_range_all(src, 0, dst, 100, 0) == 0
        assert os.fstat(dst).st_size == 0
    finally:
        os.close(src)
        os.close(dst)
    # No syscall is made, so not even a bad descriptor is noticed.
    bad = closed_fd(tmp_path)
    assert impl.copy_range_all(bad, 0, bad, 0, 0) == 0


def test_copy_range_all_within_one_file(impl: Impl, fd: int) -> None:
    os.write(fd, b"0123456789")
    assert impl.copy_range_all(fd, 0, fd, 10, 10) == 10  # adjacent, not overlapping
    assert impl.copy_range_all(fd, 15, fd, 2, 3) == 3
    assert read_all(fd) == b"0156756789" + b"0123456789"
    # Overlapping ranges: copy_file_range says EINVAL, and the fallback, which
    # would re-read its own output, refuses them too.
    for src_offset, dst_offset in ((0, 5), (5, 0), (3, 3)):
        with pytest.raises(OSError) as info:
            impl.copy_range_all(fd, src_offset, fd, dst_offset, 10)
        assert info.value.errno == errno.EINVAL
    assert read_all(fd) == b"0156756789" + b"0123456789"


def test_copy_range_all_falls_back_across_file_systems(
    impl: Impl, tmp_path: Path, shm_fd: int, count_fallback_reads: list[tuple[int, int]]
) -> None:
    source = os.urandom(3 * (1 << 20) + 12_345)  # several rounds of the 1 MiB buffer
    os.pwrite(shm_fd, source, 0)
    dst = open_with(tmp_path / "dst.bin", b"")
    try:
        with pytest.raises(OSError) as info:  # precondition: a real refusal
            os.copy_file_range(shm_fd, dst, 10, 0, 0)
        assert info.value.errno == errno.EXDEV
        assert impl.copy_range_all(shm_fd, 5, dst, 3, len(source) - 10) == len(source) - 10
        assert count_fallback_reads[0] == (5, 1 << 20)
        assert len(count_fallback_reads) == 4
        assert impl.copy_range_all(shm_fd, 100, dst, 0, 3) == 3
        end = 3 + len(source) - 10
        assert impl.copy_range_all(shm_fd, len(source) - 7, dst, end, 100) == 7  # end of source in the fallback
        assert read_all(dst) == source[100:103] + source[5 : len(source) - 5] + source[-7:]
        # And the other way round.
        count_fallback_reads.clear()
        assert impl.copy_range_all(dst, 0, shm_fd, 1, 2 * len(source)) == end + 7
        assert count_fallback_reads
        assert os.pread(shm_fd, end + 8, 0) == source[:1] + read_all(dst)
        assert os.lseek(dst, 0, os.SEEK_CUR) == 0
        assert os.lseek(shm_fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(dst)


def test_copy_range_all_fallback_reports_real_errors(impl: Impl, tmp_path: Path) -> None:
    # copy_file_range rejects non-regular files with EINVAL; the fallback then
    # meets the real error: pread on a pipe, pwrite on a full device.
    src = open_with(tmp_path / "src.bin", b"x" * 100)
    rfd, wfd = os.pipe()
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.write(wfd, b"data")
        cases = [((rfd, 0, src, 0, 4), errno.ESPIPE), ((src, 0, wfd, 0, 4), errno.ESPIPE), ((src, 0, full, 0, 4), errno.ENOSPC)]
        for args, code in cases:
            with pytest.raises(OSError) as info:
                impl.copy_range_all(*args)
            assert info.value.errno == code
        assert os.read(rfd, 10) == b"data"  # pread failed without consuming anything
    finally:
        for descriptor in (src, rfd, wfd, full):
            os.close(descriptor)


def test_copy_range_all_errors(impl: Impl, tmp_path: Path) -> None:
    src = open_with(tmp_path / "src.bin", b"x" * 100)
    read_only = os.open(tmp_path / "src.bin", os.O_RDONLY)
    append = open_with(tmp_path / "append.bin", b"", os.O_WRONLY | os.O_APPEND)
    bad = closed_fd(tmp_path)
    try:
        cases: list[tuple[tuple[int, int, int, int, int], int]] = [
            ((bad, 0, src, 200, 10), errno.EBADF),
            ((src, 0, bad, 0, 10), errno.EBADF),
            ((src, 0, read_only, 200, 10), errno.EBADF),
            # pwrite would ignore the offset of an O_APPEND file; copy_file_range refuses it.
            ((src, 0, append, 0, 10), errno.EBADF),
            ((src, -1, append, 0, 10), errno.EINVAL),
            ((src, 0, append, -1, 10), errno.EINVAL),
            ((src, 0, append, 0, -1), errno.EINVAL),
        ]
        for args, code in cases:
            with pytest.raises(OSError) as info:
                impl.copy_range_all(*args)
            assert info.value.errno == code, args
            assert info.value.strerror == os.strerror(code)
        assert os.fstat(src).st_size == os.fstat(append).st_size + 100 == 100
    finally:
        for descriptor in (src, read_only, append):
            os.close(descriptor)


def simulate_refusal(impl: Impl, monkeypatch: pytest.MonkeyPatch, first: int, code: int) -> list[int]:
    """Make copy_file_range copy at most `first` bytes, then refuse with `code`, as no file system here does.

    Python: os.copy_file_range is replaced.  Native: _lib is replaced by a proxy
    whose tf_copy_range returns a short count, then -code, as the C loop would.
    Returns the number of copy_file_range calls so far (in a list).
    """
    calls = [0]
    if impl is nativeio.PurePythonIO:
        real_copy = os.copy_file_range

        def copy_file_range(src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
            calls[0] += 1
            if calls[0] > 1 or not first:
                raise OSError(code, os.strerror(code))
            return real_copy(src, dst, min(count, first), offset_src, offset_dst)

        monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    else:
        real_lib = nativeio._lib

        class Lib:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_lib, name)

            @staticmethod
            def tf_copy_range(src: int, src_off: int, dst: int, dst_off: int, length: int) -> int:
                calls[0] += 1
                if calls[0] > 1 or not first:
                    return -code
                return int(real_lib.tf_copy_range(src, src_off, dst, dst_off, min(length, first)))

        monkeypatch.setattr(nativeio, "_lib", Lib())
    return calls


def test_copy_range_all_continues_with_the_fallback_after_a_partial_copy(
    impl: Impl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count_fallback_reads: list[tuple[int, int]]
) -> None:
    calls = simulate_refusal(impl, monkeypatch, 4096, errno.EXDEV)
    source = os.urandom(10_000)
    src = open_with(tmp_path / "src.bin", source)
    dst = open_with(tmp_path / "dst.bin", b"")
    try:
        assert impl.copy_range_all(src, 100, dst, 7, 9000) == 9000
        assert calls == [2]
        assert count_fallback_reads == [(4196, 9000 - 4096)]
        assert read_all(dst) == b"\0" * 7 + source[100:9100]
    finally:
        os.close(src)
        os.close(dst)


def test_copy_range_all_fallback_keeps_the_kernels_rules(
    impl: Impl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count_fallback_reads: list[tuple[int, int]]
) -> None:
    # As on a kernel without copy_file_range: the fallback itself must refuse
    # an O_APPEND destination and overlapping ranges of one file.
    simulate_refusal(impl, monkeypatch, 0, errno.ENOSYS)
    src = open_with(tmp_path / "src.bin", b"0123456789")
    append = open_with(tmp_path / "append.bin", b"", os.O_WRONLY | os.O_APPEND)
    try:
        for args, code in (((src, 0, append, 0, 5), errno.EBADF), ((src, 0, src, 5, 10), errno.EINVAL)):
            with pytest.raises(OSError) as info:
                impl.copy_range_all(*args)
            assert info.value.errno == code
        assert not count_fallback_reads
        assert impl.copy_range_all(src, 0, src, 10, 10) == 10
        assert count_fallback_reads == [(0, 10)]
        assert read_all(src) == b"0123456789" * 2
        assert os.fstat(append).st_size == 0
    finally:
        os.close(src)
        os.close(append)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(0, 5000),
    copies=st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 6000), st.integers(0, 6000)), max_size=5),
    across=st.booleans(),
)
def test_copy_range_all_agrees_with_a_model(
    tmp_path: Path, size: int, copies: list[tuple[int, int, int]], across: bool
) -> None:
    source = os.urandom(size)
    for name, impl in nativeio.IMPLEMENTATIONS.items():
        expected = bytearray()
        if across and os.path.isdir("/dev/shm"):
            src = os.open("/dev/shm", os.O_RDWR | os.O_TMPFILE, 0o600)
            os.write(src, source)
        else:
            src = open_with(tmp_path / f"model-src-{name}.bin", source)
        dst = open_with(tmp_path / f"model-dst-{name}.bin", b"")
        try:
            for src_offset, dst_offset, length in copies:
                data = source[src_offset : src_offset + length]
                assert impl.copy_range_all(src, src_offset, dst, dst_offset, length) == len(data), name
                if data:
                    expected.extend(b"\0" * max(0, dst_offset + len(data) - len(expected)))
                    expected[dst_offset : dst_offset + len(data)] = data
            assert read_all(dst) == expected, name
        finally:
            os.close(src)
            os.close(dst)


# --- sendfile_some -------------------------------------------------------------------


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected (sender, receiver) pair; the sender is non-blocking."""
    sender, receiver = socket.socketpair()
    sender.setblocking(False)
    yield sender, receiver
    sender.close()
    receiver.close()


def _drain(sock: socket.socket) -> bytes:
    received = bytearray()
    sock.setblocking(False)
    try:
        while chunk := sock.recv(1 << 20):
            received.extend(chunk)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return bytes(received)


def test_sendfile_some_until_the_socket_is_full_then_resume(
    impl: Impl, tmp_path: Path, sockets: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = sockets
    data = os.urandom(4 << 20)  # far more than a socket buffer
    src = open_with(tmp_path / "src.bin", data)
    received = bytearray()
    offset = calls = 0
    full = 0
    try:
        while True:
            try:
                n = impl.sendfile_some(sender.fileno(), src, offset, len(data) - offset + 100)
            except BlockingIOError as exc:
                assert exc.errno == errno.EAGAIN
                assert 0 < offset < len(data)
                full += 1
                received.extend(_drain(receiver))  # what an event loop does once writable
                continue
            calls += 1
            if n == 0:
                break  # end of the file
            assert 0 < n <= len(data) - offset
            offset += n
        assert offset == len(data)
        assert full >= 2
        assert calls > full  # short sends: each call sends what fits
        received.extend(_drain(receiver))
        assert received == data
        assert os.lseek(src, 0, os.SEEK_CUR) == 0  # positional: the file offset is untouched
        assert impl.sendfile_some(sender.fileno(), src, len(data) + 5, 10) == 0  # beyond the end
    finally:
        os.close(src)


def test_sendfile_some_at_the_file_position(impl: Impl, tmp_path: Path, sockets: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = sockets
    data = os.urandom(10_000)
    src = open_with(tmp_path / "src.bin", data)
    try:
        os.lseek(src, 100, os.SEEK_SET)
        assert impl.sendfile_some(sender.fileno(), src, -1, 50) == 50
        assert os.lseek(src, 0, os.SEEK_CUR) == 150
        assert impl.sendfile_some(sender.fileno(), src, 9990, 50) == 10  # positional again
        assert os.lseek(src, 0, os.SEEK_CUR) == 150
        assert impl.sendfile_some(sender.fileno(), src, -1, 0) == 0
        os.lseek(src, 9995, os.SEEK_SET)
        assert impl.sendfile_some(sender.fileno(), src, -1, 100) == 5
        assert impl.sendfile_some(sender.fileno(), src, -1, 100) == 0
        assert receiver.recv(1000) == data[100:150] + data[9990:] + data[9995:]
    finally:
        os.close(src)


def test_sendfile_some_errors(impl: Impl, tmp_path: Path, sockets: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = sockets
    src = open_with(tmp_path / "src.bin", b"x" * 100)
    bad = closed_fd(tmp_path)
    try:
        cases: list[tuple[tuple[int, int, int, int], int]] = [
            ((bad, src, 0, 10), errno.EBADF),
            ((sender.fileno(), bad, 0, 10), errno.EBADF),
            ((sender.fileno(), bad, -1, 10), errno.EBADF),
            ((sender.fileno(), receiver.fileno(), 0, 10), errno.ESPIPE),  # a socket is no file
            ((sender.fileno(), src, -2, 10), errno.EINVAL),
            ((sender.fileno(), src, 0, -1), errno.EINVAL),
        ]
        for args, code in cases:
            with pytest.raises(OSError) as info:
                impl.sendfile_some(*args)
            assert info.value.errno == code, args
            assert info.value.strerror == os.strerror(code)
        # No syscall for nothing, so not even a bad descriptor is noticed.
        assert impl.sendfile_some(bad, bad, 0, 0) == 0
        receiver.close()
        # No reader: EPIPE, raised as the same subclass os.sendfile would raise.
        previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            with pytest.raises(BrokenPipeError):
                impl.sendfile_some(sender.fileno(), src, 0, 10)
        finally:
            signal.signal(signal.SIGPIPE, previous)
    finally:
        os.close(src)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_sendfile_some_retries_eintr(impl: Impl, tmp_path: Path) -> None:
    """A blocking sendfile into a full socket is interrupted before sending anything (EINTR, retried), then completes."""
    sender, receiver = socket.socketpair()
    data = os.urandom(1 << 20)
    src = open_with(tmp_path / "src.bin", data)
    sender.setblocking(False)
    prefix = 0
    try:
        while True:
            prefix += sender.send(b"P" * 4096)
    except BlockingIOError:
        sender.setblocking(True)
    received = bytearray()
    handled: list[int] = []
    main = threading.get_ident()

    def reader() -> None:
        time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGUSR1)  # -> EINTR, nothing sent yet
        time.sleep(0.05)
        while chunk := receiver.recv(1 << 20):
            received.extend(chunk)

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = impl.sendfile_some(sender.fileno(), src, 0, len(data))
    finally:
        sender.close()  # EOF for the reader even if the call raised
        thread.join()
        receiver.close()
        os.close(src)
        signal.signal(signal.SIGUSR1, previous)
    assert handled == [signal.SIGUSR1]
    assert 0 < result <= len(data)
    assert received == b"P" * prefix + data[:result]


# --- BackgroundWriter --------------------------------------------------------------------


@pytest.fixture
def background() -> Iterator[nativeio.BackgroundWriter]:
    _get_impl("native")
    writer = nativeio.BackgroundWriter()
    yield writer
    writer.close()


def test_background_writer_writes_while_the_caller_goes_on(background: nativeio.BackgroundWriter, fd: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    for round_ in range(3):                 # one thread, many writes
        background.start(fd, data, round_ * len(data))
        assert background.wait() == len(data)
    assert read_all(fd) == data * 3


def test_background_writer_reports_the_write_error_at_wait(background: nativeio.BackgroundWriter,
                                                           tmp_path: Path) -> None:
    background.start(closed_fd(tmp_path), b"abc", 0)
    with pytest.raises(OSError) as raised:
        background.wait()
    assert raised.value.errno == errno.EBADF


def test_background_writer_takes_one_write_at_a_time(background: nativeio.BackgroundWriter, fd: int) -> None:
    with pytest.raises(OSError) as nothing_started:
        background.wait()
    assert nothing_started.value.errno == errno.EINVAL
    background.start(fd, b"first", 0)
    with pytest.raises(OSError) as busy:
        background.start(fd, b"second", 5)
    assert busy.value.errno == errno.EBUSY
    assert background.wait() == 5 and read_all(fd) == b"first"


def test_background_writer_close_waits_for_the_write_in_flight(fd: int) -> None:
    _get_impl("native")
    writer = nativeio.BackgroundWriter()
    data = os.urandom(8 * 1024 * 1024)
    writer.start(fd, data, 0)
    writer.close()
    writer.close()                          # twice is fine
    assert read_all(fd) == data
    with pytest.raises(ValueError):
        writer.start(fd, b"x", 0)


def test_background_writer_releases_the_buffer_after_wait(background: nativeio.BackgroundWriter, fd: int) -> None:
    data = bytearray(b"resizable")
    background.start(fd, data, 0)
    background.wait()
    data += b" again"                       # a buffer still exported could not be resized
    assert read_all(fd) == b"resizable"


def test_no_background_writer_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nativeio, "_active", nativeio.PurePythonIO)
    assert nativeio.background_writer() is None


def _address(buffer: memoryview) -> int:
    import ctypes
    anchor = ctypes.c_char.from_buffer(buffer)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds address (from /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.parametrize("size", [4096, 3 * 4096, nativeio.HUGE_PAGE, 3 * nativeio.HUGE_PAGE])
def test_aligned_buffer_is_zeroed_writable_and_page_aligned(size: int) -> None:
    buffer = nativeio.aligned_buffer(size)
    assert len(buffer) == size and not buffer.readonly and buffer.format == "B"
    assert _address(buffer) % nativeio.DIRECT_IO_ALIGNMENT == 0
    assert bytes(buffer) == bytes(size)
    buffer[-1] = 7
    assert buffer[-1] == 7


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage").exists(),
                    reason="this kernel has no transparent huge pages")
def test_aligned_buffers_of_huge_page_multiples_ask_for_huge_pages() -> None:
    buffer = nativeio.aligned_buffer(2 * nativeio.HUGE_PAGE)
    address = _address(buffer)
    assert address % nativeio.HUGE_PAGE == 0
    # MADV_HUGEPAGE marks the mapping "hg"; whether the kernel finds huge pages is its own matter.
    assert "hg" in _vm_flags(address) and "hg" in _vm_flags(address + len(buffer) - 1)
    assert "sh" not in _vm_flags(address)      # a shared mapping would get no transparent huge pages


def test_aligned_buffers_are_private_to_the_process() -> None:
    buffer = nativeio.aligned_buffer(nativeio.HUGE_PAGE)
    pid = os.fork()
    if pid == 0:
        buffer[0] = 1
        os._exit(0)
    os.waitpid(pid, 0)
    assert buffer[0] == 0
