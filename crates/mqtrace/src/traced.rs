//! What every broker's traced message offers, written once.

use crate::instrument::Processing;
use crate::outcome::Outcome;
use opentelemetry::Context;
use opentelemetry::context::WithContext;
use opentelemetry::trace::SpanContext;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;

/// A consumed message with its process span: the accessors every broker crate's message
/// wrapper offers (`mqtrace_lapin::TracedDelivery`, `mqtrace_rdkafka::TracedMessage`,
/// `mqtrace_pubsub::TracedHandler`).
///
/// A wrapper implements only [`processing`](Self::processing); the rest is provided here, so
/// the same method means the same thing for every broker. Each broker crate re-exports this
/// trait (and its `prelude` holds it), so one import brings the methods into scope. The
/// broker's own settle operations (`ack`, `commit_message`, ...) stay on the wrapper or its
/// consumer, as the client has them.
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace::{*, instrument::*};
/// struct MyMessage { processing: Processing }
/// impl Traced for MyMessage {
///     fn processing(&self) -> &Processing { &self.processing }
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
/// let h: HashMap<String, String> = HashMap::new();
/// let m = MyMessage {
///     processing: Processing::new(inst.start_process(
///         Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_attempt(Some(2)),
///         inst.extract(&h),
///     )),
/// };
/// assert_eq!(m.attempt(), 2);
/// m.in_span(async { /* the handler */ }).await;
/// m.record_error("validation", &"amount must be positive");
/// m.finish(Outcome::DeadLetter);
/// assert!(m.is_settled());
/// # }
/// ```
pub trait Traced {
    /// The process span this message holds until it is settled.
    ///
    /// See the example on [`Traced`].
    fn processing(&self) -> &Processing;

    /// The context holding the process span, to make it current in synchronous code
    /// (`let _guard = message.context().clone().attach();`).
    ///
    /// See [`Processing::context`].
    fn context(&self) -> &Context {
        self.processing().context()
    }

    /// The process span's context (e.g. to log its trace id).
    ///
    /// See [`Processing::span_context`].
    fn span_context(&self) -> &SpanContext {
        self.processing().span_context()
    }

    /// The creation context of the message's first delivery: its own creation context, or
    /// for a copy mqtrace re-sent to a retry or dead-letter destination, the one carried in the
    /// `mqtrace-origin` header (see [`crate::instrument::ProcessSpan::origin`]).
    ///
    /// See [`Processing::origin`].
    fn origin(&self) -> Option<&SpanContext> {
        self.processing().origin()
    }

    /// The delivery attempt, 1 for the first delivery: from the broker where it counts
    /// attempts (`x-death`, `x-delivery-count`, Pub/Sub's `delivery_attempt`), from the
    /// `mqtrace-attempt` header a retried copy carries, else 1.
    ///
    /// See the example on [`Traced`].
    fn attempt(&self) -> u32 {
        self.processing().attempt().unwrap_or(1)
    }

    /// Runs `fut` inside the process span: OpenTelemetry and `tracing` spans created in it,
    /// across `.await`s, are children of the process span.
    ///
    /// See the example on [`Traced`].
    fn in_span<F: Future>(&self, fut: F) -> WithContext<F> {
        self.processing().in_span(fut)
    }

    /// Records a handler error on the process span (it does not settle the message).
    ///
    /// See the example on [`Traced`].
    fn record_error(&self, error_type: impl Into<Cow<'static, str>>, error: &dyn fmt::Display) {
        self.processing().record_error(error_type, error);
    }

    /// Ends the process span with `outcome` without a settle operation (e.g. offsets committed
    /// in bulk, or a message handed on by other means); later settles are not recorded again.
    ///
    /// See the example on [`Traced`].
    fn finish(&self, outcome: Outcome) {
        self.processing().finish(outcome);
    }

    /// Whether the process span has been settled (or finished, or taken out).
    ///
    /// See the example on [`Traced`].
    fn is_settled(&self) -> bool {
        self.processing().is_settled()
    }
}

#[cfg(test)]
mod tests {
    use super::Traced;
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{instrument::*, *};
    use opentelemetry::trace::TraceContextExt;
    use std::collections::HashMap;

    struct Message(Processing);

    impl Traced for Message {
        fn processing(&self) -> &Processing {
            &self.0
        }
    }

    fn message(inst: &Instrumentation, attempt: Option<u32>) -> Message {
        let h: HashMap<String, String> = HashMap::new();
        Message(Processing::new(
            inst.start_process(
                Incoming::new(Operation::new("process", OperationType::Process), "q", "q")
                    .with_attempt(attempt),
                inst.extract(&h),
            ),
        ))
    }

    #[tokio::test]
    async fn the_accessors_read_the_held_processing() {
        let telemetry = TestTelemetry::new();
        let inst =
            Instrumentation::builder(MessagingSystem::RabbitMq, "t").build(telemetry.config());
        let unknown = message(&inst, None);
        assert_eq!(unknown.attempt(), 1, "an unknown attempt is the first");
        let third = message(&inst, Some(3));
        assert_eq!(third.attempt(), 3);
        let inner = third
            .in_span(async {
                opentelemetry::Context::current()
                    .span()
                    .span_context()
                    .clone()
            })
            .await;
        assert_eq!(&inner, third.span_context());
        assert_eq!(third.context().span().span_context(), third.span_context());
        third.record_error("validation", &"bad");
        assert!(!third.is_settled());
        third.finish(Outcome::DeadLetter);
        assert!(third.is_settled());
        third.finish(Outcome::Ack); // no second recording
        unknown.finish(Outcome::Ack);
        let spans = telemetry.spans();
        let ended = spans.named("process q");
        assert_eq!(ended.len(), 2);
        let dead = ended
            .iter()
            .find(|s| s.span_context == *third.span_context())
            .expect("the third attempt's span");
        assert_eq!(dead.attr_str(attributes::OUTCOME), Some("dead_letter"));
        assert_eq!(dead.attr_i64(attributes::DELIVERY_ATTEMPT), Some(3));
        assert!(dead.is_error());
    }
}
