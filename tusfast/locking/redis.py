"""A locker for many tusfast instances on many hosts (`--redis-url`), on one Redis server.

Exclusion: `SET <prefix>lock:<id> <random token> NX PX <lease>`, done by a Lua script that also
INCRs `<prefix>fence:<id>`, so every acquisition gets a fencing number larger than all before it.
While the lock is held a task renews the lease (compare token, then PEXPIRE) every lease/3.
Release compares the token, DELs the key and PUBLISHes a "released" notice so waiters try at once.
Within one process, MemoryLocker orders the requests first: only one of them talks to Redis per upload.

Release requests: every locker subscribes to `<prefix>release` and `<prefix>released`. A "released"
message is the upload id; a release request is the sender's 32-hex-digit instance id, then the upload
id: the sender ignores its own requests, whose only local holder is the waiting request itself. A waiter that finds the lock taken publishes a release request (again every
ASK_AGAIN seconds: the holder may have taken the lock just after the first one), then retries
SET NX on each "released" notice or after a short backoff, until the lock timeout (LockTimeout).

Crashes and partitions: a holder that dies (kill -9) stops renewing, so its lock expires within one
lease and a waiter takes it then. A holder that cannot renew in time (the token is gone, or Redis was
unreachable until the lease ran out by our own clock, counted from when the last successful renewal
was sent, so never later than Redis's own expiry) marks the lock lost and calls on_release_requested:
the request stops taking body bytes, keeps and reports what it stored, and finishes.

What this guarantees, and what not yet: between the moment a lease runs out in Redis and the moment
the old holder notices (at most one renewal round trip, plus the time its request takes to stop
writing), a new holder may already write. The lease and the loss callback keep that window small;
the fence closes it for the offset: with `--info-store redis` the recorded offset advances only by a
compare-and-set that also checks `Lock.fence` is still the upload's current fence (storage/info.py),
and a writer checks `expired()` before each write step. Without it, `Lock.fence` is not checked.

Redis unreachable when a lock is wanted: LockUnavailable (the handler answers 503 with a reason).
Every Redis call is bounded by connect and socket timeouts, so nothing hangs on a dead server.
redis-py is imported only when a RedisLocker is first used: tusfast runs without it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Awaitable, Callable

from ..redis_connection import SOCKET_TIMEOUT, new_client, redacted, redis_errors
from .base import LockTimeout, LockUnavailable
from .memory import MemoryLock, MemoryLocker

log = logging.getLogger("tusfast.locking")

DEFAULT_LEASE = 5.0         # well below the default lock timeout (20 s): a crashed holder's upload
                            # is free again long before a waiter gives up; renewals every ~1.7 s
MIN_LEASE = 0.5
FIRST_BACKOFF, MAX_BACKOFF = 0.02, 0.25
ASK_AGAIN = 1.0             # a waiter repeats its release request this often
RESUBSCRIBE = 0.5           # after the subscription broke (Redis restarted), try again this often

# KEYS: lock, fence. ARGV: token, lease in ms. Returns the new fence, or 0 if someone else holds it.
# Taking a lock we already hold returns its fence, so a retried call (reply lost) is harmless.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return tonumber(redis.call('GET', KEYS[2]) or '0') end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
"""
# KEYS: lock. ARGV: token, lease in ms. Returns 1 if the lease was extended, 0 if the lock is not ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock. ARGV: token, "released" channel, upload id.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


class _Once:
    """on_release_requested may be triggered by a release request and by loss: call it once."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback

    def __call__(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class RedisLock:
    def __init__(self, locker: "RedisLocker", upload_id: str, token: str, fence: int, local: MemoryLock,
                 notify: _Once, valid_until: float) -> None:
        self.upload_id = upload_id
        self.fence = fence
        self.lost = False
        self._locker = locker
        self._token = token
        self._local = local
        self._notify = notify
        self._valid_until = valid_until     # loop time; when Redis may drop the key at the earliest
        self._released = False
        self._renewal = asyncio.get_running_loop().create_task(self._keep())

    def expired(self) -> bool:
        """Has the lease run out by our own clock (or the lock been lost)? A cheap local check,
        made before each write step: Redis may have given the upload to someone else by then."""
        return self.lost or self._renewal.get_loop().time() >= self._valid_until

    async def held(self) -> bool:
        """Is the lock still ours (asks Redis)? Raises LockUnavailable if Redis cannot be reached."""
        if self.lost:
            return False
        holder = await self._locker._call(self._locker._client().get, self._locker._key("lock", self.upload_id))
        return bool(holder == self._token)

    async def release(self) -> None:
        # Not only cancel(): redis-py swallows a cancellation that arrives during a command (the
        # call just returns), after which _keep would renew, sleep and hold the lock forever.
        self._released = True
        self._renewal.cancel()
        await asyncio.gather(self._renewal, return_exceptions=True)
        try:
            if not self.lost:
                await self._locker._release(self.upload_id, self._token)
        finally:
            await self._local.release()

    async def _keep(self) -> None:
        """Renew every lease/3 while held; retry faster after a failure; give up when the lease ends."""
        loop = asyncio.get_running_loop()
        lease = self._locker.lease
        pause = lease / 3
        while not self._released:
            await asyncio.sleep(max(0.0, min(pause, self._valid_until - loop.time())))
            remaining = self._valid_until - loop.time()
            if remaining <= 0:
                return self._lose("Redis could not be reached before the lease ran out")
            sent = loop.time()
            try:
                async with asyncio.timeout(remaining):
                    ours = await self._locker._renew(self.upload_id, self._token)
            except Exception as error:     # any failure: retry soon, until the lease ends
                log.debug("renewing the lock on %s failed: %s", self.upload_id, error)
                pause = lease / 10
                continue
            if not ours:
                return self._lose("its key in Redis expired or was taken over")
            self._valid_until, pause = sent + lease, lease / 3

    def _lose(self, why: str) -> None:
        self.lost = True
        log.warning("lost the lock on upload %s: %s; stopping its request", self.upload_id, why)
        self._notify()


class RedisLocker:
    """Locks shared by every tusfast instance using the same Redis server and prefix."""

    def __init__(self, url: str, *, prefix: str = "tusfast:", timeout: float = 20.0,
                 lease: float = DEFAULT_LEASE) -> None:
        if lease < MIN_LEASE:
            raise ValueError(f"the Redis lock lease must be at least {MIN_LEASE}s")
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.lease = lease
        self._local = MemoryLocker(timeout)
        self._redis: Any = None             # redis.asyncio.Redis, made in the running loop
        self._scripts: dict[str, Any] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._requests_channel = prefix + "release"
        self._instance = secrets.token_hex(16)     # marks our own release requests
        self._released_channel = prefix + "released"

    # ---- Locker ---------------------------------------------------------------------------------

    async def acquire(self, upload_id: str, on_release_requested: Callable[[], None]) -> RedisLock:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self._client()
        notify = _Once(on_release_requested)
        local = await self._local.acquire(upload_id, notify)
        token = secrets.token_hex(16)
        try:
            fence, sent = await self._take(upload_id, token, deadline)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):   # Redis may have set the key before we left
                self._in_background(self._release(upload_id, token))
            await local.release()
            raise
        return RedisLock(self, upload_id, token, fence, local, notify, sent + self.lease)

    async def forget(self, upload_id: str) -> None:
        try:
            await self._client().delete(self._key("fence", upload_id))
        except redis_errors() as error:    # the upload is gone already; a stray counter is harmless
            log.warning("could not delete the fence of upload %s in Redis: %s", upload_id, error)

    # ---- ConnectedLocker ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Check that Redis answers and that release requests reach us."""
        try:
            await self._call(self._client().ping)
            assert self._subscribed is not None
            try:
                async with asyncio.timeout(SOCKET_TIMEOUT * 2):
                    await self._subscribed.wait()
            except TimeoutError:
                raise LockUnavailable(f"cannot subscribe to Redis at {redacted(self.url)}") from None
        except LockUnavailable:
            await self.disconnect()
            raise
        log.info("locking uploads in Redis at %s (prefix %r, lease %gs)", redacted(self.url), self.prefix, self.lease)

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._redis is not None:
            redis, self._redis = self._redis, None
            try:
                await redis.aclose()
            except redis_errors():
                pass

    # ---- Redis ----------------------------------------------------------------------------------

    def _client(self) -> Any:
        """The client and the subscription, made on first use inside the running loop."""
        if self._redis is None:
            try:
                self._redis = new_client(self.url)
            except ImportError:
                raise LockUnavailable("--redis-url needs redis-py: pip install 'tusfast[redis]'") from None
            self._scripts = {name: self._redis.register_script(source) for name, source in
                             (("acquire", _ACQUIRE), ("renew", _RENEW), ("release", _RELEASE))}
            self._subscribed = asyncio.Event()
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return self._redis

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _key(self, kind: str, upload_id: str) -> str:
        return f"{self.prefix}{kind}:{upload_id}"

    async def _call(self, command: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        try:
            return await command(*args, **kwargs)
        except redis_errors() as error:
            raise LockUnavailable(f"Redis at {redacted(self.url)} is unreachable: {error}") from None

    async def _take(self, upload_id: str, token: str, deadline: float) -> tuple[int, float]:
        """SET NX until it succeeds: ask the holder to let go, wake on "released" or after a backoff."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        self._waiters.setdefault(upload_id, set()).add(woken)
        keys = [self._key("lock", upload_id), self._key("fence", upload_id)]
        args = [token, int(self.lease * 1000)]
        asked_at, backoff = -ASK_AGAIN, FIRST_BACKOFF
        try:
            while True:
                woken.clear()       # before the attempt: a notice that comes during it is not missed
                sent = loop.time()
                fence = int(await self._call(self._scripts["acquire"], keys=keys, args=args))
                if fence:
                    return fence, sent
                now = loop.time()
                if now >= deadline:
                    raise LockTimeout(upload_id)
                if now - asked_at >= ASK_AGAIN:
                    await self._call(self._client().publish, self._requests_channel, self._instance + upload_id)
                    asked_at = now
                try:
                    async with asyncio.timeout(min(backoff, deadline - now)):
                        await woken.wait()
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            waiting = self._waiters.get(upload_id)
            if waiting is not None:
                waiting.discard(woken)
                if not waiting:
                    del self._waiters[upload_id]

    async def _renew(self, upload_id: str, token: str) -> bool:
        return bool(await self._scripts["renew"](keys=[self._key("lock", upload_id)],
                                                 args=[token, int(self.lease * 1000)]))

    async def _release(self, upload_id: str, token: str) -> None:
        try:
            await self._scripts["release"](keys=[self._key("lock", upload_id)],
                                           args=[token, self._released_channel, upload_id])
        except redis_errors() as error:    # the lease ends it; waiters keep retrying meanwhile
            log.warning("could not release the lock on upload %s in Redis (%s); it expires within %.1fs",
                        upload_id, error, self.lease)

    async def _listen(self) -> None:
        """Keep one subscription; resubscribe after Redis comes back."""
        assert self._subscribed is not None
        failing = False
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._requests_channel, self._released_channel)
                self._subscribed.set()
                if failing:
                    log.info("subscribed to Redis at %s again", redacted(self.url))
                    failing = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=60.0)
                    if message is not None:
                        self._on_message(message["channel"], message["data"])
            except Exception as error:     # never let the subscription die: resubscribe
                self._subscribed.clear()
                if not failing:
                    log.warning("lost the subscription to Redis at %s (%s); retrying", redacted(self.url), error)
                    failing = True
            finally:
                try:
                    await pubsub.aclose()
                except redis_errors():
                    pass
            await asyncio.sleep(RESUBSCRIBE)

    def _on_message(self, channel: str, data: str) -> None:
        if channel == self._requests_channel:
            sender, upload_id = data[:32], data[32:]
            if sender != self._instance:
                self._local.request_release(upload_id)
        elif channel == self._released_channel:
            for woken in self._waiters.get(data, ()):
                woken.set()
