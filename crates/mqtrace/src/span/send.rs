//! The PRODUCER span of one outgoing message ([`start`]), the CLIENT send span of a batch of
//! messages that each have their own create span ([`start_batch`]), and [`SendSpan`], which
//! both return.

use crate::attributes as attr;
use crate::carrier::HeaderExtractor;
use crate::carrier::Injector;
use crate::config::ExistingContext;
use crate::instrument::{
    DestinationKind, Instrumentation, Outgoing, SpanFacts, span_name, span_name_for,
};
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

/// A creation context found on an outgoing message before injection, and what
/// [`Instrumentation::start_send`] will do with it under the configured
/// [`crate::ExistingContext`]. Made by [`Instrumentation::existing_context`].
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace::{*, instrument::*};
/// let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
/// let forwarded: HashMap<String, String> = [(
///     "traceparent".to_owned(),
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
/// )].into();
/// let existing = inst.existing_context(&forwarded);
/// assert!(existing.span_context().is_valid());
/// assert!(existing.keeps()); // the default rule: sent unchanged, do not remove its fields
/// let none = inst.existing_context(&HashMap::<String, String>::new());
/// assert!(!none.keeps()); // nothing to keep: remove any stale field, then inject
/// ```
#[derive(Clone, Debug)]
pub struct ExistingOnMessage {
    span_context: SpanContext,
    keep: bool,
}

impl ExistingOnMessage {
    /// The context found (invalid when the message carries none that can be read).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// let e = inst.existing_context(&std::collections::HashMap::<String, String>::new());
    /// assert!(!e.span_context().is_valid());
    /// ```
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// Whether the message's context fields stay as they are. When `false`, the broker crate
    /// removes every field the propagation writes from the outgoing headers before
    /// [`Instrumentation::start_send`] (which then writes its own), so old and new are never
    /// mixed.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// assert!(!inst.existing_context(&std::collections::HashMap::<String, String>::new()).keeps());
    /// ```
    pub fn keeps(&self) -> bool {
        self.keep
    }
}

/// Reads the context already on an outgoing message (see [`Instrumentation::existing_context`]).
pub(crate) fn existing(inst: &Instrumentation, before: &dyn HeaderExtractor) -> ExistingOnMessage {
    let span_context = inst
        .config()
        .propagation()
        .extract(before)
        .span_context()
        .clone();
    let keep = span_context.is_valid() && inst.config().existing_context() == ExistingContext::Keep;
    ExistingOnMessage { span_context, keep }
}

/// Starts the PRODUCER span of `msg` under the current context and injects its context into
/// `headers` (see [`Instrumentation::start_send`]). A context kept on the message
/// ([`ExistingOnMessage::keeps`]) makes it a CLIENT span linking that context, and nothing is
/// injected; a replaced one is linked as `replaced`.
pub(crate) fn start(
    inst: &Instrumentation,
    msg: Outgoing<'_>,
    headers: &mut dyn Injector,
) -> SendSpan {
    // The clock is read only when a duration will be recorded.
    let start = inst.metrics().is_some().then(Instant::now);
    let parent = Context::current();
    let destination: Arc<str> = Arc::from(msg.destination);
    let kept = msg.existing.filter(|e| e.keep);
    let kind = match kept {
        // The conventions' "send span (client)": a creation context exists already.
        Some(_) => SpanKind::Client,
        None => msg.operation.kind().span_kind(),
    };
    let mut attributes = inst.creation_attributes_with(
        msg.operation,
        Some(destination.clone().into()),
        msg.attributes,
        2,
    );
    attributes.extend(msg.kind.attributes());
    let mut builder = SpanBuilder::from_name(span_name_for(
        msg.operation.name(),
        msg.destination,
        msg.kind,
    ))
    .with_kind(kind)
    .with_attributes(attributes);
    match msg.existing {
        Some(e) if e.keep => {
            builder = builder.with_links(vec![Link::with_context(e.span_context.clone())]);
        }
        Some(e) if e.span_context.is_valid() => {
            builder = builder.with_links(vec![Link::new(
                e.span_context.clone(),
                vec![KeyValue::new(attr::LINK_TYPE, "replaced")],
                0,
            )]);
        }
        _ => {}
    }
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
    if kept.is_none() {
        inst.config()
            .propagation()
            .inject(span.span_context(), &parent, headers);
    }
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
                msg.kind,
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
        let mut m = Measure::new(operation, destination, DestinationKind::NAMED, start);
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

#[cfg(test)]
mod existing_context_tests {
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{instrument::*, *};
    use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider};
    use std::collections::HashMap;

    const PUBLISH: Operation = Operation::new("publish", OperationType::Send);
    const FORWARDED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn forwarded() -> HashMap<String, String> {
        [
            ("traceparent", FORWARDED),
            ("tracestate", "vendor=old"),
            ("baggage", "stage=one"),
            ("order", "o-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Sends `headers` as a broker crate does, inside an application span; returns the headers
    /// as sent.
    fn send(
        t: &TestTelemetry,
        rule: ExistingContext,
        mut headers: HashMap<String, String>,
    ) -> HashMap<String, String> {
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "test")
            .build(t.config().with_existing_context(rule));
        let app = t.provider().tracer("app").start("handler");
        let cx = opentelemetry::Context::current_with_span(app);
        let _guard = cx.clone().attach();
        let before = headers.clone();
        let existing = inst.existing_context(&before);
        if !existing.keeps() {
            for f in inst.config().propagation().fields() {
                headers.remove(&f);
            }
        }
        inst.start_send(
            Outgoing::new(PUBLISH, "orders")
                .with_headers(&before)
                .with_existing_context(&existing),
            &mut headers,
        )
        .end_ok();
        cx.span().end();
        headers
    }

    #[test]
    fn keep_sends_the_existing_context_unchanged_from_a_client_span_linking_it() {
        let t = TestTelemetry::new();
        let sent = send(&t, ExistingContext::Keep, forwarded());
        assert_eq!(
            sent,
            forwarded(),
            "all three fields as they were, nothing added"
        );
        let spans = t.spans();
        let span = spans.one("publish orders");
        span.assert_kind(SpanKind::Client);
        span.assert_child_of(spans.one("handler"));
        let old = crate::Propagation::W3c.extract(&forwarded());
        span.assert_links_to(old.span_context());
        assert_eq!(span.links.links.len(), 1);
    }

    #[test]
    fn replace_writes_all_three_fields_anew_and_links_the_replaced_context() {
        let t = TestTelemetry::new();
        let sent = send(&t, ExistingContext::Replace, forwarded());
        let spans = t.spans();
        let span = spans.one("publish orders");
        span.assert_kind(SpanKind::Producer);
        assert_eq!(
            sent.get("traceparent").map(String::as_str),
            Some(
                format!(
                    "00-{}-{}-01",
                    span.span_context.trace_id(),
                    span.span_context.span_id()
                )
                .as_str()
            )
        );
        // The old tracestate and baggage are gone with the old traceparent: never mixed.
        assert_eq!(sent.get("tracestate"), None);
        assert_eq!(sent.get("baggage"), None);
        assert_eq!(sent.get("order").map(String::as_str), Some("o-1"));
        let old = crate::Propagation::W3c.extract(&forwarded());
        span.assert_links_to(old.span_context());
        let link = &span.links.links[0];
        assert_eq!(
            link.attributes
                .iter()
                .find(|kv| kv.key.as_str() == crate::attributes::LINK_TYPE)
                .map(|kv| kv.value.to_string()),
            Some("replaced".to_owned())
        );
    }

    #[test]
    fn without_a_valid_context_both_rules_inject_a_new_one() {
        for rule in [ExistingContext::Keep, ExistingContext::Replace] {
            let t = TestTelemetry::new();
            let stale: HashMap<String, String> =
                [("tracestate".to_owned(), "vendor=stale".to_owned())].into();
            let sent = send(&t, rule, stale);
            let spans = t.spans();
            let span = spans.one("publish orders");
            span.assert_kind(SpanKind::Producer);
            assert!(sent.contains_key("traceparent"), "{rule:?}");
            assert_eq!(
                sent.get("tracestate"),
                None,
                "{rule:?}: no stale tracestate"
            );
            assert!(span.links.links.is_empty(), "{rule:?}");
        }
    }

    #[test]
    fn temporary_and_anonymous_destinations_are_left_out_of_span_names() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "test").build(t.config());
        let reply = DestinationKind::NAMED
            .with_temporary(true)
            .with_anonymous(true);
        let mut h: HashMap<String, String> = HashMap::new();
        inst.start_send(
            Outgoing::new(PUBLISH, "amq.gen-X").with_destination_kind(reply),
            &mut h,
        )
        .end_ok();
        let process = Operation::new("process", OperationType::Process);
        let ack = Operation::new("ack", OperationType::Settle);
        let span = inst.start_process(
            Incoming::new(process, "amq.gen-X", "amq.gen-X").with_destination_kind(reply),
            inst.extract(&h),
        );
        futures_executor_block_on(span.settle(Settle::new(ack, Outcome::Ack), async {}, |_| None));
        let spans = t.spans();
        for name in ["publish", "process", "ack"] {
            let s = spans.one(name);
            s.assert_attr_bool(attributes::MESSAGING_DESTINATION_TEMPORARY, true);
            s.assert_attr_bool(attributes::MESSAGING_DESTINATION_ANONYMOUS, true);
            s.assert_attr_str(attributes::MESSAGING_DESTINATION_NAME, "amq.gen-X");
        }
        assert!(spans.named("publish amq.gen-X").is_empty());
    }

    /// Polls a future that never waits to completion.
    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(f)
    }
}
