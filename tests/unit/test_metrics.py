"""Metrics: bounded labels, the active-uploads arithmetic, per-server registries, NullMetrics parity."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tusfast.hooks import HookEvent
from tusfast.observability.metrics import (METHODS, NullMetrics, PrometheusMetrics, event_label, method_label,
                                           new_metrics, parse_listen, status_label, with_metrics_endpoint)


def sample(metrics: PrometheusMetrics, name: str, **labels: str) -> float:
    body, _ = metrics.exposition()
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def label_sets(metrics: PrometheusMetrics, name: str) -> list[dict[str, str]]:
    body, _ = metrics.exposition()
    return [s.labels for family in text_string_to_metric_families(body.decode())
            for s in family.samples if s.name == name]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_known_methods_are_kept(method: str) -> None:
    assert method_label(method) == method


@pytest.mark.parametrize("method", ["BREW", "get", "PROPFIND", "", "X" * 1000, "GET /files/abc"])
def test_other_methods_are_folded(method: str) -> None:
    assert method_label(method) == "other"


def test_status_is_a_number_string_in_range() -> None:
    assert status_label(204) == "204"
    assert status_label(460) == "460"
    assert status_label(99) == status_label(600) == status_label(-1) == "other"


def test_hook_events_are_bounded() -> None:
    assert all(event_label(event.value) == event.value for event in HookEvent)
    assert event_label("pre-create; rm -rf /") == "other"


def test_label_cardinality_stays_bounded() -> None:
    metrics = PrometheusMetrics()
    for index in range(500):
        metrics.request_done(f"M{index}", 1000 + index, 0.01)
        metrics.hook_called(f"event-{index}", 0.01, failed=True)
    assert label_sets(metrics, "tusfast_http_requests_total") == [{"method": "other", "status": "other"}]
    assert sample(metrics, "tusfast_http_requests_total", method="other", status="other") == 500
    assert label_sets(metrics, "tusfast_hook_failures_total") == [{"event": "other"}]


def test_active_uploads() -> None:
    metrics = PrometheusMetrics()
    for _ in range(5):
        metrics.upload_created()
    metrics.upload_finished()                       # 4 unfinished
    metrics.upload_terminated(was_complete=True)    # the finished one: still 4
    metrics.upload_terminated(was_complete=False)   # 3
    metrics.upload_expired()                        # 2
    assert sample(metrics, "tusfast_uploads_active") == 2
    assert sample(metrics, "tusfast_uploads_created_total") == 5
    assert sample(metrics, "tusfast_uploads_terminated_total") == 2
    assert sample(metrics, "tusfast_uploads_expired_total") == 1


def test_connections_and_bytes() -> None:
    metrics = PrometheusMetrics()
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    metrics.bytes_received(100)
    metrics.bytes_sent(7)
    assert sample(metrics, "tusfast_http_connections_open") == 1
    assert sample(metrics, "tusfast_http_received_bytes_total") == 100
    assert sample(metrics, "tusfast_http_sent_bytes_total") == 7


def test_each_server_has_its_own_registry() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()    # no "duplicated timeseries" error
    first.upload_created()
    assert sample(first, "tusfast_uploads_created_total") == 1
    assert sample(second, "tusfast_uploads_created_total") == 0


def test_null_metrics_has_the_same_methods() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {name: inspect.signature(member) for name, member in vars(cls).items()
                if callable(member) and not name.startswith("_")}
    assert public(NullMetrics) == public(PrometheusMetrics)
    assert isinstance(new_metrics(False), NullMetrics) and not new_metrics(False).enabled
    assert isinstance(new_metrics(True), PrometheusMetrics)


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    assert parse_listen(":9100") == ("0.0.0.0", 9100)
    for bad in ("9100", "host:", "host:port", "::1:9100", "h:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_config_wants_metrics_for_a_listener() -> None:
    from tusfast import Config
    assert Config(metrics=True, metrics_listen="127.0.0.1:9100").metrics_listen == "127.0.0.1:9100"
    with pytest.raises(ValueError, match="needs --metrics"):
        Config(metrics_listen="127.0.0.1:9100")
    with pytest.raises(ValueError, match="listen address"):
        Config(metrics=True, metrics_listen="nowhere")


def test_endpoint_answers_before_the_app() -> None:
    from tusfast.http.messages import HttpRequest, HttpResponse

    seen: list[str] = []

    async def app(request: HttpRequest) -> HttpResponse:
        seen.append(request.target)
        return HttpResponse(404)

    metrics = PrometheusMetrics()
    serve = with_metrics_endpoint(app, metrics)
    scrape = asyncio.run(serve(HttpRequest("GET", "/metrics?x=1", [], None)))  # type: ignore[arg-type]
    assert scrape.status == 200 and b"tusfast_uploads_active" in scrape.body
    assert asyncio.run(serve(HttpRequest("POST", "/metrics", [], None))).status == 404  # type: ignore[arg-type]
    assert asyncio.run(serve(HttpRequest("GET", "/files/", [], None))).status == 404  # type: ignore[arg-type]
    assert seen == ["/metrics", "/files/"]
