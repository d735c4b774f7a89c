//! The four messaging metrics of the semantic conventions.

use crate::attributes as attr;
use crate::operation::Operation;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{KeyValue, StringValue, Value};
use std::sync::Arc;
use std::time::Instant;

/// Bucket boundaries the conventions give messaging duration histograms (seconds).
const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// `messaging.client.operation.duration`, `messaging.process.duration`,
/// `messaging.client.sent.messages`, `messaging.client.consumed.messages`.
pub(crate) struct Metrics {
    operation_duration: Histogram<f64>,
    process_duration: Histogram<f64>,
    sent: Counter<u64>,
    consumed: Counter<u64>,
}

impl Metrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        Self {
            operation_duration: meter
                .f64_histogram("messaging.client.operation.duration")
                .with_unit("s")
                .with_description(
                    "Duration of messaging operation initiated by a producer or consumer client.",
                )
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            process_duration: meter
                .f64_histogram("messaging.process.duration")
                .with_unit("s")
                .with_description("Duration of processing operation.")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .build(),
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .build(),
        }
    }
}

/// What a metric point is about: shared by a span and its measurements.
#[derive(Clone)]
pub(crate) struct Measure {
    pub(crate) op: Operation,
    pub(crate) destination: Arc<str>,
    pub(crate) start: Instant,
}

/// The attributes common to every point.
pub(crate) struct Common<'a> {
    pub(crate) system: &'static str,
    pub(crate) server_address: Option<&'a StringValue>,
    pub(crate) server_port: Option<i64>,
}

impl Measure {
    fn attributes(&self, common: &Common<'_>, error_type: Option<&str>) -> Vec<KeyValue> {
        let mut kv = Vec::with_capacity(7);
        kv.push(KeyValue::new(attr::MESSAGING_SYSTEM, common.system));
        kv.push(KeyValue::new(
            attr::MESSAGING_OPERATION_NAME,
            self.op.name(),
        ));
        kv.push(KeyValue::new(
            attr::MESSAGING_OPERATION_TYPE,
            self.op.kind().as_str(),
        ));
        kv.push(KeyValue::new(
            attr::MESSAGING_DESTINATION_NAME,
            Value::String(StringValue::from(self.destination.clone())),
        ));
        if let Some(a) = common.server_address {
            kv.push(KeyValue::new(
                attr::SERVER_ADDRESS,
                Value::String(a.clone()),
            ));
        }
        if let Some(p) = common.server_port {
            kv.push(KeyValue::new(attr::SERVER_PORT, p));
        }
        if let Some(e) = error_type {
            kv.push(KeyValue::new(attr::ERROR_TYPE, e.to_owned()));
        }
        kv
    }

    /// A send or settle operation ended: its duration (and, for a send, one message sent).
    pub(crate) fn operation_done(
        &self,
        metrics: &Metrics,
        common: &Common<'_>,
        error_type: Option<&str>,
        sent: bool,
    ) {
        let kv = self.attributes(common, error_type);
        metrics
            .operation_duration
            .record(self.start.elapsed().as_secs_f64(), &kv);
        if sent {
            metrics.sent.add(1, &kv);
        }
    }

    /// A message was delivered to the application.
    pub(crate) fn consumed(&self, metrics: &Metrics, common: &Common<'_>) {
        metrics.consumed.add(1, &self.attributes(common, None));
    }

    /// The processing of a message ended.
    pub(crate) fn processed(
        &self,
        metrics: &Metrics,
        common: &Common<'_>,
        error_type: Option<&str>,
    ) {
        metrics.process_duration.record(
            self.start.elapsed().as_secs_f64(),
            &self.attributes(common, error_type),
        );
    }
}
