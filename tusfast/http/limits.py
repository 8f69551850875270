"""Tunables of the HTTP layer, with defaults fit for large uploads over slow networks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    max_head_size: int = 64 * 1024     # request line + headers
    max_headers: int = 100
    idle_timeout: float = 75.0         # keep-alive connection with no request in progress
    head_timeout: float = 30.0         # from the first byte of a head to its end (slowloris)
    body_timeout: float = 60.0         # no body bytes while the server is ready to read them
    max_connections: int = 10_000
    max_connections_per_ip: int = 0    # 0: off (NAT and proxies put many clients behind one address)
    high_water: int = 4 * 1024 * 1024  # buffered body bytes before reading pauses
    drain_limit: int = 256 * 1024      # unread body after an early reply: read and discard up to this
    linger: float = 5.0                # then keep reading (and discarding) this long before closing
    shutdown_timeout: float = 30.0     # graceful stop: wait this long for requests in flight
