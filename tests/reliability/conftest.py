"""Fixtures of the reliability tests: servers in their own process group (so kill -9 can take a
supervisor and its workers at once), small tmpfs mounts for disk-full and read-only tests, and a
few helpers to look at what a server stored."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.server_process import ServerProcess

MiB = 1024 * 1024


class GroupServer(ServerProcess):
    """A ServerProcess that leads its own process group: `kill_group()` is kill -9 of the supervisor
    and every worker in one go, as an OOM killer or a container stop would do it."""

    own_group = True

    def group_members(self) -> set[int]:
        return {pid for pid in _live_pids() if _pgid(pid) == self.pid}

    def kill_group(self) -> None:
        if self._proc is None or (self._proc.poll() is not None and not self.group_members()):
            return      # already gone: never signal a group id the system may have handed out again
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait(10)
        deadline = time.monotonic() + 10
        while self.group_members() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.group_members(), "processes of the killed group are still alive"

    def kill(self) -> None:
        self.kill_group()      # restart() kills through this too


def _live_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _pgid(pid: int) -> int | None:
    """The process group of a live (not zombie) process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[2])


StartGroupServer = Callable[..., GroupServer]


@pytest.fixture
def start_group_server(tmp_path: Path) -> Iterator[StartGroupServer]:
    started: list[GroupServer] = []

    def start(*args: str, upload_dir: Path | None = None, env: dict[str, str] | None = None) -> GroupServer:
        process = GroupServer(upload_dir or tmp_path / f"data{len(started)}", *args, env=env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill_group()


# ---- tmpfs mounts -------------------------------------------------------------------------------


Mount = Callable[..., Path]


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], check=False, capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """mount(name, size="8m") mounts a fresh tmpfs at tmp_path/name. Unmounted (lazily: a server may
    still hold a file open) when the test ends. Skips when this process may not mount."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "8m") -> Path:
        point = tmp_path / name
        point.mkdir()
        result = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point))
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}); "
                        "the disk-full and read-only tests need root or CAP_SYS_ADMIN")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        _mount("-o", "remount,rw", str(point))
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def remount(point: Path, mode: str) -> None:
    """remount(point, "ro") / remount(point, "rw")"""
    result = _mount("-o", f"remount,{mode}", str(point))
    assert result.returncode == 0, result.stderr


def fill(directory: Path, name: str = "filler") -> Path:
    """Write zeros into directory/name until the file system is full."""
    path = directory / name
    block = b"\0" * 65536
    with open(path, "ab", buffering=0) as stream:
        try:
            while True:
                stream.write(block)
        except OSError:
            pass
    # A few bytes may still fit in the last partial block: take them too.
    with open(path, "ab", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0")
        except OSError:
            pass
    return path


# ---- looking at what a server stored ----------------------------------------------------------


def info_path(upload_dir: Path, upload_id: str) -> Path:
    """The .info file of an upload, flat or under a --dir-layout directory."""
    flat = upload_dir / f"{upload_id}.info"
    if flat.exists() or flat.is_symlink():
        return flat
    found = [path for path in upload_dir.rglob(f"{upload_id}.info") if ".ids" not in path.parts]
    assert len(found) == 1, found
    return found[0]


def data_file(upload_dir: Path, upload_id: str) -> Path:
    return info_path(upload_dir, upload_id).with_suffix("")


def files_of(upload_dir: Path, upload_id: str) -> list[Path]:
    """Every path left in the upload dir that belongs to this upload."""
    return [path for path in upload_dir.rglob("*") if upload_id in path.name]
