"""Tests for tusfast.nativeio; every behavioural test runs against both implementations."""

from __future__ import annotations

import array
import errno
import fcntl
import mmap
import os
import signal
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
