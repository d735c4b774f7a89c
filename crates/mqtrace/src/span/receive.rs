//! The CLIENT receive span of a poll or pull that returned a batch of messages.

use crate::attributes as attr;
use crate::instrument::{Instrumentation, SpanFacts, span_name};
use crate::metrics::Measure;
use crate::operation::{Operation, OperationType};
use opentelemetry::trace::{Link, Span, SpanBuilder, SpanContext};
use opentelemetry::{Context, KeyValue};
use std::time::{Instant, SystemTime};

/// A receive operation (a poll or pull that returned messages), as the core needs to see it.
///
/// ```
/// use mqtrace::{Operation, OperationType, instrument::Receive};
/// let started = std::time::SystemTime::now();
/// // ... poll the broker ...
/// let r = Receive::new(Operation::new("poll", OperationType::Receive), started)
///     .with_destination(Some("orders"));
/// # let _ = r;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Receive<'a> {
    operation: Operation,
    destination: Option<&'a str>,
    started: SystemTime,
    attributes: &'a [KeyValue],
}

impl<'a> Receive<'a> {
    /// A receive operation `operation` that started at `started` (before the poll).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Receive::new(Operation::new("receive", OperationType::Receive), std::time::SystemTime::now());
    /// ```
    pub fn new(operation: Operation, started: SystemTime) -> Self {
        Self {
            operation,
            destination: None,
            started,
            attributes: &[],
        }
    }

    /// `messaging.destination.name`, when every message of the batch came from it (the span
    /// is then named `{operation} {destination}`, otherwise just `{operation}`).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Receive::new(Operation::new("poll", OperationType::Receive), std::time::SystemTime::now())
    ///     .with_destination(Some("orders"));
    /// ```
    pub fn with_destination(mut self, destination: Option<&'a str>) -> Self {
        self.destination = destination;
        self
    }

    /// Attributes of the broker's own, set at span creation (e.g.
    /// `messaging.consumer.group.name`).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let kv = [opentelemetry::KeyValue::new("messaging.consumer.group.name", "billing")];
    /// let _ = Receive::new(Operation::new("poll", OperationType::Receive), std::time::SystemTime::now())
    ///     .with_attributes(&kv);
    /// ```
    pub fn with_attributes(mut self, attributes: &'a [KeyValue]) -> Self {
        self.attributes = attributes;
        self
    }
}

/// Records the receive span of a poll (see [`Instrumentation::record_receive`]).
pub(crate) fn record<'c>(
    inst: &Instrumentation,
    receive: Receive<'_>,
    creation: impl IntoIterator<Item = &'c SpanContext>,
) -> SpanContext {
    debug_assert_eq!(receive.operation.kind(), OperationType::Receive);
    let mut count: i64 = 0;
    let links: Vec<Link> = creation
        .into_iter()
        .inspect(|_| count += 1)
        .filter(|sc| sc.is_valid())
        .map(|sc| Link::with_context(sc.clone()))
        .collect();
    let op = receive.operation;
    let name = match receive.destination {
        Some(d) => span_name(op.name(), d),
        None => std::borrow::Cow::Borrowed(op.name()),
    };
    let mut attributes = inst.creation_attributes_with(
        op,
        receive.destination.map(|d| d.to_owned().into()),
        receive.attributes,
        1,
    );
    attributes.push(KeyValue::new(attr::MESSAGING_BATCH_MESSAGE_COUNT, count));
    let builder = SpanBuilder::from_name(name)
        .with_kind(op.kind().span_kind())
        .with_start_time(receive.started)
        .with_attributes(attributes)
        .with_links(links);
    let facts = SpanFacts::new(op, receive.destination.unwrap_or(""));
    let mut span = inst.start_span(builder, &Context::current(), &facts, |_| {});
    if let (Some(metrics), Some(d)) = (inst.metrics(), receive.destination) {
        let elapsed = receive.started.elapsed().unwrap_or_default();
        let start = Instant::now()
            .checked_sub(elapsed)
            .unwrap_or_else(Instant::now);
        let mut m = Measure::new(op, d, crate::instrument::DestinationKind::NAMED, start);
        m.extra = crate::metrics::consumer_attributes(receive.attributes);
        m.operation_done(metrics, &inst.common(), None);
        // Counted here once per delivery; the process spans of the batch do not count again
        // (`Incoming::with_counted_at_receive`).
        if let Ok(n) = u64::try_from(count)
            && n > 0
        {
            m.consumed(metrics, &inst.common(), n);
        }
    }
    let span_context = span.span_context().clone();
    span.end();
    span_context
}

#[cfg(test)]
mod tests {
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{instrument::*, *};
    use opentelemetry::trace::SpanKind;
    use std::collections::HashMap;

    #[test]
    fn links_every_message_and_process_spans_stay_children_of_their_creation_context() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let mut sent = Vec::new();
        for _ in 0..2 {
            let mut h: HashMap<String, String> = HashMap::new();
            let s = inst.start_send(
                Outgoing::new(Operation::new("send", OperationType::Send), "t"),
                &mut h,
            );
            sent.push((s.span_context().clone(), h));
            s.end_ok();
        }
        sent.push((
            opentelemetry::trace::SpanContext::empty_context(),
            HashMap::new(),
        ));
        let started = std::time::SystemTime::now();
        let xs: Vec<Extracted> = sent.iter().map(|(_, h)| inst.extract(h)).collect();
        let group = [opentelemetry::KeyValue::new(
            attributes::MESSAGING_CONSUMER_GROUP_NAME,
            "g",
        )];
        let receive = Receive::new(Operation::new("poll", OperationType::Receive), started)
            .with_destination(Some("t"))
            .with_attributes(&group);
        let rsc = inst.record_receive(receive, xs.iter().map(Extracted::span_context));
        for x in xs {
            inst.start_process(
                Incoming::new(Operation::new("process", OperationType::Process), "t", "t"),
                x,
            )
            .finish(Outcome::Ack);
        }
        let spans = t.spans();
        let poll = spans.one("poll t");
        assert_eq!(poll.span_context.span_id(), rsc.span_id());
        poll.assert_kind(SpanKind::Client);
        poll.assert_root();
        poll.assert_attr_i64("messaging.batch.message_count", 3);
        poll.assert_attr("messaging.operation.type", "receive");
        poll.assert_attr("messaging.consumer.group.name", "g");
        assert_eq!(poll.links.links.len(), 2);
        let processes = spans.named("process t");
        for (sc, _) in &sent[..2] {
            poll.assert_links_to(sc);
            assert!(
                processes.iter().any(|p| p.parent_span_id == sc.span_id()
                    && p.span_context.trace_id() == sc.trace_id())
            );
        }
    }

    #[test]
    fn mixed_destinations_name_the_span_by_operation_only() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let receive = Receive::new(
            Operation::new("poll", OperationType::Receive),
            std::time::SystemTime::now(),
        );
        inst.record_receive(receive, std::iter::empty());
        let spans = t.spans();
        let poll = spans.one("poll");
        assert!(poll.attr("messaging.destination.name").is_none());
        poll.assert_attr_i64("messaging.batch.message_count", 0);
    }
}
