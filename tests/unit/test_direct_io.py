"""FileWriter.write_aligned: O_DIRECT for the aligned middle of a buffer, the page cache for its
ragged edges, and the same bytes on disk whichever way they went."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import random
from pathlib import Path
from typing import Awaitable, TypeVar

import pytest

from tusfast import nativeio
from tusfast.core.model import UploadInfo
from tusfast.storage import DirectWriter, FileStorage
from tusfast.storage.file import LOCAL_FILE_SYSTEMS, DirectIO, FileWriter
from tusfast.storage.mounts import Mount, mount_of

T = TypeVar("T")
ID = "0123456789abcdef0123456789abcdef"
ALIGN = nativeio.DIRECT_IO_ALIGNMENT
MiB = 1024 * 1024


def run(coroutine: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await coroutine
    return asyncio.run(wrapped())


def aligned_copy(data: bytes, offset: int) -> memoryview:
    """data in a page-aligned buffer, placed so that its address is congruent to offset (the
    contract of write_aligned, which the body reader keeps)."""
    skew = offset % ALIGN
    buffer = nativeio.aligned_buffer(skew + len(data) + ALIGN)
    buffer[skew:skew + len(data)] = data
    return buffer[skew:skew + len(data)]


@pytest.fixture(params=["on", "off"], ids=["direct", "page-cache"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> FileStorage:
    store = FileStorage(tmp_path, direct_io=request.param)
    store.prepare()
    return store


def open_writer(storage: FileStorage, offset: int = 0) -> FileWriter:
    info = run(storage.create(UploadInfo(ID, 64 * MiB)))
    writer = run(storage.open_writer(info))
    assert isinstance(writer, FileWriter) and isinstance(writer, DirectWriter)
    return writer


def test_the_probe_decides_and_off_means_off(storage: FileStorage) -> None:
    writer = open_writer(storage)
    assert writer.direct_io == storage.direct_io.enabled
    if storage.direct_io_mode == "off":
        assert writer.direct_io is False


@pytest.mark.parametrize("offset,length", [
    (0, ALIGN), (0, 3 * MiB), (0, 100), (1, ALIGN - 1), (1, ALIGN), (100, 3 * ALIGN + 7),
    (ALIGN - 1, 2), (ALIGN, MiB + 1), (5 * ALIGN + 33, 2 * MiB - 33), (7, 0),
])
def test_every_byte_lands_where_it_belongs(storage: FileStorage, offset: int, length: int) -> None:
    rng = random.Random(f"{offset}/{length}")
    before = rng.randbytes(offset)
    data = rng.randbytes(length)
    writer = open_writer(storage)
    run(writer.write(0, [before]))          # through the page cache, as a transport's bytes go
    writer.write_aligned(offset, aligned_copy(data, offset))
    run(writer.close(durable=True))
    assert (storage.directory / ID).read_bytes() == before + data


def test_a_body_in_parts_as_the_reader_hands_them_out(storage: FileStorage) -> None:
    """Unaligned start, full aligned buffers, a short last part: as splice.read_body produces."""
    rng = random.Random(7)
    start, size, part = 12_345, 5 * MiB + 77, 2 * MiB
    data = rng.randbytes(size)
    writer = open_writer(storage)
    run(writer.write(0, [bytes(start)]))
    position, first = 0, part - start % ALIGN
    while position < size:
        count = min(first if position == 0 else part, size - position)
        writer.write_aligned(start + position, aligned_copy(data[position:position + count], start + position))
        position += count
    assert os.fstat(writer._fd).st_size == start + size     # the offset is the file's size, at once
    run(writer.close(durable=True))
    assert (storage.directory / ID).read_bytes() == bytes(start) + data


def test_a_refused_direct_write_is_written_through_the_page_cache(storage: FileStorage) -> None:
    """A buffer that breaks the alignment contract: where the file system insists on alignment the
    kernel refuses the O_DIRECT write (EINVAL); the bytes are still written, and direct I/O is
    off from then on. Elsewhere (tmpfs) the write simply succeeds."""
    data = random.Random(3).randbytes(3 * ALIGN)
    buffer = nativeio.aligned_buffer(5 * ALIGN)
    buffer[1:1 + len(data)] = data          # address 1 past a page, file offset on a page
    writer = open_writer(storage)
    writer.write_aligned(0, buffer[1:1 + len(data)])
    run(writer.close(durable=True))
    assert (storage.directory / ID).read_bytes() == data
    if storage.direct_io.enabled:
        assert writer.direct_io


def test_a_staged_write_rolls_back_direct_bytes_too(storage: FileStorage) -> None:
    info = run(storage.create(UploadInfo(ID, 64 * MiB)))
    writer = run(storage.open_writer(info, staged=True))
    assert isinstance(writer, FileWriter)
    writer.write_aligned(0, aligned_copy(b"x" * MiB, 0))
    run(writer.close(durable=False))        # never committed: the checksum did not match
    assert (storage.directory / ID).stat().st_size == 0


def test_direct_io_state_is_shared_and_switches_off_once(caplog: pytest.LogCaptureFixture) -> None:
    state = DirectIO(True)
    state.refused(OSError(22, "Invalid argument"))
    state.refused(OSError(22, "Invalid argument"))
    assert state.enabled is False
    assert len([r for r in caplog.records if "O_DIRECT" in r.getMessage()]) == 1


def test_the_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    DirectIO.choose(tmp_path, "on")
    assert list(tmp_path.iterdir()) == []
    assert DirectIO.choose(tmp_path / "missing", "on").enabled is False


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /srv/uploads rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 40 0:36 / /srv/uploads/local\\040disk rw shared:21 - xfs /dev/vdb rw
42 22 0:37 / /mnt/fuse rw - fuse.sshfs user@host:/ rw
"""


@pytest.mark.parametrize("path,mount", [
    ("/srv/uploads/2026", Mount("/srv/uploads", "nfs4", "server:/export")),
    ("/srv/uploads", Mount("/srv/uploads", "nfs4", "server:/export")),
    ("/srv/uploads/local disk/x", Mount("/srv/uploads/local disk", "xfs", "/dev/vdb")),
    ("/srv/uploadsX", Mount("/", "ext4", "/dev/vda")),
    ("/mnt/fuse/a", Mount("/mnt/fuse", "fuse.sshfs", "user@host:/")),
])
def test_the_mount_is_the_one_with_the_longest_mount_point(tmp_path: Path, path: str, mount: Mount) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    assert mount_of(Path(path), str(mountinfo)) == mount
    assert mount_of(Path(path), str(tmp_path / "missing")) is None


def test_auto_leaves_network_file_systems_to_the_page_cache(tmp_path: Path) -> None:
    """On NFS every O_DIRECT write would wait for the server: auto says no; on tries anyway."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO + f"50 22 0:40 / {tmp_path} rw - nfs4 server:/export rw\n")
    auto = DirectIO.choose(tmp_path, "auto", str(mountinfo))
    assert auto.enabled is False and "nfs4" in auto.why
    forced = DirectIO.choose(tmp_path, "on", str(mountinfo))
    assert forced.enabled is DirectIO.choose(tmp_path, "on").enabled     # whatever this disk takes
    assert DirectIO.choose(tmp_path, "off", str(mountinfo)).enabled is False


def test_auto_takes_the_local_file_system_of_this_machine(tmp_path: Path) -> None:
    found = mount_of(tmp_path)
    kind = found.type if found is not None else ""
    chosen = DirectIO.choose(tmp_path, "auto")
    if kind in LOCAL_FILE_SYSTEMS:
        assert chosen.enabled is DirectIO.choose(tmp_path, "on").enabled
    else:
        assert chosen.enabled is False and kind in chosen.why


def test_the_last_part_of_a_body_goes_through_the_page_cache(storage: FileStorage) -> None:
    """The reply waits for the last part: it is not held up by the device. Same bytes either way."""
    data = random.Random(11).randbytes(3 * MiB + 5)
    writer = open_writer(storage)
    writer.write_aligned(0, aligned_copy(data[:2 * MiB], 0))
    writer.write_aligned(2 * MiB, aligned_copy(data[2 * MiB:], 2 * MiB), last=True)
    assert writer._direct_fd >= 0 or not writer.direct_io      # the first part went direct
    assert os.fstat(writer._fd).st_size == len(data)
    run(writer.close(durable=True))
    path = storage.directory / ID
    mount = mount_of(path)
    if writer.direct_io and mount is not None and mount.type != "tmpfs":    # tmpfs is all page cache
        assert resident_pages(path, 0, 2 * MiB) == 0
        assert resident_pages(path, 2 * MiB, MiB) == MiB // ALIGN
    assert path.read_bytes() == data


def resident_pages(path: Path, offset: int, length: int) -> int:
    """Pages of the file's range that sit in the page cache (mincore(2) on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        assert address not in (None, ctypes.c_void_p(-1).value)
        pages = (ctypes.c_ubyte * (length // ALIGN))()
        try:
            assert libc.mincore(address, length, pages) == 0, ctypes.get_errno()
        finally:
            libc.munmap(address, length)
    finally:
        os.close(fd)
    return sum(page & 1 for page in pages)


def writes_behind(storage: FileStorage) -> bool:
    return storage.direct_io.enabled and nativeio.HAVE_NATIVE


def test_a_body_written_behind_lands_whole(storage: FileStorage) -> None:
    """As the handler feeds it: each part but the last may still be on its way to the disk when
    write_aligned returns; its function is called before the next part is written."""
    rng = random.Random(8)
    start, size, part = 12_345, 7 * MiB + 77, 2 * MiB
    data = rng.randbytes(size)
    writer = open_writer(storage)
    run(writer.write(0, [bytes(start)]))
    position, first, deferred = 0, part - start % ALIGN, 0
    finish = None
    while position < size:
        count = min(first if position == 0 else part, size - position)
        last = position + count == size
        buffer = aligned_copy(data[position:position + count], start + position)
        if finish is not None:
            finish()
        finish = writer.write_aligned(start + position, buffer, last, behind=not last)
        deferred += finish is not None
        position += count
    assert finish is None                   # the last part is written before the reply
    assert os.fstat(writer._fd).st_size == start + size
    run(writer.close(durable=True))
    assert (storage.directory / ID).read_bytes() == bytes(start) + data
    assert deferred == (3 if writes_behind(storage) else 0)


def test_one_write_behind_at_a_time_per_process(storage: FileStorage) -> None:
    """While one body's write is in flight the disk is busy: another body writes in its own thread."""
    if not writes_behind(storage):
        pytest.skip("writes behind need O_DIRECT and the C extension")
    first = open_writer(storage)
    other = run(storage.open_writer(run(storage.create(UploadInfo("f" * 32, 64 * MiB)))))
    assert isinstance(other, FileWriter)
    a, b, c = (aligned_copy(bytes([n]) * MiB, 0) for n in (1, 2, 3))
    finish = first.write_aligned(0, a, behind=True)
    assert finish is not None
    assert other.write_aligned(0, b, behind=True) is None       # written at once instead
    assert os.fstat(other._fd).st_size == MiB
    finish()
    again = other.write_aligned(MiB, c, behind=True)             # lent again once given back
    assert again is not None
    again()
    run(first.close(durable=True))
    run(other.close(durable=True))
    assert (storage.directory / ID).read_bytes() == bytes(a)
    assert (storage.directory / ("f" * 32)).read_bytes() == bytes(b) + bytes(c)


def test_a_write_behind_that_fails_raises_when_finished(storage: FileStorage) -> None:
    if not writes_behind(storage):
        pytest.skip("writes behind need O_DIRECT and the C extension")
    writer = open_writer(storage)
    finish = writer.write_aligned(0, aligned_copy(b"x" * MiB, 0), behind=True)
    assert finish is not None
    finish()
    os.close(writer._direct_fd)             # the next write to it fails (EBADF)
    failing = writer.write_aligned(MiB, aligned_copy(b"y" * MiB, MiB), behind=True)
    assert failing is not None
    with pytest.raises(OSError):
        failing()
    writer._direct_fd = -1
    assert os.fstat(writer._fd).st_size == MiB      # nothing claimed that was not written
    run(writer.close(durable=True))
