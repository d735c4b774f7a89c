//! The engine broker crates drive: it starts producer and consumer spans with the conventions'
//! names, kinds and attributes, applies the parent-or-link and trust policies, and injects and
//! extracts context through the configured propagation.

use crate::attributes as attr;
use crate::carrier::{HeaderExtractor, Injector};
use crate::config::{Config, ParentPolicy, SpanInfo};
use crate::metrics::{Common, Measure, Metrics};
use crate::operation::{MessagingSystem, Operation, OperationType};
use crate::process::ProcessSpan;
use crate::producer::SendSpan;
use crate::propagation::Extracted;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{Link, Span, SpanBuilder, TraceContextExt, Tracer};
use opentelemetry::{Context, InstrumentationScope, KeyValue, StringValue, Value};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// One message about to be sent, as the core needs to see it.
///
/// ```
/// use mqtrace::{Operation, OperationType, Outgoing};
/// let m = Outgoing::new(Operation::new("publish", OperationType::Send), "orders")
///     .with_message_id(Some("m-1"))
///     .with_body_size(42);
/// # let _ = m;
/// ```
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub(crate) operation: Operation,
    pub(crate) destination: &'a str,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body_size: Option<usize>,
    pub(crate) headers: Option<&'a dyn HeaderExtractor>,
    pub(crate) attributes: &'a [KeyValue],
}

impl<'a> Outgoing<'a> {
    /// A message for `operation` on `destination` (`messaging.destination.name`).
    ///
    /// ```
    /// let _ = mqtrace::Outgoing::new(mqtrace::Operation::new("send", mqtrace::OperationType::Send), "t");
    /// ```
    pub fn new(operation: Operation, destination: &'a str) -> Self {
        Self {
            operation,
            destination,
            message_id: None,
            conversation_id: None,
            body_size: None,
            headers: None,
            attributes: &[],
        }
    }

    /// `messaging.message.id`.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_message_id(Some("id"));
    /// ```
    pub fn with_message_id(mut self, id: Option<&'a str>) -> Self {
        self.message_id = id;
        self
    }

    /// `messaging.message.conversation_id` (e.g. the AMQP correlation id).
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_conversation_id(Some("c"));
    /// ```
    pub fn with_conversation_id(mut self, id: Option<&'a str>) -> Self {
        self.conversation_id = id;
        self
    }

    /// The body size, recorded only when [`Config::with_body_size`] is on.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_body_size(3);
    /// ```
    pub fn with_body_size(mut self, size: usize) -> Self {
        self.body_size = Some(size);
        self
    }

    /// The user's headers as they are before injection, for the attribute hook.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let h = std::collections::HashMap::<String, String>::new();
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_headers(&h);
    /// ```
    pub fn with_headers(mut self, headers: &'a dyn HeaderExtractor) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Attributes of the broker's own, set at span creation so samplers see them (e.g.
    /// `messaging.destination.partition.id`, `messaging.consumer.group.name`).
    ///
    /// ```
    /// # use mqtrace::*;
    /// let kv = [opentelemetry::KeyValue::new("messaging.destination.partition.id", "0")];
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_attributes(&kv);
    /// ```
    pub fn with_attributes(mut self, attributes: &'a [KeyValue]) -> Self {
        self.attributes = attributes;
        self
    }
}

/// One delivered message, as the core needs to see it.
///
/// ```
/// use mqtrace::{Incoming, Operation, OperationType};
/// let m = Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders")
///     .with_attempt(Some(2));
/// # let _ = m;
/// ```
#[derive(Clone, Copy)]
pub struct Incoming<'a> {
    pub(crate) operation: Operation,
    pub(crate) destination: &'a str,
    pub(crate) source: &'a str,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body_size: Option<usize>,
    pub(crate) attempt: Option<u32>,
    pub(crate) headers: Option<&'a dyn HeaderExtractor>,
    pub(crate) attributes: &'a [KeyValue],
}

impl<'a> Incoming<'a> {
    /// A message handled by `operation`, delivered from `destination`
    /// (`messaging.destination.name`); `source` is the name the trust policy is asked about
    /// (queue, topic or subscription).
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "ex:rk:q", "q");
    /// ```
    pub fn new(operation: Operation, destination: &'a str, source: &'a str) -> Self {
        Self {
            operation,
            destination,
            source,
            message_id: None,
            conversation_id: None,
            body_size: None,
            attempt: None,
            headers: None,
            attributes: &[],
        }
    }

    /// `messaging.message.id`.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_message_id(Some("m"));
    /// ```
    pub fn with_message_id(mut self, id: Option<&'a str>) -> Self {
        self.message_id = id;
        self
    }

    /// `messaging.message.conversation_id`.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_conversation_id(Some("c"));
    /// ```
    pub fn with_conversation_id(mut self, id: Option<&'a str>) -> Self {
        self.conversation_id = id;
        self
    }

    /// The body size, recorded only when [`Config::with_body_size`] is on.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_body_size(1);
    /// ```
    pub fn with_body_size(mut self, size: usize) -> Self {
        self.body_size = Some(size);
        self
    }

    /// The delivery attempt (1 for the first delivery), when known.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_attempt(Some(1));
    /// ```
    pub fn with_attempt(mut self, attempt: Option<u32>) -> Self {
        self.attempt = attempt;
        self
    }

    /// The message's headers, for the attribute hook.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let h = std::collections::HashMap::<String, String>::new();
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_headers(&h);
    /// ```
    pub fn with_headers(mut self, headers: &'a dyn HeaderExtractor) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Attributes of the broker's own, set at span creation so samplers see them (e.g.
    /// `messaging.destination.partition.id`, `messaging.consumer.group.name`).
    ///
    /// ```
    /// # use mqtrace::*;
    /// let kv = [opentelemetry::KeyValue::new("messaging.destination.partition.id", "0")];
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "t", "t").with_attributes(&kv);
    /// ```
    pub fn with_attributes(mut self, attributes: &'a [KeyValue]) -> Self {
        self.attributes = attributes;
        self
    }
}

struct Inner {
    tracer: BoxedTracer,
    config: Config,
    system: MessagingSystem,
    server_address: Option<StringValue>,
    server_port: Option<i64>,
    metrics: Option<Metrics>,
}

/// The per-client instrumentation: a tracer, the configuration and the broker's identity.
///
/// Broker crates create one per connection or client and clone it into every traced
/// producer and consumer; it is an `Arc` inside.
///
/// ```
/// use mqtrace::{Config, Instrumentation, MessagingSystem};
/// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "my-broker-crate")
///     .server("127.0.0.1", 5672)
///     .build(Config::new());
/// assert_eq!(inst.system(), MessagingSystem::RabbitMq);
/// ```
#[derive(Clone)]
pub struct Instrumentation {
    inner: Arc<Inner>,
}

impl fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumentation")
            .field("system", &self.inner.system)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Instrumentation`].
///
/// ```
/// let b = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").version("1.0");
/// let _ = b.build(mqtrace::Config::new());
/// ```
#[derive(Debug)]
pub struct InstrumentationBuilder {
    system: MessagingSystem,
    scope: &'static str,
    version: Option<&'static str>,
    server_address: Option<String>,
    server_port: Option<u16>,
}

impl InstrumentationBuilder {
    /// The instrumentation scope version (the broker crate's version).
    ///
    /// ```
    /// let _ = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").version("1.0");
    /// ```
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// `server.address` and `server.port` of the broker.
    ///
    /// ```
    /// let _ = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").server("k", 9092);
    /// ```
    pub fn server(mut self, address: impl Into<String>, port: u16) -> Self {
        self.server_address = Some(address.into());
        self.server_port = Some(port);
        self
    }

    /// Finishes with `config`.
    ///
    /// ```
    /// let _ = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
    /// ```
    pub fn build(self, config: Config) -> Instrumentation {
        let mut scope = InstrumentationScope::builder(self.scope)
            .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL);
        if let Some(v) = self.version {
            scope = scope.with_version(v);
        }
        let scope = scope.build();
        let tracer = config.tracer(scope.clone());
        let metrics = config.metrics().then(|| Metrics::new(&config.meter(scope)));
        Instrumentation {
            inner: Arc::new(Inner {
                tracer,
                metrics,
                config,
                system: self.system,
                server_address: self
                    .server_address
                    .map(|a| StringValue::from(Arc::<str>::from(a))),
                server_port: self.server_port.map(i64::from),
            }),
        }
    }
}

/// Formats a span name `{operation} {destination}`.
pub(crate) fn span_name(op: &str, destination: &str) -> Cow<'static, str> {
    let mut s = String::with_capacity(op.len() + 1 + destination.len());
    s.push_str(op);
    s.push(' ');
    s.push_str(destination);
    Cow::Owned(s)
}

impl Instrumentation {
    /// Starts building an instrumentation for `system`, under the instrumentation scope
    /// `scope` (normally the broker crate's name).
    ///
    /// ```
    /// let _ = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::GcpPubSub, "mqtrace-pubsub");
    /// ```
    pub fn builder(system: MessagingSystem, scope: &'static str) -> InstrumentationBuilder {
        InstrumentationBuilder {
            system,
            scope,
            version: None,
            server_address: None,
            server_port: None,
        }
    }

    /// The configuration.
    ///
    /// ```
    /// let i = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
    /// assert!(!i.config().body_size());
    /// ```
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The messaging system.
    ///
    /// ```
    /// let i = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
    /// assert_eq!(i.system().as_str(), "kafka");
    /// ```
    pub fn system(&self) -> MessagingSystem {
        self.inner.system
    }

    /// The tracer spans are started with.
    ///
    /// ```
    /// use opentelemetry::trace::Tracer;
    /// let i = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
    /// let _span = i.tracer().start("custom");
    /// ```
    pub fn tracer(&self) -> &BoxedTracer {
        &self.inner.tracer
    }

    pub(crate) fn metrics(&self) -> Option<&Metrics> {
        self.inner.metrics.as_ref()
    }

    pub(crate) fn common(&self) -> Common<'_> {
        Common {
            system: self.inner.system.as_str(),
            server_address: self.inner.server_address.as_ref(),
            server_port: self.inner.server_port,
        }
    }

    /// The attributes every span needs at creation (they may drive sampling decisions).
    pub(crate) fn creation_attributes(
        &self,
        op: Operation,
        destination: impl Into<StringValue>,
    ) -> Vec<KeyValue> {
        vec![
            KeyValue::new(attr::MESSAGING_SYSTEM, self.inner.system.as_str()),
            KeyValue::new(attr::MESSAGING_OPERATION_NAME, op.name()),
            KeyValue::new(attr::MESSAGING_OPERATION_TYPE, op.kind().as_str()),
            KeyValue::new(
                attr::MESSAGING_DESTINATION_NAME,
                Value::String(destination.into()),
            ),
        ]
    }

    /// [`Self::creation_attributes`] and the broker's own creation-time attributes.
    pub(crate) fn creation_attributes_with(
        &self,
        op: Operation,
        destination: impl Into<StringValue>,
        extra: &[KeyValue],
    ) -> Vec<KeyValue> {
        let mut kv = self.creation_attributes(op, destination);
        if !extra.is_empty() {
            kv.extend_from_slice(extra);
        }
        kv
    }

    /// Attributes recorded only on sampled spans.
    pub(crate) fn common_attributes(
        &self,
        span: &mut dyn crate::config::SpanSink,
        message_id: Option<&str>,
        conversation_id: Option<&str>,
        body_size: Option<usize>,
    ) {
        if let Some(a) = &self.inner.server_address {
            span.put(KeyValue::new(
                attr::SERVER_ADDRESS,
                Value::String(a.clone()),
            ));
        }
        if let Some(p) = self.inner.server_port {
            span.put(KeyValue::new(attr::SERVER_PORT, p));
        }
        if let Some(id) = message_id {
            span.put(KeyValue::new(attr::MESSAGING_MESSAGE_ID, id.to_owned()));
        }
        if let Some(id) = conversation_id {
            span.put(KeyValue::new(
                attr::MESSAGING_MESSAGE_CONVERSATION_ID,
                id.to_owned(),
            ));
        }
        if let (true, Some(n)) = (self.inner.config.body_size(), body_size) {
            span.put(KeyValue::new(
                attr::MESSAGING_MESSAGE_BODY_SIZE,
                i64::try_from(n).unwrap_or(i64::MAX),
            ));
        }
    }

    /// Starts the PRODUCER span of one outgoing message and writes its context into
    /// `headers`. The parent is the current context.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use mqtrace::*;
    /// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// let mut headers: HashMap<String, String> = HashMap::new();
    /// let span = inst.start_send(Outgoing::new(Operation::new("publish", OperationType::Send), "orders"), &mut headers);
    /// span.end_ok();
    /// ```
    pub fn start_send(&self, msg: Outgoing<'_>, headers: &mut dyn Injector) -> SendSpan {
        // The clock is read only when a duration will be recorded.
        let start = self.inner.metrics.is_some().then(Instant::now);
        let parent = Context::current();
        let destination: Arc<str> = Arc::from(msg.destination);
        let builder = SpanBuilder::from_name(span_name(msg.operation.name(), msg.destination))
            .with_kind(msg.operation.kind().span_kind())
            .with_attributes(self.creation_attributes_with(
                msg.operation,
                destination.clone(),
                msg.attributes,
            ));
        let mut span = self.inner.tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            self.common_attributes(
                &mut span,
                msg.message_id,
                msg.conversation_id,
                msg.body_size,
            );
            let info = SpanInfo {
                operation: msg.operation,
                destination: msg.destination,
                headers: msg.headers,
            };
            self.inner.config.apply_hook(&mut span, &info);
        }
        self.inner
            .config
            .propagation()
            .inject(span.span_context(), &parent, headers);
        let measure = start.map(|start| {
            (
                self.clone(),
                Measure {
                    op: msg.operation,
                    destination,
                    start,
                },
            )
        });
        SendSpan::new(span, measure)
    }

    /// Reads the creation context from a message's headers.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// let inst = mqtrace::Instrumentation::builder(mqtrace::MessagingSystem::RabbitMq, "doc").build(Default::default());
    /// let x = inst.extract(&HashMap::<String, String>::new());
    /// assert!(!x.span_context().is_valid());
    /// ```
    pub fn extract(&self, headers: &dyn HeaderExtractor) -> Extracted {
        self.inner.config.propagation().extract(headers)
    }

    /// Starts the CONSUMER process span of one delivered message, choosing its parent and
    /// links per the configured policy. The span ends when it is settled or dropped.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use mqtrace::*;
    /// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// let headers: HashMap<String, String> = HashMap::new();
    /// let x = inst.extract(&headers);
    /// let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders"), x);
    /// span.finish(Outcome::Ack);
    /// ```
    pub fn start_process(&self, msg: Incoming<'_>, extracted: Extracted) -> ProcessSpan {
        let start = self.inner.metrics.is_some().then(Instant::now);
        let duplicate = extracted.duplicate_traceparent();
        let (creation, issues) = extracted.into_parts();
        let ambient = Context::current();
        let has_ambient = ambient.span().span_context().is_valid();
        let creation_sc = creation.span().span_context().clone();
        let has_creation = creation_sc.is_valid();
        let trusted = self.inner.config.trust().is_trusted(msg.source);

        let mut links = Vec::new();
        // Where the message first came from: the origin header of a retried message, or its
        // own creation context on a first delivery.
        let mut origin = has_creation.then(|| creation_sc.clone());
        let mut dead_letter_reason = None;
        if let Some(h) = msg.headers {
            let history = crate::retry::history(h);
            dead_letter_reason = history.dead_letter_reason;
            if let Some(o) = history.origin {
                origin = Some(o.clone());
                links.push(Link::new(
                    o,
                    vec![KeyValue::new(attr::LINK_TYPE, "origin")],
                    0,
                ));
            }
            if let Some(p) = history.previous_attempt {
                links.push(Link::new(
                    p,
                    vec![KeyValue::new(attr::LINK_TYPE, "previous_attempt")],
                    0,
                ));
            }
        }
        if has_creation {
            links.insert(0, Link::with_context(creation_sc));
        }
        let use_creation = has_creation
            && trusted
            && match self.inner.config.parent_policy() {
                ParentPolicy::CreationContext => !has_ambient,
                ParentPolicy::CreationContextOverAmbient => true,
                ParentPolicy::AlwaysLink => false,
            };
        let parent = if use_creation {
            if has_ambient {
                links.push(Link::with_context(ambient.span().span_context().clone()));
            }
            creation
        } else if trusted && !creation.baggage().is_empty() && ambient.baggage().is_empty() {
            // Not the parent, but a trusted producer's baggage still flows to the handler.
            ambient.with_baggage(
                creation
                    .baggage()
                    .iter()
                    .map(|(k, (v, m))| {
                        opentelemetry::baggage::KeyValueMetadata::new(
                            k.clone(),
                            v.clone(),
                            m.clone(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        } else {
            ambient
        };

        let destination: Arc<str> = Arc::from(msg.destination);
        let builder = SpanBuilder::from_name(span_name(msg.operation.name(), msg.destination))
            .with_kind(msg.operation.kind().span_kind())
            .with_attributes(self.creation_attributes_with(
                msg.operation,
                destination.clone(),
                msg.attributes,
            ))
            .with_links(links);
        let mut span = self.inner.tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            self.common_attributes(
                &mut span,
                msg.message_id,
                msg.conversation_id,
                msg.body_size,
            );
            if let Some(a) = msg.attempt {
                span.set_attribute(KeyValue::new(attr::DELIVERY_ATTEMPT, i64::from(a)));
            }
            if !trusted {
                span.set_attribute(KeyValue::new(attr::CONTEXT_UNTRUSTED, true));
            }
            if duplicate {
                span.set_attribute(KeyValue::new(attr::CONTEXT_DUPLICATE, true));
            }
            if let Some(reason) = dead_letter_reason {
                span.set_attribute(KeyValue::new(attr::DEAD_LETTER_REASON, reason));
            }
            if !issues.is_empty() {
                let text = issues
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                span.set_attribute(KeyValue::new(attr::CONTEXT_ERROR, text));
            }
            let info = SpanInfo {
                operation: msg.operation,
                destination: msg.destination,
                headers: msg.headers,
            };
            self.inner.config.apply_hook(&mut span, &info);
        }
        let measure = start.map(|start| Measure {
            op: msg.operation,
            destination: destination.clone(),
            start,
        });
        if let (Some(m), Some(metrics)) = (&measure, &self.inner.metrics) {
            m.consumed(metrics, &self.common());
        }
        ProcessSpan::new(
            self.clone(),
            parent.with_span(span),
            destination,
            measure,
            msg.attempt,
            origin,
        )
    }

    /// Starts a CLIENT settle span, child of `parent`.
    pub(crate) fn start_settle(
        &self,
        op: Operation,
        destination: &Arc<str>,
        parent: &Context,
    ) -> opentelemetry::global::BoxedSpan {
        debug_assert_eq!(op.kind(), OperationType::Settle);
        let builder = SpanBuilder::from_name(span_name(op.name(), destination))
            .with_kind(op.kind().span_kind())
            .with_attributes(self.creation_attributes(op, destination.clone()));
        let mut span = self.inner.tracer.build_with_context(builder, parent);
        if span.is_recording() {
            self.common_attributes(&mut span, None, None, None);
            let info = SpanInfo {
                operation: op,
                destination,
                headers: None,
            };
            self.inner.config.apply_hook(&mut span, &info);
        }
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{Outcome, ParentPolicy};
    use opentelemetry::trace::TracerProvider;
    use std::collections::HashMap;

    const SEND: Operation = Operation::new("send", OperationType::Send);
    const PROCESS: Operation = Operation::new("process", OperationType::Process);

    fn round_trip(policy: ParentPolicy, ambient: bool) -> crate::testing::Spans {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test")
            .build(t.config().with_parent_policy(policy));
        let mut headers: HashMap<String, String> = HashMap::new();
        inst.start_send(Outgoing::new(SEND, "t"), &mut headers)
            .end_ok();
        let tracer = t.provider().tracer("app");
        let outer = tracer.start("ambient");
        let cx = Context::current_with_span(outer);
        let _guard = ambient.then(|| cx.clone().attach());
        inst.start_process(Incoming::new(PROCESS, "t", "t"), inst.extract(&headers))
            .finish(Outcome::Ack);
        drop(_guard);
        cx.span().end();
        t.spans()
    }

    #[test]
    fn creation_context_over_ambient_parents_to_the_message_and_links_both() {
        let spans = round_trip(ParentPolicy::CreationContextOverAmbient, true);
        let (send, process, ambient) = (
            spans.one("send t"),
            spans.one("process t"),
            spans.one("ambient"),
        );
        process.assert_child_of(send);
        process.assert_links_to(&send.span_context);
        process.assert_links_to(&ambient.span_context);
    }

    #[test]
    fn default_policy_without_ambient_parents_to_the_message() {
        let spans = round_trip(ParentPolicy::CreationContext, false);
        let (send, process) = (spans.one("send t"), spans.one("process t"));
        process.assert_child_of(send);
        process.assert_links_to(&send.span_context);
        assert_eq!(process.links.links.len(), 1);
    }
}
