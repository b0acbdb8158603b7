"""The OpenTelemetry SDK pipeline of one sidecar: tracer provider, sampler, exporter and a
batch processor whose every lost span is counted (imported only when tracing is on).

Each ``Sidecar`` gets its own ``TracerProvider`` (never the process-global one): tests and the
demo run several sidecars in one process, each under its own service name.

Export never touches the request path: ended spans go into a bounded queue that the SDK's
``BatchSpanProcessor`` drains from its own thread, so a collector that is down or slow costs
the requests nothing. ``BatchSpanProcessor`` itself drops the *oldest* queued span when its queue
is full and only logs it; to count every loss, ``CountingSpanProcessor`` keeps the queue bound
itself (spans accepted minus spans handed to the exporter) and drops — and counts — a new span
when the bound is reached, so the SDK's own queue (same size) never overflows. Batches the
exporter could not deliver (after its own retries, bounded by ``OTEL_EXPORTER_OTLP_TIMEOUT``,
10 s by default) are counted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar import __version__
from sidecar.tracing.settings import DEFAULT_SERVICE_NAME, TraceSettings
from sidecar.tracing.spans import RequestTrace, SpanFactory

if TYPE_CHECKING:
    from sidecar.proxy.messages import Request

log = logging.getLogger(__name__)

MAX_EXPORT_BATCH = 512
SHUTDOWN_WAIT = 5.0  # seconds a stopping sidecar waits for the last spans to be exported


class SpanCounters(Protocol):
    """What the pipeline reports (``sidecar.metrics.Metrics`` implements it)."""

    def spans_exported(self, count: int) -> None: ...

    def spans_dropped(self, reason: str, count: int) -> None: ...


def sampler_for(settings: TraceSettings) -> Sampler:
    """The ``OTEL_TRACES_SAMPLER`` sampler named in ``settings``."""
    ratio = TraceIdRatioBased(settings.sampler_arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.sampler]


def resource_for(settings: TraceSettings) -> Resource:
    """``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` (read by the SDK), overridden by
    the config's; ``service.name`` defaults to ``mcp-sidecar``."""
    attributes: dict[str, str] = {"service.version": __version__}
    attributes.update(settings.resource_attributes)
    if settings.service_name is not None:
        attributes["service.name"] = settings.service_name
    resource = Resource.create(attributes)
    name = resource.attributes.get("service.name")
    if not isinstance(name, str) or name.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    return resource


def exporter_for(settings: TraceSettings) -> SpanExporter:
    if settings.exporter == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.endpoint)


class CountingExporter(SpanExporter):
    """Counts what reaches the exporter: ``taken`` (read by the processor's queue bound),
    exported spans and spans of failed batches."""

    def __init__(self, inner: SpanExporter, counters: SpanCounters) -> None:
        self.inner = inner
        self.counters = counters
        self.taken = 0  # written by the export thread only

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter bug must not kill the export thread
            log.exception("span exporter failed")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.counters.spans_exported(len(spans))
        else:
            self.counters.spans_dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingSpanProcessor(SpanProcessor):
    """``BatchSpanProcessor`` behind a queue bound we keep and count (module docstring)."""

    def __init__(
        self, exporter: SpanExporter, counters: SpanCounters, *, max_queue_size: int
    ) -> None:
        self.exporter = CountingExporter(exporter, counters)
        self.counters = counters
        self.max_queue_size = max_queue_size
        self.accepted = 0  # written by the thread that ends spans (the event loop) only
        self.batch = BatchSpanProcessor(
            self.exporter,
            max_queue_size=max_queue_size,
            max_export_batch_size=min(MAX_EXPORT_BATCH, max_queue_size),
        )

    @property
    def queued(self) -> int:
        """Spans accepted and not yet handed to the exporter (an upper bound of the queue)."""
        return self.accepted - self.exporter.taken

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        if self.queued >= self.max_queue_size:
            self.counters.spans_dropped("queue_full", 1)
            return
        self.accepted += 1
        self.batch.on_end(span)

    def shutdown(self) -> None:
        self.batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.batch.force_flush(timeout_millis)


class Tracing:
    """Tracing of one sidecar: ``start`` begins a request's trace; ``shutdown`` exports what is
    left (bounded in time)."""

    def __init__(
        self,
        settings: TraceSettings,
        counters: SpanCounters,
        *,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.settings = settings
        self.provider = TracerProvider(
            sampler=sampler_for(settings),
            resource=resource_for(settings),
            shutdown_on_exit=False,
        )
        self.processor = CountingSpanProcessor(
            exporter if exporter is not None else exporter_for(settings),
            counters,
            max_queue_size=settings.max_queue_size,
        )
        self.provider.add_span_processor(self.processor)
        self.spans = SpanFactory(
            self.provider.get_tracer("mcp-sidecar", __version__), TraceContextTextMapPropagator()
        )

    def start(self, request: Request, direction: str) -> RequestTrace:
        return self.spans.start(request, direction)

    def flush(self, timeout: float = SHUTDOWN_WAIT) -> bool:
        """Export the queued spans now (blocking; tests and the demo)."""
        return self.provider.force_flush(int(timeout * 1000))

    async def shutdown(self, timeout: float = SHUTDOWN_WAIT) -> None:
        """Export what is queued and stop, waiting at most ``timeout`` seconds: the SDK's
        shutdown blocks (up to 30 s against a dead collector), so it runs in a daemon thread
        that is left behind if it overruns."""
        done = asyncio.get_running_loop().create_future()

        def run() -> None:
            try:
                self.provider.shutdown()
            except Exception:
                log.exception("tracing shutdown failed")
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    done.get_loop().call_soon_threadsafe(_resolve, done)

        threading.Thread(target=run, name="mcp-sidecar-tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            log.warning("tracing: spans not exported within %ss of shutdown were dropped", timeout)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
