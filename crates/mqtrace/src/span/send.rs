//! The PRODUCER span of one outgoing message ([`start`]), the CLIENT send span of a batch of
//! messages that each have their own create span ([`start_batch`]), and [`SendSpan`], which
//! both return.

use crate::attributes as attr;
use crate::carrier::Injector;
use crate::instrument::{Instrumentation, Outgoing, SpanFacts, span_name};
use crate::metrics::Measure;
use crate::operation::{Operation, OperationType};
use crate::pipeline::Pipeline;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Link, Span, SpanBuilder, SpanContext, SpanKind, Status};
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// The `error.type` of a send abandoned before the broker answered.
const ABANDONED: &str = "abandoned";

/// Starts the PRODUCER span of `msg` under the current context and injects its context into
/// `headers` (see [`Instrumentation::start_send`]).
pub(crate) fn start(
    inst: &Instrumentation,
    msg: Outgoing<'_>,
    headers: &mut dyn Injector,
) -> SendSpan {
    // The clock is read only when a duration will be recorded.
    let start = inst.metrics().is_some().then(Instant::now);
    let parent = Context::current();
    let destination: Arc<str> = Arc::from(msg.destination);
    let builder = SpanBuilder::from_name(span_name(msg.operation.name(), msg.destination))
        .with_kind(msg.operation.kind().span_kind())
        .with_attributes(inst.creation_attributes_with(
            msg.operation,
            Some(destination.clone().into()),
            msg.attributes,
            0,
        ));
    let facts = SpanFacts {
        message_id: msg.message_id,
        conversation_id: msg.conversation_id,
        body_size: msg.body_size,
        headers: msg.headers,
        ..SpanFacts::new(msg.operation, msg.destination)
    };
    let span = inst.start_span(builder, &parent, &facts, |span| {
        if let Some(record) = msg.recorded {
            let mut kv = Vec::with_capacity(4);
            record(&mut kv);
            span.set_attributes(kv);
        }
    });
    inst.config()
        .propagation()
        .inject(span.span_context(), &parent, headers);
    // The pipeline's origin travels on from the process span this message is sent in, where
    // someone records it (metrics here, or a sampled span). A message sent outside any
    // process span starts a pipeline: its consumer takes the broker's timestamp as the origin,
    // so it needs no header.
    if (start.is_some() || span.is_recording())
        && let Some(pipeline) = parent.get::<Pipeline>()
    {
        pipeline.write(headers);
    }
    let measure = start.map(|start| {
        (
            inst.clone(),
            Measure::new(
                msg.operation,
                msg.metric_destination.unwrap_or(&destination),
                start,
            ),
        )
    });
    SendSpan::new(span, measure)
}

/// Starts the CLIENT send span of a batch (see [`Instrumentation::start_batch_send`]).
pub(crate) fn start_batch<'c>(
    inst: &Instrumentation,
    operation: Operation,
    destination: &str,
    created: impl IntoIterator<Item = &'c SpanContext>,
) -> SendSpan {
    debug_assert_eq!(operation.kind(), OperationType::Send);
    let start = inst.metrics().is_some().then(Instant::now);
    let mut count: i64 = 0;
    let links: Vec<Link> = created
        .into_iter()
        .inspect(|_| count += 1)
        .filter(|sc| sc.is_valid())
        .map(|sc| Link::with_context(sc.clone()))
        .collect();
    let mut attributes =
        inst.creation_attributes_with(operation, Some(destination.to_owned().into()), &[], 1);
    attributes.push(KeyValue::new(attr::MESSAGING_BATCH_MESSAGE_COUNT, count));
    let builder = SpanBuilder::from_name(span_name(operation.name(), destination))
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .with_links(links);
    let facts = SpanFacts::new(operation, destination);
    let span = inst.start_span(builder, &Context::current(), &facts, |_| {});
    // The batch's duration; its messages are counted as sent by their own spans.
    let measure = start.map(|start| {
        let mut m = Measure::new(operation, destination, start);
        m.sent = false;
        (inst.clone(), m)
    });
    SendSpan::new(span, measure)
}

/// The span of a message being sent; end it when the broker has answered.
///
/// Started by [`crate::instrument::Instrumentation::start_send`]. Dropping it unended ends it too,
/// recording that the send was abandoned before the broker answered (no span is left open):
/// `error.type` `abandoned` and an error status on the span, as on the duration metric, and
/// the event `mqtrace.send.abandoned`.
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace::{*, instrument::*};
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
            m.operation_done(metrics, &inst.common(), error_type);
        }
    }

    /// The span's context (what was injected into the message).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
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
    /// # use mqtrace::{*, instrument::*};
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
    /// # use mqtrace::{*, instrument::*};
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
    /// # use mqtrace::{*, instrument::*};
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
    /// # use mqtrace::{*, instrument::*};
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
        self.measure(Some(ABANDONED));
        if let Some(mut span) = self.span.take() {
            if span.is_recording() {
                span.set_attribute(KeyValue::new(attr::ERROR_TYPE, ABANDONED));
                span.set_status(Status::error(
                    "the send was abandoned before the broker answered",
                ));
                span.add_event("mqtrace.send.abandoned", Vec::new());
            }
            span.end();
        }
    }
}

#[cfg(test)]
mod batch_tests {
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{instrument::*, *};
    use opentelemetry::trace::SpanKind;
    use std::collections::HashMap;

    #[test]
    fn links_every_create_span_and_counts_the_batch() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::GcpPubSub, "test").build(t.config());
        let create = Operation::new("create", OperationType::Create);
        let created: Vec<_> = (0..3)
            .map(|_| {
                let mut h: HashMap<String, String> = HashMap::new();
                let s = inst.start_send(Outgoing::new(create, "t"), &mut h);
                let sc = s.span_context().clone();
                s.end_ok();
                sc
            })
            .collect();
        inst.start_batch_send(Operation::new("send", OperationType::Send), "t", &created)
            .end_ok();
        let spans = t.spans();
        let send = spans.one("send t");
        send.assert_kind(SpanKind::Client);
        send.assert_root();
        send.assert_attr_i64(attributes::MESSAGING_BATCH_MESSAGE_COUNT, 3);
        send.assert_attr(attributes::MESSAGING_OPERATION_TYPE, "send");
        for sc in &created {
            send.assert_links_to(sc);
        }
        for create in spans.named("create t") {
            create.assert_kind(SpanKind::Producer);
            create.assert_attr(attributes::MESSAGING_OPERATION_TYPE, "create");
        }
    }
}
