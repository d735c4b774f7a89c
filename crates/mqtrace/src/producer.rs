//! The PRODUCER span of one outgoing message.

use crate::attributes as attr;
use crate::instrumentation::Instrumentation;
use crate::metrics::Measure;
use opentelemetry::KeyValue;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanContext, Status};
use std::borrow::Cow;
use std::fmt;

/// The span of a message being sent; end it when the broker has answered.
///
/// Started by [`crate::Instrumentation::start_send`]. Dropping it unended ends it too,
/// recording that the send was abandoned before the broker answered (no span is left open).
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace::*;
/// let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
/// let mut headers: HashMap<String, String> = HashMap::new();
/// let mut span = inst.start_send(Outgoing::new(Operation::new("send", OperationType::Send), "t"), &mut headers);
/// span.record(|| [opentelemetry::KeyValue::new("messaging.kafka.offset", 7_i64)]);
/// span.end_error("QueueFull", "local queue full");
/// ```
pub struct SendSpan {
    span: Option<BoxedSpan>,
    context: SpanContext,
    measure: Option<(Instrumentation, Measure)>,
}

impl fmt::Debug for SendSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendSpan")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl SendSpan {
    pub(crate) fn new(span: BoxedSpan, measure: Option<(Instrumentation, Measure)>) -> Self {
        let context = span.span_context().clone();
        Self {
            span: Some(span),
            context,
            measure,
        }
    }

    fn measure(&mut self, error_type: Option<&str>) {
        if let Some((inst, m)) = self.measure.take()
            && let Some(metrics) = inst.metrics()
        {
            m.operation_done(metrics, &inst.common(), error_type, true);
        }
    }

    /// The span's context (what was injected into the message).
    ///
    /// ```
    /// # use mqtrace::*;
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let mut h: std::collections::HashMap<String, String> = Default::default();
    /// let span = inst.start_send(Outgoing::new(Operation::new("send", OperationType::Send), "t"), &mut h);
    /// assert!(!span.span_context().is_valid()); // no tracer provider installed in this example
    /// ```
    pub fn span_context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether the span is sampled (attributes are only worth computing then).
    ///
    /// ```
    /// # use mqtrace::*;
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let mut h: std::collections::HashMap<String, String> = Default::default();
    /// let span = inst.start_send(Outgoing::new(Operation::new("send", OperationType::Send), "t"), &mut h);
    /// assert!(!span.is_recording());
    /// ```
    pub fn is_recording(&self) -> bool {
        self.span.as_ref().is_some_and(Span::is_recording)
    }

    /// Adds attributes computed by `f`, which runs only if the span is recording.
    ///
    /// ```
    /// # use mqtrace::*;
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let mut h: std::collections::HashMap<String, String> = Default::default();
    /// let mut span = inst.start_send(Outgoing::new(Operation::new("send", OperationType::Send), "t"), &mut h);
    /// span.record(|| [opentelemetry::KeyValue::new("messaging.destination.partition.id", "0")]);
    /// ```
    pub fn record<I>(&mut self, f: impl FnOnce() -> I)
    where
        I: IntoIterator<Item = KeyValue>,
    {
        if let Some(span) = self.span.as_mut().filter(|s| s.is_recording()) {
            span.set_attributes(f());
        }
    }

    /// Ends the span: the broker accepted the message.
    ///
    /// ```
    /// # use mqtrace::*;
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let mut h: std::collections::HashMap<String, String> = Default::default();
    /// inst.start_send(Outgoing::new(Operation::new("send", OperationType::Send), "t"), &mut h).end_ok();
    /// ```
    pub fn end_ok(mut self) {
        self.measure(None);
        if let Some(mut span) = self.span.take() {
            span.end();
        }
    }

    /// Ends the span as failed, with `error.type` and a description.
    ///
    /// ```
    /// # use mqtrace::*;
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let mut h: std::collections::HashMap<String, String> = Default::default();
    /// let span = inst.start_send(Outgoing::new(Operation::new("send", OperationType::Send), "t"), &mut h);
    /// span.end_error("nack", "the broker refused the message");
    /// ```
    pub fn end_error(
        mut self,
        error_type: impl Into<Cow<'static, str>>,
        description: impl fmt::Display,
    ) {
        let error_type = error_type.into();
        self.measure(Some(&error_type));
        if let Some(mut span) = self.span.take() {
            if span.is_recording() {
                span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type));
                span.set_status(Status::error(description.to_string()));
            }
            span.end();
        }
    }
}

impl Drop for SendSpan {
    fn drop(&mut self) {
        self.measure(Some("abandoned"));
        if let Some(mut span) = self.span.take() {
            if span.is_recording() {
                span.add_event("mqtrace.send.abandoned", Vec::new());
            }
            span.end();
        }
    }
}
