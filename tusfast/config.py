"""Everything an operator can set, in one validated dataclass shared by the CLI and the library."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from .core.protocol import ALL_EXTENSIONS, REQUIRES
from .hooks import DEFAULT_EVENTS, HookEvent
from .hooks.payload import FORMATS as HOOK_FORMATS
from .storage.layout import DirLayout

_SIZE = re.compile(r"(\d+)\s*(?:([kmgt])i?)?b?", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", re.IGNORECASE)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
FSYNC_MODES = ("complete", "every-patch", "never")
DIRECT_IO_MODES = ("auto", "on", "off")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """`1073741824`, `100M`, `2GiB`, `1g` -> bytes (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r} (examples: 1048576, 100M, 2GiB)")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


def parse_optional_duration(text: str) -> float | None:
    """A duration, or `0` / `off` / `never` for none."""
    if text.strip().lower() in ("", "0", "off", "never", "none"):
        return None
    return parse_duration(text)


def parse_duration(text: str) -> float:
    """`30`, `30s`, `500ms`, `5m`, `24h` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r} (examples: 30s, 500ms, 5m, 24h)")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 1080
    base_path: str = "/files/"
    upload_dir: Path = Path("./data")
    storage: str = "file"                   # or "s3" (needs tusfast[s3])
    s3_bucket: str | None = None
    s3_endpoint: str | None = None          # an S3-compatible server, e.g. http://127.0.0.1:9000 (MinIO)
    s3_prefix: str = ""                     # key prefix of every object, e.g. "uploads/"
    s3_region: str | None = None            # else from the AWS environment / config
    s3_part_size: int = 8 * 1024 * 1024     # grown per upload to stay within 10,000 parts
    s3_temp_dir: str | None = None          # for parts larger than --s3-part-size and staged bodies
    max_size: int | None = None
    public_url: str | None = None
    behind_proxy: bool = False
    dir_layout: str | None = None
    cors_origins: tuple[str, ...] = ("*",)
    workers: int = 1
    unix_socket: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "info"
    log_format: str = "text"            # or "json": one object per line
    flat_links: bool = False            # with a dir layout: also a symlink <upload dir>/<id> to the data
    no_access_log: bool = False         # one line per request is logged unless this is set
    disabled_extensions: tuple[str, ...] = ()
    expire_after: float | None = 7 * 86400.0
    disable_download: bool = False
    fsync: str = "complete"     # when data must be on disk before the response (see FSYNC_MODES)
    direct_io: str = "auto"     # large bodies with O_DIRECT: auto (local disks), on, off (see DIRECT_IO_MODES)
    idle_timeout: float = 75.0
    read_timeout: float = 60.0
    head_timeout: float = 30.0
    lock_timeout: float = 20.0
    redis_url: str | None = None            # share locks among instances through this Redis
    redis_prefix: str = "tusfast:"          # of every Redis key and channel tusfast uses
    redis_lock_lease: float = 5.0           # a crashed instance's lock is free after at most this
    info_store: str = "file"                # "redis": upload info and fenced offsets in Redis (needs redis_url)
    shutdown_timeout: float = 30.0
    max_connections: int = 10_000
    max_connections_per_ip: int = 0        # per client address and process; 0: no limit
    max_head_size: int = 64 * 1024
    hooks_http: str | None = None           # POST hook events to this URL
    hooks_http_forward_headers: tuple[str, ...] = ()
    hooks_http_timeout: float = 10.0        # also the time limit of file hooks
    hooks_http_retries: int = 3             # post-* deliveries, with exponential backoff
    hooks_dir: str | None = None            # run executables named after the event
    hooks_enabled: tuple[HookEvent, ...] = DEFAULT_EVENTS
    hooks_format: str = "tusd"              # tusd (v2) or tusd-v1 (also rustus's)
    hooks_fallback: str = "deny"            # when a blocking hook fails: deny (502/504) or allow
    progress_interval: float = 1.0          # post-receive at most this often per request
    metrics: bool = False                   # serve Prometheus metrics at /metrics
    metrics_listen: str | None = None       # host:port of a separate /metrics listener (else the main one)
    sentry_dsn: str | None = None           # report errors and 5xx replies to Sentry
    sentry_sample_rate: float = 1.0         # share of error events sent
    sentry_traces_sample_rate: float = 0.0  # share of requests traced (0: no tracing)
    sentry_environment: str | None = None

    def __post_init__(self) -> None:
        inner = self.base_path.strip("/")
        object.__setattr__(self, "base_path", f"/{inner}/" if inner else "/")
        object.__setattr__(self, "upload_dir", Path(self.upload_dir))
        if self.public_url is not None:
            object.__setattr__(self, "public_url", self.public_url.rstrip("/") + "/")
        self._check()

    def _check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.max_connections_per_ip < 0:
            raise ValueError("max connections per IP must not be negative (0 turns the limit off)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.max_size is not None and self.max_size < 0:
            raise ValueError("max size must not be negative")
        if self.public_url is not None and not re.fullmatch(r"https?://[^/\s]+/[^\s]*", self.public_url):
            raise ValueError("public URL must be absolute, e.g. https://example.org/files/")
        if self.dir_layout:
            DirLayout(self.dir_layout)      # raises ValueError with a usage hint
        if self.expire_after == 0:
            object.__setattr__(self, "expire_after", None)     # 0 means: never expire
        if self.expire_after is not None and not 0 < self.expire_after < float("inf"):
            raise ValueError("expire after must be a positive duration (or None for no expiry)")
        if self.fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}")
        if self.direct_io not in DIRECT_IO_MODES:
            raise ValueError(f"direct_io must be one of {', '.join(DIRECT_IO_MODES)}")
        if self.log_format not in ("text", "json"):
            raise ValueError("log format must be text or json")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        self._check_hooks()
        self._check_storage()
        self._check_redis()
        if self.metrics_listen is not None:
            from .observability.metrics import parse_listen
            parse_listen(self.metrics_listen)       # raises ValueError with examples
            if not self.metrics:
                raise ValueError("--metrics-listen needs --metrics")
        if not (0 <= self.sentry_sample_rate <= 1 and 0 <= self.sentry_traces_sample_rate <= 1):
            raise ValueError("sentry sample rates must be between 0 and 1")
        if self.sentry_dsn is not None and not re.fullmatch(r"https?://[^@/\s]+@[^/\s]+/\S+", self.sentry_dsn):
            raise ValueError("sentry DSN must look like https://<key>@<host>/<project>")
        unknown = set(self.disabled_extensions) - set(ALL_EXTENSIONS)
        if unknown:
            raise ValueError(f"unknown extensions: {', '.join(sorted(unknown))}")

    def _check_storage(self) -> None:
        if self.storage not in ("file", "s3"):
            raise ValueError("storage must be file or s3")
        if self.storage != "s3":
            return
        if self.dir_layout or self.flat_links:
            raise ValueError("--dir-layout and --flat-links apply to file storage only")
        if not self.s3_bucket:
            raise ValueError("--storage s3 needs --s3-bucket")
        if not 5 * 1024**2 <= self.s3_part_size <= 5 * 1024**3:
            raise ValueError("S3 part size must be between 5M (S3's minimum) and 5G")
        if self.s3_endpoint is not None and not re.fullmatch(r"https?://[^/\s]+/?", self.s3_endpoint):
            raise ValueError("S3 endpoint must be a URL like http://127.0.0.1:9000")
        if self.workers > 1 and not self.redis_url:
            raise ValueError("--storage s3 with --workers needs --redis-url: the processes must share locks")

    def _check_hooks(self) -> None:
        if self.hooks_http and self.hooks_dir:
            raise ValueError("choose one of --hooks-http and --hooks-dir")
        if self.hooks_http is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.hooks_http):
            raise ValueError("hooks URL must be absolute, e.g. http://127.0.0.1:8000/hooks")
        if self.hooks_format not in HOOK_FORMATS:
            raise ValueError(f"hooks format must be one of {', '.join(HOOK_FORMATS)}")
        if self.hooks_fallback not in ("allow", "deny"):
            raise ValueError("hooks fallback must be allow or deny")
        if self.hooks_http_retries < 0 or not self.hooks_http_timeout > 0 or self.progress_interval < 0:
            raise ValueError("hook retries, timeout and progress interval must not be negative")

    def _check_redis(self) -> None:
        if self.info_store not in ("file", "redis"):
            raise ValueError("info store must be file or redis")
        if not self.redis_url:
            object.__setattr__(self, "redis_url", None)     # TUSFAST_REDIS_URL= means none
            if self.info_store == "redis":
                raise ValueError("--info-store redis needs --redis-url")
            return
        if not re.fullmatch(r"(rediss?|unix)://\S+", self.redis_url):
            raise ValueError("redis URL must look like redis://127.0.0.1:6379/0 (or rediss://, unix://)")
        if not 0.5 <= self.redis_lock_lease < self.lock_timeout:
            # A waiter must outlast the lease, or a crashed instance's uploads answer 423 until it ends.
            raise ValueError("redis lock lease must be at least 500ms and shorter than the lock timeout")

    @property
    def extensions(self) -> tuple[str, ...]:
        """The enabled extensions; turning one off also turns off those built on it."""
        disabled = set(self.disabled_extensions)
        if not self.expire_after:
            disabled.add("expiration")
        enabled = [name for name in ALL_EXTENSIONS if name not in disabled]
        return tuple(name for name in enabled if REQUIRES.get(name, name) in enabled)


CONFIG_FIELDS = {item.name for item in fields(Config)}
