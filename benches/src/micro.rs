//! Per-message tracing work without a broker, on the RabbitMQ path (lapin's own types: the
//! header table, `Delivery::mock` with an acker that answers at once), so what is timed is the
//! instrumentation and the client's per-message bookkeeping, not the network.
//!
//! Each case runs in four sampling setups: every span sampled (parent sampled), unsampled
//! (`AlwaysOff`), parent-based 10% (10% of incoming parents sampled, 10% of new traces), and no
//! tracer provider installed. Times are medians over alternating rounds; instruction counts
//! come from callgrind (`scripts/bench.sh` runs this binary under it), which this noisy 2-core
//! machine cannot disturb.

use crate::handwritten;
use crate::telemetry::Counted;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, types::ShortString};
use mqtrace::instrument::Instrumentation;
use mqtrace_lapin::{AmqpHeaders, AmqpHeadersMut, TracedDelivery};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Poll, Waker};
use std::time::Instant;

/// The sampling setups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sampling {
    /// `AlwaysOn`, incoming parents sampled.
    Sampled,
    /// `AlwaysOff`.
    Unsampled,
    /// `ParentBased(TraceIdRatioBased(0.1))`, 10% of incoming parents sampled.
    TenPercent,
    /// No tracer provider (the global no-op one).
    NoProvider,
}

impl Sampling {
    /// Every setup.
    pub(crate) const ALL: [Sampling; 4] = [
        Sampling::Sampled,
        Sampling::Unsampled,
        Sampling::TenPercent,
        Sampling::NoProvider,
    ];

    /// Its name in tables and on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Sampling::Sampled => "sampled",
            Sampling::Unsampled => "unsampled",
            Sampling::TenPercent => "parent-based-10%",
            Sampling::NoProvider => "no-provider",
        }
    }
}

/// The measured operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    /// The yardstick: one SDK span with 8 attributes, started and ended.
    SdkSpan,
    /// Writing the context into a header table.
    Inject,
    /// Reading the context from a header table.
    Extract,
    /// The whole publish side: span, attributes, context into the headers, span ended.
    Publish,
    /// The whole consume side: extract, process span, ack (settle span), both ended.
    Consume,
}

impl Case {
    /// Every case.
    pub(crate) const ALL: [Case; 5] = [
        Case::SdkSpan,
        Case::Inject,
        Case::Extract,
        Case::Publish,
        Case::Consume,
    ];

    /// Its name in tables and on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Case::SdkSpan => "sdk-span-8-attributes",
            Case::Inject => "inject",
            Case::Extract => "extract",
            Case::Publish => "publish-side",
            Case::Consume => "consume-side",
        }
    }
}

/// Who does the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    /// The raw client alone (the baseline each figure is on top of).
    Raw,
    /// Hand-written instrumentation.
    HandWritten,
    /// mqtrace.
    Mqtrace,
}

impl Who {
    /// Every implementation.
    pub(crate) const ALL: [Who; 3] = [Who::Raw, Who::HandWritten, Who::Mqtrace];

    /// Its name in tables and on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Who::Raw => "raw",
            Who::HandWritten => "hand-written",
            Who::Mqtrace => "mqtrace",
        }
    }
}

/// A prepared setup: providers, instrumentation and incoming messages.
pub(crate) struct Setup {
    telemetry: Option<Counted>,
    tracer: SdkTracer,
    inst: Instrumentation,
    /// Incoming header tables (as mqtrace's publisher wrote them upstream), cycled through.
    incoming: Vec<FieldTable>,
    /// A context to inject.
    cx: Context,
}

impl Setup {
    /// Builds the setup for `sampling`.
    pub(crate) fn new(sampling: Sampling) -> Self {
        let telemetry = match sampling {
            Sampling::Sampled => Some(Counted::new(Sampler::AlwaysOn)),
            Sampling::Unsampled => Some(Counted::new(Sampler::AlwaysOff)),
            Sampling::TenPercent => Some(Counted::ten_percent()),
            Sampling::NoProvider => None,
        };
        let config = telemetry.as_ref().map(Counted::config).unwrap_or_default();
        let tracer = telemetry
            .as_ref()
            .map(Counted::tracer)
            .unwrap_or_else(|| Counted::new(Sampler::AlwaysOff).tracer());
        let inst = mqtrace_lapin::instrumentation(config, Some(("127.0.0.1", 5672)));
        // Upstream messages: sampled parents, or 10% of them sampled.
        let upstream = Counted::new(match sampling {
            Sampling::TenPercent => Sampler::TraceIdRatioBased(0.1),
            _ => Sampler::AlwaysOn,
        });
        let up = mqtrace_lapin::instrumentation(upstream.config(), None);
        let incoming = (0..100)
            .map(|_| {
                let (span, props) = mqtrace_lapin::start_publish(
                    &up,
                    "",
                    "bench",
                    b"x",
                    BasicProperties::default(),
                );
                span.end_ok();
                props.headers().clone().unwrap_or_default()
            })
            .collect();
        upstream.shutdown();
        let cx = {
            let span = tracer.start("parent");
            Context::current_with_span(span)
        };
        Self {
            telemetry,
            tracer,
            inst,
            incoming,
            cx,
        }
    }

    /// Spans dropped by the batch queue so far (after a flush).
    pub(crate) fn dropped(&self) -> u64 {
        self.telemetry
            .as_ref()
            .map(|t| t.take_counts().dropped())
            .unwrap_or(0)
    }

    fn incoming(&self, i: u32) -> &FieldTable {
        &self.incoming[i as usize % self.incoming.len()]
    }

    /// Runs `case` by `who` once, for message number `i`.
    pub(crate) fn run(&self, case: Case, who: Who, i: u32) {
        match (case, who) {
            (Case::SdkSpan, _) => {
                let mut span = self
                    .tracer
                    .span_builder("send bench")
                    .with_kind(SpanKind::Producer)
                    .with_attributes([
                        KeyValue::new("messaging.system", "rabbitmq"),
                        KeyValue::new("messaging.operation.name", "publish"),
                        KeyValue::new("messaging.operation.type", "send"),
                        KeyValue::new("messaging.destination.name", "bench"),
                        KeyValue::new("messaging.rabbitmq.destination.routing_key", "bench"),
                        KeyValue::new("messaging.message.body.size", 128_i64),
                        KeyValue::new("server.address", "127.0.0.1"),
                        KeyValue::new("server.port", 5672_i64),
                    ])
                    .start(&self.tracer);
                span.end();
            }
            (Case::Inject, Who::Raw) => {
                black_box(FieldTable::default());
            }
            (Case::Inject, Who::HandWritten) => {
                let mut table = FieldTable::default();
                handwritten::into_table(handwritten::inject(&self.cx), &mut table);
                black_box(table);
            }
            (Case::Inject, Who::Mqtrace) => {
                let mut table = FieldTable::default();
                self.inst.config().propagation().inject(
                    self.cx.span().span_context(),
                    &self.cx,
                    &mut AmqpHeadersMut(&mut table),
                );
                black_box(table);
            }
            (Case::Extract, Who::Raw) => {
                black_box(self.incoming(i).inner().get("traceparent"));
            }
            (Case::Extract, Who::HandWritten) => {
                let map = handwritten::from_table(Some(self.incoming(i)));
                black_box(handwritten::extract(&map));
            }
            (Case::Extract, Who::Mqtrace) => {
                black_box(self.inst.extract(&AmqpHeaders(Some(self.incoming(i)))));
            }
            (Case::Publish, Who::Raw) => {
                black_box(BasicProperties::default());
            }
            (Case::Publish, Who::HandWritten) => {
                let props = BasicProperties::default();
                let (cx, table) =
                    handwritten::rabbitmq_publish(&self.tracer, "bench", &props, &[7; 128]);
                let props = props.with_headers(table);
                handwritten::end_send(&cx, None);
                black_box(props);
            }
            (Case::Publish, Who::Mqtrace) => {
                let (span, props) = mqtrace_lapin::start_publish(
                    &self.inst,
                    "",
                    "bench",
                    &[7; 128],
                    BasicProperties::default(),
                );
                span.end_ok();
                black_box(props);
            }
            (Case::Consume, who) => {
                let d = self.delivery(i);
                match who {
                    Who::Raw => {
                        black_box(ready(d.acker.ack(BasicAckOptions::default())));
                    }
                    Who::HandWritten => {
                        let cx = handwritten::rabbitmq_process(&self.tracer, "bench", &d);
                        let ack =
                            handwritten::settle_span(&self.tracer, &cx, "ack", "rabbitmq", "bench");
                        let r = ready(d.acker.ack(BasicAckOptions::default()));
                        handwritten::end_settle(ack, None);
                        cx.span().end();
                        black_box(r);
                    }
                    Who::Mqtrace => {
                        let d = TracedDelivery::new(d, &self.inst, "bench", false);
                        black_box(ready(d.ack(BasicAckOptions::default())));
                    }
                }
            }
        }
    }

    fn delivery(&self, i: u32) -> Delivery {
        let mut d = Delivery::mock(
            u64::from(i) + 1,
            ShortString::from(""),
            ShortString::from("bench"),
            false,
            vec![7; 128],
        );
        d.properties = BasicProperties::default().with_headers(self.incoming(i).clone());
        d
    }

    /// Shuts the providers down.
    pub(crate) fn shutdown(&self) {
        if let Some(t) = &self.telemetry {
            t.shutdown();
        }
    }
}

/// Polls a future that completes without waiting (lapin's mock acker does).
fn ready<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(Waker::noop()))
    {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Nanoseconds per call of `f` over `iterations` calls (after a tenth as warm-up).
pub(crate) fn time_per_op(iterations: u32, mut f: impl FnMut(u32)) -> f64 {
    for i in 0..iterations / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}
