//! The wait for the broker's answer to a send: the one future every traced producer returns.
//!
//! See [`Answer`].

use super::SendSpan;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanContext;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Span attribute: why a send span ended before the broker's answer (set on spans whose
/// [`Answer`] was dropped where no runtime could wait for it).
pub const ABANDON_REASON: &str = "mqtrace.send.abandon_reason";

/// The reason recorded in [`ABANDON_REASON`] when an [`Answer`] is dropped outside a runtime.
pub const NO_RUNTIME: &str = "dropped before the broker answered, outside a Tokio runtime";

/// The error of a poll after completion, for clients that have no "already completed" error of
/// their own to carry it (as a source).
///
/// ```
/// assert_eq!(mqtrace::instrument::PolledAfterCompletion.to_string(), "polled after completion: the broker's answer was already returned");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolledAfterCompletion;

impl fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("polled after completion: the broker's answer was already returned")
    }
}

impl std::error::Error for PolledAfterCompletion {}

/// How one broker's answer ends its send span: what a broker crate supplies to [`Answer`].
///
/// `T` is the output of the client's future.
///
/// ```
/// use mqtrace::instrument::{OnAnswer, SendSpan};
/// /// A client whose answer is the message id, or an error message.
/// struct Published;
/// impl OnAnswer<Result<u64, String>> for Published {
///     fn on_answer(self, span: SendSpan, answer: &Result<u64, String>) {
///         match answer {
///             Ok(_) => span.end_ok(),
///             Err(e) => span.end_error("publish_failed", e),
///         }
///     }
///     fn after_completion() -> Result<u64, String> {
///         Err("polled after completion".to_owned())
///     }
/// }
/// ```
pub trait OnAnswer<T>: Send + Sized + 'static {
    /// Ends `span` with the broker's `answer` (called once, when the client's future resolves,
    /// whether the [`Answer`] was awaited or dropped inside a runtime).
    fn on_answer(self, span: SendSpan, answer: &T);

    /// What a poll after completion resolves to: the client's own "already completed" error
    /// (there is no answer left to give, and a future must not panic or hang here).
    fn after_completion() -> T;

    /// Called instead of [`on_answer`](Self::on_answer) when the answer can no longer be
    /// awaited (dropped outside a runtime); the span ends when it is dropped, marked abandoned.
    /// Override it to release what `self` holds; the default only drops the span.
    ///
    /// ```
    /// # use mqtrace::instrument::{OnAnswer, SendSpan};
    /// # struct Published;
    /// impl OnAnswer<()> for Published {
    ///     fn on_answer(self, span: SendSpan, _: &()) { span.end_ok() }
    ///     fn after_completion() {}
    ///     fn abandon(self, span: SendSpan) { drop(span) }
    /// }
    /// ```
    fn abandon(self, span: SendSpan) {
        drop(span);
    }
}

struct Waiting<F, H> {
    future: F,
    span: Option<SendSpan>,
    on_answer: H,
}

/// A client's answer future that ends the message's send span when the broker answers.
///
/// A broker crate's publish hands back the client's own "answer" future (a publisher confirm,
/// a delivery report, a publish result) wrapped in an `Answer`, together with the message's
/// [`SendSpan`] and an [`OnAnswer`] that knows how that broker's answer ends the span. The
/// behaviour is then the same for every broker:
///
/// - **awaited**: it resolves to exactly what the client's future resolves to, and the span
///   ends at that moment, with what the answer says;
/// - **polled again after it resolved**: it never panics and never stays pending; it resolves
///   at once to [`OnAnswer::after_completion`], the client's own error for "already completed"
///   (each broker crate documents which value that is);
/// - **dropped unawaited**: inside a Tokio runtime, a background task keeps waiting for the
///   answer, so the span still ends when the broker answers; outside one, the span ends at the
///   drop, marked abandoned (event `mqtrace.send.abandoned`) with the reason in
///   [`ABANDON_REASON`].
///
/// `F` must be `Unpin`, `Send` and `'static` (the three clients' answer futures
/// are); a span of `None`
/// (e.g. a publish without confirms, whose span already ended) only forwards the answer.
///
/// ```
/// use mqtrace::{*, instrument::*};
/// # struct Published;
/// # impl OnAnswer<Result<u64, String>> for Published {
/// #     fn on_answer(self, span: SendSpan, a: &Result<u64, String>) { match a { Ok(_) => span.end_ok(), Err(e) => span.end_error("failed", e) } }
/// #     fn after_completion() -> Result<u64, String> { Err("polled after completion".into()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
/// let mut headers: std::collections::HashMap<String, String> = Default::default();
/// let span = inst.start_send(Outgoing::new(Operation::new("send", OperationType::Send), "t"), &mut headers);
/// let mut answer = Answer::new(std::future::ready(Ok::<u64, String>(7)), Some(span), Published);
/// assert_eq!((&mut answer).await, Ok(7));
/// assert!(answer.is_done());
/// assert!((&mut answer).await.is_err()); // polled after completion: an error, never a panic
/// # }
/// ```
#[must_use = "await the answer to learn what the broker did with the message"]
pub struct Answer<F, H>
where
    F: Future + Unpin + Send + 'static,
    H: OnAnswer<F::Output>,
{
    waiting: Option<Waiting<F, H>>,
}

impl<F, H> fmt::Debug for Answer<F, H>
where
    F: Future + Unpin + Send + 'static,
    H: OnAnswer<F::Output>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("span_context", &self.span_context())
            .field("done", &self.is_done())
            .finish_non_exhaustive()
    }
}

impl<F, H> Answer<F, H>
where
    F: Future + Unpin + Send + 'static,
    H: OnAnswer<F::Output>,
{
    /// Waits for `future`, then ends `span` through `on_answer`.
    ///
    /// See the example on [`Answer`].
    pub fn new(future: F, span: Option<SendSpan>, on_answer: H) -> Self {
        Self {
            waiting: Some(Waiting {
                future,
                span,
                on_answer,
            }),
        }
    }

    /// The send span's context (what was injected into the message), while the answer is
    /// awaited and the span open.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// # struct P;
    /// # impl OnAnswer<()> for P { fn on_answer(self, s: SendSpan, _: &()) { s.end_ok() } fn after_completion() {} }
    /// let answer = Answer::new(std::future::ready(()), None, P);
    /// assert!(answer.span_context().is_none()); // no span: nothing to end
    /// ```
    pub fn span_context(&self) -> Option<&SpanContext> {
        self.waiting
            .as_ref()
            .and_then(|w| w.span.as_ref())
            .map(SendSpan::span_context)
    }

    /// Whether the answer has been returned already (a further poll returns
    /// [`OnAnswer::after_completion`]).
    ///
    /// See the example on [`Answer`].
    pub fn is_done(&self) -> bool {
        self.waiting.is_none()
    }
}

// Nothing is pinned structurally: the client's future is `Unpin` and the rest is moved freely.
impl<F, H> Unpin for Answer<F, H>
where
    F: Future + Unpin + Send + 'static,
    H: OnAnswer<F::Output>,
{
}

impl<F, H> Future for Answer<F, H>
where
    F: Future + Unpin + Send + 'static,
    H: OnAnswer<F::Output>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(waiting) = this.waiting.as_mut() else {
            return Poll::Ready(H::after_completion());
        };
        let answer = match Pin::new(&mut waiting.future).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(answer) => answer,
        };
        if let Some(Waiting {
            span: Some(span),
            on_answer,
            ..
        }) = this.waiting.take()
        {
            on_answer.on_answer(span, &answer);
        }
        Poll::Ready(answer)
    }
}

impl<F, H> Drop for Answer<F, H>
where
    F: Future + Unpin + Send + 'static,
    H: OnAnswer<F::Output>,
{
    fn drop(&mut self) {
        let Some(Waiting {
            future,
            span: Some(mut span),
            on_answer,
        }) = self.waiting.take()
        else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // If the runtime shuts down first, the task is dropped with the span in it,
                // which ends the span as abandoned: it is never left open.
                drop(runtime.spawn(async move {
                    let answer = future.await;
                    on_answer.on_answer(span, &answer);
                }));
            }
            Err(_) => {
                span.record(|| [KeyValue::new(ABANDON_REASON, NO_RUNTIME)]);
                on_answer.abandon(span);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrument::{Instrumentation, MessagingSystem, Operation, OperationType, Outgoing};
    use crate::testing::{SpanDataExt, TestTelemetry};
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    type Reply = Result<Result<u64, String>, oneshot::error::RecvError>;
    type Replier = oneshot::Sender<Result<u64, String>>;
    type Waiting = Answer<oneshot::Receiver<Result<u64, String>>, Counting>;

    /// Ends the span with the answer, counting its calls.
    struct Counting {
        answered: Arc<AtomicUsize>,
        abandoned: Arc<AtomicUsize>,
    }

    impl OnAnswer<Reply> for Counting {
        fn on_answer(self, mut span: SendSpan, answer: &Reply) {
            self.answered.fetch_add(1, Ordering::SeqCst);
            match answer {
                Ok(Ok(id)) => {
                    let id = i64::try_from(*id).unwrap_or(i64::MAX);
                    span.record(|| [KeyValue::new("test.id", id)]);
                    span.end_ok();
                }
                Ok(Err(e)) => span.end_error("refused", e),
                Err(e) => span.end_error("gone", e),
            }
        }

        fn after_completion() -> Reply {
            Ok(Err("polled after completion".to_owned()))
        }

        fn abandon(self, span: SendSpan) {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
            drop(span);
        }
    }

    struct Fixture {
        telemetry: TestTelemetry,
        inst: Instrumentation,
        answered: Arc<AtomicUsize>,
        abandoned: Arc<AtomicUsize>,
    }

    impl Fixture {
        fn new() -> Self {
            let telemetry = TestTelemetry::new();
            let inst =
                Instrumentation::builder(MessagingSystem::Kafka, "test").build(telemetry.config());
            Self {
                telemetry,
                inst,
                answered: Arc::default(),
                abandoned: Arc::default(),
            }
        }

        fn answer(&self) -> (Replier, Waiting) {
            let mut headers: HashMap<String, String> = HashMap::new();
            let span = self.inst.start_send(
                Outgoing::new(Operation::new("send", OperationType::Send), "orders"),
                &mut headers,
            );
            let (tx, rx) = oneshot::channel();
            let on_answer = Counting {
                answered: self.answered.clone(),
                abandoned: self.abandoned.clone(),
            };
            (tx, Answer::new(rx, Some(span), on_answer))
        }

        fn calls(&self) -> (usize, usize) {
            (
                self.answered.load(Ordering::SeqCst),
                self.abandoned.load(Ordering::SeqCst),
            )
        }
    }

    fn has_event(span: &opentelemetry_sdk::trace::SpanData, name: &str) -> bool {
        span.events.iter().any(|e| e.name == name)
    }

    #[tokio::test]
    async fn awaited_it_resolves_to_the_answer_and_ends_the_span_with_it() {
        let f = Fixture::new();
        let (tx, mut answer) = f.answer();
        assert!(answer.span_context().is_some_and(SpanContext::is_valid));
        let trace_id = answer.span_context().map(SpanContext::trace_id);
        tx.send(Ok(42)).expect("the answer is awaited");
        assert_eq!((&mut answer).await, Ok(Ok(42)));
        assert_eq!(f.calls(), (1, 0));
        assert!(answer.is_done() && answer.span_context().is_none());
        let spans = f.telemetry.spans();
        let span = spans.one("send orders");
        assert_eq!(Some(span.span_context.trace_id()), trace_id);
        assert_eq!(span.attr_i64("test.id"), Some(42));
        assert!(!span.is_error());
        assert!(!has_event(span, "mqtrace.send.abandoned"));
    }

    #[tokio::test]
    async fn a_refusal_ends_the_span_as_an_error() {
        let f = Fixture::new();
        let (tx, answer) = f.answer();
        tx.send(Err("nack".to_owned()))
            .expect("the answer is awaited");
        assert_eq!(answer.await, Ok(Err("nack".to_owned())));
        let spans = f.telemetry.spans();
        let span = spans.one("send orders");
        assert!(span.is_error());
        assert_eq!(span.attr_str("error.type"), Some("refused"));
    }

    #[tokio::test]
    async fn polled_after_completion_it_resolves_at_once_to_the_documented_error() {
        let f = Fixture::new();
        let (tx, mut answer) = f.answer();
        tx.send(Ok(1)).expect("the answer is awaited");
        assert_eq!((&mut answer).await, Ok(Ok(1)));
        for _ in 0..2 {
            let again = tokio::time::timeout(std::time::Duration::from_secs(1), &mut answer)
                .await
                .expect("a poll after completion must not stay pending");
            assert_eq!(again, Ok(Err("polled after completion".to_owned())));
        }
        assert_eq!(f.calls(), (1, 0), "the span ends once");
        assert_eq!(f.telemetry.spans().named("send orders").len(), 1);
    }

    #[tokio::test]
    async fn dropped_in_a_runtime_the_span_ends_when_the_broker_answers() {
        let f = Fixture::new();
        let (tx, answer) = f.answer();
        drop(answer);
        tokio::task::yield_now().await;
        assert_eq!(f.calls(), (0, 0), "still waiting for the answer");
        assert!(f.telemetry.spans().find("send orders").is_none());
        tx.send(Ok(9)).expect("the answer is awaited");
        for _ in 0..100 {
            if f.calls().0 == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(f.calls(), (1, 0));
        let spans = f.telemetry.spans();
        let span = spans.one("send orders");
        assert_eq!(span.attr_i64("test.id"), Some(9));
        assert!(!has_event(span, "mqtrace.send.abandoned"));
    }

    #[test]
    fn dropped_outside_a_runtime_the_span_ends_at_once_with_the_reason() {
        let f = Fixture::new();
        let (_tx, answer) = f.answer();
        drop(answer);
        assert_eq!(f.calls(), (0, 1));
        let spans = f.telemetry.spans();
        let span = spans.one("send orders");
        assert!(has_event(span, "mqtrace.send.abandoned"));
        assert_eq!(span.attr_str(ABANDON_REASON), Some(NO_RUNTIME));
    }

    #[tokio::test]
    async fn without_a_span_it_only_forwards_the_answer() {
        let f = Fixture::new();
        let (tx, rx) = oneshot::channel();
        let on_answer = Counting {
            answered: f.answered.clone(),
            abandoned: f.abandoned.clone(),
        };
        let mut answer = Answer::new(rx, None, on_answer);
        tx.send(Ok(3)).expect("the answer is awaited");
        assert_eq!((&mut answer).await, Ok(Ok(3)));
        assert_eq!(f.calls(), (0, 0));
        assert_eq!(
            (&mut answer).await,
            Ok(Err("polled after completion".to_owned()))
        );
    }
}
