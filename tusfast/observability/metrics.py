"""Prometheus metrics: one registry per TusServer, and a NullMetrics that costs nothing when off.

Metric names (all per process; with `--workers N` every worker has its own registry):

    tusfast_http_requests_total{method,status}      requests answered by the tus handler
    tusfast_http_request_duration_seconds{method}   histogram of handler time (body included)
    tusfast_http_received_bytes_total               bytes read from clients (heads, bodies, spliced bodies)
    tusfast_http_sent_bytes_total                   bytes written to clients (heads, bodies, sendfile)
    tusfast_http_connections_open                   gauge
    tusfast_uploads_created_total                   POSTs that created an upload (finals included)
    tusfast_uploads_finished_total                  uploads that received their last byte (or were joined)
    tusfast_uploads_terminated_total                DELETEs (and creation-with-upload bodies that failed
                                                    their checksum, which remove the new upload)
    tusfast_uploads_expired_total                   unfinished uploads removed by the expiry sweeper
    tusfast_uploads_active                          gauge: created - finished - terminated unfinished - expired
    tusfast_hook_calls_total{event}                 hook transport calls (each retry counts)
    tusfast_hook_failures_total{event}              calls that failed (unreachable, timeout, error, a post-*
                                                    answered >= 400); a rejection is not a failure
    tusfast_hook_duration_seconds{event}            histogram of hook call time

Labels are bounded: `method` is one of METHODS or "other", `status` a number string (100-599, else
"other"), `event` a hook event name or "other". No ids, paths or error texts.

`tusfast_uploads_active` counts unfinished uploads this process has seen created, less those it saw
finish, terminated or expire. It is exact for a single process over its lifetime; after a restart,
uploads created before it are not known, so finishing them can take the gauge below zero; with
`--workers N` an upload may be created in one worker and finished in another, so only the sum over
all workers is meaningful.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Protocol

from ..hooks import HookEvent
from ..http.messages import HttpRequest, HttpResponse
from ..http.server import HttpServer, bind_tcp

if TYPE_CHECKING:
    from ..http.messages import App

METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"})
HOOK_EVENTS = frozenset(event.value for event in HookEvent)
METRICS_PATH = "/metrics"
REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)
HOOK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


def event_label(event: str) -> str:
    return event if event in HOOK_EVENTS else "other"


class Metrics(Protocol):
    enabled: bool

    def request_done(self, method: str, status: int, seconds: float) -> None: ...
    def request_refused(self, status: int) -> None: ...
    def bytes_received(self, count: int) -> None: ...
    def bytes_sent(self, count: int) -> None: ...
    def connection_opened(self) -> None: ...
    def connection_closed(self) -> None: ...
    def upload_created(self) -> None: ...
    def upload_finished(self) -> None: ...
    def upload_terminated(self, was_complete: bool) -> None: ...
    def upload_expired(self) -> None: ...
    def hook_called(self, event: str, seconds: float, failed: bool) -> None: ...
    def exposition(self) -> tuple[bytes, str]: ...


class NullMetrics:
    """Metrics off: every method does nothing."""
    enabled = False

    def request_done(self, method: str, status: int, seconds: float) -> None: pass
    def request_refused(self, status: int) -> None: pass
    def bytes_received(self, count: int) -> None: pass
    def bytes_sent(self, count: int) -> None: pass
    def connection_opened(self) -> None: pass
    def connection_closed(self) -> None: pass
    def upload_created(self) -> None: pass
    def upload_finished(self) -> None: pass
    def upload_terminated(self, was_complete: bool) -> None: pass
    def upload_expired(self) -> None: pass
    def hook_called(self, event: str, seconds: float, failed: bool) -> None: pass

    def exposition(self) -> tuple[bytes, str]:
        return b"", "text/plain"


NULL_METRICS = NullMetrics()


class PrometheusMetrics:
    """The metrics of one server, in a registry of its own (not prometheus_client's global one)."""
    enabled = True

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._requests = Counter("tusfast_http_requests", "Requests answered by the tus handler",
                                 ["method", "status"], registry=registry)
        self._request_seconds = Histogram("tusfast_http_request_duration_seconds",
                                          "Time the tus handler took per request, body included",
                                          ["method"], buckets=REQUEST_BUCKETS, registry=registry)
        self._received = Counter("tusfast_http_received_bytes", "Bytes received from clients", registry=registry)
        self._sent = Counter("tusfast_http_sent_bytes", "Bytes sent to clients", registry=registry)
        self._connections = Gauge("tusfast_http_connections_open", "Open client connections", registry=registry)
        self._created = Counter("tusfast_uploads_created", "Uploads created", registry=registry)
        self._finished = Counter("tusfast_uploads_finished", "Uploads that received their last byte",
                                 registry=registry)
        self._terminated = Counter("tusfast_uploads_terminated", "Uploads terminated", registry=registry)
        self._expired = Counter("tusfast_uploads_expired", "Unfinished uploads removed on expiry",
                                registry=registry)
        self._active = Gauge("tusfast_uploads_active", "Unfinished uploads known to this process "
                             "(created - finished - terminated unfinished - expired)", registry=registry)
        self._hook_calls = Counter("tusfast_hook_calls", "Hook calls", ["event"], registry=registry)
        self._hook_failures = Counter("tusfast_hook_failures", "Hook calls that failed", ["event"],
                                      registry=registry)
        self._hook_seconds = Histogram("tusfast_hook_duration_seconds", "Hook call time", ["event"],
                                       buckets=HOOK_BUCKETS, registry=registry)

    def request_done(self, method: str, status: int, seconds: float) -> None:
        method = method_label(method)
        self._requests.labels(method, status_label(status)).inc()
        self._request_seconds.labels(method).observe(seconds)

    def request_refused(self, status: int) -> None:
        """Refused by the HTTP layer before its method was known: counted under method "other"."""
        self._requests.labels("other", status_label(status)).inc()

    def bytes_received(self, count: int) -> None:
        self._received.inc(count)

    def bytes_sent(self, count: int) -> None:
        self._sent.inc(count)

    def connection_opened(self) -> None:
        self._connections.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def upload_created(self) -> None:
        self._created.inc()
        self._active.inc()

    def upload_finished(self) -> None:
        self._finished.inc()
        self._active.dec()

    def upload_terminated(self, was_complete: bool) -> None:
        self._terminated.inc()
        if not was_complete:
            self._active.dec()

    def upload_expired(self) -> None:
        self._expired.inc()
        self._active.dec()

    def hook_called(self, event: str, seconds: float, failed: bool) -> None:
        event = event_label(event)
        self._hook_calls.labels(event).inc()
        self._hook_seconds.labels(event).observe(seconds)
        if failed:
            self._hook_failures.labels(event).inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def new_metrics(enabled: bool) -> Metrics:
    return PrometheusMetrics() if enabled else NULL_METRICS


def _is_metrics_request(request: HttpRequest) -> bool:
    return request.target.partition("?")[0] == METRICS_PATH and request.method in ("GET", "HEAD")


def metrics_response(metrics: Metrics) -> HttpResponse:
    body, content_type = metrics.exposition()
    return HttpResponse(200, [("Content-Type", content_type), ("Cache-Control", "no-store")], body)


def with_metrics_endpoint(app: "App", metrics: Metrics) -> "App":
    """`GET /metrics` answered before the application (tus routing) sees the request."""
    async def serve(request: HttpRequest) -> HttpResponse:
        if _is_metrics_request(request):
            return metrics_response(metrics)
        return await app(request)
    return serve


def metrics_only_app(metrics: Metrics) -> "App":
    """The app of a separate --metrics-listen listener: /metrics, else 404."""
    async def serve(request: HttpRequest) -> HttpResponse:
        if _is_metrics_request(request):
            return metrics_response(metrics)
        return HttpResponse(404, [("Content-Type", "text/plain")], b"not found; try /metrics\n")
    return serve


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:9100`, `[::1]:9100`, `:9100` (all IPv4 interfaces) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {text!r} (examples: 127.0.0.1:9100, [::1]:9100, :9100)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host and not text.strip().startswith("["):
        raise ValueError(f"invalid listen address {text!r}: write IPv6 addresses in brackets, e.g. [::1]:9100")
    return host or "0.0.0.0", int(port)


async def serve_metrics(metrics: Metrics, listen: str, reuse_port: bool = False) -> HttpServer:
    """Start the separate /metrics listener of --metrics-listen."""
    host, port = parse_listen(listen)
    server = HttpServer(metrics_only_app(metrics))
    await server.listen(bind_tcp(host, port, reuse_port=reuse_port))
    return server


def listener_url(server: HttpServer) -> str:
    sock = server.sockets[0]
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if sock.family == socket.AF_INET6 else host
    return f"http://{host}:{port}{METRICS_PATH}"

