//! The retry flow, once for every broker: [`run`] runs the handler, asks the policy, and
//! carries the decision out through the three primitives a broker crate supplies
//! ([`RetryBroker`]).

use super::error::{HandlerError, RetryError};
use super::history::{CopyHeaders, CopyTo};
use super::policy::{Decision, RetryPolicy};
use crate::Outcome;
use crate::attributes as attr;
use crate::instrument::Processing;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// How the original is settled once its decision is carried out: the outcome the process
/// span records, and why.
///
/// ```
/// let s = mqtrace::retry::Settlement { outcome: mqtrace::Outcome::Ack, reason: None };
/// assert_eq!(s.outcome, mqtrace::Outcome::Ack);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// `ack`, `retry` or `dead_letter`.
    pub outcome: Outcome,
    /// Why (`mqtrace.outcome.reason`): the retry's delay and destination, or the dead-letter
    /// reason.
    pub reason: Option<String>,
}

/// What a broker crate supplies so [`run`] can carry out a decision for one delivery: where
/// the delivery stands (its attempt and process span) and three primitives, publishing a
/// copy, requeueing the original, and settling it. Everything else (the handler run, the
/// decision, the copy's headers, the outcomes and reasons, the order of the steps) is the
/// core's.
///
/// Implemented by each broker crate's private per-delivery type; users call the broker
/// crate's `RetryQueues::handle` / `RetryTopics::handle` instead.
///
/// ```no_run
/// use mqtrace::instrument::Processing;
/// use mqtrace::retry::{CopyHeaders, CopyTo, RetryBroker, Settlement};
/// struct Delivery { processing: Processing }
/// impl RetryBroker for Delivery {
///     type PublishError = std::io::Error;
///     type SettleError = std::io::Error;
///     const DELAYS_COPIES: bool = false;
///     fn processing(&self) -> &Processing { &self.processing }
///     fn destination(&self, to: &CopyTo<'_>) -> String {
///         match to { CopyTo::Retry { .. } => "orders.retry".into(), CopyTo::DeadLetter { .. } => "orders.dlq".into() }
///     }
///     async fn publish_copy(&self, _to: &CopyTo<'_>, _headers: &CopyHeaders) -> std::io::Result<()> { Ok(()) }
///     async fn requeue(self, _reason: String) {}
///     async fn settle(self, _settlement: Settlement) -> std::io::Result<()> { Ok(()) }
/// }
/// ```
pub trait RetryBroker: Sized {
    /// The client's error when declaring or publishing.
    type PublishError: fmt::Display;
    /// The client's error when settling.
    type SettleError;

    /// Whether the broker delays a retry copy by itself (RabbitMQ: a per-message expiration
    /// on a delay queue); when false the copy carries
    /// [`NOT_BEFORE_HEADER`](super::NOT_BEFORE_HEADER) and the consumer waits.
    const DELAYS_COPIES: bool;

    /// The delivery's process span, held by its traced message ([`crate::Traced::processing`]):
    /// where the delivery stands.
    fn processing(&self) -> &Processing;

    /// The delivery attempt (1 = first delivery).
    fn attempt(&self) -> u32 {
        self.processing().attempt().unwrap_or(1)
    }

    /// The context holding the process span (the handler runs inside it).
    fn context(&self) -> &Context {
        self.processing().context()
    }

    /// The process span's context, written into the copy as the previous attempt.
    fn span_context(&self) -> &SpanContext {
        self.processing().span_context()
    }

    /// The creation context of the message's first delivery, written into the copy.
    fn origin(&self) -> Option<&SpanContext> {
        self.processing().origin()
    }

    /// The name of the destination a copy going `to` is published to (for reasons and
    /// errors).
    fn destination(&self, to: &CopyTo<'_>) -> String;

    /// Primitive 1: publishes a copy of the message (payload, key, properties and the user's
    /// headers unchanged, without [`OWNED_HEADERS`](super::OWNED_HEADERS)) with `headers`
    /// added, to the destination of `to`, inside the process span, and waits until the broker
    /// has it (confirm, delivery report, publish result).
    fn publish_copy(
        &self,
        to: &CopyTo<'_>,
        headers: &CopyHeaders,
    ) -> impl Future<Output = Result<(), Self::PublishError>> + Send;

    /// Primitive 2: gives the original back to the broker, which delivers it again (nack with
    /// requeue, seek back), ending the process span with outcome `requeue` and `reason`.
    /// Called when the copy could not be published; its own failure changes nothing more.
    fn requeue(self, reason: String) -> impl Future<Output = ()> + Send;

    /// Primitive 3: settles the original (ack, commit), ending the process span with the
    /// settlement's outcome and reason.
    fn settle(
        self,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), Self::SettleError>> + Send;
}

/// Catches a panic in the wrapped future.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Poll::Ready(Err(msg))
            }
        }
    }
}

#[derive(Debug)]
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// Runs `handler` for `delivery` under `policy` and carries out the decision through the
/// broker's primitives.
///
/// The handler runs inside the process span. A panic is caught and treated as a transient
/// failure (`error.type = panic`); so is exceeding `time_limit` (`error.type = timeout`), so
/// the message is retried or dead-lettered, never lost. The process span records
/// `mqtrace.retry.max_attempts`, on retry `mqtrace.retry.delay` (seconds), and on failure
/// `error.type` and an `exception` event.
///
/// Then: ack → [`RetryBroker::settle`] (outcome `ack`); retry → a copy to the retry
/// destination of the next attempt ([`RetryBroker::publish_copy`]), then settle (outcome
/// `retry`, reason `retry in {delay} as attempt {n} through {destination}`); dead-letter → a
/// copy with the reason to the dead-letter destination, then settle (outcome `dead_letter`,
/// the reason). The copy is published before the original is settled, so a failure in between
/// gives a duplicate, never a loss; if publishing fails the original is requeued
/// ([`RetryBroker::requeue`], reason `could not publish the copy to {destination}: {error}`)
/// and [`RetryError::Copy`] returned.
///
/// ```no_run
/// # async fn demo<B: mqtrace::retry::RetryBroker>(delivery: B) {
/// use mqtrace::retry::{HandlerError, RetryPolicy, run};
/// let policy = RetryPolicy::exponential(5);
/// let decision = run(delivery, &policy, Some(std::time::Duration::from_secs(30)), async |d: &B| {
///     let _ = d.attempt();
///     Ok::<(), HandlerError>(())
/// }).await;
/// # let _ = decision; }
/// ```
pub async fn run<B, F>(
    delivery: B,
    policy: &RetryPolicy,
    time_limit: Option<Duration>,
    handler: F,
) -> Result<Decision, RetryError<B::PublishError, B::SettleError>>
where
    B: RetryBroker,
    F: AsyncFnOnce(&B) -> Result<(), HandlerError>,
{
    let cx = delivery.context().clone();
    let attempt = delivery.attempt();
    let guarded = CatchUnwind(Box::pin(handler(&delivery).with_context(cx.clone())));
    let outcome = match time_limit {
        Some(limit) => match tokio::time::timeout(limit, guarded).await {
            Ok(r) => r,
            Err(_) => Ok(Err(HandlerError::transient(Failure(format!(
                "handler exceeded its time limit of {limit:?}"
            )))
            .with_error_type("timeout"))),
        },
        None => guarded.await,
    };
    let result = match outcome {
        Ok(r) => r,
        Err(panic) => Err(
            HandlerError::transient(Failure(format!("handler panicked: {panic}")))
                .with_error_type("panic"),
        ),
    };
    let decision = policy.decide(attempt, &result);
    record(&cx, policy, &decision, &result);
    carry_out(delivery, &decision).await?;
    Ok(decision)
}

/// Records the decision's attributes on the process span.
fn record(
    cx: &Context,
    policy: &RetryPolicy,
    decision: &Decision,
    result: &Result<(), HandlerError>,
) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    span.set_attribute(KeyValue::new(
        attr::RETRY_MAX_ATTEMPTS,
        i64::from(policy.max_attempts()),
    ));
    if let Decision::Retry { delay, .. } = decision {
        span.set_attribute(KeyValue::new(attr::RETRY_DELAY, delay.as_secs_f64()));
    }
    if let Err(e) = result {
        span.set_attribute(KeyValue::new(attr::ERROR_TYPE, e.error_type_value()));
        span.add_event(
            "exception",
            vec![KeyValue::new("exception.message", e.to_string())],
        );
    }
}

/// Carries out `decision`: publish the copy (if any), requeue on failure, else settle.
async fn carry_out<B: RetryBroker>(
    delivery: B,
    decision: &Decision,
) -> Result<(), RetryError<B::PublishError, B::SettleError>> {
    let (to, outcome) = match decision {
        Decision::Ack => {
            return delivery
                .settle(Settlement {
                    outcome: Outcome::Ack,
                    reason: None,
                })
                .await
                .map_err(RetryError::Settle);
        }
        Decision::Retry {
            delay,
            next_attempt,
        } => (
            CopyTo::Retry {
                attempt: *next_attempt,
                delay: *delay,
            },
            Outcome::Retry,
        ),
        Decision::DeadLetter { reason } => (CopyTo::DeadLetter { reason }, Outcome::DeadLetter),
    };
    let destination = delivery.destination(&to);
    let headers = CopyHeaders::new(
        &to,
        delivery.span_context(),
        delivery.origin(),
        delivery.attempt(),
        !B::DELAYS_COPIES,
    );
    if let Err(source) = delivery.publish_copy(&to, &headers).await {
        delivery
            .requeue(format!(
                "could not publish the copy to {destination}: {source}"
            ))
            .await;
        return Err(RetryError::Copy {
            destination,
            source,
        });
    }
    let reason = match to {
        CopyTo::Retry { attempt, delay } => {
            format!("retry in {delay:?} as attempt {attempt} through {destination}")
        }
        CopyTo::DeadLetter { reason } => super::bounded_reason(reason).to_owned(),
    };
    delivery
        .settle(Settlement {
            outcome,
            reason: Some(reason),
        })
        .await
        .map_err(RetryError::Settle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_caught_as_failures() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let r = rt.block_on(CatchUnwind(Box::pin(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
        })));
        assert_eq!(r, Err("boom".to_owned()));
    }
}
