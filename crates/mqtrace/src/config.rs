//! What a user can configure: tracer provider, propagation, parent-or-link policy, trust,
//! capture options and an attribute hook.

use crate::carrier::HeaderExtractor;
use crate::operation::Operation;
use crate::propagation::Propagation;
use opentelemetry::global::{self, BoxedSpan, BoxedTracer};
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::trace::{Span, SpanBuilder, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// How a process span relates to the message's creation context and to an ambient span
/// (a span active where the message is handled, e.g. a worker loop under
/// `#[tracing::instrument]` or an OpenTelemetry span around the loop).
///
/// | policy | parent | links |
/// | --- | --- | --- |
/// | [`CreationContext`](Self::CreationContext) (default) | the creation context | the creation context; the ambient span (`mqtrace.link.type = ambient`) |
/// | [`AmbientSpan`](Self::AmbientSpan) | the ambient span; the creation context when none is active | the creation context |
/// | [`AlwaysLink`](Self::AlwaysLink) | the ambient span, or a new root | the creation context |
///
/// Whatever the policy, a message from an untrusted source ([`Trust`]) is only linked.
///
/// ```
/// use mqtrace::{Config, ParentPolicy};
/// let config = Config::new().with_parent_policy(ParentPolicy::AlwaysLink);
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParentPolicy {
    /// The creation context is the parent and also a link, so one trace runs through the
    /// pipeline, even when an ambient span is active: that span is linked instead. What
    /// Java's agent and Python's, Node's and Go's messaging instrumentations do. The default.
    #[default]
    CreationContext,
    /// The ambient span, when one is active, is the parent and the creation context is only
    /// linked (every message handled in a loop span lands in that loop's trace); without an
    /// ambient span, as [`CreationContext`](Self::CreationContext).
    AmbientSpan,
    /// The creation context is only linked; the process span is a child of the ambient span
    /// or a new root (the messaging conventions' default).
    AlwaysLink,
}

/// What a traced publish does with a creation context the outgoing message already carries:
/// a handler that forwards the received message's headers, or an application that injected a
/// context of its own. Either way the three W3C fields (`traceparent`, `tracestate`,
/// `baggage`; whatever the configured propagator writes) are handled together, never mixed.
///
/// ```
/// use mqtrace::{Config, ExistingContext};
/// let config = Config::new().with_existing_context(ExistingContext::Replace);
/// assert_eq!(config.existing_context(), ExistingContext::Replace);
/// assert_eq!(Config::new().existing_context(), ExistingContext::Keep);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExistingContext {
    /// The message's context is sent unchanged (all of its fields, byte for byte), as the
    /// messaging conventions ask of a custom creation context. The send span is a CLIENT span
    /// (the conventions' "send span (client)": a creation context exists already), a child of
    /// the current context, linking the kept context. A relay stage that forwards the headers
    /// thus keeps one trace through the pipeline: the next consumer continues the original
    /// producer's context. The default.
    #[default]
    Keep,
    /// The message's context fields are all removed and this send span's context written
    /// instead (PRODUCER span); the span links the replaced context
    /// (`mqtrace.link.type = replaced`).
    Replace,
}

/// Which message sources may continue their producers' traces.
///
/// Messages from an untrusted source never have their context as parent (it is only linked)
/// and their baggage is dropped. The predicate receives the source name: the queue
/// (RabbitMQ), topic (Kafka) or subscription (Pub/Sub).
///
/// ```
/// use mqtrace::{Config, Trust};
/// let config = Config::new().with_trust(Trust::untrusted_sources(["partner-feed"]));
/// # let _ = config;
/// assert!(!Trust::untrusted_sources(["partner-feed"]).is_trusted("partner-feed"));
/// assert!(Trust::All.is_trusted("orders"));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Trust {
    /// Every source is trusted. The default.
    #[default]
    All,
    /// No source is trusted.
    Nothing,
    /// Sources for which the predicate returns `true` are untrusted.
    Untrusted(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl Trust {
    /// Untrusts exactly the named sources.
    ///
    /// ```
    /// let t = mqtrace::Trust::untrusted_sources(vec!["a".to_string()]);
    /// assert!(!t.is_trusted("a") && t.is_trusted("b"));
    /// ```
    pub fn untrusted_sources<I, S>(sources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: std::collections::HashSet<String> = sources.into_iter().map(Into::into).collect();
        Self::Untrusted(Arc::new(move |s| set.contains(s)))
    }

    /// Whether messages from `source` may parent their process spans and carry baggage.
    ///
    /// ```
    /// assert!(!mqtrace::Trust::Nothing.is_trusted("orders"));
    /// ```
    pub fn is_trusted(&self, source: &str) -> bool {
        match self {
            Self::All => true,
            Self::Nothing => false,
            Self::Untrusted(f) => !f(source),
        }
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("All"),
            Self::Nothing => f.write_str("Nothing"),
            Self::Untrusted(_) => f.write_str("Untrusted(..)"),
        }
    }
}

/// What is passed to an attribute hook.
///
/// ```
/// use mqtrace::{Config, SpanInfo};
/// use opentelemetry::KeyValue;
/// let config = Config::new().with_attributes_hook(|info: &SpanInfo<'_>| {
///     match info.headers.and_then(|h| h.header("tenant")) {
///         Some(Ok(t)) => vec![KeyValue::new("app.tenant", t.to_owned())],
///         _ => vec![],
///     }
/// });
/// # let _ = config;
/// ```
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct SpanInfo<'a> {
    /// The operation of the span.
    pub operation: Operation,
    /// `messaging.destination.name`.
    pub destination: &'a str,
    /// The message's headers, when the span is about one message.
    pub headers: Option<&'a dyn HeaderExtractor>,
}

type TracerFactory = Arc<dyn Fn(InstrumentationScope) -> BoxedTracer + Send + Sync>;
type MeterFactory = Arc<dyn Fn(InstrumentationScope) -> Meter + Send + Sync>;
type AttributesHook = Arc<dyn Fn(&SpanInfo<'_>) -> Vec<KeyValue> + Send + Sync>;

/// Configuration shared by every traced producer and consumer.
///
/// Cheap to clone. The defaults follow the design notes: the global tracer provider and
/// propagator, creation context as parent, every source trusted, message bodies never recorded.
///
/// ```
/// use mqtrace::{Config, ParentPolicy, Propagation, Trust};
/// let config = Config::new()
///     .with_propagation(Propagation::W3c)
///     .with_parent_policy(ParentPolicy::CreationContext)
///     .with_trust(Trust::All)
///     .with_body_size(true);
/// assert!(config.body_size());
/// ```
#[derive(Clone, Default)]
pub struct Config {
    tracer: Option<TracerFactory>,
    meter: Option<MeterFactory>,
    metrics: bool,
    propagation: Propagation,
    parent_policy: ParentPolicy,
    existing_context: ExistingContext,
    trust: Trust,
    body_size: bool,
    message_key: bool,
    hook: Option<AttributesHook>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field(
                "tracer_provider",
                &self.tracer.as_ref().map_or("global", |_| "custom"),
            )
            .field(
                "meter_provider",
                &self.meter.as_ref().map_or("global", |_| "custom"),
            )
            .field("metrics", &self.metrics)
            .field("propagation", &self.propagation)
            .field("parent_policy", &self.parent_policy)
            .field("existing_context", &self.existing_context)
            .field("trust", &self.trust)
            .field("body_size", &self.body_size)
            .field("message_key", &self.message_key)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Config {
    /// The default configuration.
    ///
    /// ```
    /// let c = mqtrace::Config::new();
    /// assert_eq!(c.parent_policy(), mqtrace::ParentPolicy::CreationContext);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this tracer provider instead of the global one.
    ///
    /// For applications that keep their provider out of OpenTelemetry's global, e.g. one
    /// handed only to a `tracing-opentelemetry` layer: give mqtrace the same provider (it is
    /// cheap to clone), and its spans go where the application's go and nest with them.
    /// Without this, mqtrace uses the global provider (see [`Config::tracer`] for when it is
    /// looked up).
    ///
    /// ```
    /// use opentelemetry::trace::TracerProvider as _;
    /// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    /// // The application's own tracer (e.g. for tracing_opentelemetry::layer().with_tracer(..)) ...
    /// let _app_tracer = provider.tracer("my-app");
    /// // ... and mqtrace's, from the same provider, without installing it globally.
    /// let c = mqtrace::Config::new().with_tracer_provider(provider.clone());
    /// # let _ = c;
    /// ```
    pub fn with_tracer_provider<P>(mut self, provider: P) -> Self
    where
        P: TracerProvider + Send + Sync + 'static,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        self.tracer = Some(Arc::new(move |scope| {
            BoxedTracer::new(Box::new(provider.tracer_with_scope(scope)))
        }));
        self
    }

    /// Records the messaging metrics (`messaging.client.operation.duration`,
    /// `messaging.process.duration`, `messaging.client.sent.messages`,
    /// `messaging.client.consumed.messages`) through this meter provider. Turns metrics on.
    ///
    /// ```
    /// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    /// let c = mqtrace::Config::new().with_meter_provider(provider);
    /// # let _ = c;
    /// ```
    pub fn with_meter_provider<P>(mut self, provider: P) -> Self
    where
        P: MeterProvider + Send + Sync + 'static,
    {
        self.meter = Some(Arc::new(move |scope| provider.meter_with_scope(scope)));
        self.metrics = true;
        self
    }

    /// Turns the messaging metrics on or off. Off by default: OpenTelemetry cannot tell
    /// whether a global meter provider is installed, and recording into a no-op one would
    /// still cost attribute building on every message. On with the global provider:
    /// `with_metrics(true)`; with your own: [`Config::with_meter_provider`].
    ///
    /// ```
    /// assert!(mqtrace::Config::new().with_metrics(true).metrics());
    /// ```
    pub fn with_metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Whether the messaging metrics are recorded.
    ///
    /// ```
    /// assert!(!mqtrace::Config::new().metrics());
    /// ```
    pub fn metrics(&self) -> bool {
        self.metrics
    }

    /// A meter for an instrumentation scope, from the configured or the global provider.
    ///
    /// ```
    /// let scope = opentelemetry::InstrumentationScope::builder("my-lib").build();
    /// let _meter = mqtrace::Config::new().meter(scope);
    /// ```
    pub fn meter(&self, scope: InstrumentationScope) -> Meter {
        match &self.meter {
            Some(f) => f(scope),
            None => global::meter_with_scope(scope),
        }
    }

    /// Sets where trace context is written and read.
    ///
    /// ```
    /// let c = mqtrace::Config::new().with_propagation(mqtrace::Propagation::W3c);
    /// # let _ = c;
    /// ```
    pub fn with_propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Sets how process spans relate to the creation context.
    ///
    /// ```
    /// let c = mqtrace::Config::new().with_parent_policy(mqtrace::ParentPolicy::AlwaysLink);
    /// assert_eq!(c.parent_policy(), mqtrace::ParentPolicy::AlwaysLink);
    /// ```
    pub fn with_parent_policy(mut self, policy: ParentPolicy) -> Self {
        self.parent_policy = policy;
        self
    }

    /// Sets what a publish does with a context the message already carries (see
    /// [`ExistingContext`]; [`ExistingContext::Keep`] by default).
    ///
    /// ```
    /// let c = mqtrace::Config::new().with_existing_context(mqtrace::ExistingContext::Replace);
    /// # let _ = c;
    /// ```
    pub fn with_existing_context(mut self, rule: ExistingContext) -> Self {
        self.existing_context = rule;
        self
    }

    /// What a publish does with a context the message already carries.
    ///
    /// ```
    /// assert_eq!(mqtrace::Config::new().existing_context(), mqtrace::ExistingContext::Keep);
    /// ```
    pub fn existing_context(&self) -> ExistingContext {
        self.existing_context
    }

    /// Sets which sources are trusted.
    ///
    /// ```
    /// let c = mqtrace::Config::new().with_trust(mqtrace::Trust::Nothing);
    /// # let _ = c;
    /// ```
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Records `messaging.message.body.size` (opt-in; bodies themselves are never recorded).
    ///
    /// ```
    /// assert!(mqtrace::Config::new().with_body_size(true).body_size());
    /// ```
    pub fn with_body_size(mut self, on: bool) -> Self {
        self.body_size = on;
        self
    }

    /// Records message keys where the broker has them (Kafka); off by default because keys
    /// can hold personal data.
    ///
    /// ```
    /// assert!(mqtrace::Config::new().with_message_key(true).message_key());
    /// ```
    pub fn with_message_key(mut self, on: bool) -> Self {
        self.message_key = on;
        self
    }

    /// Adds attributes of your own to every recording span mqtrace starts.
    ///
    /// The hook runs only for spans that are sampled, after mqtrace's own attributes.
    ///
    /// ```
    /// use opentelemetry::KeyValue;
    /// let c = mqtrace::Config::new()
    ///     .with_attributes_hook(|info| vec![KeyValue::new("app.stage", info.destination.to_owned())]);
    /// # let _ = c;
    /// ```
    pub fn with_attributes_hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&SpanInfo<'_>) -> Vec<KeyValue> + Send + Sync + 'static,
    {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Whether an attributes hook is set (so a broker crate passes the user's headers to it
    /// only when it will read them).
    ///
    /// ```
    /// assert!(!mqtrace::Config::new().has_attributes_hook());
    /// assert!(mqtrace::Config::new().with_attributes_hook(|_| Vec::new()).has_attributes_hook());
    /// ```
    pub fn has_attributes_hook(&self) -> bool {
        self.hook.is_some()
    }

    /// The propagation in use.
    ///
    /// ```
    /// assert!(matches!(mqtrace::Config::new().propagation(), mqtrace::Propagation::Global));
    /// ```
    pub fn propagation(&self) -> &Propagation {
        &self.propagation
    }

    /// The parent policy in use.
    ///
    /// ```
    /// assert_eq!(mqtrace::Config::new().parent_policy(), mqtrace::ParentPolicy::default());
    /// ```
    pub fn parent_policy(&self) -> ParentPolicy {
        self.parent_policy
    }

    /// The trust policy in use.
    ///
    /// ```
    /// assert!(mqtrace::Config::new().trust().is_trusted("anything"));
    /// ```
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Whether body sizes are recorded.
    ///
    /// ```
    /// assert!(!mqtrace::Config::new().body_size());
    /// ```
    pub fn body_size(&self) -> bool {
        self.body_size
    }

    /// Whether message keys are recorded.
    ///
    /// ```
    /// assert!(!mqtrace::Config::new().message_key());
    /// ```
    pub fn message_key(&self) -> bool {
        self.message_key
    }

    /// A tracer for an instrumentation scope, from the configured or the global provider.
    ///
    /// With the global provider, the order of set-up does not matter: a client built before
    /// the application installs its provider (`opentelemetry::global::set_tracer_provider`)
    /// records its spans through it from the first span started after the installation. See
    /// [`ConfiguredTracer`].
    ///
    /// ```
    /// let scope = opentelemetry::InstrumentationScope::builder("my-lib").build();
    /// let _tracer = mqtrace::Config::new().tracer(scope);
    /// ```
    pub fn tracer(&self, scope: InstrumentationScope) -> ConfiguredTracer {
        match &self.tracer {
            Some(f) => ConfiguredTracer::Fixed(f(scope)),
            None => ConfiguredTracer::Global(GlobalTracer::new(scope)),
        }
    }

    pub(crate) fn apply_hook(&self, span: &mut dyn SpanSink, info: &SpanInfo<'_>) {
        if let Some(hook) = &self.hook {
            for kv in hook(info) {
                span.put(kv);
            }
        }
    }
}

/// The tracer mqtrace starts its spans with: the provider given to
/// [`Config::with_tracer_provider`], or the global one.
///
/// The global provider is looked up when a client is built and, as long as it is
/// OpenTelemetry's no-op default, again at every span, so that a provider installed after the
/// client was built (the usual order when telemetry is set up later in `main`, or when the
/// client lives in a `static`) is used from the next span on. The first real provider found is
/// kept; replacing it later with `set_tracer_provider` does not move mqtrace's spans (build new
/// clients, or use [`Config::with_tracer_provider`]). While there is none, mqtrace still
/// propagates the incoming context, and prints one warning to standard error, once per process,
/// naming the two ways to install one. A span started through a no-op provider costs one
/// read of the global provider more than it would otherwise.
///
/// ```
/// use opentelemetry::trace::{Span as _, Tracer as _};
/// use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
///
/// let tracer = mqtrace::Config::new().tracer(opentelemetry::InstrumentationScope::builder("x").build());
/// // Installed after the tracer was made: its spans are recorded all the same.
/// let exporter = InMemorySpanExporter::default();
/// let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
/// opentelemetry::global::set_tracer_provider(provider);
/// tracer.start("after").end();
/// assert_eq!(exporter.get_finished_spans().expect("spans")[0].name, "after");
/// ```
#[derive(Debug)]
pub enum ConfiguredTracer {
    /// The tracer of the provider given to [`Config::with_tracer_provider`].
    Fixed(BoxedTracer),
    /// The global provider's, resolved as described above.
    Global(GlobalTracer),
}

impl Tracer for ConfiguredTracer {
    type Span = BoxedSpan;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> BoxedSpan {
        match self {
            Self::Fixed(t) => t.build_with_context(builder, parent_cx),
            Self::Global(t) => t.build_with_context(builder, parent_cx),
        }
    }
}

/// The global provider's tracer for one scope, looked up until a real provider is installed
/// (see [`ConfiguredTracer`]).
///
/// ```
/// let t = mqtrace::Config::new().tracer(opentelemetry::InstrumentationScope::builder("x").build());
/// assert!(matches!(t, mqtrace::instrument::ConfiguredTracer::Global(_)));
/// ```
pub struct GlobalTracer {
    scope: InstrumentationScope,
    resolved: OnceLock<BoxedTracer>,
}

impl fmt::Debug for GlobalTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalTracer")
            .field("scope", &self.scope.name())
            .field("resolved", &self.resolved.get().is_some())
            .finish()
    }
}

/// Set once the "no tracer provider" warning was printed (once per process).
static NOOP_WARNED: AtomicBool = AtomicBool::new(false);

const NOOP_WARNING: &str = "mqtrace: OpenTelemetry's global tracer provider is the no-op default, \
so mqtrace records no spans (trace context is still propagated). Install your provider with \
opentelemetry::global::set_tracer_provider (it is picked up from the next message on), or \
give it to mqtrace with mqtrace::Config::with_tracer_provider (e.g. when it only feeds a \
tracing-opentelemetry layer).";

impl GlobalTracer {
    fn new(scope: InstrumentationScope) -> Self {
        Self {
            scope,
            resolved: OnceLock::new(),
        }
    }

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> BoxedSpan {
        if let Some(tracer) = self.resolved.get() {
            return tracer.build_with_context(builder, parent_cx);
        }
        let tracer = global::tracer_provider().tracer_with_scope(self.scope.clone());
        let span = tracer.build_with_context(builder, parent_cx);
        match provider_kind(&span, parent_cx) {
            ProviderKind::Real => {
                let _ = self.resolved.set(tracer);
            }
            ProviderKind::Noop => {
                if !NOOP_WARNED.swap(true, Ordering::Relaxed) {
                    eprintln!("{NOOP_WARNING}");
                }
            }
            ProviderKind::Unknown => {}
        }
        span
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ProviderKind {
    Real,
    Noop,
    Unknown,
}

/// What a span started with `parent_cx` says about its provider: a real one (an SDK, or any
/// other implementation) gives every span an id of its own, sampled or not; OpenTelemetry's
/// no-op tracer returns the parent's span context (or an invalid one). A context with
/// suppressed telemetry tells nothing.
fn provider_kind(span: &BoxedSpan, parent_cx: &Context) -> ProviderKind {
    if parent_cx.is_telemetry_suppressed() {
        return ProviderKind::Unknown;
    }
    let sc = span.span_context();
    if sc.is_valid() && sc.span_id() != parent_cx.span().span_context().span_id() {
        ProviderKind::Real
    } else {
        ProviderKind::Noop
    }
}

/// Something attributes can be set on (a span or a span reference).
pub(crate) trait SpanSink {
    fn put(&mut self, kv: KeyValue);
}

impl<S: Span> SpanSink for S {
    fn put(&mut self, kv: KeyValue) {
        self.set_attribute(kv);
    }
}
