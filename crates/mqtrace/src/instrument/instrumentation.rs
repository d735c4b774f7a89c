//! The engine broker crates drive: it starts producer and consumer spans with the conventions'
//! names, kinds and attributes, applies the parent-or-link and trust policies, and injects and
//! extracts context through the configured propagation.

use crate::attributes as attr;
use crate::carrier::{HeaderExtractor, Injector};
use crate::config::{Config, ConfiguredTracer, SpanInfo};
use crate::instrument::{DestinationKind, Incoming, Outgoing};
use crate::metrics::{Common, Metrics};
use crate::operation::{MessagingSystem, Operation, OperationType};
use crate::propagation::Extracted;
use crate::span::{ProcessSpan, Receive, SendSpan};
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanBuilder, SpanContext, Tracer};
use opentelemetry::{Context, InstrumentationScope, KeyValue, StringValue, Value};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

struct Inner {
    tracer: ConfiguredTracer,
    config: Config,
    system: MessagingSystem,
    server_address: Option<StringValue>,
    server_port: Option<i64>,
    /// What every span starts with, so samplers see it: `server.address`, `server.port`.
    start_attributes: Vec<KeyValue>,
    /// What every sampled span records about the client (`messaging.client.id`,
    /// `network.peer.*`, ...), set before the span is shared, never on unsampled spans.
    client_attributes: Vec<KeyValue>,
    /// Client attributes the broker reports later (see [`Instrumentation::learn`]).
    learned: std::sync::OnceLock<Vec<KeyValue>>,
    /// How many more times [`Instrumentation::learn`] asks.
    learn_tries: std::sync::atomic::AtomicU32,
    metrics: Option<Metrics>,
    declared: Declared,
}

/// How many spans [`Instrumentation::learn`] asks about before it gives up (a broker that
/// never reports what is asked).
const LEARN_TRIES: u32 = 1024;

/// Destinations declared temporary or anonymous through a traced client (bounded: the oldest
/// are forgotten first, so an application declaring a reply queue per request cannot grow it
/// without end).
#[derive(Default)]
struct Declared {
    /// Whether anything was ever declared: the look-up on every message skips the lock until then.
    any: std::sync::atomic::AtomicBool,
    map: std::sync::RwLock<DeclaredMap>,
}

/// The declared kinds by name, and the names in declaration order (oldest first).
type DeclaredMap = (
    std::collections::HashMap<Box<str>, DestinationKind>,
    std::collections::VecDeque<Box<str>>,
);

/// How many declared destinations an instrumentation remembers.
const DECLARED_MAX: usize = 4096;

/// The per-client instrumentation: a tracer, the configuration and the broker's identity.
///
/// Broker crates create one per connection or client and clone it into every traced
/// producer and consumer; it is an `Arc` inside.
///
/// ```
/// use mqtrace::{Config, instrument::{Instrumentation, MessagingSystem}};
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
/// let b = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").version("1.0");
/// let _ = b.build(mqtrace::Config::new());
/// ```
#[derive(Debug)]
pub struct InstrumentationBuilder {
    system: MessagingSystem,
    scope: &'static str,
    version: Option<&'static str>,
    server_address: Option<String>,
    server_port: Option<u16>,
    client_attributes: Vec<KeyValue>,
}

impl InstrumentationBuilder {
    /// The instrumentation scope version (the broker crate's version).
    ///
    /// ```
    /// let _ = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").version("1.0");
    /// ```
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// `server.address` and `server.port` of the broker.
    ///
    /// ```
    /// let _ = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").server("k", 9092);
    /// ```
    pub fn server(mut self, address: impl Into<String>, port: u16) -> Self {
        self.server_address = Some(address.into());
        self.server_port = Some(port);
        self
    }

    /// `messaging.client.id`: the identity of this client instance (see [`unique_client_id`]
    /// for one to use when the client has none of its own).
    ///
    /// ```
    /// let _ = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").client_id("billing-1");
    /// ```
    pub fn client_id(self, id: impl Into<String>) -> Self {
        self.attribute(KeyValue::new(attr::MESSAGING_CLIENT_ID, id.into()))
    }

    /// `network.peer.address` and `network.peer.port`: the broker node this client talks to.
    ///
    /// ```
    /// let _ = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::RabbitMq, "x").peer("10.0.0.7", 5672);
    /// ```
    pub fn peer(self, address: impl Into<String>, port: u16) -> Self {
        self.attribute(KeyValue::new(attr::NETWORK_PEER_ADDRESS, address.into()))
            .attribute(KeyValue::new(attr::NETWORK_PEER_PORT, i64::from(port)))
    }

    /// Any other attribute of the client, recorded on every sampled span (not given to
    /// samplers: `server.*` and the message's own attributes are).
    ///
    /// ```
    /// let kv = opentelemetry::KeyValue::new("messaging.kafka.cluster.id", "abc");
    /// let _ = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").attribute(kv);
    /// ```
    pub fn attribute(mut self, kv: KeyValue) -> Self {
        self.client_attributes.retain(|k| k.key != kv.key);
        self.client_attributes.push(kv);
        self
    }

    /// Finishes with `config`.
    ///
    /// ```
    /// let _ = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
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
        let server_address = self
            .server_address
            .map(|a| StringValue::from(Arc::<str>::from(a)));
        let server_port = self.server_port.map(i64::from);
        let mut start_attributes = Vec::with_capacity(2);
        if let Some(a) = &server_address {
            start_attributes.push(KeyValue::new(attr::SERVER_ADDRESS, a.clone()));
        }
        if let Some(p) = server_port {
            start_attributes.push(KeyValue::new(attr::SERVER_PORT, p));
        }
        Instrumentation {
            inner: Arc::new(Inner {
                tracer,
                metrics,
                config,
                declared: Declared::default(),
                system: self.system,
                server_address,
                server_port,
                start_attributes,
                client_attributes: self.client_attributes.into_iter().map(shared).collect(),
                learned: std::sync::OnceLock::new(),
                learn_tries: std::sync::atomic::AtomicU32::new(LEARN_TRIES),
            }),
        }
    }
}

/// A `messaging.client.id` unique to one client instance, for clients that have no identity
/// of their own: `{prefix}-{process}-{n}`, where `process` is random per process (8 hex
/// digits) and `n` counts the ids this process made.
///
/// ```
/// let a = mqtrace::instrument::unique_client_id("lapin");
/// let b = mqtrace::instrument::unique_client_id("lapin");
/// assert!(a.starts_with("lapin-") && a != b);
/// ```
pub fn unique_client_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROCESS: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let process = *PROCESS.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        #[allow(clippy::cast_possible_truncation)]
        let token = h.finish() as u32;
        token
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{process:08x}-{n}")
}

/// Formats a span name `{operation} {destination}`.
/// The span name for a destination of `kind`: `{operation} {destination}` for a named
/// destination, the operation alone for a temporary or anonymous one (the conventions keep
/// such names, which are not low-cardinality, out of span names).
pub(crate) fn span_name_for(
    op: &'static str,
    destination: &str,
    kind: DestinationKind,
) -> Cow<'static, str> {
    if kind.is_named() {
        span_name(op, destination)
    } else {
        Cow::Borrowed(op)
    }
}

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
    /// let _ = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::GcpPubSub, "mqtrace-pubsub");
    /// ```
    pub fn builder(system: MessagingSystem, scope: &'static str) -> InstrumentationBuilder {
        InstrumentationBuilder {
            system,
            scope,
            version: None,
            server_address: None,
            server_port: None,
            client_attributes: Vec::new(),
        }
    }

    /// The configuration.
    ///
    /// ```
    /// let i = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
    /// assert!(!i.config().body_size());
    /// ```
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the history headers a message from `source` carries (`mqtrace-attempt`,
    /// `-previous-attempt`, `-origin`, `-dead-letter-reason`, `-not-before`) may be believed:
    /// when the [`Trust`](crate::Trust) policy trusts `source`, or when `source` is a retry or
    /// dead-letter source mqtrace's retry types declared
    /// ([`declare_source`](crate::retry::declare_source)). The broker crates read a carried
    /// attempt only when this holds; elsewhere a forged one is refused and recorded.
    ///
    /// ```
    /// use mqtrace::{Config, Trust, MessagingSystem, instrument::Instrumentation};
    /// let i = Instrumentation::builder(MessagingSystem::Kafka, "x")
    ///     .build(Config::new().with_trust(Trust::untrusted_sources(["feed", "feed.retry.2"])));
    /// assert!(!i.believes_history("feed") && i.believes_history("orders"));
    /// mqtrace::retry::declare_source("feed.retry.2");
    /// assert!(i.believes_history("feed.retry.2"));
    /// ```
    pub fn believes_history(&self, source: &str) -> bool {
        self.inner.config.trust().is_trusted(source) || crate::retry::is_declared_source(source)
    }

    /// The messaging system.
    ///
    /// ```
    /// let i = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
    /// assert_eq!(i.system().as_str(), "kafka");
    /// ```
    pub fn system(&self) -> MessagingSystem {
        self.inner.system
    }

    /// The tracer spans are started with.
    ///
    /// ```
    /// use opentelemetry::trace::Tracer;
    /// let i = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
    /// let _span = i.tracer().start("custom");
    /// ```
    pub fn tracer(&self) -> &ConfiguredTracer {
        &self.inner.tracer
    }

    /// Client attributes the broker reports only once connected (e.g. Kafka's
    /// `messaging.kafka.cluster.id`, in its metadata): until they are known, `ask` is called
    /// (call `learn` before starting a span); the first `Some` is recorded on every sampled
    /// span from then on. After 1024 answers of `None` it is no longer called.
    ///
    /// ```
    /// let i = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::Kafka, "x").build(Default::default());
    /// i.learn(|| Some(vec![opentelemetry::KeyValue::new("messaging.kafka.cluster.id", "c1")]));
    /// i.learn(|| unreachable!("known already"));
    /// ```
    pub fn learn(&self, ask: impl FnOnce() -> Option<Vec<KeyValue>>) {
        use std::sync::atomic::Ordering;
        if self.inner.learned.get().is_some() {
            return;
        }
        let tries = &self.inner.learn_tries;
        if tries.load(Ordering::Relaxed) == 0 {
            return;
        }
        match ask() {
            Some(kv) => {
                let _ = self.inner.learned.set(kv.into_iter().map(shared).collect());
            }
            None => {
                let _ =
                    tries.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
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

    /// The attributes a span starts with, so samplers see them: system, operation,
    /// destination (when there is one), `server.*`, then the message's own `extra`
    /// (partition, consumer group, subscription...); room for `more` after them.
    pub(crate) fn creation_attributes_with(
        &self,
        op: Operation,
        destination: Option<StringValue>,
        extra: &[KeyValue],
        more: usize,
    ) -> Vec<KeyValue> {
        // Room for what a sampled span records after it starts (the client's attributes, message
        // id, conversation id, body size, then `more`): the SDK keeps this vector as the span's
        // attribute list, so nothing regrows it.
        let mut kv = Vec::with_capacity(
            4 + self.inner.start_attributes.len()
                + extra.len()
                + self.inner.client_attributes.len()
                + 3
                + more,
        );
        kv.push(KeyValue::new(
            attr::MESSAGING_SYSTEM,
            self.inner.system.as_str(),
        ));
        kv.push(KeyValue::new(attr::MESSAGING_OPERATION_NAME, op.name()));
        kv.push(KeyValue::new(
            attr::MESSAGING_OPERATION_TYPE,
            op.kind().as_str(),
        ));
        if let Some(d) = destination {
            kv.push(KeyValue::new(
                attr::MESSAGING_DESTINATION_NAME,
                Value::String(d),
            ));
        }
        kv.extend_from_slice(&self.inner.start_attributes);
        kv.extend_from_slice(extra);
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
        for kv in &self.inner.client_attributes {
            span.put(kv.clone());
        }
        for kv in self.inner.learned.get().into_iter().flatten() {
            span.put(kv.clone());
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

    /// Starts a span from `builder` under `parent`: the one place where a span mqtrace starts
    /// gets the attributes of sampled spans (the client's, message id, conversation id, body
    /// size), then `extra` (also only when recording), then the user's attribute hook. All of
    /// them are set on the span before anyone else holds it (no lock is taken), and none is
    /// built for a span that is not recording. What samplers need is in `builder` already.
    pub(crate) fn start_span(
        &self,
        builder: SpanBuilder,
        parent: &Context,
        facts: &SpanFacts<'_>,
        extra: impl FnOnce(&mut BoxedSpan),
    ) -> BoxedSpan {
        let mut span = self.inner.tracer.build_with_context(builder, parent);
        if span.is_recording() {
            self.common_attributes(
                &mut span,
                facts.message_id,
                facts.conversation_id,
                facts.body_size,
            );
            extra(&mut span);
            let info = SpanInfo {
                operation: facts.operation,
                destination: facts.destination,
                headers: facts.headers,
            };
            self.inner.config.apply_hook(&mut span, &info);
        }
        span
    }

    /// Starts the PRODUCER span of one outgoing message and writes its context into
    /// `headers`. The parent is the current context.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use mqtrace::instrument::*;
    /// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(mqtrace::Config::new());
    /// let mut headers: HashMap<String, String> = HashMap::new();
    /// let span = inst.start_send(Outgoing::new(Operation::new("publish", OperationType::Send), "orders"), &mut headers);
    /// assert!(!headers.contains_key("traceparent")); // no tracer provider installed here
    /// span.end_ok();
    /// ```
    pub fn start_send(&self, msg: Outgoing<'_>, headers: &mut dyn Injector) -> SendSpan {
        crate::span::send::start(self, msg, headers)
    }

    /// Records that `name` was declared through a traced client as a temporary or anonymous
    /// destination (e.g. RabbitMQ's `queue_declare` with an empty name, `exclusive` or
    /// `auto_delete`), so that the spans and metrics of its messages treat it as such
    /// ([`DestinationKind`]). A named kind forgets the name. At most 4096 names are kept (the
    /// oldest go first).
    ///
    /// ```
    /// use mqtrace::instrument::*;
    /// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(mqtrace::Config::new());
    /// inst.declare_destination("replies-7", DestinationKind::NAMED.with_temporary(true));
    /// assert!(inst.declared_kind("replies-7").is_temporary());
    /// assert!(inst.declared_kind("orders").is_named());
    /// ```
    pub fn declare_destination(&self, name: &str, kind: DestinationKind) {
        use std::sync::atomic::Ordering;
        let d = &self.inner.declared;
        let mut guard = match d.map.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (map, order) = &mut *guard;
        if kind.is_named() {
            if map.remove(name).is_some() {
                order.retain(|n| &**n != name);
            }
            return;
        }
        if map.insert(Box::from(name), kind).is_none() {
            order.push_back(Box::from(name));
            if order.len() > DECLARED_MAX
                && let Some(old) = order.pop_front()
            {
                map.remove(&old);
            }
        }
        d.any.store(true, Ordering::Release);
    }

    /// The kind `name` was declared with ([`Self::declare_destination`]), or
    /// [`DestinationKind::NAMED`].
    ///
    /// ```
    /// use mqtrace::instrument::*;
    /// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(mqtrace::Config::new());
    /// assert!(inst.declared_kind("orders").is_named());
    /// ```
    pub fn declared_kind(&self, name: &str) -> DestinationKind {
        use std::sync::atomic::Ordering;
        let d = &self.inner.declared;
        if !d.any.load(Ordering::Acquire) {
            return DestinationKind::NAMED;
        }
        let guard = match d.map.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.0.get(name).copied().unwrap_or_default()
    }

    /// Reads the creation context already on an outgoing message, from its headers as the
    /// user gave them (before any removal or injection), and decides per
    /// [`crate::ExistingContext`] what [`Self::start_send`] does with it: pass the result
    /// with [`Outgoing::with_existing_context`]. When [`ExistingOnMessage::keeps`] is `false`
    /// the broker crate removes every context field from the headers first.
    ///
    /// [`ExistingOnMessage::keeps`]: crate::instrument::ExistingOnMessage::keeps
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use mqtrace::{*, instrument::*};
    /// let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc")
    ///     .build(Config::new().with_existing_context(ExistingContext::Replace));
    /// let forwarded: HashMap<String, String> = [(
    ///     "traceparent".to_owned(),
    ///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
    /// )].into();
    /// let existing = inst.existing_context(&forwarded);
    /// assert!(!existing.keeps()); // replaced: the old fields go, the send span links them
    /// ```
    pub fn existing_context(&self, before: &dyn HeaderExtractor) -> crate::span::ExistingOnMessage {
        crate::span::send::existing(self, before)
    }

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
    /// use mqtrace::instrument::*;
    /// let inst = Instrumentation::builder(MessagingSystem::GcpPubSub, "doc").build(mqtrace::Config::new());
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
        crate::span::send::start_batch(self, operation, destination, created)
    }

    /// Reads the creation context from a message's headers.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// let inst = mqtrace::instrument::Instrumentation::builder(mqtrace::MessagingSystem::RabbitMq, "doc").build(Default::default());
    /// let x = inst.extract(&HashMap::<String, String>::new());
    /// assert!(!x.span_context().is_valid());
    /// ```
    pub fn extract(&self, headers: &dyn HeaderExtractor) -> Extracted {
        self.inner.config.propagation().extract(headers)
    }

    /// Records the CLIENT receive span of a poll that returned a batch: it starts at
    /// [`Receive::new`]'s `started`, ends now, is a child of the current context, records
    /// `messaging.batch.message_count` (one per item of `creation`) and links every valid
    /// creation context in `creation`. Returns the receive span's context.
    ///
    /// It is not made current: each message's process span is still the child of its own
    /// creation context (see [`crate::ParentPolicy`]).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use mqtrace::{Outcome, instrument::*};
    /// let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(mqtrace::Config::new());
    /// let started = std::time::SystemTime::now();
    /// let batch: Vec<HashMap<String, String>> = vec![HashMap::new(), HashMap::new()]; // polled
    /// let contexts: Vec<Extracted> = batch.iter().map(|h| inst.extract(h)).collect();
    /// let receive = Receive::new(Operation::new("poll", OperationType::Receive), started)
    ///     .with_destination(Some("orders"));
    /// let span_context = inst.record_receive(receive, contexts.iter().map(Extracted::span_context));
    /// assert!(!span_context.is_valid()); // no tracer provider installed here
    /// for x in contexts {
    ///     let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders"), x);
    ///     span.finish(Outcome::Ack);
    /// }
    /// ```
    pub fn record_receive<'c>(
        &self,
        receive: Receive<'_>,
        creation: impl IntoIterator<Item = &'c SpanContext>,
    ) -> SpanContext {
        crate::span::receive::record(self, receive, creation)
    }

    /// Starts the CONSUMER process span of one delivered message, choosing its parent and
    /// links per the configured [`crate::ParentPolicy`]. The span ends when it is settled or
    /// dropped.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use mqtrace::{Outcome, instrument::*};
    /// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(mqtrace::Config::new());
    /// let headers: HashMap<String, String> = HashMap::new();
    /// let x = inst.extract(&headers);
    /// let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders"), x);
    /// assert!(!span.span_context().is_valid()); // no tracer provider installed here
    /// span.finish(Outcome::Ack);
    /// ```
    pub fn start_process(&self, msg: Incoming<'_>, extracted: Extracted) -> ProcessSpan {
        crate::span::process::start(self, msg, extracted)
    }

    /// Starts a CLIENT settle span, child of `parent`: it starts with the message's
    /// `start` attributes (what its process span started with: partition, consumer group,
    /// subscription) and records `recorded` (delivery tag, offset, delivery attempt..., then
    /// the settle's own such as the batch size) when sampled.
    pub(crate) fn start_settle<'r>(
        &self,
        op: Operation,
        destination: &Arc<str>,
        kind: DestinationKind,
        parent: &Context,
        start: &[KeyValue],
        recorded: impl Iterator<Item = &'r KeyValue>,
    ) -> BoxedSpan {
        debug_assert_eq!(op.kind(), OperationType::Settle);
        let mut attributes = self.creation_attributes_with(
            op,
            Some(StringValue::from(destination.clone())),
            start,
            2,
        );
        attributes.extend(kind.attributes());
        let builder = SpanBuilder::from_name(span_name_for(op.name(), destination, kind))
            .with_kind(op.kind().span_kind())
            .with_attributes(attributes);
        self.start_span(builder, parent, &SpanFacts::new(op, destination), |span| {
            let mut recorded = recorded.peekable();
            if recorded.peek().is_some() {
                span.set_attributes(recorded.cloned());
            }
        })
    }
}

/// `kv` with a string value held behind an `Arc`: the client's attributes are cloned onto
/// every sampled span, and cloning an owned string would allocate each time.
fn shared(kv: KeyValue) -> KeyValue {
    match kv.value {
        Value::String(s) => KeyValue::new(
            kv.key,
            Value::String(StringValue::from(Arc::<str>::from(s.as_str()))),
        ),
        value => KeyValue::new(kv.key, value),
    }
}

/// What [`Instrumentation::start_span`] records on a sampled span besides the builder's
/// attributes, and what the attribute hook is shown.
#[derive(Clone, Copy)]
pub(crate) struct SpanFacts<'a> {
    pub(crate) operation: Operation,
    pub(crate) destination: &'a str,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body_size: Option<usize>,
    pub(crate) headers: Option<&'a dyn HeaderExtractor>,
}

impl<'a> SpanFacts<'a> {
    pub(crate) fn new(operation: Operation, destination: &'a str) -> Self {
        Self {
            operation,
            destination,
            message_id: None,
            conversation_id: None,
            body_size: None,
            headers: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{Outcome, ParentPolicy, Trust};
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use std::collections::HashMap;

    const SEND: Operation = Operation::new("send", OperationType::Send);
    const PROCESS: Operation = Operation::new("process", OperationType::Process);

    /// A message sent, then processed with or without an ambient span under `config`.
    fn round_trip(config: impl Fn(Config) -> Config, ambient: bool) -> crate::testing::Spans {
        let t = TestTelemetry::new();
        let inst =
            Instrumentation::builder(MessagingSystem::Kafka, "test").build(config(t.config()));
        let mut headers: HashMap<String, String> = HashMap::new();
        inst.start_send(Outgoing::new(SEND, "t"), &mut headers)
            .end_ok();
        let tracer = t.provider().tracer("app");
        let cx = Context::new().with_span(tracer.start("ambient"));
        let guard = ambient.then(|| cx.clone().attach());
        inst.start_process(Incoming::new(PROCESS, "t", "t"), inst.extract(&headers))
            .finish(Outcome::Ack);
        drop(guard);
        cx.span().end();
        t.spans()
    }

    fn link_type(span: &opentelemetry_sdk::trace::SpanData, to: &SpanContext) -> Option<String> {
        span.links
            .iter()
            .find(|l| {
                l.span_context.span_id() == to.span_id()
                    && l.span_context.trace_id() == to.trace_id()
            })
            .map(|l| {
                l.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == crate::attributes::LINK_TYPE)
                    .map_or_else(String::new, |kv| kv.value.to_string())
            })
    }

    #[test]
    fn default_policy_inside_an_ambient_span_parents_to_the_message_and_links_the_ambient_span() {
        let spans = round_trip(|c| c, true);
        let (send, process, ambient) = (
            spans.one("send t"),
            spans.one("process t"),
            spans.one("ambient"),
        );
        process.assert_child_of(send);
        assert_eq!(
            process.span_context.trace_id(),
            send.span_context.trace_id()
        );
        assert_eq!(link_type(process, &send.span_context).as_deref(), Some(""));
        assert_eq!(
            link_type(process, &ambient.span_context).as_deref(),
            Some("ambient")
        );
        assert_eq!(process.links.links.len(), 2);
    }

    #[test]
    fn default_policy_without_ambient_parents_to_the_message() {
        let spans = round_trip(|c| c, false);
        let (send, process) = (spans.one("send t"), spans.one("process t"));
        process.assert_child_of(send);
        process.assert_links_to(&send.span_context);
        assert_eq!(process.links.links.len(), 1);
    }

    #[test]
    fn ambient_span_policy_parents_to_the_loop_span_and_links_the_message() {
        let spans = round_trip(|c| c.with_parent_policy(ParentPolicy::AmbientSpan), true);
        let (send, process, ambient) = (
            spans.one("send t"),
            spans.one("process t"),
            spans.one("ambient"),
        );
        process.assert_child_of(ambient);
        process.assert_links_to(&send.span_context);
        assert_eq!(process.links.links.len(), 1);
    }

    #[test]
    fn always_link_makes_a_new_root_linked_to_the_message() {
        let spans = round_trip(|c| c.with_parent_policy(ParentPolicy::AlwaysLink), false);
        let (send, process) = (spans.one("send t"), spans.one("process t"));
        process.assert_root();
        assert_ne!(
            process.span_context.trace_id(),
            send.span_context.trace_id()
        );
        process.assert_links_to(&send.span_context);
    }

    #[test]
    fn an_untrusted_source_is_only_linked_even_by_default() {
        let spans = round_trip(|c| c.with_trust(Trust::untrusted_sources(["t"])), false);
        let (send, process) = (spans.one("send t"), spans.one("process t"));
        process.assert_root();
        process.assert_links_to(&send.span_context);
        assert!(
            process
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == crate::attributes::CONTEXT_UNTRUSTED)
        );
    }
}
