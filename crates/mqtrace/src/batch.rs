//! The CLIENT send span of a batch of messages that each have their own create span.

use crate::attributes as attr;
use crate::config::SpanInfo;
use crate::instrumentation::{Instrumentation, span_name};
use crate::operation::{Operation, OperationType};
use crate::producer::SendSpan;
use opentelemetry::trace::{Link, Span, SpanBuilder, SpanContext, SpanKind, Tracer};
use opentelemetry::{Context, KeyValue};

impl Instrumentation {
    /// Starts the send span of a batch whose messages were each given a create span (see
    /// [`OperationType::Create`]) carrying their creation context: the span is a child of the
    /// current context, links every valid context in `created` and records
    /// `messaging.batch.message_count` (one per item of `created`). End it when the broker has
    /// answered, like any [`SendSpan`].
    ///
    /// Its kind is CLIENT, not PRODUCER: the messaging conventions reserve PRODUCER for a send
    /// span whose context is the messages' creation context, and here the create spans are.
    /// The messages were already counted by their create spans, so this span adds no
    /// `messaging.client.sent.messages`.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use mqtrace::*;
    /// let inst = Instrumentation::builder(MessagingSystem::GcpPubSub, "doc").build(Config::new());
    /// let create = Operation::new("create", OperationType::Create);
    /// let mut created = Vec::new();
    /// for _ in 0..2 {
    ///     let mut attributes: HashMap<String, String> = HashMap::new();
    ///     let span = inst.start_send(Outgoing::new(create, "orders"), &mut attributes);
    ///     created.push(span.span_context().clone());
    ///     span.end_ok();
    /// }
    /// let send = inst.start_batch_send(Operation::new("send", OperationType::Send), "orders", &created);
    /// send.end_ok(); // `send orders`, linking both create spans
    /// ```
    pub fn start_batch_send<'c>(
        &self,
        operation: Operation,
        destination: &str,
        created: impl IntoIterator<Item = &'c SpanContext>,
    ) -> SendSpan {
        debug_assert_eq!(operation.kind(), OperationType::Send);
        let mut count: i64 = 0;
        let links: Vec<Link> = created
            .into_iter()
            .inspect(|_| count += 1)
            .filter(|sc| sc.is_valid())
            .map(|sc| Link::with_context(sc.clone()))
            .collect();
        let mut attributes = self.creation_attributes(operation, destination.to_owned());
        attributes.push(KeyValue::new(attr::MESSAGING_BATCH_MESSAGE_COUNT, count));
        let builder = SpanBuilder::from_name(span_name(operation.name(), destination))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .with_links(links);
        let mut span = self
            .tracer()
            .build_with_context(builder, &Context::current());
        if span.is_recording() {
            self.common_attributes(&mut span, None, None, None);
            let info = SpanInfo {
                operation,
                destination,
                headers: None,
            };
            self.config().apply_hook(&mut span, &info);
        }
        SendSpan::new(span, None)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::*;
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
