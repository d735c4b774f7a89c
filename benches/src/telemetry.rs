//! Tracer providers that count: every span that ends (handed to the batch processor) and every
//! span the exporter receives. Their difference after a flush is what the SDK's batch queue
//! dropped.

use mqtrace::Config;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The batch queue the README recommends (and its export batch).
pub(crate) const QUEUE: usize = 65_536;
/// Spans per export call.
pub(crate) const EXPORT_BATCH: usize = 2048;

#[derive(Debug, Default)]
struct Counters {
    ended: AtomicU64,
    exported: AtomicU64,
}

#[derive(Debug)]
struct CountingExporter(Arc<Counters>);

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0
            .exported
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        std::hint::black_box(batch);
        Ok(())
    }
}

#[derive(Debug)]
struct CountingProcessor {
    inner: BatchSpanProcessor,
    counters: Arc<Counters>,
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        self.counters.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
}

/// A provider with the SDK's batch processor (the README's queue size) in front of an exporter
/// that counts and discards.
#[derive(Debug, Clone)]
pub(crate) struct Counted {
    provider: SdkTracerProvider,
    counters: Arc<Counters>,
}

/// What one measured phase sent through the SDK.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpanCounts {
    /// Spans ended (handed to the batch processor).
    pub(crate) ended: u64,
    /// Spans the exporter received.
    pub(crate) exported: u64,
}

impl SpanCounts {
    /// Spans the batch queue dropped.
    pub(crate) fn dropped(&self) -> u64 {
        self.ended.saturating_sub(self.exported)
    }
}

impl std::ops::AddAssign for SpanCounts {
    fn add_assign(&mut self, o: Self) {
        self.ended += o.ended;
        self.exported += o.exported;
    }
}

impl Counted {
    /// A provider sampling with `sampler`.
    pub(crate) fn new(sampler: Sampler) -> Self {
        let counters = Arc::new(Counters::default());
        let inner = BatchSpanProcessor::builder(CountingExporter(counters.clone()))
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_max_export_batch_size(EXPORT_BATCH)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(CountingProcessor {
                inner,
                counters: counters.clone(),
            })
            .with_sampler(sampler)
            .build();
        Self { provider, counters }
    }

    /// Parent-based, 10% of new traces.
    pub(crate) fn ten_percent() -> Self {
        Self::new(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            0.1,
        ))))
    }

    /// A tracer for hand-written instrumentation.
    pub(crate) fn tracer(&self) -> SdkTracer {
        use opentelemetry::trace::TracerProvider as _;
        self.provider.tracer("hand-written")
    }

    /// A mqtrace configuration exporting through this provider.
    pub(crate) fn config(&self) -> Config {
        Config::new().with_tracer_provider(self.provider.clone())
    }

    /// Flushes the batch queue and returns what was ended and exported since the last call.
    pub(crate) fn take_counts(&self) -> SpanCounts {
        let _ = self.provider.force_flush();
        SpanCounts {
            ended: self.counters.ended.swap(0, Ordering::Relaxed),
            exported: self.counters.exported.swap(0, Ordering::Relaxed),
        }
    }

    /// Shuts the provider down.
    pub(crate) fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}
