"""How tusfast talks to Redis, shared by the Redis locker and the Redis info store: one set of
timeouts and retries, so no Redis call can hang on a dead server, and URLs without passwords in logs.
redis-py is imported only when a client is made: tusfast runs without it."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SOCKET_TIMEOUT = 2.0        # any single Redis command or connect; one retry on a fresh connection


def redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError
    return (RedisError, OSError)        # OSError includes TimeoutError


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _keepalive_options() -> dict[int, int]:
    options = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in options.items() if hasattr(socket, name)}


def new_client(url: str) -> Any:
    """A redis.asyncio.Redis with tusfast's connection settings.
    Raises ImportError without redis-py. Call it inside the running loop."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    # One retry on a fresh connection: after Redis restarts, pooled connections are dead.
    # Keepalive probes find a silently dead TCP connection (the subscription idles) within a minute.
    tcp: dict[str, Any] = {} if url.startswith("unix:") else {
        "socket_keepalive": True, "socket_keepalive_options": _keepalive_options()}
    return redis.asyncio.Redis.from_url(url, decode_responses=True, socket_connect_timeout=SOCKET_TIMEOUT,
                                        socket_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 1), **tcp)
