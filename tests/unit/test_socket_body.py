"""tusfast.http.splice: bodies taken straight from a real TCP socket by worker threads, which wait
for the socket themselves; an abort, a timeout, an early end or a cancelled task all stop them."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tusfast.http import splice

MiB = 1024 * 1024


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server side) of a loopback TCP connection; the server side is non-blocking, as a
    transport's socket is."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    yield client, server
    client.close()
    server.close()


def send_later(sock: socket.socket, data: bytes, pause: float = 0.0, close: bool = False) -> threading.Thread:
    def send() -> None:
        time.sleep(pause)
        sock.sendall(data)
        if close:
            sock.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=send)
    thread.start()
    return thread


class Parts:
    def __init__(self, phase: int = 0) -> None:
        self.phase = phase
        self.data = bytearray()
        self.misaligned = 0
        self.sizes: list[int] = []

    def consume(self, part: memoryview, position: int) -> None:
        assert position == len(self.data), "parts come in order, back to back"
        address = _address(part)
        if address % splice.ALIGN != (self.phase + position) % splice.ALIGN:
            self.misaligned += 1
        self.data += part
        self.sizes.append(len(part))


def _address(view: memoryview) -> int:
    import ctypes
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_read_body_hands_out_aligned_parts_prefix_first(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    rng = random.Random(1)
    prefix = [rng.randbytes(1000), rng.randbytes(70_000)]
    rest = rng.randbytes(5 * MiB + 3)
    parts = Parts(phase=777)
    sender = send_later(client, rest, pause=0.05)

    async def read() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), len(rest), parts.consume, 5, cancelled,
                                      phase=777, prefix=prefix)
    moved = asyncio.run(read())
    sender.join()
    assert moved == len(rest)                   # the prefix is not the socket's
    assert bytes(parts.data) == b"".join(prefix) + rest
    assert parts.misaligned == 0


@pytest.mark.parametrize("size", [MiB + 5, 5 * MiB + 3])
def test_the_last_part_of_a_body_is_small(pair: tuple[socket.socket, socket.socket], size: int) -> None:
    """The reply waits for the last part (it is written through the page cache): all but FINAL_PART
    of the last buffer is handed out first, as a part that ends on an alignment boundary."""
    client, server = pair
    rest = random.Random(size).randbytes(size)
    prefix = [rest[:20_000]]
    parts = Parts(phase=777)
    sender = send_later(client, rest[20_000:], pause=0.05)

    async def read() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), size - 20_000, parts.consume, 5, cancelled,
                                      phase=777, prefix=prefix)
    asyncio.run(read())
    sender.join()
    assert bytes(parts.data) == rest
    assert parts.misaligned == 0
    assert len(parts.sizes) >= 2 and parts.sizes[-1] < splice.FINAL_PART + splice.ALIGN
    assert (777 + size - parts.sizes[-1]) % splice.ALIGN == 0


def test_splice_body_stores_the_body_at_its_offset(pair: tuple[socket.socket, socket.socket],
                                                   tmp_path: Path) -> None:
    client, server = pair
    rest = random.Random(2).randbytes(3 * MiB)
    path = tmp_path / "data"
    path.write_bytes(b"head")
    fd = os.open(path, os.O_WRONLY)
    stored: list[tuple[int, int]] = []
    sender = send_later(client, rest, pause=0.05)

    async def move() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.splice_body(server.fileno(), fd, 4, len(rest), lambda o, n: stored.append((o, n)),
                                        5, cancelled)
    try:
        assert asyncio.run(move()) == len(rest)
    finally:
        os.close(fd)
    sender.join()
    assert path.read_bytes() == b"head" + rest
    assert sum(n for _, n in stored) == len(rest) and stored[0][0] == 4


@pytest.mark.parametrize("way", ["read", "splice"])
def test_an_abort_wakes_a_waiting_step_at_once(pair: tuple[socket.socket, socket.socket], tmp_path: Path,
                                               way: str) -> None:
    client, server = pair
    client.sendall(b"x" * 1000)                 # then nothing more: the step waits in poll
    parts = Parts()
    fd = os.open(tmp_path / "data", os.O_WRONLY | os.O_CREAT)

    async def transfer() -> tuple[splice.SpliceEnded, float]:
        loop = asyncio.get_running_loop()
        cancelled = loop.create_future()
        loop.call_later(0.3, cancelled.set_result, None)
        started = time.monotonic()
        with pytest.raises(splice.SpliceEnded) as ended:
            if way == "read":
                await splice.read_body(server.fileno(), MiB, parts.consume, 30, cancelled)
            else:
                await splice.splice_body(server.fileno(), fd, 0, MiB, lambda o, n: None, 30, cancelled)
        return ended.value, time.monotonic() - started
    try:
        ended, took = asyncio.run(transfer())
    finally:
        os.close(fd)
    assert ended.reason == "aborted" and ended.moved == 1000
    assert took < 10                            # woken by the eventfd, not by the 30 s timeout
    if way == "read":
        assert bytes(parts.data) == b"x" * 1000   # what arrived is handed out before stopping


def test_a_silent_client_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair

    async def read() -> None:
        cancelled = asyncio.get_running_loop().create_future()
        await splice.read_body(server.fileno(), MiB, Parts().consume, 0.2, cancelled)
    with pytest.raises(splice.SpliceEnded) as ended:
        asyncio.run(read())
    assert ended.value.reason == "timeout" and ended.value.moved == 0


def test_an_early_end_says_how_much_came(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    sender = send_later(client, b"y" * 300_000, close=True)
    parts = Parts()

    async def read() -> None:
        cancelled = asyncio.get_running_loop().create_future()
        await splice.read_body(server.fileno(), MiB, parts.consume, 5, cancelled)
    with pytest.raises(splice.SpliceEnded) as ended:
        asyncio.run(read())
    sender.join()
    assert ended.value.reason == "eof" and ended.value.moved == 300_000 == len(parts.data)


def test_a_cancelled_task_stops_its_step_before_it_ends(pair: tuple[socket.socket, socket.socket]) -> None:
    """The step uses the socket and the file: cancelling the task must not leave it running."""
    client, server = pair
    finished: list[float] = []

    def consume(part: memoryview, position: int) -> None:
        pass

    async def read() -> None:
        cancelled = asyncio.get_running_loop().create_future()
        try:
            await splice.read_body(server.fileno(), MiB, consume, 30, cancelled)
        finally:
            finished.append(time.monotonic())

    async def main() -> None:
        task = asyncio.create_task(read())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    started = time.monotonic()
    asyncio.run(main())
    assert finished and finished[0] - started < 10
    assert not [t for t in threading.enumerate() if t.name.startswith("tusfast-splice") and _busy(t)]


def _busy(thread: threading.Thread) -> bool:
    """A pool thread that is not parked waiting for work (best effort: it has no other state)."""
    frame = __import__("sys")._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name in ("_read_step", "_splice_step"):
            return True
        frame = frame.f_back
    return False


def test_progress_is_reported_between_steps(pair: tuple[socket.socket, socket.socket]) -> None:
    """Reports come while the body streams in, and count only bytes already consumed (stored)."""
    client, server = pair
    chunk = b"z" * MiB
    reports: list[int] = []
    parts = Parts()

    def send() -> None:
        for _ in range(8):
            client.sendall(chunk)
            time.sleep(0.05)
    sender = threading.Thread(target=send)
    sender.start()

    async def read() -> int:
        async def progress(stored: int) -> None:
            assert stored <= len(parts.data)
            reports.append(stored)
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), 8 * len(chunk), parts.consume, 5, cancelled,
                                      splice.Reporting(progress, 0.05))
    assert asyncio.run(read()) == 8 * len(chunk)
    sender.join()
    assert reports == sorted(reports) and reports[-1] == 8 * len(chunk)
    assert [r for r in reports if 0 < r < 8 * len(chunk)], reports


def test_a_paused_client_hands_its_thread_back(pair: tuple[socket.socket, socket.socket]) -> None:
    """A client that pauses is waited for on the event loop: its worker thread is free meanwhile."""
    client, server = pair
    busy: list[bool] = []

    def send() -> None:
        client.sendall(b"a" * 1000)
        time.sleep(0.5)
        busy.extend(_busy(t) for t in threading.enumerate() if t.name.startswith("tusfast-splice"))
        client.sendall(b"b" * 1000)
    sender = threading.Thread(target=send)
    sender.start()
    parts = Parts()

    async def read() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), 2000, parts.consume, 5, cancelled)
    assert asyncio.run(read()) == 2000
    sender.join()
    assert bytes(parts.data) == b"a" * 1000 + b"b" * 1000
    assert busy and not any(busy)


def test_what_a_paused_client_sent_is_consumed_while_it_pauses(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    parts = Parts()
    seen: list[int] = []

    def send() -> None:
        client.sendall(b"p" * 30_000)
        deadline = time.monotonic() + 5
        while len(parts.data) < 30_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(len(parts.data))
        client.sendall(b"q" * 70_000)
    sender = threading.Thread(target=send)
    sender.start()

    async def read() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), 100_000, parts.consume, 10, cancelled)
    assert asyncio.run(read()) == 100_000
    sender.join()
    assert seen == [30_000]                     # stored during the pause, not held back
    assert bytes(parts.data) == b"p" * 30_000 + b"q" * 70_000


@pytest.mark.parametrize("overlap", [False, True], ids=["in-turn", "overlapped"])
def test_a_slow_consumer_gets_every_part_in_order(pair: tuple[socket.socket, socket.socket],
                                                  overlap: bool) -> None:
    client, server = pair
    body = random.Random(9).randbytes(9 * MiB + 17)
    parts = Parts(phase=5)
    threads: set[str] = set()

    def consume(part: memoryview, position: int) -> None:
        threads.add(threading.current_thread().name.split("_")[0])
        time.sleep(0.01)                        # a hash costs time: the next buffer fills meanwhile
        parts.consume(part, position)
    sender = send_later(client, body)

    async def read() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), len(body), consume, 10, cancelled, phase=5, overlap=overlap)
    assert asyncio.run(read()) == len(body)
    sender.join()
    assert bytes(parts.data) == body and parts.misaligned == 0
    assert threads == ({"tusfast-consume"} if overlap else {"tusfast-splice"})


@pytest.mark.parametrize("overlap", [False, True], ids=["in-turn", "overlapped"])
def test_a_failing_consumer_stops_the_body(pair: tuple[socket.socket, socket.socket], overlap: bool) -> None:
    client, server = pair
    calls: list[int] = []

    def consume(part: memoryview, position: int) -> None:
        calls.append(position)
        if position >= 2 * MiB:
            raise OSError(28, "No space left on device")
    sender = send_later(client, bytes(8 * MiB))

    async def read() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), 8 * MiB, consume, 10, cancelled, overlap=overlap)
    with pytest.raises(OSError, match="No space"):
        asyncio.run(read())
    client.close()
    sender.join()
    assert max(calls) == 2 * MiB                # nothing consumed after the failure


def test_a_consumer_that_finishes_later_keeps_its_buffer_until_finished(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A consumer may return a function (a write still in flight): the next part fills the other
    buffer, the function runs before the next part is consumed and before the body ends, and
    progress counts a part only once its function ran."""
    client, server = pair
    body = random.Random(11).randbytes(9 * MiB + 17)
    parts = Parts(phase=5)
    kinds: list[str] = []
    unfinished: dict[int, bytes] = {}
    finished_ends = {0}
    early_reports: list[int] = []

    def consume(part: memoryview, position: int) -> splice.Finish:
        assert not unfinished, "the previous part was finished first"
        kinds.append("consume")
        unfinished[position] = bytes(part)

        def finish() -> None:
            time.sleep(0.005)
            assert bytes(part) == unfinished.pop(position), "the buffer stayed untouched"
            kinds.append("finish")
            parts.consume(part, position)
            finished_ends.add(position + len(part))
        return finish

    async def progress(stored: int) -> None:
        if stored not in finished_ends:
            early_reports.append(stored)
    sender = send_later(client, body)

    async def read() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), len(body), consume, 10, cancelled,
                                      splice.Reporting(progress, 0.001), phase=5)
    assert asyncio.run(read()) == len(body)
    sender.join()
    assert bytes(parts.data) == body and parts.misaligned == 0 and not unfinished
    assert kinds == ["consume", "finish"] * (len(kinds) // 2) and len(kinds) >= 8
    assert early_reports == [], "progress never counts a part that is still in flight"


def test_a_failed_finish_stops_the_body(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    calls: list[int] = []

    def consume(part: memoryview, position: int) -> splice.Finish:
        calls.append(position)

        def finish() -> None:
            if position >= 2 * MiB:
                raise OSError(28, "No space left on device")
        return finish
    sender = send_later(client, bytes(8 * MiB))

    async def read() -> int:
        cancelled = asyncio.get_running_loop().create_future()
        return await splice.read_body(server.fileno(), 8 * MiB, consume, 10, cancelled)
    with pytest.raises(OSError, match="No space"):
        asyncio.run(read())
    client.close()
    sender.join()
    assert max(calls) <= 4 * MiB                # at most the part after the failed one was begun
