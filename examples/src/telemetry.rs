//! Telemetry set-up of the example programs.
//!
//! Each program is one OpenTelemetry service (`service.name` in its Resource). Its spans go:
//!
//! - to a JSON-lines file, one line per ended span, when `MQTRACE_DEMO_SPANS` names a
//!   directory (`{dir}/{service}-{pid}.jsonl`), through a `SimpleSpanProcessor` so that a span
//!   is on disk as soon as it ends and nothing is lost when the process is stopped;
//! - to an OTLP collector (Jaeger, the OpenTelemetry Collector, ...) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, e.g. `http://127.0.0.1:4318`: the standard
//!   exporter, OTLP over HTTP/protobuf, through a batch processor (flushed at shutdown).
//!
//! The global propagator is W3C trace context plus baggage, which both the HTTP server and
//! mqtrace (whose default is the global propagator) use.

use crate::Error;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::{Map, json};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable naming the directory the JSON-lines span files are written to.
pub const SPANS_DIR_VAR: &str = "MQTRACE_DEMO_SPANS";

/// The installed tracer provider; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Installs the global tracer provider (service `service`, exporters as described in the
    /// [module docs](self)) and the W3C propagator. Call it before starting a tokio runtime:
    /// the OTLP exporter's blocking HTTP client must live outside one.
    ///
    /// ```no_run
    /// let telemetry = mqtrace_examples::telemetry::Telemetry::init("my-worker").expect("telemetry");
    /// // ... run the worker ...
    /// telemetry.shutdown();
    /// ```
    pub fn init(service: &'static str) -> Result<Self, Error> {
        let mut builder = SdkTracerProvider::builder().with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(KeyValue::new("service.namespace", "mqtrace-demo"))
                .build(),
        );
        if let Some(dir) = std::env::var_os(SPANS_DIR_VAR).filter(|d| !d.is_empty()) {
            let exporter = JsonLinesExporter::create(Path::new(&dir), service)?;
            builder = builder.with_simple_exporter(exporter);
        }
        if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.trim().is_empty())
            || std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .is_ok_and(|v| !v.trim().is_empty())
        {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build()?;
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        Ok(Self { provider })
    }

    /// The tracer provider.
    ///
    /// ```no_run
    /// # fn demo(t: mqtrace_examples::telemetry::Telemetry) {
    /// let _ = t.provider();
    /// # }
    /// ```
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Ends telemetry: exports what is buffered (OTLP) and closes the exporters.
    ///
    /// ```no_run
    /// # fn demo(t: mqtrace_examples::telemetry::Telemetry) {
    /// t.shutdown();
    /// # }
    /// ```
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

/// A span exporter that appends each span as one JSON object per line to a file.
///
/// The line holds the ids, name, kind, service, times (Unix nanoseconds), status, attributes,
/// links and events; [`crate::trace_view::SpanRecord`] reads it back.
#[derive(Debug)]
pub struct JsonLinesExporter {
    file: Mutex<File>,
    path: PathBuf,
    service: String,
}

impl JsonLinesExporter {
    /// Creates (or appends to) `{dir}/{service}-{pid}.jsonl`, creating `dir` if needed.
    ///
    /// ```no_run
    /// let e = mqtrace_examples::telemetry::JsonLinesExporter::create(std::path::Path::new("/tmp/spans"), "api")?;
    /// println!("{}", e.path().display());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn create(dir: &Path, service: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{service}-{}.jsonl", std::process::id()));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            file: Mutex::new(file),
            path,
            service: service.to_owned(),
        })
    }

    /// The file the spans go to.
    ///
    /// ```no_run
    /// # fn demo(e: mqtrace_examples::telemetry::JsonLinesExporter) {
    /// let _ = e.path();
    /// # }
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, batch: &[SpanData]) -> OTelSdkResult {
        let mut out = Vec::with_capacity(batch.len() * 512);
        for span in batch {
            serde_json::to_writer(&mut out, &span_json(span, &self.service))
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
            out.push(b'\n');
        }
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One write per batch on an O_APPEND file: lines of different processes never mix.
        file.write_all(&out)
            .map_err(|e| OTelSdkError::InternalFailure(format!("{}: {e}", self.path.display())))
    }
}

impl SpanExporter for JsonLinesExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.write(&batch))
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(name) = resource.get(&Key::new("service.name")) {
            self.service = name.to_string();
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        Value::String(s) => json!(s.as_str()),
        Value::Array(Array::Bool(a)) => json!(a),
        Value::Array(Array::I64(a)) => json!(a),
        Value::Array(Array::F64(a)) => json!(a),
        Value::Array(Array::String(a)) => {
            json!(a.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        }
        other => json!(other.to_string()),
    }
}

fn attributes_json<'a>(kvs: impl IntoIterator<Item = &'a KeyValue>) -> serde_json::Value {
    let mut map = Map::new();
    for kv in kvs {
        map.insert(kv.key.as_str().to_owned(), value_json(&kv.value));
    }
    serde_json::Value::Object(map)
}

fn kind_str(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

/// The JSON object written for `span` of `service` (one line of a span file; the module's
/// tests write spans through a tracer provider and read them back).
pub fn span_json(span: &SpanData, service: &str) -> serde_json::Value {
    let sc = &span.span_context;
    let parent = (span.parent_span_id != opentelemetry::trace::SpanId::INVALID)
        .then(|| span.parent_span_id.to_string());
    let (status, message) = match &span.status {
        Status::Unset => ("unset", String::new()),
        Status::Ok => ("ok", String::new()),
        Status::Error { description } => ("error", description.to_string()),
    };
    let links: Vec<_> = span
        .links
        .iter()
        .map(|l| {
            json!({
                "trace_id": l.span_context.trace_id().to_string(),
                "span_id": l.span_context.span_id().to_string(),
                "attributes": attributes_json(&l.attributes),
            })
        })
        .collect();
    let events: Vec<_> = span
        .events
        .iter()
        .map(|e| {
            json!({
                "name": e.name.as_ref(),
                "time_unix_nano": nanos(e.timestamp),
                "attributes": attributes_json(&e.attributes),
            })
        })
        .collect();
    json!({
        "trace_id": sc.trace_id().to_string(),
        "span_id": sc.span_id().to_string(),
        "parent_span_id": parent,
        "parent_is_remote": span.parent_span_is_remote,
        "name": span.name.as_ref(),
        "kind": kind_str(&span.span_kind),
        "service": service,
        "scope": span.instrumentation_scope.name(),
        "start_unix_nano": nanos(span.start_time),
        "end_unix_nano": nanos(span.end_time),
        "status": status,
        "status_message": message,
        "attributes": attributes_json(&span.attributes),
        "links": links,
        "events": events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace_view::{SpanRecord, read_dir};
    use opentelemetry::trace::{
        Link, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
        TracerProvider,
    };

    #[test]
    fn spans_written_as_json_lines_read_back_with_parent_links_and_attributes() {
        let dir = std::env::temp_dir().join(format!("mqtrace-jsonl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let exporter = JsonLinesExporter::create(&dir, "unit").expect("exporter");
        let provider = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name("unit-test").build())
            .with_simple_exporter(exporter)
            .build();
        let tracer = provider.tracer("t");
        let linked = SpanContext::new(
            TraceId::from(7_u128),
            SpanId::from(9_u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let parent = tracer.start("parent");
        let cx = opentelemetry::Context::current_with_span(parent);
        let mut child = tracer
            .span_builder("child")
            .with_kind(SpanKind::Consumer)
            .with_attributes([KeyValue::new("mqtrace.delivery.attempt", 2_i64)])
            .with_links(vec![Link::with_context(linked)])
            .start_with_context(&tracer, &cx);
        opentelemetry::trace::Span::set_status(&mut child, Status::error("boom"));
        drop(child);
        drop(cx);
        provider.shutdown().expect("shutdown");

        let spans: Vec<SpanRecord> = read_dir(&dir).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(spans.len(), 2);
        let child = spans.iter().find(|s| s.name == "child").expect("child");
        let parent = spans.iter().find(|s| s.name == "parent").expect("parent");
        assert_eq!(
            child.parent_span_id.as_deref(),
            Some(parent.span_id.as_str())
        );
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.service, "unit-test");
        assert_eq!(child.kind, "consumer");
        assert_eq!(child.status, "error");
        assert_eq!(child.attr_i64("mqtrace.delivery.attempt"), Some(2));
        assert_eq!(child.links.len(), 1);
        assert_eq!(child.links[0].span_id, SpanId::from(9_u64).to_string());
        assert!(child.end_unix_nano >= child.start_unix_nano);
        assert_eq!(parent.parent_span_id, None);
    }
}
