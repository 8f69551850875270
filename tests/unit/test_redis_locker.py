"""RedisLocker against a real redis-server: two RedisLocker objects stand for two tusfast instances."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Awaitable, TypeVar

import pytest
import redis

from tests.support.redis_server import RedisServer, free_port, redis_down, redis_prefix, redis_server, redis_url  # noqa: F401
from tusfast.locking import ConnectedLocker, LockTimeout, LockUnavailable
from tusfast.locking.redis import RedisLock, RedisLocker
from tusfast.redis_connection import redacted

UPLOAD = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32
WAIT = 10.0         # generous bound for things that must happen; no test relies on it being tight
T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(60):
            return await coroutine
    return asyncio.run(bounded())


def sync_client(url: str) -> "redis.Redis[str]":
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


async def both(url: str, prefix: str, timeout: float = 5.0, lease: float = 1.0) -> tuple[RedisLocker, RedisLocker]:
    first = RedisLocker(url, prefix=prefix, timeout=timeout, lease=lease)
    second = RedisLocker(url, prefix=prefix, timeout=timeout, lease=lease)
    await first.connect()
    await second.connect()
    return first, second


async def close(*lockers: RedisLocker) -> None:
    for locker in lockers:
        await locker.disconnect()


def test_is_a_connected_locker_and_hides_passwords() -> None:
    assert isinstance(RedisLocker("redis://127.0.0.1:1/0"), ConnectedLocker)
    assert redacted("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://:secret@host/0") == "redis://***@host/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"
    with pytest.raises(ValueError):
        RedisLocker("redis://127.0.0.1:1/0", lease=0.1)


def test_two_instances_exclude_each_other_and_the_release_request_crosses(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        a, b = await both(redis_url, redis_prefix)
        asked = asyncio.Event()
        held = await a.acquire(UPLOAD, asked.set)
        waiter = asyncio.create_task(b.acquire(UPLOAD, lambda: None))
        await asyncio.wait_for(asked.wait(), WAIT)          # b's request reached a's holder
        assert not waiter.done()
        assert await held.held()
        await held.release()
        taken = await asyncio.wait_for(waiter, WAIT)
        assert taken.fence == held.fence + 1
        assert await taken.held() and not await held.held()
        await taken.release()
        await close(a, b)
    run(scenario())


def test_a_waiter_is_not_asked_by_its_own_release_request(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        a, b = await both(redis_url, redis_prefix)
        held = await a.acquire(UPLOAD, lambda: asyncio.ensure_future(held.release()))
        waiter_asked: list[str] = []
        taken = await b.acquire(UPLOAD, lambda: waiter_asked.append("asked"))
        # A probe through the same subscription: Redis delivers in order, so once it has arrived,
        # b's own request (published before) has been handled too.
        probe = asyncio.Event()
        probed = await b.acquire(OTHER, probe.set)
        asking = asyncio.create_task(a.acquire(OTHER, lambda: None))
        await asyncio.wait_for(probe.wait(), WAIT)
        assert waiter_asked == []
        await probed.release()
        await (await asking).release()
        await taken.release()
        await close(a, b)
    run(scenario())


def test_many_requests_on_two_instances_never_hold_the_lock_together(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        a, b = await both(redis_url, redis_prefix, timeout=20.0)
        inside: list[int] = []
        fences: list[int] = []

        async def request(locker: RedisLocker) -> None:
            for _ in range(5):
                lock = await locker.acquire(UPLOAD, lambda: None)
                inside.append(1)
                assert len(inside) == 1, "two holders at once"
                fences.append(lock.fence)
                await asyncio.sleep(0.002)
                inside.pop()
                await lock.release()

        await asyncio.gather(*(request(locker) for locker in (a, b, a, b, a, b)))
        assert fences == sorted(fences) and len(set(fences)) == 30
        await close(a, b)
    run(scenario())


def test_different_uploads_do_not_contend(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        a, b = await both(redis_url, redis_prefix, timeout=0.5)
        one = await a.acquire(UPLOAD, lambda: pytest.fail("must not be asked"))
        two = await b.acquire(OTHER, lambda: pytest.fail("must not be asked"))
        assert await one.held() and await two.held()
        await one.release()
        await two.release()
        await close(a, b)
    run(scenario())


def test_two_requests_in_one_instance_exclude_each_other(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        locker = RedisLocker(redis_url, prefix=redis_prefix, timeout=5.0, lease=1.0)
        asked = asyncio.Event()
        first = await locker.acquire(UPLOAD, asked.set)
        waiter = asyncio.create_task(locker.acquire(UPLOAD, lambda: None))
        await asyncio.wait_for(asked.wait(), WAIT)
        assert not waiter.done()
        await first.release()
        second = await asyncio.wait_for(waiter, WAIT)
        assert second.fence == first.fence + 1
        await second.release()
        await locker.disconnect()
    run(scenario())


def test_holder_that_never_lets_go_times_out_the_newcomer(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        a, b = await both(redis_url, redis_prefix, timeout=0.6)
        asked: list[int] = []
        heard = asyncio.Event()
        held = await a.acquire(UPLOAD, lambda: (asked.append(1), heard.set()))
        with pytest.raises(LockTimeout):
            await b.acquire(UPLOAD, lambda: None)
        await asyncio.wait_for(heard.wait(), WAIT)
        assert asked == [1]                 # asked (maybe more than once), called once
        assert await held.held()            # renewed meanwhile: the lease (1 s) outlived the wait
        await held.release()
        again = await b.acquire(UPLOAD, lambda: None)       # the timed-out waiter left no trace
        await again.release()
        await close(a, b)
    run(scenario())


def test_lease_of_a_crashed_holder_expires_and_a_waiter_takes_over(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        a, b = await both(redis_url, redis_prefix, timeout=5.0, lease=1.0)
        crashed = await a.acquire(UPLOAD, lambda: None)
        crashed._renewal.cancel()           # the process "died": no renewals, no release
        await asyncio.gather(crashed._renewal, return_exceptions=True)
        taken = await b.acquire(UPLOAD, lambda: None)       # within lease + retry delay < timeout
        assert taken.fence == crashed.fence + 1
        await taken.release()
        await close(a, b)
    run(scenario())


def test_token_taken_away_is_detected_and_the_holder_told(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        locker = RedisLocker(redis_url, prefix=redis_prefix, timeout=5.0, lease=1.0)
        lost = asyncio.Event()
        lock = await locker.acquire(UPLOAD, lost.set)
        sync_client(redis_url).set(f"{redis_prefix}lock:{UPLOAD}", "someone else")
        await asyncio.wait_for(lost.wait(), WAIT)       # at the next renewal
        assert lock.lost and not await lock.held()
        await lock.release()                # does not delete the other holder's key
        assert sync_client(redis_url).get(f"{redis_prefix}lock:{UPLOAD}") == "someone else"
        await locker.disconnect()
    run(scenario())


def test_redis_down_while_holding_loses_the_lock_after_the_lease(redis_down: RedisServer, redis_prefix: str) -> None:
    async def scenario() -> RedisLock:
        locker = RedisLocker(redis_down.url, prefix=redis_prefix, timeout=5.0, lease=1.0)
        lost = asyncio.Event()
        lock = await locker.acquire(UPLOAD, lost.set)
        redis_down.stop()
        await asyncio.wait_for(lost.wait(), WAIT)
        assert lock.lost
        await lock.release()                # Redis is still down: no error, nothing hangs
        await locker.disconnect()
        return lock
    lock = run(scenario())
    assert lock.fence >= 1


def test_fence_increases_on_every_acquire(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        a, b = await both(redis_url, redis_prefix)
        fences = []
        for locker in (a, b, a, a, b):
            lock = await locker.acquire(UPLOAD, lambda: None)
            fences.append(lock.fence)
            await lock.release()
        assert fences == sorted(set(fences)) and fences[0] >= 1
        other = await a.acquire(OTHER, lambda: None)    # a fence per upload
        assert other.fence == 1
        await other.release()
        await close(a, b)
    run(scenario())


def test_forget_drops_the_fence_and_release_the_lock_key(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        locker = RedisLocker(redis_url, prefix=redis_prefix, lease=1.0)
        lock = await locker.acquire(UPLOAD, lambda: None)
        client = sync_client(redis_url)
        assert client.get(f"{redis_prefix}fence:{UPLOAD}") == str(lock.fence)
        assert 0 < client.pttl(f"{redis_prefix}lock:{UPLOAD}") <= 1000
        await locker.forget(UPLOAD)
        await lock.release()
        assert client.keys(f"{redis_prefix}*") == []
        await locker.disconnect()
    run(scenario())


def test_redis_down_means_lock_unavailable_and_back_up_means_locks_again(redis_down: RedisServer,
                                                                         redis_prefix: str) -> None:
    async def scenario() -> None:
        locker = RedisLocker(redis_down.url, prefix=redis_prefix, lease=1.0)
        await locker.connect()
        redis_down.stop()
        with pytest.raises(LockUnavailable, match="unreachable"):
            await locker.acquire(UPLOAD, lambda: None)
        with pytest.raises(LockUnavailable):
            await locker.connect()
        redis_down.start()
        lock = await locker.acquire(UPLOAD, lambda: None)   # pooled connections were dead: reconnected
        assert await lock.held()
        await lock.release()
        await locker.disconnect()
    run(scenario())


def test_release_requests_reach_a_holder_again_after_redis_restarts(redis_down: RedisServer,
                                                                   redis_prefix: str) -> None:
    async def scenario() -> None:
        a, b = await both(redis_down.url, redis_prefix, timeout=5.0, lease=5.0)
        redis_down.stop()
        redis_down.start()
        asked = asyncio.Event()
        held = await a.acquire(UPLOAD, asked.set)
        waiter = asyncio.create_task(b.acquire(UPLOAD, lambda: None))
        await asyncio.wait_for(asked.wait(), WAIT)      # a resubscribed, b asks again until heard
        await held.release()
        taken = await asyncio.wait_for(waiter, WAIT)
        await taken.release()
        await close(a, b)
    run(scenario())


def test_no_server_at_all_is_lock_unavailable() -> None:
    async def scenario() -> None:
        locker = RedisLocker(f"redis://127.0.0.1:{free_port()}/0", lease=1.0)
        with pytest.raises(LockUnavailable, match="127.0.0.1"):
            await locker.connect()
        with pytest.raises(LockUnavailable):
            await locker.acquire(UPLOAD, lambda: None)
        await locker.disconnect()
    run(scenario())


# ---- configuration and wiring ---------------------------------------------------------------------


def test_flags_and_environment_configure_the_redis_locker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tusfast.app import TusServer
    from tusfast.cli import build_parser, config_from_args
    from tusfast.config import Config
    from tusfast.locking import FileLocker

    monkeypatch.setenv("TUSFAST_REDIS_URL", "redis://10.0.0.1:6379/2")
    args = build_parser().parse_args(["serve", "--redis-prefix", "up:", "--redis-lock-lease", "3s",
                                      "--upload-dir", str(tmp_path)])
    config = config_from_args(args)
    assert (config.redis_url, config.redis_prefix, config.redis_lock_lease) == ("redis://10.0.0.1:6379/2", "up:", 3.0)
    locker = TusServer(config).locker
    assert isinstance(locker, RedisLocker)
    assert (locker.url, locker.prefix, locker.lease, locker.timeout) == ("redis://10.0.0.1:6379/2", "up:", 3.0, 20.0)
    assert isinstance(TusServer(Config(upload_dir=tmp_path)).locker, FileLocker)
    assert Config(redis_url="").redis_url is None
    with pytest.raises(ValueError, match="redis://"):
        Config(redis_url="http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="shorter than the lock timeout"):
        Config(redis_url="redis://127.0.0.1/0", redis_lock_lease=20.0, lock_timeout=20.0)


def test_redis_py_is_not_imported_without_redis_url() -> None:
    code = ("import sys; from tusfast.app import TusServer; from tusfast.config import Config; import tusfast.cli; "
            "TusServer(Config(upload_dir='/tmp/unused')); print('redis' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_embedded_server_checks_redis_at_start_and_closes_its_connections_at_stop(
        tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    from tusfast.app import TusServer
    from tusfast.config import Config

    client = sync_client(redis_url)
    before = len(client.client_list())

    async def scenario() -> None:
        config = Config(port=0, upload_dir=tmp_path, redis_url=redis_url, redis_prefix=redis_prefix)
        async with TusServer(config) as server:
            assert isinstance(server.locker, RedisLocker)
            assert len(client.client_list()) > before        # the subscription, at least
        with pytest.raises(LockUnavailable):
            await TusServer(Config(port=0, upload_dir=tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")).start()
    run(scenario())
    deadline = time.monotonic() + WAIT     # Redis notices closed connections on its own schedule
    while len(client.client_list()) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(client.client_list()) == before


def test_release_ends_a_renewal_whose_redis_call_swallowed_the_cancellation(redis_url: str,
                                                                            redis_prefix: str) -> None:
    """redis-py can swallow a cancellation that arrives mid-command (the call just returns). The
    renewal task must still stop on release; before the fix it renewed on and held the lock forever."""
    async def scenario() -> None:
        a, b = await both(redis_url, redis_prefix, lease=0.6)
        renewing = asyncio.Event()
        renew = a._renew

        async def swallowing_renew(upload_id: str, token: str) -> bool:
            renewing.set()
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                pass                    # what redis-py sometimes does
            return await renew(upload_id, token)

        a._renew = swallowing_renew  # type: ignore[method-assign]
        held = await a.acquire(UPLOAD, lambda: None)
        await asyncio.wait_for(renewing.wait(), WAIT)
        await asyncio.wait_for(held.release(), WAIT)
        taken = await asyncio.wait_for(b.acquire(UPLOAD, lambda: None), WAIT)
        await asyncio.sleep(0.6)        # a renewal still running would now find b's token: no harm, but
        assert await taken.held()       # the lock must stay b's
        await taken.release()
        await close(a, b)
    run(scenario())
