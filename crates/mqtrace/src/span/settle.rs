//! Settle operations: what is settled ([`Settle`]), how it failed ([`SettleError`]), the end
//! of every settle span ([`end_settle_span`]), and settles whose result is not a future
//! ([`PendingSettle`]: a blocking call, or a broker answer that a client library reports
//! later through a callback, e.g. a Kafka offset commit).

use super::ProcessSpan;
use crate::attributes as attr;
use crate::instrument::Instrumentation;
use crate::metrics::Measure;
use crate::operation::Operation;
use crate::outcome::Outcome;
use opentelemetry::KeyValue;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanContext, Status};
use std::borrow::Cow;
use std::fmt;

/// A settle operation about to be performed on a message.
///
/// ```
/// use mqtrace::{Operation, OperationType, Outcome, instrument::Settle};
/// let s = Settle::new(Operation::new("reject", OperationType::Settle), Outcome::DeadLetter)
///     .with_reason("invalid order");
/// # let _ = s;
/// ```
#[derive(Clone, Debug)]
pub struct Settle {
    pub(crate) operation: Operation,
    pub(crate) outcome: Outcome,
    pub(crate) reason: Option<Cow<'static, str>>,
}

impl Settle {
    /// Settling with broker operation `operation`, meaning `outcome`.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
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
    /// # use mqtrace::{*, instrument::*};
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
/// let e = mqtrace::instrument::SettleError::new("channel_closed", "the channel was closed");
/// assert_eq!(e.error_type(), "channel_closed");
/// ```
#[derive(Clone, Debug)]
pub struct SettleError {
    pub(crate) error_type: Cow<'static, str>,
    pub(crate) description: String,
}

impl SettleError {
    /// An error of low-cardinality type `error_type`.
    ///
    /// ```
    /// let _ = mqtrace::instrument::SettleError::new("timeout", "no answer in 5 s");
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
    /// assert_eq!(mqtrace::instrument::SettleError::new("x", "y").error_type(), "x");
    /// ```
    pub fn error_type(&self) -> &str {
        &self.error_type
    }
}

/// Ends a settle span with its outcome and error, and records its duration metric: the end
/// of every settle operation, awaited ([`ProcessSpan::settle`]) or reported later
/// ([`PendingSettle::finish`]).
pub(crate) fn end_settle_span(
    inst: &Instrumentation,
    span: Option<BoxedSpan>,
    measure: Option<Measure>,
    outcome: Outcome,
    error: Option<&SettleError>,
) {
    if let (Some(m), Some(metrics)) = (measure, inst.metrics()) {
        m.operation_done(metrics, &inst.common(), error.map(SettleError::error_type));
    }
    let Some(mut span) = span else { return };
    if span.is_recording() {
        span.set_attribute(KeyValue::new(attr::OUTCOME, outcome.as_str()));
        if let Some(e) = error {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, e.error_type.clone()));
            span.set_status(Status::error(e.description.clone()));
        }
    }
    span.end();
}

/// A settle operation that has started and whose result is reported with
/// [`PendingSettle::finish`].
///
/// Started by [`ProcessSpan::start_settle`]. It holds the CLIENT settle span (a child of the
/// process span) and, until [`PendingSettle::end_process`] is called, the process span itself:
///
/// - for a blocking call, start it, make the call, and `finish` with the call's error: the
///   settle span covers the call, then the process span ends with the outcome (and the error);
/// - for an operation answered later (a callback), call `end_process` once the operation is
///   requested, so the process span measures the handling only, and `finish` when the answer
///   arrives: the error, if any, is recorded on the settle span.
///
/// Dropped without `finish`, the settle span ends with an event `mqtrace.settle.unreported`
/// (the result never became known, e.g. the client closed first) and no error status; the
/// process span, if still held, ends with the outcome. No span is left open.
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace::{*, instrument::*};
/// let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
/// let h: HashMap<String, String> = HashMap::new();
/// let span = inst.start_process(
///     Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders"),
///     inst.extract(&h),
/// );
/// let mut pending = span.start_settle(Settle::new(Operation::new("commit", OperationType::Settle), Outcome::Ack));
/// pending.record(|| [opentelemetry::KeyValue::new("messaging.kafka.offset", 42_i64)]);
/// let result: Result<(), String> = Ok(()); // the blocking call
/// pending.finish(result.err().map(|e| SettleError::new("commit_failed", e)));
/// ```
#[must_use = "a pending settle records its result when finished"]
pub struct PendingSettle {
    inst: Instrumentation,
    process: Option<ProcessSpan>,
    span: Option<BoxedSpan>,
    span_context: SpanContext,
    settle: Settle,
    measure: Option<Measure>,
}

impl fmt::Debug for PendingSettle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingSettle")
            .field("operation", &self.settle.operation)
            .field("outcome", &self.settle.outcome)
            .field("span_context", &self.span_context)
            .field("process_open", &self.process.is_some())
            .finish_non_exhaustive()
    }
}

impl ProcessSpan {
    /// Starts a settle operation whose result is reported later with
    /// [`PendingSettle::finish`], for settle operations that are not futures (a blocking call,
    /// or an answer delivered by a callback). The CLIENT settle span starts now, as a child of
    /// the process span.
    ///
    /// See the example on [`PendingSettle`].
    pub fn start_settle(self, settle: Settle) -> PendingSettle {
        let span = self.settle_span(settle.operation);
        let span_context = span
            .as_ref()
            .map_or(SpanContext::NONE, |s| s.span_context().clone());
        let measure = self.settle_measure(settle.operation);
        PendingSettle {
            inst: self.inst.clone(),
            process: Some(self),
            span,
            span_context,
            settle,
            measure,
        }
    }
}

impl PendingSettle {
    /// The settle span's context.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// let pending = span.start_settle(Settle::new(Operation::new("commit", OperationType::Settle), Outcome::Ack));
    /// let _id = pending.span_context().span_id();
    /// # pending.finish(None);
    /// ```
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// Adds attributes computed by `f` to the settle span; `f` runs only if it is recording.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// let mut pending = span.start_settle(Settle::new(Operation::new("commit", OperationType::Settle), Outcome::Ack));
    /// pending.record(|| [opentelemetry::KeyValue::new("messaging.destination.partition.id", "0")]);
    /// # pending.finish(None);
    /// ```
    pub fn record<I>(&mut self, f: impl FnOnce() -> I)
    where
        I: IntoIterator<Item = KeyValue>,
    {
        if let Some(span) = self.span.as_mut().filter(|s| s.is_recording()) {
            span.set_attributes(f());
        }
    }

    /// Ends the process span now, with the settle's outcome, while the settle span waits for
    /// its result: for operations answered later, so the process span measures the handling
    /// and not the wait. An error reported by [`PendingSettle::finish`] is then recorded on the
    /// settle span only.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let span = inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h));
    /// let mut pending = span.start_settle(Settle::new(Operation::new("commit", OperationType::Settle), Outcome::Ack));
    /// pending.end_process(); // the process span ends here, outcome ack
    /// // ... later, when the broker's answer arrives:
    /// pending.finish(Some(SettleError::new("RebalanceInProgress", "the group is rebalancing")));
    /// ```
    pub fn end_process(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.end(self.settle.outcome, self.settle.reason.clone(), None);
        }
    }

    /// Reports the result: `None` when the operation succeeded. Ends the settle span (with
    /// `error.type` and an error status on failure) and then, unless
    /// [`PendingSettle::end_process`] ended it already, the process span with the outcome.
    ///
    /// See the example on [`PendingSettle`].
    pub fn finish(mut self, error: Option<SettleError>) {
        end_settle_span(
            &self.inst,
            self.span.take(),
            self.measure.take(),
            self.settle.outcome,
            error.as_ref(),
        );
        if let Some(mut process) = self.process.take() {
            process.end(self.settle.outcome, self.settle.reason.clone(), error);
        }
    }
}

impl Drop for PendingSettle {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            if span.is_recording() {
                span.set_attribute(KeyValue::new(attr::OUTCOME, self.settle.outcome.as_str()));
                span.add_event("mqtrace.settle.unreported", Vec::new());
            }
            span.end();
        }
        self.end_process();
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{instrument::*, *};
    use std::collections::HashMap;

    const COMMIT: Operation = Operation::new("commit", OperationType::Settle);

    fn process(inst: &Instrumentation) -> ProcessSpan {
        let h: HashMap<String, String> = HashMap::new();
        inst.start_process(
            Incoming::new(Operation::new("process", OperationType::Process), "t", "t"),
            inst.extract(&h),
        )
    }

    #[test]
    fn blocking_settle_failure_marks_both_spans() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let pending = process(&inst).start_settle(Settle::new(COMMIT, Outcome::Ack));
        pending.finish(Some(SettleError::new(
            "NotCoordinator",
            "not the coordinator",
        )));
        let spans = t.spans();
        let commit = spans.one("commit t");
        let process = spans.one("process t");
        commit.assert_child_of(process);
        commit.assert_attr("error.type", "NotCoordinator");
        assert!(commit.is_error() && process.is_error());
        // The commit failed, so the message was not settled: the outcome says so.
        process.assert_attr("mqtrace.outcome", "unsettled");
        process.assert_attr("error.type", "NotCoordinator");
        process.assert_attr("mqtrace.outcome.reason", "ack failed: not the coordinator");
    }

    #[test]
    fn a_failed_outcome_reports_the_handlers_error_type_once_else_its_own_name() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test")
            .build(t.config().with_metrics(true));
        let span = process(&inst);
        span.record_error("validation", &"amount must be positive");
        span.finish(Outcome::Requeue);
        process(&inst).finish(Outcome::Reject);
        let spans = t.spans();
        let both = spans.named("process t");
        let by_outcome = |o: &str| {
            both.iter()
                .find(|s| s.attr_str("mqtrace.outcome") == Some(o))
                .copied()
                .expect("span")
        };
        let requeued = by_outcome("requeue");
        requeued.assert_attr("error.type", "validation");
        assert_eq!(
            requeued
                .attributes
                .iter()
                .filter(|kv| kv.key.as_str() == "error.type")
                .count(),
            1,
            "error.type set once"
        );
        by_outcome("reject").assert_attr("error.type", "reject");
        let processed = t.metric("messaging.process.duration");
        let mut types: Vec<_> = processed
            .iter()
            .filter_map(|m| m.attr_str("error.type").map(str::to_owned))
            .collect();
        types.sort();
        assert_eq!(types, ["reject", "validation"]);
    }

    #[test]
    fn later_settle_ends_the_process_first_and_the_error_stays_on_the_settle_span() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let mut pending = process(&inst).start_settle(Settle::new(COMMIT, Outcome::Ack));
        pending.end_process();
        assert_eq!(t.spans().named("process t").len(), 1);
        assert!(t.spans().find("commit t").is_none());
        pending.finish(Some(SettleError::new("RebalanceInProgress", "rebalancing")));
        let spans = t.spans();
        assert!(!spans.one("process t").is_error());
        assert!(spans.one("commit t").is_error());
    }

    #[test]
    fn dropped_unreported_ends_every_span_without_error() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        drop(process(&inst).start_settle(Settle::new(COMMIT, Outcome::Ack)));
        let spans = t.spans();
        let commit = spans.one("commit t");
        assert!(!commit.is_error());
        assert!(
            commit
                .events
                .iter()
                .any(|e| e.name == "mqtrace.settle.unreported")
        );
        spans.one("process t").assert_attr("mqtrace.outcome", "ack");
    }
}
