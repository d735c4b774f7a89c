//! The process span of a delivered message, held by the broker crate's message wrapper.

use super::{ProcessSpan, Settle, SettleError};
use crate::outcome::Outcome;
use opentelemetry::Context;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::SpanContext;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::{Mutex, PoisonError};

/// What every broker's traced message holds: its process span until it is settled, and the
/// span's context, which outlives the settle (handlers keep running inside it).
///
/// Broker crates embed one in their message type (`TracedDelivery`, `TracedMessage`,
/// `TracedHandler`), implement [`crate::Traced`] over it (which gives the message its
/// accessors) and settle through it, so the settle logic is the same everywhere. Settling
/// takes the span out: the first settle is recorded, later ones only run the broker's operation.
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace::{*, instrument::*};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
/// let h: HashMap<String, String> = HashMap::new();
/// let processing = Processing::new(inst.start_process(
///     Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_attempt(Some(1)),
///     inst.extract(&h),
/// ));
/// processing.in_span(async { /* the handler */ }).await;
/// let acked: Result<bool, std::io::Error> = processing
///     .settle(Settle::new(Operation::new("ack", OperationType::Settle), Outcome::Ack), async { Ok(true) }, |_| None)
///     .await;
/// assert!(acked.is_ok() && processing.is_settled());
/// # }
/// ```
pub struct Processing {
    span: Mutex<Option<ProcessSpan>>,
    context: Context,
    span_context: SpanContext,
    origin: Option<SpanContext>,
    attempt: Option<u32>,
}

impl fmt::Debug for Processing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processing")
            .field("span_context", &self.span_context)
            .field("attempt", &self.attempt)
            .field("settled", &self.is_settled())
            .finish_non_exhaustive()
    }
}

impl From<ProcessSpan> for Processing {
    fn from(span: ProcessSpan) -> Self {
        Self::new(span)
    }
}

impl Processing {
    /// Holds `span` until the message is settled.
    ///
    /// See the example on [`Processing`].
    pub fn new(span: ProcessSpan) -> Self {
        Self {
            context: span.context().clone(),
            span_context: span.span_context().clone(),
            origin: span.origin().cloned(),
            attempt: span.attempt(),
            span: Mutex::new(Some(span)),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ProcessSpan>> {
        self.span.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The context holding the process span.
    ///
    /// See [`ProcessSpan::context`].
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The process span's context.
    ///
    /// See [`ProcessSpan::span_context`].
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// The creation context of the message's first delivery.
    ///
    /// See [`ProcessSpan::origin`].
    pub fn origin(&self) -> Option<&SpanContext> {
        self.origin.as_ref()
    }

    /// The delivery attempt recorded on the span, when known.
    ///
    /// See [`ProcessSpan::attempt`].
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// Whether the span has been settled (or taken out).
    ///
    /// See the example on [`Processing`].
    pub fn is_settled(&self) -> bool {
        self.slot().is_none()
    }

    /// Runs `fut` inside the process span (see [`ProcessSpan::in_span`]).
    ///
    /// See the example on [`Processing`].
    pub fn in_span<F: Future>(&self, fut: F) -> WithContext<F> {
        fut.with_context(self.context.clone())
    }

    /// Records a handler error on the process span, if it is not settled yet.
    ///
    /// See [`ProcessSpan::record_error`].
    pub fn record_error(&self, error_type: impl Into<Cow<'static, str>>, error: &dyn fmt::Display) {
        if let Some(span) = self.slot().as_ref() {
            span.record_error(error_type, error);
        }
    }

    /// Takes the span out, to settle it by other means.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let p = Processing::new(inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h)));
    /// if let Some(span) = p.take() { span.finish(Outcome::Ack); }
    /// assert!(p.take().is_none());
    /// ```
    pub fn take(&self) -> Option<ProcessSpan> {
        self.slot().take()
    }

    /// Ends the span with `outcome`, if it is not settled yet (see [`ProcessSpan::finish`]).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let p = Processing::new(inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h)));
    /// p.finish(Outcome::Ack);
    /// assert!(p.is_settled());
    /// ```
    pub fn finish(&self, outcome: Outcome) {
        if let Some(span) = self.take() {
            span.finish(outcome);
        }
    }

    /// Performs a settle operation under a settle span and ends the process span (see
    /// [`ProcessSpan::settle`]); if the message was already settled, only runs `fut`.
    ///
    /// See the example on [`Processing`].
    pub async fn settle<R, F>(
        &self,
        settle: Settle,
        fut: F,
        check: impl FnOnce(&R) -> Option<SettleError>,
    ) -> R
    where
        F: Future<Output = R>,
    {
        match self.take() {
            Some(span) => span.settle(settle, fut, check).await,
            None => fut.await,
        }
    }
}
