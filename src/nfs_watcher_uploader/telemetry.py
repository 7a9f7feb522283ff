"""Traces and metrics for the pipeline, through the OpenTelemetry API.

Without a configured provider every call here is a no-op, so the pipeline can always call it.
"""

import logging
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, Status, StatusCode

from nfs_watcher_uploader.models import WorkItem

TRACER_NAME = "nfs_watcher_uploader"


class Telemetry:
    """Spans for each file and its steps, and the pipeline's counters and histograms."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        meter = metrics.get_meter(TRACER_NAME, meter_provider=meter_provider)
        self.files_processed = meter.create_counter(
            "files.processed", unit="{file}", description="Files uploaded and committed"
        )
        self.files_failed = meter.create_counter(
            "files.failed", unit="{file}", description="Files parked after a permanent error"
        )
        self.upload_retries = meter.create_counter(
            "upload.retries",
            unit="{retry}",
            description="Retries after a transient error",
        )
        self.bytes_uploaded = meter.create_counter(
            "upload.bytes", unit="By", description="Bytes uploaded and committed"
        )
        self.upload_duration = meter.create_histogram(
            "upload.duration", unit="s", description="Time to upload one file"
        )
        self.file_size = meter.create_histogram(
            "file.size", unit="By", description="Size of uploaded files"
        )
        self.meter = meter

    @contextmanager
    def file_span(self, item: WorkItem) -> Generator[Span]:
        attrs = {
            "session.name": item.session_name,
            "file.name": item.filename,
            "blob.name": item.blob_name,
            "retry.attempt": item.attempt,
        }
        with self._tracer.start_as_current_span("file", attributes=attrs) as span:
            yield span

    @contextmanager
    def step(self, name: str, **attrs: Any) -> Generator[Span]:
        with self._tracer.start_as_current_span(name, record_exception=False) as span:
            for key, value in attrs.items():
                span.set_attribute(f"file.{key}" if key == "size" else key.replace("_", "."), value)
            try:
                yield span
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
                raise

    def uploaded(self, size: int, duration: float) -> None:
        self.files_processed.add(1)
        self.bytes_uploaded.add(size)
        self.upload_duration.record(duration)
        self.file_size.record(size)

    def retried(self) -> None:
        self.upload_retries.add(1)

    def failed(self) -> None:
        self.files_failed.add(1)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr; quiet Azure SDK and access logs."""
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
