//! The CONSUMER process span of one message, its settle spans and its outcome.

use super::parent::{self, Contexts, Parent};
use super::settle::{Settle, SettleError, end_settle_span};
use crate::attributes as attr;
use crate::instrument::{DestinationKind, Incoming, Instrumentation, SpanFacts, span_name_for};
use crate::metrics::Measure;
use crate::metrics::since;
use crate::operation::Operation;
use crate::outcome::Outcome;
use crate::pipeline::Pipeline;
use crate::propagation::{ContextIssue, Extracted};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::context::{FutureExt, WithContext};
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Link, Span, SpanBuilder, SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Starts the process span of `msg` (see [`Instrumentation::start_process`]), in named steps:
/// the retry history, the parent-and-links choice ([`parent::choose`]), the span with the
/// delivery's attributes, the consumed-messages metric.
pub(crate) fn start(
    inst: &Instrumentation,
    msg: Incoming<'_>,
    extracted: Extracted,
) -> ProcessSpan {
    let start = inst.metrics().is_some().then(Instant::now);
    let duplicate = extracted.duplicate_traceparent();
    let (creation, issues) = extracted.into_parts();
    let ambient = Context::current();
    let creation_sc = creation.span().span_context().clone();
    let trusted = inst.config().trust().is_trusted(msg.source);
    let history = msg
        .headers
        .map(|h| crate::retry::read_history(h, msg.source, trusted))
        .unwrap_or_default();
    let choice = parent::choose(
        inst.config().parent_policy(),
        Contexts {
            creation: creation_sc.is_valid(),
            trusted,
            ambient: ambient.span().span_context().is_valid(),
        },
    );
    // Where the message first came from: the origin header of a retried message, or its own
    // creation context on a first delivery.
    let origin = history
        .origin
        .clone()
        .or_else(|| creation_sc.is_valid().then(|| creation_sc.clone()));
    let links = links(&choice, &creation_sc, &ambient, &history);
    let parent = match choice.parent {
        Parent::Creation => creation,
        Parent::Ambient if choice.carry_baggage => with_baggage_of(ambient, &creation),
        Parent::Ambient => ambient,
    };

    let destination: Arc<str> = Arc::from(msg.destination);
    // What samplers see (the settle spans of a sampled process span start with it too).
    let subscription = msg
        .subscription
        .filter(|_| {
            !has(
                msg.attributes,
                attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
            )
        })
        .map(|sub| {
            KeyValue::new(
                attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
                sub.to_owned(),
            )
        });
    let mut attributes = inst.creation_attributes_with(
        msg.operation,
        Some(destination.clone().into()),
        msg.attributes,
        // The subscription and the destination kind's two, then what a sampled span records.
        3 + RECORDED_AFTER_START,
    );
    attributes.extend(subscription.iter().cloned());
    attributes.extend(msg.kind.attributes());
    let builder = SpanBuilder::from_name(span_name_for(
        msg.operation.name(),
        msg.destination,
        msg.kind,
    ))
    .with_kind(msg.operation.kind().span_kind())
    .with_attributes(attributes)
    .with_links(links);
    let facts = SpanFacts {
        message_id: msg.message_id,
        conversation_id: msg.conversation_id,
        body_size: msg.body_size,
        headers: msg.headers,
        ..SpanFacts::new(msg.operation, msg.destination)
    };
    // Time in queue and pipeline position: computed (and the clock read) only when metrics
    // are recorded or the span is sampled, which the sampler decides inside start_span.
    let metered = start.is_some();
    let retried = history.previous_attempt.is_some();
    let sent_pipeline = if trusted {
        msg.headers.and_then(Pipeline::read)
    } else {
        None
    };
    let mut timing: Option<Timing> = None;
    let mut settle_recorded: Vec<KeyValue> = Vec::new();
    let mut settle_start: Vec<KeyValue> = Vec::new();
    let span = inst.start_span(builder, &parent, &facts, |span| {
        settle_start.reserve_exact(msg.attributes.len() + 1);
        settle_start.extend_from_slice(msg.attributes);
        settle_start.extend(subscription.iter().cloned());
        let t = Timing::now(&msg, sent_pipeline, retried);
        let mut kv = Vec::with_capacity(12);
        record_delivery(&mut kv, &msg, trusted, duplicate, &history, &issues);
        t.record(&mut kv);
        if let Some(record) = msg.recorded {
            record(&mut kv);
        }
        if let Some(record) = msg.settled {
            record(&mut settle_recorded);
            kv.extend_from_slice(&settle_recorded);
        }
        span.set_attributes(kv);
        timing = Some(t);
    });
    if metered && timing.is_none() {
        timing = Some(Timing::now(&msg, sent_pipeline, retried));
    }
    let measure = start.map(|start| {
        let mut m = Measure::new(msg.operation, msg.source, msg.kind, start);
        m.extra = crate::metrics::consumer_attributes(msg.attributes);
        m.extra.extend(subscription.iter().cloned());
        m
    });
    if let (Some(m), Some(metrics)) = (&measure, inst.metrics()) {
        let common = inst.common();
        if !msg.counted_at_receive {
            m.consumed(metrics, &common, 1);
        }
        if let Some(t) = &timing {
            m.delivered(metrics, &common, t.queue_time, Some(t.latency));
        }
    }
    let mut cx = parent.with_span(span);
    if let Some(t) = timing {
        cx = cx.with_value(t.pipeline);
    }
    let mut span = ProcessSpan::new(inst.clone(), cx, destination, measure, msg.attempt, origin);
    span.kind = msg.kind;
    span.settle_attributes = SettleAttributes {
        start: settle_start,
        recorded: settle_recorded,
    };
    span
}

/// Room for what a sampled process span records after it starts (the delivery's attributes,
/// the timing, the broker crate's recorded and settle attributes, the user's hook) in the
/// usual case, so its attribute vector is allocated once; more only regrows it.
const RECORDED_AFTER_START: usize = 16;

fn has(kv: &[KeyValue], key: &str) -> bool {
    kv.iter().any(|kv| kv.key.as_str() == key)
}

/// What every settle span of a sampled process span carries beyond its own: the message's
/// start attributes (given to the settle span's sampler) and its recorded ones. Empty for an
/// unsampled process span, so the unsampled path builds and keeps none of them.
#[derive(Default)]
pub(super) struct SettleAttributes {
    start: Vec<KeyValue>,
    recorded: Vec<KeyValue>,
}

/// A delivery's time in queue and its place in the pipeline, as of the start of processing.
struct Timing {
    /// Seconds since the broker's timestamp, clamped at 0, and whether it lay in the future.
    queue_time: Option<(f64, bool)>,
    /// Seconds since the pipeline's origin, clamped at 0, and whether it lay in the future.
    latency: (f64, bool),
    pipeline: Pipeline,
}

impl Timing {
    fn now(msg: &Incoming<'_>, sent: Option<Pipeline>, retried: bool) -> Self {
        let now = SystemTime::now();
        let pipeline = Pipeline::after(sent, retried, msg.sent_at, now);
        Self {
            queue_time: msg.sent_at.map(|t| since(now, t)),
            latency: since(now, pipeline.origin),
            pipeline,
        }
    }

    fn record(&self, kv: &mut Vec<KeyValue>) {
        if let Some((q, _)) = self.queue_time {
            kv.push(KeyValue::new(attr::MESSAGE_QUEUE_TIME, q));
        }
        kv.push(KeyValue::new(attr::PIPELINE_LATENCY, self.latency.0));
        kv.push(KeyValue::new(
            attr::PIPELINE_STAGE,
            i64::from(self.pipeline.stage),
        ));
    }
}

/// The process span's links, in order: the creation context, the retry history's origin and
/// previous attempt, the ambient span.
fn links(
    choice: &parent::Choice,
    creation: &SpanContext,
    ambient: &Context,
    history: &crate::retry::History,
) -> Vec<Link> {
    let mut links = Vec::with_capacity(4);
    if choice.link_creation {
        links.push(Link::with_context(creation.clone()));
    }
    if let Some(o) = &history.origin {
        links.push(Link::new(
            o.clone(),
            vec![KeyValue::new(attr::LINK_TYPE, "origin")],
            0,
        ));
    }
    if let Some(p) = &history.previous_attempt {
        links.push(Link::new(
            p.clone(),
            vec![KeyValue::new(attr::LINK_TYPE, "previous_attempt")],
            0,
        ));
    }
    if choice.link_ambient {
        links.push(Link::new(
            ambient.span().span_context().clone(),
            vec![KeyValue::new(attr::LINK_TYPE, "ambient")],
            0,
        ));
    }
    links
}

/// `ambient` with a trusted producer's baggage, when it has none of its own: the producer is
/// not the parent, but its baggage still reaches the handler.
fn with_baggage_of(ambient: Context, creation: &Context) -> Context {
    if creation.baggage().is_empty() || !ambient.baggage().is_empty() {
        return ambient;
    }
    ambient.with_baggage(
        creation
            .baggage()
            .iter()
            .map(|(k, (v, m))| {
                opentelemetry::baggage::KeyValueMetadata::new(k.clone(), v.clone(), m.clone())
            })
            .collect::<Vec<_>>(),
    )
}

/// The delivery's own attributes of a sampled process span: attempt, trust, dead-letter
/// reason, several `traceparent`s, refused mqtrace headers, what was wrong with its context.
fn record_delivery(
    kv: &mut Vec<KeyValue>,
    msg: &Incoming<'_>,
    trusted: bool,
    duplicate: bool,
    history: &crate::retry::History,
    issues: &[ContextIssue],
) {
    if let Some(a) = msg.attempt {
        kv.push(KeyValue::new(attr::DELIVERY_ATTEMPT, i64::from(a)));
    }
    if !trusted {
        kv.push(KeyValue::new(attr::CONTEXT_UNTRUSTED, true));
    }
    if duplicate {
        kv.push(KeyValue::new(attr::CONTEXT_DUPLICATE, true));
    }
    if let Some(reason) = &history.dead_letter_reason {
        kv.push(KeyValue::new(attr::DEAD_LETTER_REASON, reason.clone()));
    }
    if let Some(refused) = &history.refused {
        kv.push(KeyValue::new(attr::CONTEXT_REFUSED, refused.clone()));
    }
    if !issues.is_empty() {
        let text = issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        kv.push(KeyValue::new(attr::CONTEXT_ERROR, text));
    }
}

/// The process span of one delivered message.
///
/// It stays open until the message is settled ([`ProcessSpan::settle`], [`ProcessSpan::finish`])
/// so its duration is the real processing time. Dropped unsettled, it ends with the outcome
/// set by [`ProcessSpan::set_drop_outcome`] (by default [`Outcome::Unsettled`], an error).
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace::{*, instrument::*};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
/// let headers: HashMap<String, String> = HashMap::new();
/// let span = inst.start_process(
///     Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders"),
///     inst.extract(&headers),
/// );
/// span.in_span(async { /* the handler: its spans are children of the process span */ }).await;
/// let acked: Result<bool, std::io::Error> = span
///     .settle(Settle::new(Operation::new("ack", OperationType::Settle), Outcome::Ack), async { Ok(true) }, |r| {
///         r.as_ref().err().map(|e| SettleError::new("io", e))
///     })
///     .await;
/// assert!(acked.is_ok());
/// # }
/// ```
pub struct ProcessSpan {
    pub(super) inst: Instrumentation,
    pub(super) cx: Context,
    span_context: SpanContext,
    destination: Arc<str>,
    /// Whether the destination is temporary or anonymous (settle spans are named alike).
    pub(super) kind: DestinationKind,
    /// Present only when metrics are recorded (no clock read otherwise).
    measure: Option<Measure>,
    attempt: Option<u32>,
    origin: Option<SpanContext>,
    drop_outcome: Outcome,
    /// The handler's `error.type`, when [`ProcessSpan::record_error`] was called: a failed
    /// outcome reports it (on the span and the metric) rather than the outcome's name.
    handler_error: std::sync::OnceLock<Cow<'static, str>>,
    pub(super) settle_attributes: SettleAttributes,
    done: bool,
}

impl fmt::Debug for ProcessSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessSpan")
            .field("span_context", self.span_context())
            .field("destination", &self.destination)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl ProcessSpan {
    pub(crate) fn new(
        inst: Instrumentation,
        cx: Context,
        destination: Arc<str>,
        measure: Option<Measure>,
        attempt: Option<u32>,
        origin: Option<SpanContext>,
    ) -> Self {
        let span_context = cx.span().span_context().clone();
        Self {
            inst,
            cx,
            span_context,
            destination,
            kind: DestinationKind::NAMED,
            measure,
            attempt,
            origin,
            drop_outcome: Outcome::Unsettled,
            handler_error: std::sync::OnceLock::new(),
            settle_attributes: SettleAttributes::default(),
            done: false,
        }
    }

    /// The context holding the process span: the parent for whatever the handler does.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// let _guard = span.context().clone().attach(); // synchronous code runs inside the span
    /// ```
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The process span's own span context.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// let _trace_id = span.span_context().trace_id();
    /// ```
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// Starts the CLIENT settle span of `op` on this message (a child of the process span),
    /// with the message's attributes, and `extra` when sampled.
    pub(crate) fn start_settle_span(&self, op: Operation, extra: &[KeyValue]) -> BoxedSpan {
        self.inst.start_settle(
            op,
            &self.destination,
            self.kind,
            &self.cx,
            &self.settle_attributes.start,
            self.settle_attributes.recorded.iter().chain(extra),
        )
    }

    /// The metric measure of a settle operation starting now, when metrics are recorded.
    pub(crate) fn settle_measure(&self, op: Operation) -> Option<Measure> {
        self.measure.as_ref().map(|m| m.for_operation(op))
    }

    /// The delivery attempt recorded on the span, when known (1 = first delivery).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// let span = inst.start_process(
    ///     Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_attempt(Some(3)),
    ///     inst.extract(&h),
    /// );
    /// assert_eq!(span.attempt(), Some(3));
    /// ```
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// The creation context of the message's first delivery: its own creation context, or for
    /// a message mqtrace retried, the one carried in the `mqtrace-origin` header.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// assert!(span.origin().is_none()); // no context on this message
    /// ```
    pub fn origin(&self) -> Option<&SpanContext> {
        self.origin.as_ref()
    }

    /// Runs `fut` with the process span as the current context on every poll, so
    /// OpenTelemetry spans and `tracing` spans (through `tracing-opentelemetry`) created in it
    /// are children of the process span, across `.await`s.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// let n = span.in_span(async { 40 + 2 }).await;
    /// assert_eq!(n, 42);
    /// # }
    /// ```
    pub fn in_span<F: Future>(&self, fut: F) -> WithContext<F> {
        fut.with_context(self.cx.clone())
    }

    /// Adds attributes computed by `f`, which runs only if the span is recording.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// span.record(|| [opentelemetry::KeyValue::new("app.order_id", "o-1")]);
    /// ```
    pub fn record<I>(&self, f: impl FnOnce() -> I)
    where
        I: IntoIterator<Item = KeyValue>,
    {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attributes(f());
        }
    }

    /// Records a handler error on the process span (`error.type`, status, an exception event).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// span.record_error("validation", &"amount must be positive");
    /// ```
    pub fn record_error(&self, error_type: impl Into<Cow<'static, str>>, error: &dyn fmt::Display) {
        let error_type = error_type.into();
        let _ = self.handler_error.set(error_type.clone());
        let span = self.cx.span();
        if span.is_recording() {
            let message = error.to_string();
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type));
            span.add_event(
                "exception",
                vec![KeyValue::new("exception.message", message.clone())],
            );
            span.set_status(Status::error(message));
        }
    }

    /// Sets what is recorded if the span is dropped without being settled (e.g.
    /// [`Outcome::AutoAck`] for consumers whose broker acknowledges on delivery).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// let mut span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// span.set_drop_outcome(Outcome::AutoAck);
    /// drop(span); // ends with mqtrace.outcome = auto_ack
    /// ```
    pub fn set_drop_outcome(&mut self, outcome: Outcome) {
        self.drop_outcome = outcome;
    }

    /// Performs a settle operation: a CLIENT settle span (child of the process span) covers
    /// `fut`; `check` says whether its result is a failure. Then the process span ends with
    /// the settle's outcome. The result of `fut` is returned unchanged.
    ///
    /// See the example on [`ProcessSpan`].
    pub async fn settle<R, F>(
        mut self,
        settle: Settle,
        fut: F,
        check: impl FnOnce(&R) -> Option<SettleError>,
    ) -> R
    where
        F: Future<Output = R>,
    {
        let measure = self.settle_measure(settle.operation);
        let span = self.settle_span(settle.operation);
        let result = fut.await;
        let error = check(&result);
        end_settle_span(&self.inst, span, measure, settle.outcome, error.as_ref());
        self.end(settle.outcome, settle.reason, error);
        result
    }

    /// Ends the span with `outcome`, without a settle operation (e.g. a commit that happens
    /// elsewhere, or an auto-acknowledged delivery).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// span.finish(Outcome::AutoAck);
    /// ```
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome, None, None);
    }

    /// The CLIENT settle span of `op`, a child of this span; none when this span is not
    /// recorded (sampled out), so an unsampled message builds no settle span at all (a
    /// settle span is a child of its process span and shares its sampling decision under the
    /// parent-based samplers people use; recording one under a dropped parent would leave an
    /// orphan in the trace).
    pub(super) fn settle_span(&self, op: Operation) -> Option<BoxedSpan> {
        self.cx
            .span()
            .is_recording()
            .then(|| self.start_settle_span(op, &[]))
    }

    pub(super) fn end(
        &mut self,
        outcome: Outcome,
        reason: Option<Cow<'static, str>>,
        error: Option<SettleError>,
    ) {
        if self.done {
            return;
        }
        self.done = true;
        // A settle that failed did not settle: the message is still the broker's (it comes
        // back), so the outcome says so, whatever was intended.
        let (outcome, reason) = match &error {
            Some(e) => (
                Outcome::Unsettled,
                Some(Cow::Owned(format!(
                    "{} failed: {}",
                    outcome.as_str(),
                    e.description
                ))),
            ),
            None => (outcome, reason),
        };
        let handler_error = self.handler_error.get().map(|t| &**t);
        // A handler error makes the processing a failure whatever the settle was (e.g. a
        // message acked to drop it after `record_error`): the span (which `record_error`
        // marked) and the process-duration metric both carry its `error.type`.
        let error_type: Option<&str> = match &error {
            Some(e) => Some(e.error_type()),
            None if outcome.is_failure() => handler_error.or(Some(outcome.as_str())),
            None => handler_error,
        };
        if let (Some(metrics), Some(m)) = (self.inst.metrics(), &self.measure) {
            m.processed(metrics, &self.inst.common(), outcome.as_str(), error_type);
        }
        let span = self.cx.span();
        if span.is_recording() {
            let outcome_kv = KeyValue::new(attr::OUTCOME, outcome.as_str());
            match &reason {
                Some(r) => span
                    .set_attributes([outcome_kv, KeyValue::new(attr::OUTCOME_REASON, r.clone())]),
                None => span.set_attribute(outcome_kv),
            }
            if outcome.is_failure() {
                // The same `error.type` as the process-duration metric's (set once: a
                // handler error recorded it already).
                if let Some(t) = error_type.filter(|t| Some(*t) != handler_error) {
                    span.set_attribute(KeyValue::new(attr::ERROR_TYPE, t.to_owned()));
                }
                let description = match (outcome, reason) {
                    (_, Some(r)) => r,
                    (Outcome::Unsettled, None) => {
                        Cow::Borrowed("the message was dropped without being settled")
                    }
                    (o, None) => Cow::Borrowed(o.as_str()),
                };
                span.set_status(Status::error(description));
            }
        }
        span.end();
    }
}

impl Drop for ProcessSpan {
    fn drop(&mut self) {
        let outcome = self.drop_outcome;
        self.end(outcome, None, None);
    }
}
