"""`tusfast serve` and friends: argparse -> Config -> run. Every flag also reads TUSFAST_<NAME>."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ._version import __version__
from .app import TusServer
from .config import Config, parse_duration, parse_optional_duration, parse_size
from .core.protocol import ALL_EXTENSIONS
from .hooks.dispatcher import parse_events
from .locking import ConnectedLocker, LockUnavailable
from .observability import logs
from .storage import Lifecycle, StorageUnavailable
from .sweeper import ExpirySweeper

ENV_PREFIX = "TUSFAST_"
_TRUE = {"1", "true", "yes", "on"}
_DEFAULTS = Config()


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_origins(text: str) -> tuple[str, ...]:
    """`*` (any), `none` (CORS off), or a comma-separated list of origins."""
    if text.strip().lower() in ("", "none", "off"):
        return ()
    return tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())


@dataclass(frozen=True)
class Option:
    flag: str
    field: str
    help: str
    parse: Callable[[str], Any] | None = str     # None: an on/off switch

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").replace("-", "_").upper()


OPTIONS = [
    Option("--host", "host", "address to listen on (default 127.0.0.1)"),
    Option("--port", "port", "TCP port; 0 picks a free one (default 1080)", int),
    Option("--base-path", "base_path", "URL path of the upload collection (default /files/)"),
    Option("--upload-dir", "upload_dir", "directory for upload data and .info files (default ./data)", Path),
    Option("--storage", "storage", "where uploads live: file (default, in --upload-dir) or s3 (needs tusfast[s3])",
           str.lower),
    Option("--s3-bucket", "s3_bucket", "with --storage s3: the bucket (it must exist)"),
    Option("--s3-endpoint", "s3_endpoint", "an S3-compatible server instead of AWS, e.g. http://127.0.0.1:9000"),
    Option("--s3-prefix", "s3_prefix", "key prefix of every object, e.g. uploads/ (default none)"),
    Option("--s3-region", "s3_region", "AWS region (default from the AWS environment and config)"),
    Option("--s3-part-size", "s3_part_size", "size of the parts of the multipart uploads, at least 5M; grown "
           "for uploads that would need more than 10,000 parts (default 8M)", parse_size),
    Option("--s3-temp-dir", "s3_temp_dir", "directory for parts larger than --s3-part-size and for "
           "checksummed bodies until they are verified (default the system temp directory)"),
    Option("--max-size", "max_size", "largest upload accepted, e.g. 50G (default: no limit)", parse_size),
    Option("--public-url", "public_url", "absolute collection URL clients see, e.g. https://x.org/files/"),
    Option("--behind-proxy", "behind_proxy", "trust X-Forwarded-Host/Proto/Prefix and Forwarded", None),
    Option("--dir-layout", "dir_layout", "spread files over directories, e.g. '{year}/{month}/{day}' (UTC)"),
    Option("--flat-links", "flat_links", "with --dir-layout, also keep a symlink <upload-dir>/<id> to the data",
           None),
    Option("--cors-origin", "cors_origins", "allowed CORS origins: '*' (default), a comma list, or 'none'",
           parse_origins),
    Option("--workers", "workers", "processes sharing the port with SO_REUSEPORT (default 1)", int),
    Option("--unix-socket", "unix_socket", "listen on this Unix socket instead of TCP"),
    Option("--tls-cert", "tls_cert", "PEM certificate chain; serve HTTPS"),
    Option("--tls-key", "tls_key", "PEM private key for --tls-cert"),
    Option("--log-level", "log_level", "debug, info, warning or error (default info)", str.lower),
    Option("--log-format", "log_format", "text (default) or json: one JSON object per line", str.lower),
    Option("--no-access-log", "no_access_log", "do not log one line per request", None),
    Option("--idle-timeout", "idle_timeout", "close idle keep-alive connections after (default 75s)", parse_duration),
    Option("--read-timeout", "read_timeout", "give up on a stalled request body after (default 60s)", parse_duration),
    Option("--head-timeout", "head_timeout", "a request head must arrive within (default 30s)", parse_duration),
    Option("--lock-timeout", "lock_timeout", "wait this long for another request to release an upload "
           "(default 20s)", parse_duration),
    Option("--redis-url", "redis_url", "share upload locks among tusfast instances through this Redis, e.g. "
           "redis://127.0.0.1:6379/0 (needs tusfast[redis])"),
    Option("--redis-prefix", "redis_prefix", "prefix of the Redis keys and channels (default tusfast:)"),
    Option("--redis-lock-lease", "redis_lock_lease", "with --redis-url, a lock held by a crashed instance is "
           "free after at most this; shorter than --lock-timeout (default 5s)", parse_duration),
    Option("--info-store", "info_store", "where upload info and offsets live: file (default: the storage's own "
           ".info files or objects) or redis (in --redis-url, with fenced offsets; for hosts sharing a "
           "directory or bucket)", str.lower),
    Option("--shutdown-timeout", "shutdown_timeout", "on SIGTERM, let requests finish for (default 30s)",
           parse_duration),
    Option("--max-connections", "max_connections", "connections per process (default 10000)", int),
    Option("--max-connections-per-ip", "max_connections_per_ip", "connections per client address and process; "
           "Unix sockets are exempt (default 0: off, because NAT, mobile carriers and reverse proxies put "
           "many clients behind one address; set it only when clients connect directly)", int),
    Option("--max-head-size", "max_head_size", "largest request head, e.g. 64K (default)", parse_size),
    Option("--metrics", "metrics", "serve Prometheus metrics at /metrics (per process: with --workers, "
           "each worker has its own)", None),
    Option("--metrics-listen", "metrics_listen", "serve /metrics on this separate host:port instead of the "
           "main listener, e.g. 127.0.0.1:9100"),
    Option("--expire-after", "expire_after", "remove unfinished uploads this long after their last write; "
           "0 or off to keep them (default 7d)", parse_optional_duration),
    Option("--disable-download", "disable_download", "answer GET on uploads with 405", None),
    Option("--fsync", "fsync", "when data reaches the disk before the reply: complete (default: before the "
           "reply that completes an upload), every-patch, or never", str.lower),
    Option("--direct-io", "direct_io", "auto (default): write large bodies with O_DIRECT, bypassing the page "
           "cache, if the upload directory is on a local disk file system that takes it; on: also on "
           "NFS, SMB or FUSE; off: splice them through the page cache", str.lower),
    Option("--hooks-http", "hooks_http", "POST hook events as JSON to this URL"),
    Option("--hooks-http-forward-headers", "hooks_http_forward_headers", "request headers also sent as "
           "headers of the hook request, e.g. X-Api-Key,Cookie", parse_list),
    Option("--hooks-http-timeout", "hooks_http_timeout", "a hook must answer within (default 10s; also "
           "for --hooks-dir)", parse_duration),
    Option("--hooks-http-retries", "hooks_http_retries", "retries of a failed post-* hook, with "
           "exponential backoff (default 3)", int),
    Option("--hooks-dir", "hooks_dir", "run the executable named after each event in this directory"),
    Option("--hooks-enabled", "hooks_enabled", "comma list of events, or 'all' (default pre-create,"
           "post-create,post-receive,post-terminate,post-finish)", parse_events),
    Option("--hooks-format", "hooks_format", "tusd (tusd v2 JSON, default) or tusd-v1 (tusd v1 and rustus)",
           str.lower),
    Option("--hooks-fallback", "hooks_fallback", "when a blocking hook fails or times out: deny (502/504, "
           "default) or allow", str.lower),
    Option("--progress-interval", "progress_interval", "post-receive hooks at most this often per "
           "request (default 1s)", parse_duration),
    Option("--sentry-dsn", "sentry_dsn", "report unhandled errors and 5xx replies to this Sentry DSN"),
    Option("--sentry-sample-rate", "sentry_sample_rate", "share of error events sent to Sentry (default 1.0)",
           float),
    Option("--sentry-traces-sample-rate", "sentry_traces_sample_rate", "share of requests traced in Sentry "
           "(default 0: no tracing)", float),
    Option("--sentry-environment", "sentry_environment", "Sentry environment, e.g. production"),
]
DISABLE_OPTIONS = [Option(f"--disable-{name}", name, f"turn off the {name} extension", None)
                   for name in ALL_EXTENSIONS]

# Drop-in: the names tusd (single dash) and rustus give the same settings, so an existing unit file
# or Ansible role keeps working. Settings whose meaning differs are left out (tusd's regex
# -cors-allow-origin, rustus's separate --info-dir, rustus's --hooks-format values).
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "--host": ("-host",),
    "--port": ("-port",),
    "--base-path": ("-base-path", "--url"),
    "--upload-dir": ("-upload-dir", "--data-dir"),
    "--max-size": ("-max-size", "--max-file-size"),
    "--s3-bucket": ("-s3-bucket",),
    "--s3-endpoint": ("-s3-endpoint",),
    "--s3-prefix": ("-s3-object-prefix",),
    "--s3-part-size": ("-s3-part-size",),
    "--behind-proxy": ("-behind-proxy",),
    "--dir-layout": ("--dir-structure",),
    "--cors-origin": ("--cors",),
    "--unix-socket": ("-unix-sock",),
    "--tls-cert": ("-tls-certificate",),
    "--tls-key": ("-tls-key",),
    "--read-timeout": ("-network-timeout",),
    "--shutdown-timeout": ("-shutdown-timeout",),
    "--disable-download": ("-disable-download",),
    "--disable-termination": ("-disable-termination",),
    "--disable-concatenation": ("-disable-concatenation",),
    "--hooks-http": ("-hooks-http", "--hooks-http-urls"),
    "--hooks-http-forward-headers": ("-hooks-http-forward-headers", "--hooks-http-proxy-headers"),
    "--hooks-dir": ("-hooks-dir",),
    "--hooks-enabled": ("-hooks-enabled-events", "--hooks"),
}

# rustus's environment variables, and how their values translate where rustus spells them otherwise.
ENV_ALIASES: dict[str, tuple[str, dict[str, str]]] = {
    "RUSTUS_SERVER_HOST": ("--host", {}),
    "RUSTUS_SERVER_PORT": ("--port", {}),
    "RUSTUS_PREFIX": ("--base-path", {}),
    "RUSTUS_DATA_DIR": ("--upload-dir", {}),
    "RUSTUS_DIR_STRUCTURE": ("--dir-layout", {}),
    "RUSTUS_MAX_FILE_SIZE": ("--max-size", {}),
    "RUSTUS_CORS": ("--cors-origin", {}),
    "RUSTUS_BEHIND_PROXY": ("--behind-proxy", {}),
    "RUSTUS_LOG_LEVEL": ("--log-level", {"warn": "warning", "trace": "debug"}),
    "RUSTUS_HOOKS_HTTP_URLS": ("--hooks-http", {}),
    "RUSTUS_HOOKS_HTTP_PROXY_HEADERS": ("--hooks-http-forward-headers", {}),
    "RUSTUS_HOOKS_DIR": ("--hooks-dir", {}),
    "RUSTUS_HOOKS": ("--hooks-enabled", {}),
    "RUSTUS_HOOKS_FORMAT": ("--hooks-format", {"tusd": "tusd-v1"}),    # rustus's "tusd" is tusd v1's shape
    "RUSTUS_SENTRY_DSN": ("--sentry-dsn", {}),
    "RUSTUS_SENTRY_SAMPLE_RATE": ("--sentry-sample-rate", {}),
    "RUSTUS_SENTRY_TRACES_SAMPLE_RATE": ("--sentry-traces-sample-rate", {}),
    "RUSTUS_SENTRY_ENVIRONMENT": ("--sentry-environment", {}),
}


def environment_value(option: Option) -> str | None:
    """TUSFAST_<NAME>, else the rustus variable for the same setting (translated), else None."""
    value = os.environ.get(option.env)
    if value is not None:
        return value
    for variable, (flag, translate) in ENV_ALIASES.items():
        value = os.environ.get(variable)
        if flag == option.flag and value:
            return translate.get(value.strip().lower(), value)
    return None


CLEANUP_OPTIONS = [option for option in OPTIONS
                   if option.field in ("upload_dir", "dir_layout", "expire_after", "log_level", "lock_timeout",
                                       "redis_url", "redis_prefix", "redis_lock_lease", "info_store",
                                       "storage", "s3_bucket",
                                       "s3_endpoint", "s3_prefix", "s3_region")]
ENV_EPILOG = "Every flag can also be set as an environment variable, e.g. --max-size as TUSFAST_MAX_SIZE."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tusfast", description="A fast, dependable tus 1.0 upload server.")
    parser.add_argument("--version", action="version", version=f"tusfast {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the server", epilog=ENV_EPILOG)
    for option in OPTIONS + DISABLE_OPTIONS:
        _add(serve, option)
    cleanup = commands.add_parser("cleanup", help="remove expired unfinished uploads once (for cron)",
                                  epilog=ENV_EPILOG)
    for option in CLEANUP_OPTIONS:
        _add(cleanup, option)
    return parser


def _add(parser: argparse.ArgumentParser, option: Option) -> None:
    env = environment_value(option)
    dest = option.flag.lstrip("-").replace("-", "_")
    names = (option.flag, *FLAG_ALIASES.get(option.flag, ()))
    if option.parse is None:
        parser.add_argument(*names, dest=dest, action="store_true",
                            default=env is not None and env.strip().lower() in _TRUE, help=option.help)
        return
    default = _parse_env(option, env) if env is not None else argparse.SUPPRESS
    parser.add_argument(*names, dest=dest, type=_typed(option), default=default, help=option.help)


def _typed(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)  # type: ignore[misc]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = option.flag.lstrip("-")
    return parse


def _parse_env(option: Option, text: str) -> Any:
    try:
        return option.parse(text)  # type: ignore[misc]
    except ValueError as exc:
        raise SystemExit(f"tusfast: {option.env}: {exc}") from None


def config_from_args(args: argparse.Namespace) -> Config:
    values = {option.field: getattr(args, option.flag.lstrip("-").replace("-", "_"))
              for option in OPTIONS if hasattr(args, option.flag.lstrip("-").replace("-", "_"))}
    values["disabled_extensions"] = tuple(option.field for option in DISABLE_OPTIONS
                                          if getattr(args, option.flag.lstrip("-").replace("-", "_"), False))
    return Config(**values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("serve", "cleanup"):
        parser.print_help()
        return 2
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    configure_logging(config.log_level, config.log_format)
    if args.command == "cleanup":
        return cleanup(config)
    if config.workers > 1:
        from .workers import run_workers
        return run_workers(config)
    return run(config)


def configure_logging(level: str, log_format: str = "text") -> None:
    logs.configure_logging(level, log_format)


def run(config: Config, sock: Any = None) -> int:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    try:
        import uvloop
        uvloop.run(_serve(config, sock))
    except ImportError:
        asyncio.run(_serve(config, sock))
    except (OSError, LockUnavailable, StorageUnavailable) as exc:   # port in use, Redis or bucket missing: say so
        logging.getLogger("tusfast").error("cannot start: %s", exc)
        return 1
    return 0


def cleanup(config: Config) -> int:
    """One expiry sweep over the upload directory; safe next to a running server (lock files)."""
    if not config.expire_after:
        print("tusfast cleanup: expiration is off (--expire-after 0); nothing to do")
        return 0

    async def sweep() -> int:
        server = TusServer(config)
        sweeper = ExpirySweeper(server.storage, server.locker, server.protocol_settings())
        if isinstance(server.locker, ConnectedLocker):
            await server.locker.connect()   # Redis down: say so once, not once per upload
        if isinstance(server.storage, Lifecycle):
            await server.storage.open()
        if server.info_store is not None:
            await server.info_store.open()
        try:
            return await sweeper.sweep_once()
        finally:
            if server.info_store is not None:
                await server.info_store.close()
            if isinstance(server.storage, Lifecycle):
                await server.storage.close()
            if isinstance(server.locker, ConnectedLocker):
                await server.locker.disconnect()

    try:
        removed = asyncio.run(sweep())
    except (StorageUnavailable, LockUnavailable) as exc:
        print(f"tusfast cleanup: {exc}")
        return 1
    where = f"S3 bucket {config.s3_bucket}" if config.storage == "s3" else config.upload_dir
    print(f"tusfast cleanup: removed {removed} expired upload(s) from {where}")
    return 0


async def _serve(config: Config, sock: Any) -> None:
    server = TusServer(config, sock=sock)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()
