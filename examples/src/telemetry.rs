//! Telemetry set-up of the example programs, configured the way the OpenTelemetry SDKs are:
//! through the standard `OTEL_*` environment variables.
//!
//! Each program is one OpenTelemetry service. Its spans go:
//!
//! - to a JSON-lines file, one line per ended span, when `MQTRACE_DEMO_SPANS` names a
//!   directory (`{dir}/{service}-{pid}.jsonl`), through a `SimpleSpanProcessor` so that a span
//!   is on disk as soon as it ends and nothing is lost when the process is stopped;
//! - its messaging metrics to a JSON-lines file when `MQTRACE_DEMO_METRICS` names a directory
//!   (`{dir}/{service}-{pid}.jsonl`): every `OTEL_METRIC_EXPORT_INTERVAL` ms and at shutdown,
//!   one line with the cumulative state of every instrument ([`JsonLinesMetricExporter`]);
//! - to an OTLP collector (Jaeger, the OpenTelemetry Collector, ...) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, e.g.
//!   `http://127.0.0.1:4318`, or `OTEL_TRACES_EXPORTER=otlp`: OTLP over HTTP/protobuf through
//!   a batch processor (flushed at shutdown). Its messaging metrics go there too, every
//!   `OTEL_METRIC_EXPORT_INTERVAL` ms (60 000 by default).
//!
//! | variable | effect |
//! | --- | --- |
//! | `OTEL_SERVICE_NAME` | `service.name` (default: the program's name) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | more resource attributes, `key=value,key=value` (`service.namespace` defaults to `mqtrace-demo`) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `_TRACES_ENDPOINT`, `_METRICS_ENDPOINT`, `_HEADERS`, `_TIMEOUT` | the OTLP exporters (read by `opentelemetry-otlp`) |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL`, `_TRACES_PROTOCOL`, `_METRICS_PROTOCOL` | `http/protobuf` (the default, and the only one built in); `grpc` or `http/json` stop the program with a message |
//! | `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER` | `otlp` or `none` (default: `otlp` when an endpoint is set, else `none`) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the sampler (read by the SDK): `parentbased_always_on` (default), `always_off`, `traceidratio` with `0.25`, ... |
//! | `OTEL_PROPAGATORS` | `tracecontext,baggage` (default), `b3`, `b3multi`, `none`; `jaeger` is not available for opentelemetry 0.33 and is ignored with a warning |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | metrics export interval in ms (read by the SDK) |
//!
//! The propagator is installed globally, where both the HTTP server and mqtrace (whose default
//! is the global propagator) find it. [`mqtrace_config`] turns mqtrace's metrics on when a meter
//! provider was installed.

use crate::Error;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::{Map, json};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable naming the directory the JSON-lines span files are written to.
pub const SPANS_DIR_VAR: &str = "MQTRACE_DEMO_SPANS";

/// The variable naming the directory the JSON-lines metric files are written to.
pub const METRICS_DIR_VAR: &str = "MQTRACE_DEMO_METRICS";

/// The meter provider [`Telemetry::init`] installed, handed to mqtrace by [`mqtrace_config`].
static METER_PROVIDER: OnceLock<SdkMeterProvider> = OnceLock::new();

/// The installed tracer provider (and meter provider, with OTLP); [`Telemetry::shutdown`]
/// flushes them.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    meters: Option<SdkMeterProvider>,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the OTLP exporter of a signal is on: `OTEL_{SIGNAL}_EXPORTER` (`otlp` / `none`),
/// else whether an OTLP endpoint is configured for it.
fn otlp_on(signal: &str) -> Result<bool, Error> {
    let upper = signal.to_ascii_uppercase();
    match env_var(&format!("OTEL_{upper}_EXPORTER")).as_deref() {
        Some("otlp") => Ok(true),
        Some("none") => Ok(false),
        Some(other) => {
            Err(format!("OTEL_{upper}_EXPORTER={other}: the examples support otlp and none").into())
        }
        None => Ok(env_var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || env_var(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")).is_some()),
    }
}

/// Checks `OTEL_EXPORTER_OTLP_{SIGNAL}_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: only
/// http/protobuf is built into the examples.
fn otlp_protocol(signal: &str) -> Result<opentelemetry_otlp::Protocol, Error> {
    let upper = signal.to_ascii_uppercase();
    let var = format!("OTEL_EXPORTER_OTLP_{upper}_PROTOCOL");
    let value = env_var(&var).or_else(|| env_var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match value.as_deref() {
        None | Some("http/protobuf") => Ok(opentelemetry_otlp::Protocol::HttpBinary),
        Some(other) => Err(format!(
            "OTLP protocol {other} ({var} / OTEL_EXPORTER_OTLP_PROTOCOL): the examples are built \
             with http/protobuf only (opentelemetry-otlp's grpc-tonic exporter needs a tokio \
             runtime in the batch processor); use http/protobuf, port 4318"
        )
        .into()),
    }
}

/// The resource: what the SDK reads from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`,
/// with `service.name` = `service` and `service.namespace` = `mqtrace-demo` where they say
/// nothing.
///
/// ```
/// let r = mqtrace_examples::telemetry::resource("my-worker");
/// assert!(r.get(&opentelemetry::Key::new("service.name")).is_some());
/// ```
pub fn resource(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let mut builder = Resource::builder();
    let name = detected.get(&Key::new("service.name"));
    if name.is_none_or(|n| n.as_str().starts_with("unknown_service")) {
        builder = builder.with_service_name(service);
    }
    if detected.get(&Key::new("service.namespace")).is_none() {
        builder = builder.with_attribute(KeyValue::new("service.namespace", "mqtrace-demo"));
    }
    builder.build()
}

/// The propagators named in `list`, as `OTEL_PROPAGATORS` names them: `tracecontext`,
/// `baggage`, `b3` (single header), `b3multi` (`X-B3-*` headers), `none`. Values that are not
/// available (`jaeger`: no release of opentelemetry-jaeger-propagator for opentelemetry 0.33;
/// `xray`, `ottrace`) or unknown are ignored with a warning, as the specification asks.
///
/// ```
/// use opentelemetry::propagation::TextMapPropagator;
/// let p = mqtrace_examples::telemetry::propagators("tracecontext,b3multi");
/// let fields: Vec<&str> = p.fields().collect();
/// assert!(fields.contains(&"traceparent") && fields.contains(&"x-b3-traceid"));
/// ```
// opentelemetry-zipkin 0.33 marks all its items deprecated (its Zipkin exporter is, in favour of
// OTLP); its B3 propagator is still the one opentelemetry-rust publishes for 0.33.
#[allow(deprecated)]
pub fn propagators(list: &str) -> TextMapCompositePropagator {
    use opentelemetry_zipkin::{B3Encoding, Propagator as B3};
    let mut out: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "tracecontext" => out.push(Box::new(TraceContextPropagator::new())),
            "baggage" => out.push(Box::new(BaggagePropagator::new())),
            "b3" => out.push(Box::new(B3::with_encoding(B3Encoding::SingleHeader))),
            "b3multi" => out.push(Box::new(B3::with_encoding(B3Encoding::MultipleHeader))),
            "none" => {}
            "jaeger" => eprintln!(
                "OTEL_PROPAGATORS: jaeger is not available (opentelemetry-jaeger-propagator has \
                 no release for opentelemetry 0.33); ignored"
            ),
            other => eprintln!("OTEL_PROPAGATORS: {other} is not supported; ignored"),
        }
    }
    TextMapCompositePropagator::new(out)
}

/// mqtrace's configuration for the example programs: the defaults, with the messaging metrics
/// on (`Config::with_meter_provider`) when [`Telemetry::init`] installed a meter provider
/// (OTLP metrics or a metrics file).
///
/// ```
/// let config = mqtrace_examples::telemetry::mqtrace_config();
/// assert!(!config.metrics()); // no Telemetry::init with metrics in this process
/// ```
pub fn mqtrace_config() -> mqtrace::Config {
    match METER_PROVIDER.get() {
        Some(provider) => mqtrace::Config::new().with_meter_provider(provider.clone()),
        None => mqtrace::Config::new(),
    }
}

impl Telemetry {
    /// Installs the global tracer provider (service `service`, unless `OTEL_SERVICE_NAME` says
    /// otherwise), the meter provider when OTLP metrics or the metrics file are on, and the propagators of
    /// `OTEL_PROPAGATORS`, all as described in the [module docs](self). Call it before starting
    /// a tokio runtime: the OTLP exporters' blocking HTTP client must live outside one.
    ///
    /// ```no_run
    /// let telemetry = mqtrace_examples::telemetry::Telemetry::init("my-worker").expect("telemetry");
    /// // ... run the worker ...
    /// telemetry.shutdown();
    /// ```
    pub fn init(service: &'static str) -> Result<Self, Error> {
        let resource = resource(service);
        let service_name = resource
            .get(&Key::new("service.name"))
            .map_or_else(|| service.to_owned(), |v| v.to_string());
        // The sampler comes from OTEL_TRACES_SAMPLER / _ARG (the SDK's default configuration).
        let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
        if let Some(dir) = std::env::var_os(SPANS_DIR_VAR).filter(|d| !d.is_empty()) {
            let exporter = JsonLinesExporter::create(Path::new(&dir), &service_name)?;
            builder = builder.with_simple_exporter(exporter);
        }
        if otlp_on("traces")? {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(otlp_protocol("traces")?)
                .build()?;
            builder = builder.with_batch_exporter(exporter);
        }
        let metrics_dir = std::env::var_os(METRICS_DIR_VAR).filter(|d| !d.is_empty());
        let meters = if otlp_on("metrics")? || metrics_dir.is_some() {
            let mut meters = SdkMeterProvider::builder().with_resource(resource);
            if let Some(dir) = metrics_dir {
                // A periodic reader (interval from OTEL_METRIC_EXPORT_INTERVAL), which exports
                // once more when the provider shuts down.
                let exporter = JsonLinesMetricExporter::create(Path::new(&dir), &service_name)?;
                meters = meters.with_periodic_exporter(exporter);
            }
            if otlp_on("metrics")? {
                use opentelemetry_otlp::WithExportConfig as _;
                let exporter = opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_protocol(otlp_protocol("metrics")?)
                    .build()?;
                meters = meters.with_periodic_exporter(exporter);
            }
            let meters = meters.build();
            opentelemetry::global::set_meter_provider(meters.clone());
            let _ = METER_PROVIDER.set(meters.clone());
            Some(meters)
        } else {
            None
        };
        let provider = builder.build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let list = env_var("OTEL_PROPAGATORS").unwrap_or_else(|| "tracecontext,baggage".into());
        opentelemetry::global::set_text_map_propagator(propagators(&list));
        Ok(Self { provider, meters })
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

    /// Ends telemetry: exports what is buffered (OTLP spans, metrics to OTLP and the metrics
    /// file) and closes the exporters.
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
        if let Some(meters) = self.meters
            && let Err(e) = meters.shutdown()
        {
            eprintln!("metrics shutdown: {e}");
        }
    }
}

/// The file a JSON-lines exporter appends to: `{dir}/{service}-{pid}.jsonl`, opened in append
/// mode so that each write of a whole batch lands as whole lines, whatever other processes
/// write to the directory.
#[derive(Debug)]
struct JsonLinesFile {
    file: Mutex<File>,
    path: PathBuf,
}

impl JsonLinesFile {
    fn create(dir: &Path, service: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{service}-{}.jsonl", std::process::id()));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            file: Mutex::new(file),
            path,
        })
    }

    /// Appends `lines` (already newline-terminated) in one write.
    fn append(&self, lines: &[u8]) -> OTelSdkResult {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(lines)
            .map_err(|e| OTelSdkError::InternalFailure(format!("{}: {e}", self.path.display())))
    }
}

/// The `*.jsonl` files of `dir`, sorted: what the exporters here wrote, for the readers in
/// [`crate::trace_view`] and [`crate::metrics_view`].
pub(crate) fn jsonl_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// A span exporter that appends each span as one JSON object per line to a file.
///
/// The line holds the ids, name, kind, service, times (Unix nanoseconds), status, attributes,
/// links and events; [`crate::trace_view::SpanRecord`] reads it back.
#[derive(Debug)]
pub struct JsonLinesExporter {
    file: JsonLinesFile,
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
        Ok(Self {
            file: JsonLinesFile::create(dir, service)?,
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
        &self.file.path
    }

    fn write(&self, batch: &[SpanData]) -> OTelSdkResult {
        let mut out = Vec::with_capacity(batch.len() * 512);
        for span in batch {
            serde_json::to_writer(&mut out, &span_json(span, &self.service))
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
            out.push(b'\n');
        }
        // One write per batch on an O_APPEND file: lines of different processes never mix.
        self.file.append(&out)
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

/// A metric exporter that appends, at each export, one JSON object per line to a file: the
/// service, the time and the cumulative state of every instrument (sums: `value` per point;
/// histograms: `count`, `sum`, `min`, `max`, `bounds`, `bucket_counts` per point, each point
/// with its `attributes`). [`crate::metrics_view`] reads the last line of each file back.
#[derive(Debug)]
pub struct JsonLinesMetricExporter {
    file: JsonLinesFile,
    service: String,
}

impl JsonLinesMetricExporter {
    /// Creates (or appends to) `{dir}/{service}-{pid}.jsonl`, creating `dir` if needed.
    ///
    /// ```no_run
    /// let e = mqtrace_examples::telemetry::JsonLinesMetricExporter::create(std::path::Path::new("/tmp/metrics"), "api")?;
    /// println!("{}", e.path().display());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn create(dir: &Path, service: &str) -> std::io::Result<Self> {
        Ok(Self {
            file: JsonLinesFile::create(dir, service)?,
            service: service.to_owned(),
        })
    }

    /// The file the metrics go to.
    ///
    /// ```no_run
    /// # fn demo(e: mqtrace_examples::telemetry::JsonLinesMetricExporter) {
    /// let _ = e.path();
    /// # }
    /// ```
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    fn write(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let service = metrics
            .resource()
            .get(&Key::new("service.name"))
            .map_or_else(|| self.service.clone(), |v| v.to_string());
        let line = metrics_json(metrics, &service, nanos(SystemTime::now()));
        let mut out =
            serde_json::to_vec(&line).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        out.push(b'\n');
        self.file.append(&out)
    }
}

impl PushMetricExporter for JsonLinesMetricExporter {
    fn export(
        &self,
        metrics: &ResourceMetrics,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.write(metrics))
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        // Each line holds everything since the start: the last line of a file is the total.
        Temporality::Cumulative
    }
}

fn points_json<T: Copy + Into<serde_json::Value>>(
    data: &MetricData<T>,
) -> Option<serde_json::Value> {
    match data {
        MetricData::Sum(sum) => {
            let points: Vec<_> = sum
                .data_points()
                .map(|p| {
                    let value: serde_json::Value = p.value().into();
                    json!({"attributes": attributes_json(p.attributes()), "value": value})
                })
                .collect();
            Some(json!({"type": "sum", "points": points}))
        }
        MetricData::Histogram(h) => {
            let points: Vec<_> = h
                .data_points()
                .map(|p| {
                    let sum: serde_json::Value = p.sum().into();
                    let min: Option<serde_json::Value> = p.min().map(Into::into);
                    let max: Option<serde_json::Value> = p.max().map(Into::into);
                    json!({
                        "attributes": attributes_json(p.attributes()),
                        "count": p.count(),
                        "sum": sum,
                        "min": min,
                        "max": max,
                        "bounds": p.bounds().collect::<Vec<f64>>(),
                        "bucket_counts": p.bucket_counts().collect::<Vec<u64>>(),
                    })
                })
                .collect();
            Some(json!({"type": "histogram", "points": points}))
        }
        MetricData::Gauge(_) | MetricData::ExponentialHistogram(_) => None,
    }
}

/// The JSON object written for one export of `metrics` by `service` at `time_unix_nano` (one
/// line of a metrics file). Gauges and exponential histograms (which mqtrace does not record)
/// are left out.
pub fn metrics_json(
    metrics: &ResourceMetrics,
    service: &str,
    time_unix_nano: u64,
) -> serde_json::Value {
    let mut out = Vec::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            let data = match metric.data() {
                AggregatedMetrics::F64(d) => points_json(d),
                AggregatedMetrics::U64(d) => points_json(d),
                AggregatedMetrics::I64(d) => points_json(d),
            };
            if let Some(mut data) = data {
                data["name"] = json!(metric.name());
                data["unit"] = json!(metric.unit());
                data["scope"] = json!(scope.scope().name());
                out.push(data);
            }
        }
    }
    json!({"service": service, "time_unix_nano": time_unix_nano, "metrics": out})
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

    #[test]
    fn metrics_written_at_shutdown_read_back_per_stage() {
        use opentelemetry::metrics::MeterProvider as _;
        let dir = std::env::temp_dir().join(format!("mqtrace-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let exporter = JsonLinesMetricExporter::create(&dir, "unit").expect("exporter");
        let provider = SdkMeterProvider::builder()
            .with_resource(Resource::builder().with_service_name("enricher").build())
            .with_periodic_exporter(exporter)
            .build();
        let meter = provider.meter("t");
        let consumed = meter
            .u64_counter("messaging.client.consumed.messages")
            .build();
        let outcomes = meter.u64_counter("mqtrace.message.outcomes").build();
        let queue = meter
            .f64_histogram("mqtrace.message.queue_time")
            .with_boundaries(vec![0.01, 0.1])
            .build();
        consumed.add(3, &[KeyValue::new("messaging.destination.name", "a")]);
        outcomes.add(2, &[KeyValue::new("mqtrace.outcome", "ack")]);
        outcomes.add(1, &[KeyValue::new("mqtrace.outcome", "retry")]);
        for v in [0.005, 0.05, 0.2] {
            queue.record(v, &[]);
        }
        // Nothing exported yet (the interval is 60 s): the shutdown writes the line.
        provider.shutdown().expect("shutdown");

        let stages = crate::metrics_view::read_dir(&dir).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        let s = stages
            .iter()
            .find(|s| s.service == "enricher")
            .expect("enricher");
        assert_eq!(s.consumed, 3);
        assert_eq!(s.outcome("ack"), 2);
        assert_eq!(s.outcome("retry"), 1);
        assert_eq!(s.queue_time.bounds, vec![0.01, 0.1]);
        assert_eq!(s.queue_time.counts, vec![1, 1, 1]);
        assert_eq!(s.queue_time.max, Some(0.2));
        assert_eq!(s.queue_time.quantile(1.0), Some(0.2));
    }
}
