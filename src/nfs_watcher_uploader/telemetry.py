"""Traces, metrics and logs.

`setup_telemetry` builds a TracerProvider and a MeterProvider from the standard `OTEL_*`
variables: OTLP/HTTP export only when an endpoint is configured (so a service with no collector
stays quiet), nothing at all with `OTEL_SDK_DISABLED=true`, and a Prometheus reader on its own
registry behind `GET /metrics`, fed by the same instruments. `Telemetry` is what the pipeline
calls: a span per file with child spans per step, and the counters and histograms. Without a
provider every call is a no-op.
"""

import logging
import os
import traceback
from collections.abc import Callable, Generator, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, get_args

from fastapi import FastAPI
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode
from prometheus_client import CollectorRegistry
from pythonjsonlogger.json import JsonFormatter

from nfs_watcher_uploader.constants import UPLOAD_RATE_WINDOW_S
from nfs_watcher_uploader.items import SessionStateName, WorkItem, printable
from nfs_watcher_uploader.rates import RecentRate
from nfs_watcher_uploader.redaction import redact

METER_NAME = TRACER_NAME = "nfs_watcher_uploader"
SERVICE_NAME = "nfs-watcher-uploader"
SESSION_STATES: tuple[SessionStateName, ...] = get_args(SessionStateName)
# Probes and scrapes are frequent and say nothing about the work: not traced.
EXCLUDED_URLS = "healthz,readyz,metrics"
# Request headers that carry credentials: never recorded on a span.
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie")
# The only labels of the HTTP server metrics: the route's template (never the path), the
# method (unknown ones are `_OTHER`), the status, the scheme and the protocol version. The
# instrumentation adds the Host header (`http.server_name`) and the listening address too: every
# distinct Host any client sends would be a new series, kept for ever.
HTTP_SERVER_METRIC_LABELS = frozenset(
    {
        "http.method",
        "http.request.method",
        "http.status_code",
        "http.response.status_code",
        "http.target",  # the route's template (the instrumentation sets no other on metrics)
        "http.route",
        "http.scheme",
        "url.scheme",
        "http.flavor",
        "network.protocol.version",
        "error.type",
    }
)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def _exporter_wanted(signal: str) -> bool:
    """OTLP export for `signal` (traces, metrics) only when an endpoint is configured."""
    if os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


@dataclass
class Providers:
    tracer_provider: trace.TracerProvider | None
    meter_provider: metrics.MeterProvider | None
    registry: CollectorRegistry

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        for provider in (self.tracer_provider, self.meter_provider):
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                shutdown()


def setup_telemetry(app: FastAPI) -> Providers:
    """Providers for one app (not the process-wide globals, so that tests can run several)."""
    registry = CollectorRegistry(auto_describe=True)
    if _env_true("OTEL_SDK_DISABLED"):
        return Providers(None, None, registry)
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import View
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": SERVICE_NAME}).merge(
        OTELResourceDetector().detect()
    )
    tracer_provider = TracerProvider(resource=resource)
    if _exporter_wanted("traces"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    if _exporter_wanted("metrics"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    # No label from a request header: route templates only (HTTP_SERVER_METRIC_LABELS).
    views = [View(instrument_name="http.server.*", attribute_keys=set(HTTP_SERVER_METRIC_LABELS))]
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=views)
    from opentelemetry.util.http import (
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
        get_custom_headers,
    )

    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=EXCLUDED_URLS,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        # Headers are captured only on request (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*);
        # the API token is redacted even then.
        http_capture_headers_sanitize_fields=[
            *get_custom_headers(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS),
            *SECRET_HEADERS,
        ],
    )
    return Providers(tracer_provider, meter_provider, registry)


@dataclass
class Gauges:
    """Readings the observable instruments take from the running service."""

    queue_depth: Callable[[], int]
    in_flight: Callable[[], int]
    parked: Callable[[], int]
    oldest_waiting_age: Callable[[], float | None]
    last_scan: Callable[[], float | None]
    nfs_hung: Callable[[], int]
    staging_free: Callable[[], int | None]
    staging_size: Callable[[], int | None]
    sessions: Callable[[], Mapping[str, int]]
    bandwidth_limit: Callable[[], float]
    webhook_pending: Callable[[], int] = lambda: 0


# (name, unit, description) of each counter.
_COUNTERS = [
    ("files.processed", "{file}", "Files uploaded and committed"),
    ("files.failed", "{file}", "Files parked after a permanent error"),
    ("upload.retries", "{retry}", "Retries after a transient error"),
    ("upload.bytes", "By", "Bytes uploaded and committed"),
    ("files.renamed", "{file}", "Files uploaded under a new name: their own held other bytes"),
    ("files.late_writes", "{file}", "Files written to after their claim, uploaded again whole"),
]


class Telemetry:
    """Spans for each file and its steps, and the pipeline's instruments."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        meter = metrics.get_meter(METER_NAME, meter_provider=meter_provider)
        self.meter = meter
        counters = {
            name: meter.create_counter(name, unit=unit, description=description)
            for name, unit, description in _COUNTERS
        }
        # A counter that was never added to is not exported at all; start them at 0 so that
        # "no failures" reads as 0, not as a missing series.
        for counter in counters.values():
            counter.add(0)
        self.files_processed = counters["files.processed"]
        self.files_failed = counters["files.failed"]
        self.upload_retries = counters["upload.retries"]
        self.bytes_uploaded = counters["upload.bytes"]
        self.files_renamed = counters["files.renamed"]
        self.late_writes = counters["files.late_writes"]
        self.upload_duration = meter.create_histogram(
            "upload.duration", unit="s", description="Time to upload one file"
        )
        self.file_size = meter.create_histogram(
            "file.size", unit="By", description="Size of uploaded files"
        )
        self.recent_rate = RecentRate(UPLOAD_RATE_WINDOW_S)

    def observe(self, gauges: Gauges) -> None:
        """Register the instruments that read the service's state when collected."""

        def reading(fn: Callable[[], float | int | None]) -> Callable[..., Iterable[Observation]]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                value = fn()
                return [] if value is None else [Observation(value)]

            return callback

        # (name, unit, description, reading, is a gauge rather than an up-down count)
        table: list[tuple[str, str, str, Callable[[], float | int | None], bool]] = [
            ("queue.depth", "{file}", "Files queued for the workers", gauges.queue_depth, False),
            (
                "files.in_flight",
                "{file}",
                "Files being staged or uploaded",
                gauges.in_flight,
                False,
            ),
            ("files.parked", "{file}", "Files parked in the failed folder", gauges.parked, False),
            (
                "files.waiting.max_age",
                "s",
                "Age of the oldest file waiting in incoming to be claimed",
                gauges.oldest_waiting_age,
                True,
            ),
            (
                "watcher.last_scan.time",
                "s",
                "Unix time of the last complete scan",
                gauges.last_scan,
                True,
            ),
            (
                "nfs.calls.hung",
                "{call}",
                "NFS calls given up at their deadline whose threads are still blocked",
                gauges.nfs_hung,
                False,
            ),
            (
                "staging.disk.free",
                "By",
                "Free bytes on the staging disk (sampled by GC)",
                gauges.staging_free,
                True,
            ),
            (
                "staging.disk.size",
                "By",
                "Size of the staging disk (sampled by GC)",
                gauges.staging_size,
                True,
            ),
            (
                "upload.rate",
                "By/s",
                f"Bytes committed per second over the last {UPLOAD_RATE_WINDOW_S:.0f} s",
                self.recent_rate.per_second,
                True,
            ),
            (
                "upload.bandwidth.limit",
                "By/s",
                "Upload bandwidth limit (0: unlimited)",
                gauges.bandwidth_limit,
                True,
            ),
            (
                "webhook.events.pending",
                "{event}",
                "Webhook events in the outbox, not yet delivered",
                gauges.webhook_pending,
                False,
            ),
        ]
        for name, unit, description, fn, gauge in table:
            create = (
                self.meter.create_observable_gauge
                if gauge
                else self.meter.create_observable_up_down_counter
            )
            create(name, [reading(fn)], unit=unit, description=description)

        def sessions_by_state(options: CallbackOptions) -> Iterable[Observation]:
            # Every state, 0 included: a series that appears only when it turns non-zero cannot
            # be compared with its own past (the drain timeout alert does).
            counts = gauges.sessions()
            return [Observation(counts.get(s, 0), {"state": s}) for s in SESSION_STATES]

        self.meter.create_observable_gauge(
            "sessions",
            [sessions_by_state],
            unit="{session}",
            description="Sessions this service knows, by state",
        )

    @contextmanager
    def file_span(self, item: WorkItem, blob_name: str) -> Generator[Span]:
        attrs = {
            "session.name": item.session_name,
            "file.name": printable(item.rel),
            "blob.name": printable(blob_name),
            "retry.attempt": item.attempt,
        }
        with self._tracer.start_as_current_span("file", attributes=attrs) as span:
            yield span

    @contextmanager
    def step(self, name: str, **attrs: Any) -> Generator[Span]:
        with self._tracer.start_as_current_span(name, record_exception=False) as span:
            for key, value in attrs.items():
                span.set_attribute(key, value)
            try:
                yield span
            except BaseException as exc:
                record_error(span, exc)
                raise

    def failed_attempt(self, span: Span, exc: BaseException) -> None:
        """Mark a file's span as failed (the file is retried or parked under a new span)."""
        record_error(span, exc)

    def set_file_size(self, size: int) -> None:
        """Record the size on the current file span, once it is known."""
        trace.get_current_span().set_attribute("file.size", size)

    def uploaded(self, size: int, duration: float) -> None:
        self.files_processed.add(1)
        self.bytes_uploaded.add(size)
        self.recent_rate.add(size)
        self.upload_duration.record(duration)
        self.file_size.record(size)

    def retried(self) -> None:
        self.upload_retries.add(1)

    def parked(self) -> None:
        self.files_failed.add(1)

    def renamed(self) -> None:
        self.files_renamed.add(1)

    def late_write(self) -> None:
        self.late_writes.add(1)


def record_error(span: Span, exc: BaseException) -> None:
    """`span.record_exception` and an error status, with every text redacted: a library's
    message (and so its traceback) may quote a URL with a SAS."""
    message = redact(str(exc))
    span.add_event(
        "exception",
        {
            "exception.type": type(exc).__qualname__,
            "exception.message": message,
            "exception.stacktrace": redact("".join(traceback.format_exception(exc))),
        },
    )
    span.set_status(Status(StatusCode.ERROR, message[:200]))


class _Redacting(JsonFormatter):
    """JSON log lines, each redacted whole: whatever a library put in a message or a traceback,
    no URL's query string or credential reaches the log."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _TraceContext(logging.Filter):
    """Adds the current span's trace_id, span_id and trace_flags to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
            record.trace_flags = int(ctx.trace_flags)
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr (python-json-logger) with the trace context; quiet Azure SDK and
    access logs."""
    handler = logging.StreamHandler()
    handler.addFilter(_TraceContext())
    handler.setFormatter(
        _Redacting(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
