//! The CONSUMER process span of one message, its settle spans and its outcome.

use crate::attributes as attr;
use crate::instrumentation::Instrumentation;
use crate::metrics::Measure;
use crate::operation::Operation;
use crate::outcome::Outcome;
use opentelemetry::context::{FutureExt, WithContext};
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

mod pending;
pub use pending::PendingSettle;

/// A settle operation about to be performed on a message.
///
/// ```
/// use mqtrace::{Operation, OperationType, Outcome, Settle};
/// let s = Settle::new(Operation::new("reject", OperationType::Settle), Outcome::DeadLetter)
///     .with_reason("invalid order");
/// # let _ = s;
/// ```
#[derive(Clone, Debug)]
pub struct Settle {
    operation: Operation,
    outcome: Outcome,
    reason: Option<Cow<'static, str>>,
}

impl Settle {
    /// Settling with broker operation `operation`, meaning `outcome`.
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Settle::new(Operation::new("ack", OperationType::Settle), Outcome::Ack);
    /// ```
    pub fn new(operation: Operation, outcome: Outcome) -> Self {
        Self {
            operation,
            outcome,
            reason: None,
        }
    }

    /// Why (recorded as `mqtrace.outcome.reason`).
    ///
    /// ```
    /// # use mqtrace::*;
    /// let _ = Settle::new(Operation::new("nack", OperationType::Settle), Outcome::Requeue).with_reason("db down");
    /// ```
    pub fn with_reason(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// A failed settle operation: `error.type` and a description.
///
/// ```
/// let e = mqtrace::SettleError::new("channel_closed", "the channel was closed");
/// assert_eq!(e.error_type(), "channel_closed");
/// ```
#[derive(Clone, Debug)]
pub struct SettleError {
    error_type: Cow<'static, str>,
    description: String,
}

impl SettleError {
    /// An error of low-cardinality type `error_type`.
    ///
    /// ```
    /// let _ = mqtrace::SettleError::new("timeout", "no answer in 5 s");
    /// ```
    pub fn new(error_type: impl Into<Cow<'static, str>>, description: impl fmt::Display) -> Self {
        Self {
            error_type: error_type.into(),
            description: description.to_string(),
        }
    }

    /// The `error.type` value.
    ///
    /// ```
    /// assert_eq!(mqtrace::SettleError::new("x", "y").error_type(), "x");
    /// ```
    pub fn error_type(&self) -> &str {
        &self.error_type
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
/// use mqtrace::*;
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
    inst: Instrumentation,
    cx: Context,
    span_context: SpanContext,
    destination: Arc<str>,
    /// Present only when metrics are recorded (no clock read otherwise).
    measure: Option<Measure>,
    attempt: Option<u32>,
    origin: Option<SpanContext>,
    drop_outcome: Outcome,
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
            measure,
            attempt,
            origin,
            drop_outcome: Outcome::Unsettled,
            done: false,
        }
    }

    /// The context holding the process span: the parent for whatever the handler does.
    ///
    /// ```
    /// # use mqtrace::*;
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
    /// # use mqtrace::*;
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// let _trace_id = span.span_context().trace_id();
    /// ```
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// The destination settle spans are named after.
    pub(crate) fn destination(&self) -> &Arc<str> {
        &self.destination
    }

    /// The metric measure of a settle operation starting now, when metrics are recorded.
    pub(crate) fn settle_measure(&self, op: Operation) -> Option<Measure> {
        self.inst.metrics().is_some().then(|| Measure {
            op,
            destination: self.destination.clone(),
            start: Instant::now(),
        })
    }

    /// The delivery attempt recorded on the span, when known (1 = first delivery).
    ///
    /// ```
    /// # use mqtrace::*;
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
    /// # use mqtrace::*;
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
    /// # use mqtrace::*;
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
    /// # use mqtrace::*;
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
    /// # use mqtrace::*;
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// span.record_error("validation", &"amount must be positive");
    /// ```
    pub fn record_error(&self, error_type: impl Into<Cow<'static, str>>, error: &dyn fmt::Display) {
        let span = self.cx.span();
        if span.is_recording() {
            let message = error.to_string();
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.into()));
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
    /// # use mqtrace::*;
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
        let span = self
            .inst
            .start_settle(settle.operation, &self.destination, &self.cx);
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
    /// # use mqtrace::*;
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// span.finish(Outcome::AutoAck);
    /// ```
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome, None, None);
    }

    fn end(
        &mut self,
        outcome: Outcome,
        reason: Option<Cow<'static, str>>,
        error: Option<SettleError>,
    ) {
        if self.done {
            return;
        }
        self.done = true;
        if let (Some(metrics), Some(m)) = (self.inst.metrics(), &self.measure) {
            let error_type = match &error {
                Some(e) => Some(e.error_type()),
                None if outcome.is_failure() => Some(outcome.as_str()),
                None => None,
            };
            m.processed(metrics, &self.inst.common(), error_type);
        }
        let span = self.cx.span();
        if span.is_recording() {
            let outcome_kv = KeyValue::new(attr::OUTCOME, outcome.as_str());
            match &reason {
                Some(r) => span
                    .set_attributes([outcome_kv, KeyValue::new(attr::OUTCOME_REASON, r.clone())]),
                None => span.set_attribute(outcome_kv),
            }
            if let Some(e) = &error {
                span.set_status(Status::error(format!(
                    "{} failed: {}",
                    outcome.as_str(),
                    e.description
                )));
            } else if outcome.is_failure() {
                let description = match (outcome, reason) {
                    (Outcome::Unsettled, _) => {
                        Cow::Borrowed("the message was dropped without being settled")
                    }
                    (_, Some(r)) => r,
                    (o, None) => Cow::Borrowed(o.as_str()),
                };
                span.set_status(Status::error(description));
            }
        }
        span.end();
    }
}

/// Ends a settle span with its outcome and error, and records its duration metric: the end
/// of every settle operation, awaited ([`ProcessSpan::settle`]) or reported later
/// ([`PendingSettle::finish`]).
pub(crate) fn end_settle_span(
    inst: &Instrumentation,
    mut span: BoxedSpan,
    measure: Option<Measure>,
    outcome: Outcome,
    error: Option<&SettleError>,
) {
    if let (Some(m), Some(metrics)) = (measure, inst.metrics()) {
        m.operation_done(
            metrics,
            &inst.common(),
            error.map(SettleError::error_type),
            false,
        );
    }
    if span.is_recording() {
        span.set_attribute(KeyValue::new(attr::OUTCOME, outcome.as_str()));
        if let Some(e) = error {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, e.error_type.clone()));
            span.set_status(Status::error(e.description.clone()));
        }
    }
    span.end();
}

impl Drop for ProcessSpan {
    fn drop(&mut self) {
        let outcome = self.drop_outcome;
        self.end(outcome, None, None);
    }
}
