"""One contract suite for every locker, plus the cross-process behaviour of FileLocker."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import pytest

from tusfast.locking import FileLocker, Locker, LockTimeout, MemoryLocker

UPLOAD = "0123456789abcdef0123456789abcdef"


@pytest.fixture(params=["memory", "file"])
def make_locker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[float], Locker]]:
    def make(timeout: float = 2.0) -> Locker:
        if request.param == "memory":
            return MemoryLocker(timeout)
        return FileLocker(tmp_path / "locks", timeout)
    yield make


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_second_acquire_asks_holder_and_proceeds_once_released(make_locker: Callable[[float], Locker]) -> None:
    async def scenario() -> None:
        locker = make_locker(2.0)
        asked: list[str] = []
        first = await locker.acquire(UPLOAD, lambda: asked.append("first"))

        async def holder_lets_go() -> None:
            while not asked:
                await asyncio.sleep(0.01)
            await first.release()

        releasing = asyncio.create_task(holder_lets_go())
        started = time.monotonic()
        second = await locker.acquire(UPLOAD, lambda: None)
        assert asked == ["first"]
        assert time.monotonic() - started < 1.0
        await releasing
        await second.release()
    run(scenario())


def test_holder_that_never_lets_go_times_out_the_newcomer(make_locker: Callable[[float], Locker]) -> None:
    async def scenario() -> None:
        locker = make_locker(0.3)
        held = await locker.acquire(UPLOAD, lambda: None)
        with pytest.raises(LockTimeout):
            await locker.acquire(UPLOAD, lambda: None)
        await held.release()
        again = await locker.acquire(UPLOAD, lambda: None)    # a timed-out waiter leaves no trace
        await again.release()
    run(scenario())


def test_different_uploads_do_not_contend(make_locker: Callable[[float], Locker]) -> None:
    async def scenario() -> None:
        locker = make_locker(0.3)
        one = await locker.acquire(UPLOAD, lambda: pytest.fail("must not be asked"))
        two = await locker.acquire("f" * 32, lambda: None)
        await one.release()
        await two.release()
    run(scenario())


def test_release_request_reaches_holder_only_once(make_locker: Callable[[float], Locker]) -> None:
    async def scenario() -> None:
        locker = make_locker(0.5)
        asked: list[int] = []
        held = await locker.acquire(UPLOAD, lambda: asked.append(1))
        results = await asyncio.gather(*(locker.acquire(UPLOAD, lambda: None) for _ in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(result, LockTimeout) for result in results)
        assert asked == [1]
        await held.release()
    run(scenario())


def _hold_in_other_process(directory: str, ready: "multiprocessing.synchronize.Event",
                           asked: "multiprocessing.synchronize.Event") -> None:
    async def hold() -> None:
        locker = FileLocker(directory, 5.0)
        released = asyncio.Event()
        lock = await locker.acquire(UPLOAD, released.set)
        ready.set()
        await asyncio.wait_for(released.wait(), 10)
        asked.set()
        await lock.release()
        locker.close()
    asyncio.run(hold())


def test_file_locker_asks_a_holder_in_another_process(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, asked = context.Event(), context.Event()
    holder = context.Process(target=_hold_in_other_process, args=(str(tmp_path), ready, asked))
    holder.start()
    try:
        assert ready.wait(20), "holder process did not take the lock"

        async def take_over() -> float:
            locker = FileLocker(tmp_path, 5.0)
            started = time.monotonic()
            lock = await locker.acquire(UPLOAD, lambda: None)
            elapsed = time.monotonic() - started
            await lock.release()
            locker.close()
            return elapsed

        elapsed = asyncio.run(take_over())
        assert asked.is_set(), "the other process was never asked to release"
        assert elapsed < 3.0
    finally:
        holder.join(10)
        holder.kill()


def test_file_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, asked = context.Event(), context.Event()
    holder = context.Process(target=_hold_in_other_process, args=(str(tmp_path), ready, asked))
    holder.start()
    assert ready.wait(20)
    holder.kill()
    holder.join(10)

    async def take() -> None:
        locker = FileLocker(tmp_path, 1.0)
        lock = await locker.acquire(UPLOAD, lambda: None)
        await lock.release()
        locker.close()
    asyncio.run(take())
    assert not asked.is_set()
