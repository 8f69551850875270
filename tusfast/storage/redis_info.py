"""Upload info and recorded offsets in Redis (`--info-store redis`), for instances on several hosts
that share a directory or a bucket but no info files.

Keys, below the `--redis-prefix`:
- `upload:<id>`: a hash with `info` (tusd's FileInfo JSON, the file backend's encoder), `offset` (the
  recorded, acknowledged offset) and `updated` (Unix time of the creation or the last advance).
- `fence:<id>`: the fencing number RedisLocker increments on every acquisition (read, never written here).
- `uploads`: the set of upload ids (for the expiry sweep); `expired`: a sorted set of tombstones
  (id -> time of expiry); `finals:<partial id>`: final uploads waiting for that partial.

Every change is one Lua script, so it is atomic. Redis unreachable: StorageUnavailable (503).
redis-py is imported only when the store is first used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable

from ..core.model import UploadInfo, is_valid_upload_id
from ..redis_connection import new_client, redacted
from .base import StorageUnavailable, UploadGone, UploadNotFound
from .info_json import decode_info, encode_info
from .info import OffsetConflict

log = logging.getLogger("tusfast.storage")

# KEYS: upload, uploads, expired. ARGV: info, offset, now, id. 1 if created, 0 if the id is taken.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'info', ARGV[1], 'offset', ARGV[2], 'updated', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
return 1
"""
# KEYS: upload, expired. ARGV: id. {info, offset, updated}, or {false, tombstone time or false}.
_LOAD = """
local found = redis.call('HMGET', KEYS[1], 'info', 'offset', 'updated')
if found[1] then return found end
return {false, redis.call('ZSCORE', KEYS[2], ARGV[1])}
"""
# KEYS: upload, fence. ARGV: expected, new, fence ('' = unfenced), now.
# {1, new} when set (also when it already was: a retried call whose reply was lost);
# {0, offset} when the offset moved; {-1, offset} when the fence is not the current one;
# {-2, 0} when the upload is gone.
_ADVANCE = """
local offset = redis.call('HGET', KEYS[1], 'offset')
if not offset then return {-2, 0} end
offset = tonumber(offset)
if ARGV[3] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[3]) then
  return {-1, offset}
end
if offset == tonumber(ARGV[2]) then return {1, offset} end
if offset ~= tonumber(ARGV[1]) then return {0, offset} end
redis.call('HSET', KEYS[1], 'offset', ARGV[2], 'updated', ARGV[4])
return {1, tonumber(ARGV[2])}
"""
# KEYS: upload. ARGV: info, offset ('' = keep). 0 if the upload is gone.
_SAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'info', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'offset', ARGV[2]) end
return 1
"""
# KEYS: upload, uploads, finals, expired. ARGV: id, tombstone time ('' = none).
_DELETE = """
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1]) end
return 1
"""


class RedisInfoStore:
    def __init__(self, url: str, *, prefix: str = "tusfast:") -> None:
        self.url = url
        self.prefix = prefix
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}

    def describe(self) -> str:
        return f"upload info in Redis at {redacted(self.url)} (prefix {self.prefix!r})"

    # ---- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(lambda redis: redis.ping())
        log.info("keeping upload info in Redis at %s (prefix %r)", redacted(self.url), self.prefix)

    async def close(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            try:
                await redis.aclose()
            except Exception:   # closing a client of a Redis that is gone: nothing to save
                pass

    # ---- InfoStore ------------------------------------------------------------------------------

    async def create(self, info: UploadInfo) -> None:
        created = await self._script("create", [self._key("upload", info.id), self._key("uploads"),
                                                self._key("expired")],
                                     [encode_info(info).decode(), info.offset, repr(time.time()), info.id])
        if not created:
            raise FileExistsError(info.id)

    async def load(self, upload_id: str) -> UploadInfo:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        found = await self._script("load", [self._key("upload", upload_id), self._key("expired")], [upload_id])
        if not found or not found[0]:
            if len(found) > 1 and found[1]:
                raise UploadGone(upload_id)
            raise UploadNotFound(upload_id)
        raw, offset, updated = found
        info = decode_info(str(raw).encode(), upload_id)      # UploadCorrupt if unreadable
        return replace(info, offset=int(offset or 0), updated_at=float(updated or 0.0))

    async def save(self, info: UploadInfo, *, offset: bool = False) -> None:
        saved = await self._script("save", [self._key("upload", info.id)],
                                   [encode_info(info).decode(), info.offset if offset else ""])
        if not saved:
            raise UploadNotFound(info.id)

    async def advance(self, upload_id: str, expected: int, new: int, fence: int | None) -> None:
        status, offset = await self._script(
            "advance", [self._key("upload", upload_id), self._key("fence", upload_id)],
            [expected, new, "" if fence is None else fence, repr(time.time())])
        if status == 1:
            return
        if status == -2:
            raise OffsetConflict(f"upload {upload_id} was deleted meanwhile; these bytes were not recorded")
        if status == -1:
            raise OffsetConflict(f"upload {upload_id} was taken over by a newer request; these bytes were "
                                 "not recorded", int(offset))
        raise OffsetConflict(f"the offset of upload {upload_id} moved to {offset} meanwhile (this request "
                             f"started at {expected}); these bytes were not recorded", int(offset))

    async def delete(self, upload_id: str) -> None:
        await self._delete(upload_id, "")

    async def expire(self, upload_id: str) -> None:
        await self._delete(upload_id, repr(time.time()))

    async def prune_tombstones(self, older_than: float) -> int:
        return int(await self._call(lambda redis: redis.zremrangebyscore(self._key("expired"), "-inf",
                                                                         f"({older_than!r}")))

    async def list_ids(self) -> list[str]:
        async def scan(redis: Any) -> list[str]:
            return [str(member) async for member in redis.sscan_iter(self._key("uploads"), count=1000)]
        return [upload_id for upload_id in await self._call(scan) if is_valid_upload_id(upload_id)]

    async def register_final(self, final: UploadInfo) -> None:
        async def add(redis: Any) -> None:
            async with redis.pipeline(transaction=True) as pipe:
                for partial_id in set(final.partials):
                    pipe.sadd(self._key("finals", partial_id), final.id)
                await pipe.execute()
        await self._call(add)

    async def finals_waiting_for(self, partial_id: str) -> list[str]:
        members = await self._call(lambda redis: redis.smembers(self._key("finals", partial_id)))
        return sorted(str(member) for member in members if is_valid_upload_id(str(member)))

    # ---- Redis ----------------------------------------------------------------------------------

    def _key(self, kind: str, upload_id: str | None = None) -> str:
        return f"{self.prefix}{kind}" if upload_id is None else f"{self.prefix}{kind}:{upload_id}"

    async def _delete(self, upload_id: str, tombstone: str) -> None:
        await self._script("delete", [self._key("upload", upload_id), self._key("uploads"),
                                      self._key("finals", upload_id), self._key("expired")], [upload_id, tombstone])

    def _client(self) -> Any:
        if self._redis is None:
            try:
                self._redis = new_client(self.url)
            except ImportError:
                raise StorageUnavailable("--info-store redis needs redis-py: pip install 'tusfast[redis]'") from None
            self._scripts = {name: self._redis.register_script(source) for name, source in
                             (("create", _CREATE), ("load", _LOAD), ("advance", _ADVANCE), ("save", _SAVE),
                              ("delete", _DELETE))}
        return self._redis

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._call(lambda redis: self._scripts[name](keys=keys, args=args))

    async def _call(self, command: Callable[[Any], Awaitable[Any]]) -> Any:
        """Every Redis error (unreachable, timed out after SOCKET_TIMEOUT, refused) as StorageUnavailable."""
        client = self._client()
        from redis.exceptions import RedisError
        try:
            return await command(client)
        except (RedisError, OSError) as error:
            raise StorageUnavailable(f"the upload info store (Redis at {redacted(self.url)}) is unreachable "
                                     f"or failed: {error}") from None
