"""The embeddable server: configure, start, stop. The CLI is a thin layer over this.

    async with TusServer(Config(port=0, upload_dir="/srv/uploads")) as server:
        print(server.url)           # http://127.0.0.1:PORT/files/
        await server.wait_closed()  # or run the rest of your program
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from types import TracebackType
from typing import Callable

from ._version import __version__
from .config import Config
from .core.headers import TUS_VERSION
from .core.protocol import DOWNLOAD, REQUIRES, ProtocolSettings
from .handler import TusHandler
from .hooks import HookCallable, Hooks
from .hooks.dispatcher import HookDispatcher, Transport
from .hooks.files import FileTransport
from .hooks.http import HttpTransport
from .hooks.python import CallableTransport
from .http.limits import HttpLimits
from .http.messages import App, HttpRequest
from .http.server import HttpServer, bind_tcp, bind_unix
from .locking import ConnectedLocker, FileLocker, Locker, MemoryLocker
from .observability.logs import AccessLog, NullAccessLog
from .observability.metrics import (
    Metrics,
    listener_url,
    new_metrics,
    serve_metrics,
    with_metrics_endpoint,
)
from .observability.sentry import (
    ErrorReporter,
    SentryReporter,
    build_reporter,
    report_errors,
    request_context,
)
from .storage import FileStorage, Lifecycle, Storage, supports
from .storage.info import InfoStore
from .sweeper import ExpirySweeper

log = logging.getLogger("tusfast")


class TusServer:
    def __init__(self, config: Config | None = None, *, storage: Storage | None = None,
                 locker: Locker | None = None, hooks: Hooks | HookCallable | None = None,
                 sock: socket.socket | None = None, reporter: ErrorReporter | None = None) -> None:
        self.config = config or Config()
        self.reporter = reporter or build_reporter(          # NullReporter without --sentry-dsn
            self.config.sentry_dsn, sample_rate=self.config.sentry_sample_rate,
            traces_sample_rate=self.config.sentry_traces_sample_rate, environment=self.config.sentry_environment)
        self.storage = storage or self._default_storage()
        # --info-store redis: opened and closed here, like the locker (None: the backend's own .info)
        self.info_store: InfoStore | None = getattr(self.storage, "infos", None)
        self.locker = locker or self._default_locker()
        self.hooks = self._hooks(hooks)
        self.metrics: Metrics = new_metrics(self.config.metrics)    # NullMetrics without --metrics
        if isinstance(self.hooks, HookDispatcher):
            self.hooks.metrics = self.metrics
        self._metrics_http: HttpServer | None = None    # --metrics-listen
        self._sock = sock
        self._http: HttpServer | None = None
        self._sweeper: ExpirySweeper | None = None
        self._closed = asyncio.Event()

    def _default_storage(self) -> Storage:
        config = self.config
        infos: InfoStore | None = None
        if config.info_store == "redis":
            from .storage.redis_info import RedisInfoStore     # only now: redis-py is an optional extra
            assert config.redis_url is not None
            infos = RedisInfoStore(config.redis_url, prefix=config.redis_prefix)
        if config.storage == "s3":
            from .storage.s3 import S3Storage     # only now: aiobotocore is an optional extra
            assert config.s3_bucket is not None
            return S3Storage(config.s3_bucket, config.s3_prefix, config.s3_endpoint, config.s3_region,
                             config.s3_part_size, config.s3_temp_dir, info_store=infos)
        return FileStorage(config.upload_dir, config.dir_layout, flat_links=config.flat_links, info_store=infos,
                           direct_io=config.direct_io)

    def _default_locker(self) -> Locker:
        config = self.config
        if config.redis_url:    # across hosts, whatever the storage
            from .locking.redis import RedisLocker
            return RedisLocker(config.redis_url, prefix=config.redis_prefix, timeout=config.lock_timeout,
                               lease=config.redis_lock_lease)
        # Lock files work across processes (--workers, or two servers on one directory).
        if isinstance(self.storage, FileStorage):
            return FileLocker(self.storage.directory / ".locks", self.config.lock_timeout)
        return MemoryLocker(self.config.lock_timeout)

    def _hooks(self, hooks: Hooks | HookCallable | None) -> Hooks | None:
        """An object with `dispatch` is used as is; a callable, --hooks-http or --hooks-dir get a
        dispatcher (event selection, fallback, queued post-* hooks)."""
        if hooks is not None and hasattr(hooks, "dispatch"):
            return hooks
        config = self.config
        transport: Transport
        if hooks is not None:
            transport = CallableTransport(hooks)
        elif config.hooks_http:
            transport = HttpTransport(config.hooks_http, config.hooks_format, config.hooks_http_timeout,
                                      config.hooks_http_forward_headers)
        elif config.hooks_dir:
            transport = FileTransport(config.hooks_dir, config.hooks_format, config.hooks_http_timeout)
        else:
            return None
        return HookDispatcher(transport, config.hooks_enabled, fallback=config.hooks_fallback,
                              retries=config.hooks_http_retries, on_error=self._background_errors())

    def _background_errors(self) -> Callable[[BaseException, dict[str, object]], None] | None:
        return report_errors(self.reporter, {}) if self.reporter.enabled else None

    def _on_http_error(self, exc: Exception, request: HttpRequest) -> None:
        """The HTTP layer's 500 path: an exception the handler did not turn into a reply."""
        self.reporter.capture_exception(exc, request_context(request, self.config.base_path, status=500))

    def _access_log(self) -> AccessLog:
        return NullAccessLog() if self.config.no_access_log else AccessLog(self.config.behind_proxy)

    def protocol_settings(self) -> ProtocolSettings:
        config = self.config
        extensions = [name for name in config.extensions if supports(self.storage, name)]
        extensions = [name for name in extensions if REQUIRES.get(name, name) in extensions]
        return ProtocolSettings(config.base_path, config.max_size, tuple(extensions), config.public_url,
                                config.behind_proxy, config.expire_after if "expiration" in extensions else None,
                                not config.disable_download and supports(self.storage, DOWNLOAD))

    def http_limits(self) -> HttpLimits:
        config = self.config
        return HttpLimits(max_head_size=config.max_head_size, idle_timeout=config.idle_timeout,
                          head_timeout=config.head_timeout, body_timeout=config.read_timeout,
                          max_connections=config.max_connections,
                          max_connections_per_ip=config.max_connections_per_ip,
                          shutdown_timeout=config.shutdown_timeout)

    async def start(self) -> None:
        if isinstance(self.locker, ConnectedLocker):
            await self.locker.connect()     # Redis down: LockUnavailable, before we accept anything
        if isinstance(self.storage, FileStorage):
            self.storage.prepare()
            direct = self.storage.direct_io
            log.info("direct I/O (O_DIRECT) for large bodies: %s (%s)", "on" if direct.enabled else "off", direct.why)
        if isinstance(self.storage, Lifecycle):
            await self.storage.open()       # in the running loop; a missing bucket stops us here
        if self.info_store is not None:
            await self.info_store.open()    # Redis down: StorageUnavailable, before we accept anything
        settings = self.protocol_settings()
        handler = TusHandler(settings, self.storage, self.locker, self.hooks, self.config.cors_origins,
                             fsync=self.config.fsync, progress_interval=self.config.progress_interval,
                             reporter=self.reporter, metrics=self.metrics, access_log=self._access_log())
        app: App = handler
        if isinstance(self.reporter, SentryReporter):
            app = self.reporter.traced(handler, settings.base_path)
        if self.metrics.enabled and not self.config.metrics_listen:
            app = with_metrics_endpoint(app, self.metrics)      # GET /metrics, before tus routing
        self._http = HttpServer(app, self.http_limits(), [("Tus-Resumable", TUS_VERSION)], self._tls(),
                                on_error=self._on_http_error if self.reporter.enabled else None)
        self._http.observer = self.metrics if self.metrics.enabled else None
        await self._http.listen(self._sock or self._bind())
        if self.metrics.enabled and self.config.metrics_listen:
            self._metrics_http = await serve_metrics(self.metrics, self.config.metrics_listen,
                                                     reuse_port=self.config.workers > 1)
            log.info("metrics on %s", listener_url(self._metrics_http))
        if settings.enabled("expiration"):
            self._sweeper = ExpirySweeper(self.storage, self.locker, settings, on_error=self._background_errors())
            self._sweeper.metrics = self.metrics
            self._sweeper.start()
        # The address we bound, not --public-url: an operator with --port 0 must learn the port.
        public = f", public URL {self.config.public_url}" if self.config.public_url else ""
        log.info("tusfast %s listening on %s (storage: %s%s)", __version__, self.listen_url,
                 _describe(self.storage), public)

    def _bind(self) -> socket.socket:
        if self.config.unix_socket:
            return bind_unix(self.config.unix_socket)
        return bind_tcp(self.config.host, self.config.port, reuse_port=self.config.workers > 1)

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    @property
    def url(self) -> str:
        """The collection (creation) URL clients should use."""
        return self.config.public_url or self.listen_url

    @property
    def listen_url(self) -> str:
        """The collection URL on the socket we listen on (behind a proxy, not what clients see)."""
        assert self._http is not None and self._http.sockets, "server is not started"
        sock = self._http.sockets[0]
        scheme = "https" if self.config.tls_cert else "http"
        if sock.family == socket.AF_UNIX:
            return f"{scheme}+unix://{sock.getsockname()}{self.config.base_path}"
        host, port = sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}{self.config.base_path}"

    @property
    def port(self) -> int:
        assert self._http is not None and self._http.sockets
        return int(self._http.sockets[0].getsockname()[1])

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; let requests in flight finish up to `timeout` seconds; close the rest."""
        if self._sweeper is not None:
            await self._sweeper.stop()
            self._sweeper = None
        if self._metrics_http is not None:
            await self._metrics_http.stop(0)
            self._metrics_http = None
        if self._http is not None:
            await self._http.stop(timeout)
            self._http = None
            if isinstance(self.hooks, HookDispatcher):     # deliver queued post-* hooks
                await self.hooks.close(self.config.shutdown_timeout if timeout is None else timeout)
            if isinstance(self.locker, FileLocker):
                self.locker.close()
            elif isinstance(self.locker, ConnectedLocker):
                await self.locker.disconnect()
            if isinstance(self.storage, Lifecycle):
                await self.storage.close()
            if self.info_store is not None:
                await self.info_store.close()
            log.info("tusfast stopped")
            self.reporter.flush(2.0)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> "TusServer":
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()


def _describe(storage: Storage) -> str:
    infos = getattr(storage, "infos", None)
    describe_infos = getattr(infos, "describe", None)
    extra = f"; {describe_infos()}" if callable(describe_infos) else ""
    if isinstance(storage, FileStorage):
        layout = f", layout {storage.layout.template}" if storage.layout else ""
        return f"files in {storage.directory}{layout}{extra}"
    describe = getattr(storage, "describe", None)
    return (str(describe()) if callable(describe) else type(storage).__name__) + extra
