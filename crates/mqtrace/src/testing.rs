//! Test support shared by every mqtrace crate (feature `testing`): an in-memory span
//! exporter fixture and assertions on the exported trace tree.
//!
//! ```
//! use mqtrace::testing::{SpanDataExt, TestTelemetry};
//! use opentelemetry::trace::{Tracer, TracerProvider};
//! let telemetry = TestTelemetry::new();
//! let tracer = telemetry.provider().tracer("doc");
//! tracer.in_span("parent", |_| tracer.in_span("child", |_| {}));
//! let spans = telemetry.spans();
//! spans.one("child").assert_child_of(spans.one("parent"));
//! ```

use crate::config::Config;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceId};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A tracer provider that exports every span, synchronously, into memory.
///
/// Each test makes its own, so tests running in parallel never see each other's spans.
///
/// ```
/// let t = mqtrace::testing::TestTelemetry::new();
/// let config = t.config(); // pass to a traced producer or consumer
/// # let _ = config;
/// assert!(t.spans().all().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct TestTelemetry {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
    meter_provider: SdkMeterProvider,
    metric_exporter: InMemoryMetricExporter,
}

/// One exported metric point: its attributes and its value (a sum's value, or a histogram's
/// count of measurements).
///
/// ```
/// use opentelemetry::Value;
/// let p = mqtrace::testing::MetricPoint {
///     attributes: [("server.port".to_owned(), Value::I64(5672))].into(),
///     value: 1.0,
/// };
/// assert_eq!(p.attr("server.port"), Some(&Value::I64(5672)));
/// assert_eq!(p.attr_str("server.port"), None, "an int is not a string");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    /// The point's attributes, with their types.
    pub attributes: BTreeMap<String, Value>,
    /// The sum, or the number of measurements of a histogram.
    pub value: f64,
}

impl MetricPoint {
    /// The value of attribute `key`.
    ///
    /// ```
    /// let p = mqtrace::testing::MetricPoint { attributes: Default::default(), value: 0.0 };
    /// assert!(p.attr("error.type").is_none());
    /// ```
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// The value of attribute `key` if it is a string (`None` for any other type).
    ///
    /// ```
    /// let p = mqtrace::testing::MetricPoint {
    ///     attributes: [("error.type".to_owned(), "nack".into())].into(),
    ///     value: 1.0,
    /// };
    /// assert_eq!(p.attr_str("error.type"), Some("nack"));
    /// ```
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }
}

/// One exported histogram point: its attributes, count, sum, min and max.
///
/// ```
/// let p = mqtrace::testing::HistogramPoint {
///     attributes: Default::default(), count: 2, sum: 3.0, min: Some(1.0), max: Some(2.0),
/// };
/// assert_eq!(p.mean(), Some(1.5));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramPoint {
    /// The point's attributes, with their types.
    pub attributes: BTreeMap<String, Value>,
    /// How many values were recorded.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The smallest one.
    pub min: Option<f64>,
    /// The largest one.
    pub max: Option<f64>,
}

impl HistogramPoint {
    /// The mean of the recorded values (`None` when there are none).
    ///
    /// ```
    /// let p = mqtrace::testing::HistogramPoint {
    ///     attributes: Default::default(), count: 0, sum: 0.0, min: None, max: None,
    /// };
    /// assert_eq!(p.mean(), None);
    /// ```
    pub fn mean(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The value of attribute `key` if it is a string.
    ///
    /// ```
    /// let p = mqtrace::testing::HistogramPoint {
    ///     attributes: [("messaging.system".to_owned(), "kafka".into())].into(),
    ///     count: 0, sum: 0.0, min: None, max: None,
    /// };
    /// assert_eq!(p.attr_str("messaging.system"), Some("kafka"));
    /// ```
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }
}

impl Default for TestTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl TestTelemetry {
    /// A fresh provider with an always-on sampler and an in-memory exporter.
    ///
    /// ```
    /// let _ = mqtrace::testing::TestTelemetry::new();
    /// ```
    pub fn new() -> Self {
        Self::with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
    }

    /// A fresh fixture whose provider uses `sampler` (a [`Sampler`](opentelemetry_sdk::trace::Sampler)
    /// or any [`ShouldSample`](opentelemetry_sdk::trace::ShouldSample), e.g. a [`SeenBySampler`]).
    ///
    /// ```
    /// use opentelemetry_sdk::trace::Sampler;
    /// let _ = mqtrace::testing::TestTelemetry::with_sampler(Sampler::AlwaysOff);
    /// ```
    pub fn with_sampler(sampler: impl opentelemetry_sdk::trace::ShouldSample + 'static) -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(sampler)
            .build();
        let metric_exporter = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_periodic_exporter(metric_exporter.clone())
            .build();
        Self {
            provider,
            exporter,
            meter_provider,
            metric_exporter,
        }
    }

    /// The points of metric `name` as of now (cumulative).
    ///
    /// ```
    /// let t = mqtrace::testing::TestTelemetry::new();
    /// assert!(t.metric("messaging.client.sent.messages").is_empty());
    /// ```
    pub fn metric(&self, name: &str) -> Vec<MetricPoint> {
        self.metric_exporter.reset();
        // A failing flush leaves the exporter empty, which the caller sees as no points.
        let _ = self.meter_provider.force_flush();
        let exported = self
            .metric_exporter
            .get_finished_metrics()
            .unwrap_or_default();
        let mut out = Vec::new();
        let attrs = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
            it.map(|kv| (kv.key.to_string(), kv.value.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        for rm in exported.iter().rev().take(1) {
            for m in rm.scope_metrics().flat_map(|sm| sm.metrics()) {
                if m.name() != name {
                    continue;
                }
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for p in sum.data_points() {
                            out.push(MetricPoint {
                                attributes: attrs(&mut p.attributes()),
                                value: p.value() as f64,
                            });
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            out.push(MetricPoint {
                                attributes: attrs(&mut p.attributes()),
                                value: p.count() as f64,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// The points of histogram `name` as of now (cumulative), with their sum, min and max.
    ///
    /// ```
    /// let t = mqtrace::testing::TestTelemetry::new();
    /// assert!(t.histogram("mqtrace.message.queue_time").is_empty());
    /// ```
    pub fn histogram(&self, name: &str) -> Vec<HistogramPoint> {
        self.metric_exporter.reset();
        // A failing flush leaves the exporter empty, which the caller sees as no points.
        let _ = self.meter_provider.force_flush();
        let exported = self
            .metric_exporter
            .get_finished_metrics()
            .unwrap_or_default();
        let mut out = Vec::new();
        for rm in exported.iter().rev().take(1) {
            for m in rm.scope_metrics().flat_map(|sm| sm.metrics()) {
                if m.name() != name {
                    continue;
                }
                if let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() {
                    for p in h.data_points() {
                        out.push(HistogramPoint {
                            attributes: p
                                .attributes()
                                .map(|kv| (kv.key.to_string(), kv.value.clone()))
                                .collect(),
                            count: p.count(),
                            sum: p.sum(),
                            min: p.min(),
                            max: p.max(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The tracer provider.
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider;
    /// let _tracer = mqtrace::testing::TestTelemetry::new().provider().tracer("t");
    /// ```
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// A default [`Config`] using this fixture's tracer and meter providers.
    ///
    /// ```
    /// let _ = mqtrace::testing::TestTelemetry::new().config().with_body_size(true);
    /// ```
    pub fn config(&self) -> Config {
        Config::new()
            .with_tracer_provider(self.provider.clone())
            .with_meter_provider(self.meter_provider.clone())
    }

    /// Every span ended so far.
    ///
    /// ```
    /// assert!(mqtrace::testing::TestTelemetry::new().spans().all().is_empty());
    /// ```
    pub fn spans(&self) -> Spans {
        // The simple processor exports on end; a failing flush only means nothing is pending.
        let _ = self.provider.force_flush();
        Spans(self.exporter.get_finished_spans().unwrap_or_default())
    }

    /// Waits until `done` holds for the exported spans, polling every 20 ms, up to
    /// `timeout`; on time-out the error shows what was exported.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let t = mqtrace::testing::TestTelemetry::new();
    /// let r = t.wait_for(|s| s.all().len() == 1, std::time::Duration::from_millis(50)).await;
    /// assert!(r.is_err());
    /// # }
    /// ```
    pub async fn wait_for(
        &self,
        done: impl Fn(&Spans) -> bool,
        timeout: Duration,
    ) -> Result<Spans, String> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "condition not met within {timeout:?}; spans exported:\n{}",
                    spans.tree()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An exporter that discards what it is given: for benchmarks.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// A tracer provider for benchmarks: spans go through the SDK's batch processor (queue of
/// 65 536, batches of 2 048, so bursts are not dropped) into an exporter that discards them,
/// so what is measured is the instrumentation, not the export.
///
/// ```
/// use opentelemetry_sdk::trace::Sampler;
/// let provider = mqtrace::testing::discarding_provider(Sampler::AlwaysOn);
/// let _ = provider.shutdown();
/// ```
pub fn discarding_provider(sampler: opentelemetry_sdk::trace::Sampler) -> SdkTracerProvider {
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(Discard)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_max_queue_size(65_536)
                .with_max_export_batch_size(2048)
                .build(),
        )
        .build();
    SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .build()
}

/// A set of exported spans, with lookups that explain themselves when they fail.
///
/// ```
/// let spans = mqtrace::testing::TestTelemetry::new().spans();
/// assert!(spans.find("nothing").is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Spans(pub Vec<SpanData>);

impl Spans {
    /// All spans, in end order.
    ///
    /// ```
    /// assert_eq!(mqtrace::testing::TestTelemetry::new().spans().all().len(), 0);
    /// ```
    pub fn all(&self) -> &[SpanData] {
        &self.0
    }

    /// The spans named `name`.
    ///
    /// ```
    /// assert!(mqtrace::testing::TestTelemetry::new().spans().named("x").is_empty());
    /// ```
    pub fn named(&self, name: &str) -> Vec<&SpanData> {
        self.0.iter().filter(|s| s.name == name).collect()
    }

    /// The first span named `name`, if any.
    ///
    /// ```
    /// assert!(mqtrace::testing::TestTelemetry::new().spans().find("x").is_none());
    /// ```
    pub fn find(&self, name: &str) -> Option<&SpanData> {
        self.0.iter().find(|s| s.name == name)
    }

    /// The only span named `name`; panics with the whole tree if there is not exactly one.
    ///
    /// ```should_panic
    /// mqtrace::testing::TestTelemetry::new().spans().one("missing");
    /// ```
    pub fn one(&self, name: &str) -> &SpanData {
        let found = self.named(name);
        match found.as_slice() {
            [one] => one,
            _ => panic!(
                "expected exactly one span named {name:?}, found {}; spans:\n{}",
                found.len(),
                self.tree()
            ),
        }
    }

    /// The span with this span id.
    ///
    /// ```
    /// assert!(mqtrace::testing::TestTelemetry::new().spans().by_id(opentelemetry::trace::SpanId::from(1_u64)).is_none());
    /// ```
    pub fn by_id(&self, id: SpanId) -> Option<&SpanData> {
        self.0.iter().find(|s| s.span_context.span_id() == id)
    }

    /// The spans whose parent is `parent`.
    ///
    /// ```
    /// # use opentelemetry::trace::{Tracer, TracerProvider};
    /// let t = mqtrace::testing::TestTelemetry::new();
    /// let tracer = t.provider().tracer("doc");
    /// tracer.in_span("p", |_| tracer.in_span("c", |_| {}));
    /// let spans = t.spans();
    /// assert_eq!(spans.children_of(spans.one("p")).len(), 1);
    /// ```
    pub fn children_of(&self, parent: &SpanData) -> Vec<&SpanData> {
        self.0
            .iter()
            .filter(|s| {
                s.parent_span_id == parent.span_context.span_id()
                    && s.span_context.trace_id() == parent.span_context.trace_id()
            })
            .collect()
    }

    /// The spans of one trace.
    ///
    /// ```
    /// let spans = mqtrace::testing::TestTelemetry::new().spans();
    /// assert!(spans.in_trace(opentelemetry::trace::TraceId::from(1_u128)).all().is_empty());
    /// ```
    pub fn in_trace(&self, trace_id: TraceId) -> Spans {
        Spans(
            self.0
                .iter()
                .filter(|s| s.span_context.trace_id() == trace_id)
                .cloned()
                .collect(),
        )
    }

    /// The process spans named `name`, ordered by `mqtrace.delivery.attempt`, after checking
    /// they form one attempt chain: attempts 1, 2, 3, … each (after the first) linked to the
    /// one before (`previous_attempt`) and to `origin`, all in `origin`'s trace. This is how a
    /// test reads "attempt 3 of 5" off the exported spans.
    ///
    /// ```
    /// let spans = mqtrace::testing::TestTelemetry::new().spans();
    /// let origin = opentelemetry::trace::SpanContext::empty_context();
    /// assert!(spans.attempt_chain("process q", &origin).is_empty());
    /// ```
    pub fn attempt_chain(&self, name: &str, origin: &SpanContext) -> Vec<&SpanData> {
        let mut chain = self.named(name);
        chain.sort_by_key(|s| s.attr_i64(crate::attributes::DELIVERY_ATTEMPT));
        for (i, span) in chain.iter().enumerate() {
            let want = i64::try_from(i).unwrap_or(i64::MAX) + 1;
            assert_eq!(
                span.attr_i64(crate::attributes::DELIVERY_ATTEMPT),
                Some(want),
                "attempt numbers of {name:?}; spans:\n{}",
                self.tree()
            );
            assert_eq!(
                span.span_context.trace_id(),
                origin.trace_id(),
                "attempt {want} of {name:?} left the trace"
            );
            if i == 0 {
                continue;
            }
            let prev = span.link_of_type("previous_attempt").unwrap_or_else(|| {
                panic!("attempt {want} of {name:?} has no previous-attempt link")
            });
            assert_eq!(
                prev.span_context.span_id(),
                chain[i - 1].span_context.span_id(),
                "attempt {want} of {name:?} links to the wrong attempt"
            );
            let o = span
                .link_of_type("origin")
                .unwrap_or_else(|| panic!("attempt {want} of {name:?} has no origin link"));
            assert_eq!(
                o.span_context.span_id(),
                origin.span_id(),
                "origin of attempt {want}"
            );
        }
        chain
    }

    /// A readable rendering: one line per span, indented under its parent, with kind, ids,
    /// links and attributes. Used in every failure message.
    ///
    /// ```
    /// assert_eq!(mqtrace::testing::TestTelemetry::new().spans().tree(), "");
    /// ```
    pub fn tree(&self) -> String {
        let mut out = String::new();
        let is_root = |s: &SpanData| {
            s.parent_span_id == SpanId::INVALID
                || !self.0.iter().any(|p| {
                    p.span_context.span_id() == s.parent_span_id
                        && p.span_context.trace_id() == s.span_context.trace_id()
                })
        };
        let mut roots: Vec<&SpanData> = self.0.iter().filter(|s| is_root(s)).collect();
        roots.sort_by_key(|s| s.start_time);
        for root in roots {
            self.render(root, 0, &mut out);
        }
        out
    }

    fn render(&self, span: &SpanData, depth: usize, out: &mut String) {
        let attrs: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        let links: Vec<String> = span
            .links
            .links
            .iter()
            .map(|l| l.span_context.span_id().to_string())
            .collect();
        let _ = writeln!(
            out,
            "{:indent$}{} [{:?}] trace={} span={} parent={}{} links=[{}] status={:?} {{{}}}",
            "",
            span.name,
            span.span_kind,
            span.span_context.trace_id(),
            span.span_context.span_id(),
            span.parent_span_id,
            if span.parent_span_is_remote {
                "(remote)"
            } else {
                ""
            },
            links.join(","),
            span.status,
            attrs.join(", "),
            indent = depth * 2
        );
        let mut children = self.children_of(span);
        children.sort_by_key(|s| s.start_time);
        for c in children {
            self.render(c, depth + 1, out);
        }
    }
}

/// Assertions and lookups on one exported span. Attribute lookups and assertions are typed:
/// an integer attribute is not equal to a string that reads the same.
///
/// ```
/// use mqtrace::testing::{SpanDataExt, TestTelemetry};
/// use opentelemetry::KeyValue;
/// use opentelemetry::trace::{Tracer, TracerProvider, Span};
/// let t = TestTelemetry::new();
/// let mut s = t.provider().tracer("doc").start("s");
/// s.set_attribute(KeyValue::new("k", "v"));
/// s.set_attribute(KeyValue::new("port", 5672_i64));
/// s.end();
/// let span = t.spans().one("s").clone();
/// assert_eq!(span.attr_str("k"), Some("v"));
/// span.assert_attr("k", "v");
/// span.assert_attr_i64("port", 5672);
/// assert_eq!(span.attr_str("port"), None, "an int is not a string");
/// ```
///
/// ```should_panic
/// use mqtrace::testing::{SpanDataExt, TestTelemetry};
/// use opentelemetry::trace::{Tracer, TracerProvider, Span};
/// let t = TestTelemetry::new();
/// let mut s = t.provider().tracer("doc").start("s");
/// s.set_attribute(opentelemetry::KeyValue::new("port", "5672"));
/// s.end();
/// // A string that reads as the number is not the number.
/// t.spans().one("s").assert_attr_i64("port", 5672);
/// ```
pub trait SpanDataExt {
    /// The value of attribute `key`.
    fn attr(&self, key: &str) -> Option<&Value>;
    /// The value of attribute `key` if it is a string (`None` for any other type).
    fn attr_str(&self, key: &str) -> Option<&str>;
    /// The value of attribute `key` if it is an integer.
    fn attr_i64(&self, key: &str) -> Option<i64>;
    /// The value of attribute `key` if it is a boolean.
    fn attr_bool(&self, key: &str) -> Option<bool>;
    /// Panics unless this span is a direct child of `parent` (same trace, parent id).
    fn assert_child_of(&self, parent: &SpanData);
    /// Panics unless this span's parent is the (remote) span context `parent`.
    fn assert_parent_context(&self, parent: &SpanContext);
    /// Panics unless this span has no parent.
    fn assert_root(&self);
    /// Whether this span links to `target`.
    fn links_to(&self, target: &SpanContext) -> bool;
    /// Panics unless this span links to `target`.
    fn assert_links_to(&self, target: &SpanContext);
    /// The link tagged `mqtrace.link.type = kind` (`origin`, `previous_attempt`).
    fn link_of_type(&self, kind: &str) -> Option<&opentelemetry::trace::Link>;
    /// Panics unless this span has kind `kind`.
    fn assert_kind(&self, kind: SpanKind);
    /// Panics unless attribute `key` is exactly `value`, type included (`"3"` is not `3_i64`,
    /// `3_i64` is not `3.0`).
    fn assert_attr(&self, key: &str, value: impl Into<Value>);
    /// Panics unless attribute `key` is the string `value`.
    fn assert_attr_str(&self, key: &str, value: &str);
    /// Panics unless attribute `key` is the integer `value`.
    fn assert_attr_i64(&self, key: &str, value: i64);
    /// Panics unless attribute `key` is the boolean `value`.
    fn assert_attr_bool(&self, key: &str, value: bool);
    /// Panics if the span has attribute `key`.
    fn assert_no_attr(&self, key: &str);
    /// Whether the status is an error.
    fn is_error(&self) -> bool;
}

impl SpanDataExt for SpanData {
    fn attr(&self, key: &str) -> Option<&Value> {
        let key = Key::from(key.to_owned());
        self.attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| &kv.value)
    }

    fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn attr_i64(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            Value::I64(v) => Some(*v),
            _ => None,
        }
    }

    fn attr_bool(&self, key: &str) -> Option<bool> {
        match self.attr(key)? {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    fn assert_child_of(&self, parent: &SpanData) {
        assert_eq!(
            self.span_context.trace_id(),
            parent.span_context.trace_id(),
            "span {:?} is not in the trace of {:?}",
            self.name,
            parent.name
        );
        assert_eq!(
            self.parent_span_id,
            parent.span_context.span_id(),
            "span {:?} is not a child of {:?}",
            self.name,
            parent.name
        );
    }

    fn assert_parent_context(&self, parent: &SpanContext) {
        assert_eq!(
            self.span_context.trace_id(),
            parent.trace_id(),
            "span {:?} is not in trace {}",
            self.name,
            parent.trace_id()
        );
        assert_eq!(
            self.parent_span_id,
            parent.span_id(),
            "span {:?} does not have parent {}",
            self.name,
            parent.span_id()
        );
    }

    fn assert_root(&self) {
        assert_eq!(
            self.parent_span_id,
            SpanId::INVALID,
            "span {:?} should be a root",
            self.name
        );
    }

    fn links_to(&self, target: &SpanContext) -> bool {
        self.links.links.iter().any(|l| {
            l.span_context.trace_id() == target.trace_id()
                && l.span_context.span_id() == target.span_id()
        })
    }

    fn assert_links_to(&self, target: &SpanContext) {
        assert!(
            self.links_to(target),
            "span {:?} does not link to {}/{}; links: {:?}",
            self.name,
            target.trace_id(),
            target.span_id(),
            self.links
                .links
                .iter()
                .map(|l| l.span_context.span_id())
                .collect::<Vec<_>>()
        );
    }

    fn link_of_type(&self, kind: &str) -> Option<&opentelemetry::trace::Link> {
        self.links.links.iter().find(|l| {
            l.attributes.iter().any(|kv| {
                kv.key.as_str() == crate::attributes::LINK_TYPE && kv.value.as_str() == kind
            })
        })
    }

    fn assert_kind(&self, kind: SpanKind) {
        assert_eq!(self.span_kind, kind, "kind of span {:?}", self.name);
    }

    fn assert_attr(&self, key: &str, value: impl Into<Value>) {
        let want = value.into();
        assert_eq!(
            self.attr(key),
            Some(&want),
            "attribute {key} of span {:?} (value and type); attributes: {:?}",
            self.name,
            self.attributes
        );
    }

    fn assert_attr_str(&self, key: &str, value: &str) {
        self.assert_attr(key, value.to_owned());
    }

    fn assert_attr_i64(&self, key: &str, value: i64) {
        self.assert_attr(key, value);
    }

    fn assert_attr_bool(&self, key: &str, value: bool) {
        self.assert_attr(key, value);
    }

    fn assert_no_attr(&self, key: &str) {
        assert!(
            self.attr(key).is_none(),
            "span {:?} has attribute {key}; attributes: {:?}",
            self.name,
            self.attributes
        );
    }

    fn is_error(&self) -> bool {
        matches!(self.status, Status::Error { .. })
    }
}

/// A sampler that samples every span and keeps what it was shown: the name, kind and start
/// attributes of each span, which is all a real sampler can decide on.
///
/// ```
/// use opentelemetry::trace::{SpanKind, Tracer, TracerProvider};
/// use mqtrace::testing::{SeenBySampler, TestTelemetry};
/// let seen = SeenBySampler::default();
/// let t = TestTelemetry::with_sampler(seen.clone());
/// let tracer = t.provider().tracer("doc");
/// tracer
///     .span_builder("send orders")
///     .with_kind(SpanKind::Producer)
///     .with_attributes([opentelemetry::KeyValue::new("server.port", 9092_i64)])
///     .start(&tracer);
/// let shown = seen.shown("send orders");
/// assert_eq!(shown[0].kind, SpanKind::Producer);
/// assert_eq!(shown[0].attr("server.port"), Some(&opentelemetry::Value::I64(9092)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct SeenBySampler {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Shown>>>,
}

/// One span as a sampler saw it (see [`SeenBySampler`]).
#[derive(Debug, Clone)]
pub struct Shown {
    /// The span's name.
    pub name: String,
    /// The span's kind.
    pub kind: SpanKind,
    /// The attributes the span started with.
    pub attributes: Vec<opentelemetry::KeyValue>,
}

impl Shown {
    /// The value of attribute `key`, if the sampler was shown it.
    ///
    /// See the example on [`SeenBySampler`].
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// Panics unless the sampler was shown `key` = `value`.
    ///
    /// ```
    /// let s = mqtrace::testing::Shown {
    ///     name: "x".into(),
    ///     kind: opentelemetry::trace::SpanKind::Client,
    ///     attributes: vec![opentelemetry::KeyValue::new("k", "v")],
    /// };
    /// s.assert_attr("k", "v");
    /// ```
    pub fn assert_attr(&self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        assert_eq!(
            self.attr(key),
            Some(&value),
            "{} ({:?}): the sampler was shown {:?}",
            self.name,
            self.kind,
            self.attributes
        );
    }
}

impl SeenBySampler {
    /// Every span named `name` the sampler was asked about, in order.
    ///
    /// See the example on [`SeenBySampler`].
    pub fn shown(&self, name: &str) -> Vec<Shown> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    /// The first span named `name` the sampler was asked about, failing the test if none.
    ///
    /// ```
    /// let seen = mqtrace::testing::SeenBySampler::default();
    /// assert!(seen.shown("none").is_empty());
    /// ```
    pub fn first(&self, name: &str) -> Shown {
        self.shown(name).into_iter().next().unwrap_or_else(|| {
            let all = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>();
            panic!("the sampler saw no span {name:?}; it saw {all:?}")
        })
    }
}

impl opentelemetry_sdk::trace::ShouldSample for SeenBySampler {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        _trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Shown {
                name: name.to_owned(),
                kind: kind.clone(),
                attributes: attributes.to_vec(),
            });
        opentelemetry_sdk::trace::SamplingResult {
            decision: opentelemetry_sdk::trace::SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state: parent
                .map(|cx| {
                    use opentelemetry::trace::TraceContextExt as _;
                    cx.span().span_context().trace_state().clone()
                })
                .unwrap_or_default(),
        }
    }
}
