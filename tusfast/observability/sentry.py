"""Error reporting to Sentry, behind a small protocol so the rest of tusfast never imports sentry_sdk.

With no DSN the server gets a `NullReporter`: nothing is imported, nothing runs per request. With a
DSN, `SentryReporter` calls `sentry_sdk.init` once per process and captures

* unhandled exceptions (the HTTP layer's 500 path, background tasks: sweeper, hook queue), and
* every 5xx reply the handler produces (storage unavailable or corrupt, hook failures 502/504),

tagged with the upload id, method, route (the base path pattern, never the raw URL), status, offset,
length and hook name. Credentials are scrubbed in a `before_send` hook: Authorization, Cookie,
Set-Cookie, Proxy-Authorization, X-Api-Key and any header whose name contains token, secret or key.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol

from .._version import __version__

if TYPE_CHECKING:
    from ..http.messages import HttpRequest, HttpResponse

log = logging.getLogger("tusfast.sentry")

FILTERED = "[Filtered]"
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"})
SENSITIVE_PARTS = ("token", "secret", "key")
TAGS = ("upload_id", "method", "route", "status", "offset", "length", "hook")
_HEADER_KEYS = ("headers", "header")

Context = Mapping[str, Any]


class ErrorReporter(Protocol):
    enabled: bool

    def capture_exception(self, exc: BaseException, context: Context) -> None: ...

    def capture_5xx(self, status: int, message: str, context: Context) -> None: ...

    def flush(self, timeout: float = 2.0) -> None: ...


class NullReporter:
    """Sentry off: every method does nothing; callers may check `enabled` to skip building a context."""

    enabled = False

    def capture_exception(self, exc: BaseException, context: Context) -> None:
        pass

    def capture_5xx(self, status: int, message: str, context: Context) -> None:
        pass

    def flush(self, timeout: float = 2.0) -> None:
        pass


# ---- scrubbing (pure; no sentry_sdk needed) --------------------------------------------------

def is_sensitive(name: str) -> bool:
    lower = name.strip().lower()
    return lower in SENSITIVE_HEADERS or any(part in lower for part in SENSITIVE_PARTS)


def scrub_headers(headers: Any) -> Any:
    """The same headers with credential values replaced: a mapping (values may be lists, as in
    hook payloads) or a list of (name, value) pairs."""
    if isinstance(headers, Mapping):
        return {name: FILTERED if is_sensitive(str(name)) else value for name, value in headers.items()}
    if isinstance(headers, (list, tuple)):
        scrubbed: list[Any] = []
        for item in headers:
            if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
                scrubbed.append([item[0], FILTERED if is_sensitive(item[0]) else item[1]])
            else:
                scrubbed.append(item)
        return scrubbed
    return headers


def _scrub_tree(value: Any) -> Any:
    """Scrub every mapping below `value`: sensitive keys, and anything under a `headers` key."""
    if isinstance(value, Mapping):
        result: dict[Any, Any] = {}
        for key, item in value.items():
            name = str(key)
            if is_sensitive(name):
                result[key] = FILTERED
            elif name.lower() in _HEADER_KEYS:
                result[key] = _scrub_tree(scrub_headers(item))
            else:
                result[key] = _scrub_tree(item)
        return result
    if isinstance(value, list):
        return [_scrub_tree(item) for item in value]
    return value


def _scrub_query(query: Any) -> Any:
    if not isinstance(query, str) or not query:
        return query
    parts = []
    for pair in query.split("&"):
        name = pair.split("=", 1)[0]
        parts.append(f"{name}={FILTERED}" if is_sensitive(name) else pair)
    return "&".join(parts)


def scrub_event(event: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """Sentry's `before_send`: remove credentials from the request, contexts, extra data and breadcrumbs."""
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("cookies", None)
        if "headers" in request:
            request["headers"] = scrub_headers(request["headers"])
        if "query_string" in request:
            request["query_string"] = _scrub_query(request["query_string"])
        if "env" in request:
            request["env"] = _scrub_tree(request["env"])
    for key in ("contexts", "extra", "tags"):
        if isinstance(event.get(key), (dict, list)):
            event[key] = _scrub_tree(event[key])
    breadcrumbs = event.get("breadcrumbs")
    values = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    if isinstance(values, list):
        for crumb in values:
            if isinstance(crumb, dict) and isinstance(crumb.get("data"), dict):
                crumb["data"] = _scrub_tree(crumb["data"])
    return event


# ---- what a request contributes ------------------------------------------------------------

def route_of(path: str, base_path: str) -> tuple[str, str | None]:
    """(route pattern, upload id): `/files/abc` -> (`/files/{id}`, `abc`); never the raw URL."""
    if path == base_path or path == base_path.rstrip("/"):
        return base_path, None
    if path.startswith(base_path):
        rest = path[len(base_path):]
        if rest and "/" not in rest:
            return base_path + "{id}", rest
    return "(unmatched)", None


def request_context(request: "HttpRequest", base_path: str, **extra: Any) -> dict[str, Any]:
    """Tags and request data for an event about `request` (headers are scrubbed here already)."""
    path = request.target.split("?", 1)[0]
    if path.startswith(("http://", "https://")):
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    route, upload_id = route_of(path, base_path)
    headers = {name.lower(): value for name, value in request.headers}
    method = headers.get("x-http-method-override", "").strip().upper() or request.method
    context: dict[str, Any] = {"method": method, "route": route, "upload_id": upload_id,
                               "offset": headers.get("upload-offset"), "length": headers.get("upload-length")}
    context.update(extra)
    context["request"] = {"method": method, "url": route,
                          "headers": scrub_headers([[name, value] for name, value in request.headers])}
    return context


# ---- the Sentry reporter -------------------------------------------------------------------

_initialised: str | None = None     # the DSN sentry_sdk.init was called with in this process


class SentryReporter:
    """Reports to Sentry; `sentry_sdk` is imported here and only here."""

    enabled = True

    def __init__(self, dsn: str, *, sample_rate: float = 1.0, traces_sample_rate: float = 0.0,
                 environment: str | None = None, release: str | None = None) -> None:
        global _initialised
        import sentry_sdk
        from sentry_sdk.integrations.atexit import AtexitIntegration
        from sentry_sdk.integrations.dedupe import DedupeIntegration
        from sentry_sdk.integrations.excepthook import ExcepthookIntegration
        from sentry_sdk.integrations.logging import LoggingIntegration

        self._sdk = sentry_sdk
        self.traces_sample_rate = traces_sample_rate
        self.release = release or f"tusfast@{__version__}"
        if _initialised is None:
            sentry_sdk.init(
                dsn=dsn, release=self.release, environment=environment, sample_rate=sample_rate,
                # Tracing on only if asked; the draw happens in `traced` before a transaction exists.
                traces_sample_rate=traces_sample_rate or None,
                send_default_pii=False, include_local_variables=False, max_request_body_size="never",
                before_send=scrub_event, before_send_transaction=scrub_event,     # type: ignore[arg-type]
                # No auto-instrumentation: log lines become breadcrumbs, not duplicate events.
                default_integrations=False, auto_enabling_integrations=False,
                integrations=[LoggingIntegration(level=logging.INFO, event_level=None), DedupeIntegration(),
                              AtexitIntegration(), ExcepthookIntegration()],
            )
            _initialised = dsn
        elif _initialised != dsn:
            log.warning("sentry is already set up in this process with another DSN; keeping it")

    def capture_exception(self, exc: BaseException, context: Context) -> None:
        from sentry_sdk.utils import event_from_exception

        client = self._sdk.get_client()
        event, hint = event_from_exception(exc, client_options=client.options,
                                           mechanism={"type": "tusfast", "handled": False})
        self._send(dict(event), context, hint)

    def capture_5xx(self, status: int, message: str, context: Context) -> None:
        event: dict[str, Any] = {"level": "error", "message": f"{status} {message}",
                                 "fingerprint": ["tusfast-5xx", str(status), str(context.get("route")),
                                                 str(context.get("hook"))]}
        self._send(event, {**context, "status": status}, None)

    def _send(self, event: dict[str, Any], context: Context, hint: Any) -> None:
        tags = {name: str(context[name]) for name in TAGS if context.get(name) is not None}
        event.setdefault("tags", {}).update(tags)
        details = {key: value for key, value in context.items() if key != "request" and value is not None}
        event.setdefault("contexts", {})["tus"] = details
        request = context.get("request")
        if isinstance(request, Mapping):
            event["request"] = dict(request)
        try:
            self._sdk.capture_event(event, hint)    # type: ignore[arg-type]
        except Exception:       # reporting must never break serving
            log.exception("could not report to sentry")

    def flush(self, timeout: float = 2.0) -> None:
        self._sdk.flush(timeout)

    def traced(self, app: Callable[["HttpRequest"], Awaitable["HttpResponse"]],
               base_path: str) -> Callable[["HttpRequest"], Awaitable["HttpResponse"]]:
        """Wrap the app in transactions, if tracing is on; the draw comes before any object is built."""
        rate = self.traces_sample_rate
        if rate <= 0:
            return app
        sdk = self._sdk

        async def traced_app(request: "HttpRequest") -> "HttpResponse":
            if random.random() >= rate:
                return await app(request)
            route, _ = route_of(request.target.split("?", 1)[0], base_path)
            transaction = sdk.start_transaction(op="http.server", name=f"{request.method} {route}",
                                                source="route", sampled=True)
            with transaction:
                response = await app(request)
                transaction.set_http_status(response.status)
                return response

        return traced_app


def build_reporter(dsn: str | None, *, sample_rate: float = 1.0, traces_sample_rate: float = 0.0,
                   environment: str | None = None) -> ErrorReporter:
    """NullReporter without a DSN (sentry_sdk is not imported), else a SentryReporter."""
    if not dsn:
        return NullReporter()
    return SentryReporter(dsn, sample_rate=sample_rate, traces_sample_rate=traces_sample_rate,
                          environment=environment)


def report_errors(reporter: ErrorReporter, base: Context) -> Callable[[BaseException, Context], None]:
    """A callback for background tasks: report `exc` with `base` and the task's own context."""
    def on_error(exc: BaseException, context: Context) -> None:
        if reporter.enabled:
            reporter.capture_exception(exc, {**base, **context})
    return on_error


__all__ = ["ErrorReporter", "NullReporter", "SentryReporter", "build_reporter", "is_sensitive",
           "request_context", "route_of", "scrub_event", "scrub_headers", "report_errors"]
