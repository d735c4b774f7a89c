//! Retries and dead-lettering with one vocabulary for every broker.
//!
//! A handler returns `Ok(())` or a [`HandlerError`] classified as transient or permanent. A
//! [`RetryPolicy`] turns the result and the delivery attempt into a [`Decision`]: acknowledge,
//! retry after a delay, or dead-letter. [`run`] drives one delivery through that: it runs the
//! handler inside the process span (catching panics and enforcing a time limit, both treated as
//! transient failures so the message is never lost), records the decision on the span, and asks
//! the broker crate to carry it out through [`RetryDelivery`]. Users can still settle by hand;
//! the policy is a convenience.
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use mqtrace::retry::{Decision, HandlerError, RetryPolicy};
//! let policy = RetryPolicy::exponential(3).with_initial_delay(Duration::from_millis(100)).with_jitter(0.0);
//! let failed: Result<(), HandlerError> = Err(HandlerError::transient("db timeout"));
//! assert_eq!(policy.decide(1, &failed), Decision::Retry { delay: Duration::from_millis(100), next_attempt: 2 });
//! assert!(matches!(policy.decide(3, &failed), Decision::DeadLetter { .. }));
//! assert_eq!(policy.decide(1, &Ok(())), Decision::Ack);
//! ```

use crate::attributes as attr;
use crate::carrier::{HeaderExtractor, Injector};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanContext;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header carrying the process span of the attempt before (a `traceparent` value).
pub const PREVIOUS_ATTEMPT_HEADER: &str = "mqtrace-previous-attempt";
/// Header carrying the creation context of the first delivery (a `traceparent` value).
pub const ORIGIN_HEADER: &str = "mqtrace-origin";
/// Header carrying why a message was dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "mqtrace-dead-letter-reason";

/// Header carrying when a retried copy is due (milliseconds since the Unix epoch), for brokers
/// without a delay of their own (Kafka, Pub/Sub): the consumer waits until then.
pub const NOT_BEFORE_HEADER: &str = "mqtrace-not-before";

/// `time` as milliseconds since the Unix epoch, the format of [`NOT_BEFORE_HEADER`].
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// assert_eq!(mqtrace::retry::epoch_millis(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
/// ```
pub fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When a copy is due, from its [`NOT_BEFORE_HEADER`]; `None` when absent or not a time.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::{Duration, UNIX_EPOCH};
/// let mut h: HashMap<String, String> = HashMap::new();
/// h.insert("mqtrace-not-before".into(), "1700000000000".into());
/// assert_eq!(mqtrace::retry::not_before(&h), Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
/// h.insert("mqtrace-not-before".into(), "soon".into());
/// assert_eq!(mqtrace::retry::not_before(&h), None);
/// ```
pub fn not_before(headers: &dyn HeaderExtractor) -> Option<SystemTime> {
    match headers.header(NOT_BEFORE_HEADER) {
        Some(Ok(v)) => v
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        _ => None,
    }
}

/// How long a copy must still wait before it is due, at most `max` (a guard against a wrong
/// clock or a forged header); `None` when it is due now.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::{Duration, SystemTime};
/// let mut h: HashMap<String, String> = HashMap::new();
/// let due = mqtrace::retry::epoch_millis(SystemTime::now() + Duration::from_secs(3600));
/// h.insert("mqtrace-not-before".into(), due.to_string());
/// assert_eq!(mqtrace::retry::due_in(&h, Duration::from_secs(1)), Some(Duration::from_secs(1)));
/// assert_eq!(mqtrace::retry::due_in(&HashMap::<String, String>::new(), Duration::from_secs(1)), None);
/// ```
pub fn due_in(headers: &dyn HeaderExtractor, max: Duration) -> Option<Duration> {
    let wait = not_before(headers)?
        .duration_since(SystemTime::now())
        .ok()?;
    Some(wait.min(max)).filter(|w| !w.is_zero())
}

/// Waits `wait` inside the process span of `cx`, recording the event `mqtrace.retry.wait`
/// (with `mqtrace.retry.wait.duration` in seconds) so the span shows why it took longer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// mqtrace::retry::wait_in_span(&opentelemetry::Context::new(), std::time::Duration::from_millis(1)).await;
/// # }
/// ```
pub async fn wait_in_span(cx: &Context, wait: Duration) {
    let span = cx.span();
    if span.is_recording() {
        span.add_event(
            "mqtrace.retry.wait",
            vec![KeyValue::new(
                "mqtrace.retry.wait.duration",
                wait.as_secs_f64(),
            )],
        );
    }
    tokio::time::sleep(wait).await;
}

/// The attempt history a retried or dead-lettered message carries in its headers.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct History {
    /// The process span of the attempt before.
    pub previous_attempt: Option<SpanContext>,
    /// The creation context of the first delivery.
    pub origin: Option<SpanContext>,
    /// Why the message was dead-lettered, on a copy sent to a dead-letter destination.
    pub dead_letter_reason: Option<String>,
}

/// Reads the attempt history from a message's headers (invalid values are ignored).
///
/// ```
/// use std::collections::HashMap;
/// let mut h: HashMap<String, String> = HashMap::new();
/// h.insert("mqtrace-origin".into(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
/// let history = mqtrace::retry::history(&h);
/// assert!(history.origin.is_some() && history.previous_attempt.is_none());
/// ```
pub fn history(headers: &dyn HeaderExtractor) -> History {
    let read = |key| match headers.header(key) {
        Some(Ok(v)) => crate::w3c::parse_traceparent(v).ok(),
        _ => None,
    };
    History {
        previous_attempt: read(PREVIOUS_ATTEMPT_HEADER),
        origin: read(ORIGIN_HEADER),
        dead_letter_reason: match headers.header(DEAD_LETTER_REASON_HEADER) {
            Some(Ok(v)) => Some(v.to_owned()),
            _ => None,
        },
    }
}

/// Writes the history of a message about to be retried or dead-lettered: the next attempt
/// number, the current process span as the previous attempt, and the origin.
///
/// ```
/// use std::collections::HashMap;
/// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
/// let sc = SpanContext::new(TraceId::from(1_u128), SpanId::from(2_u64), TraceFlags::SAMPLED, false, TraceState::NONE);
/// let mut h: HashMap<String, String> = HashMap::new();
/// mqtrace::retry::write_history(&mut h, &sc, Some(&sc), 2);
/// assert_eq!(h["mqtrace-attempt"], "2");
/// assert!(h.contains_key("mqtrace-previous-attempt") && h.contains_key("mqtrace-origin"));
/// ```
pub fn write_history(
    injector: &mut dyn Injector,
    process: &SpanContext,
    origin: Option<&SpanContext>,
    next_attempt: u32,
) {
    injector.set(crate::ATTEMPT_HEADER, next_attempt.to_string());
    if process.is_valid() {
        injector.set(
            PREVIOUS_ATTEMPT_HEADER,
            crate::w3c::encode_traceparent(process),
        );
    }
    if let Some(o) = origin.filter(|o| o.is_valid()) {
        injector.set(ORIGIN_HEADER, crate::w3c::encode_traceparent(o));
    }
}

/// Whether a failure may go away on another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying (a timeout, an unavailable dependency).
    Transient,
    /// Will fail again (invalid input): dead-letter at once.
    Permanent,
}

/// A handler's failure, classified.
///
/// Any `std::error::Error` converts into a transient `HandlerError` with `?`; mark permanent
/// failures explicitly.
///
/// ```
/// use mqtrace::retry::{ErrorClass, HandlerError};
/// fn parse(body: &[u8]) -> Result<u32, HandlerError> {
///     let text = std::str::from_utf8(body).map_err(HandlerError::permanent)?;
///     text.parse::<u32>().map_err(|e| HandlerError::permanent(e).with_error_type("invalid_order"))
/// }
/// assert_eq!(parse(b"x").unwrap_err().class(), ErrorClass::Permanent);
/// let io: HandlerError = std::io::Error::other("db down").into();
/// assert_eq!(io.class(), ErrorClass::Transient);
/// ```
pub struct HandlerError {
    class: ErrorClass,
    error_type: Cow<'static, str>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("class", &self.class)
            .field("error_type", &self.error_type)
            .field("source", &self.source.to_string())
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        Self::transient(e)
    }
}

impl HandlerError {
    fn new(class: ErrorClass, source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Self {
            class,
            error_type: Cow::Borrowed(match class {
                ErrorClass::Transient => "transient",
                ErrorClass::Permanent => "permanent",
            }),
            source,
        }
    }

    /// A failure worth retrying.
    ///
    /// ```
    /// let e = mqtrace::retry::HandlerError::transient("inventory service unavailable");
    /// assert_eq!(e.to_string(), "inventory service unavailable");
    /// ```
    pub fn transient(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorClass::Transient, e.into())
    }

    /// A failure that will not go away: the message is dead-lettered without retrying.
    ///
    /// ```
    /// let e = mqtrace::retry::HandlerError::permanent("order has no items");
    /// assert_eq!(e.class(), mqtrace::retry::ErrorClass::Permanent);
    /// ```
    pub fn permanent(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorClass::Permanent, e.into())
    }

    /// Sets the low-cardinality `error.type` recorded for this failure (default: the class).
    ///
    /// ```
    /// let e = mqtrace::retry::HandlerError::permanent("bad").with_error_type("validation");
    /// assert_eq!(e.error_type(), "validation");
    /// ```
    pub fn with_error_type(mut self, error_type: impl Into<Cow<'static, str>>) -> Self {
        self.error_type = error_type.into();
        self
    }

    /// The class.
    ///
    /// ```
    /// assert_eq!(mqtrace::retry::HandlerError::transient("x").class(), mqtrace::retry::ErrorClass::Transient);
    /// ```
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The `error.type` value.
    ///
    /// ```
    /// assert_eq!(mqtrace::retry::HandlerError::transient("x").error_type(), "transient");
    /// ```
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    /// The underlying error.
    ///
    /// ```
    /// let e = mqtrace::retry::HandlerError::transient("x");
    /// assert_eq!(e.source_error().to_string(), "x");
    /// ```
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.source.as_ref()
    }
}

/// What to do with a message after its handler ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledge: processing succeeded.
    Ack,
    /// Deliver again after `delay`, as attempt `next_attempt`.
    Retry {
        /// How long to wait before the next attempt.
        delay: Duration,
        /// The attempt number the next delivery will carry.
        next_attempt: u32,
    },
    /// Send to the dead-letter destination, with the reason recorded.
    DeadLetter {
        /// Why, recorded on the span and in the dead-lettered message's headers.
        reason: String,
    },
}

/// Attempts, backoff and jitter.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// let p = mqtrace::retry::RetryPolicy::exponential(5)
///     .with_initial_delay(Duration::from_millis(200))
///     .with_multiplier(2.0)
///     .with_max_delay(Duration::from_secs(1))
///     .with_jitter(0.0);
/// assert_eq!(p.delay_for(1), Duration::from_millis(200));
/// assert_eq!(p.delay_for(2), Duration::from_millis(400));
/// assert_eq!(p.delay_for(4), Duration::from_secs(1)); // capped
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
}

impl RetryPolicy {
    /// Up to `max_attempts` deliveries in all (1 = no retry), exponential backoff from 1 s,
    /// doubling, capped at 5 minutes, with 20 % jitter.
    ///
    /// ```
    /// assert_eq!(mqtrace::retry::RetryPolicy::exponential(3).max_attempts(), 3);
    /// ```
    pub fn exponential(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }

    /// The delay before the second attempt.
    ///
    /// ```
    /// let _ = mqtrace::retry::RetryPolicy::exponential(3).with_initial_delay(std::time::Duration::from_millis(50));
    /// ```
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The longest delay.
    ///
    /// ```
    /// let _ = mqtrace::retry::RetryPolicy::exponential(3).with_max_delay(std::time::Duration::from_secs(10));
    /// ```
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How much each delay grows over the one before (at least 1).
    ///
    /// ```
    /// let _ = mqtrace::retry::RetryPolicy::exponential(3).with_multiplier(3.0);
    /// ```
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Randomises each delay by up to this fraction either way (0 = none, clamped to 0..=1),
    /// so retries of a burst do not arrive together.
    ///
    /// ```
    /// let _ = mqtrace::retry::RetryPolicy::exponential(3).with_jitter(0.5);
    /// ```
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Deliveries allowed in all.
    ///
    /// ```
    /// assert_eq!(mqtrace::retry::RetryPolicy::exponential(0).max_attempts(), 1);
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay after failed attempt `attempt` (1-based), before jitter is applied by
    /// [`RetryPolicy::decide`].
    ///
    /// ```
    /// let p = mqtrace::retry::RetryPolicy::exponential(3).with_jitter(0.0);
    /// assert_eq!(p.delay_for(1), std::time::Duration::from_secs(1));
    /// ```
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        let capped = secs.min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_delay)
    }

    fn jittered(&self, delay: Duration) -> Duration {
        if self.jitter == 0.0 {
            return delay;
        }
        // A uniform draw in [-1, 1) from the standard library's randomly keyed hasher.
        let mut h = RandomState::new().build_hasher();
        h.write_u64(delay.as_nanos() as u64);
        let unit = (h.finish() >> 11) as f64 / (1_u64 << 53) as f64;
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        let secs = (delay.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(delay)
    }

    /// Turns a handler's result for delivery `attempt` into a decision.
    ///
    /// ```
    /// use mqtrace::retry::{Decision, HandlerError, RetryPolicy};
    /// let p = RetryPolicy::exponential(5);
    /// let d = p.decide(2, &Err(HandlerError::permanent("no items")));
    /// assert_eq!(d, Decision::DeadLetter { reason: "permanent failure: no items".into() });
    /// ```
    pub fn decide(&self, attempt: u32, result: &Result<(), HandlerError>) -> Decision {
        match result {
            Ok(()) => Decision::Ack,
            Err(e) if e.class == ErrorClass::Permanent => Decision::DeadLetter {
                reason: format!("permanent failure: {e}"),
            },
            Err(e) if attempt >= self.max_attempts => Decision::DeadLetter {
                reason: format!(
                    "gave up after {attempt} of {} attempts: {e}",
                    self.max_attempts
                ),
            },
            Err(_) => Decision::Retry {
                delay: self.jittered(self.delay_for(attempt)),
                next_attempt: attempt.saturating_add(1),
            },
        }
    }
}

/// What a broker crate provides so [`run`] can drive one delivery.
///
/// Implemented by each broker's delivery type; users normally call the broker crate's
/// `handle_with` method rather than this trait.
pub trait RetryDelivery: Sized {
    /// The broker client's error.
    type Error;

    /// The delivery attempt (1 = first delivery).
    fn attempt(&self) -> u32;

    /// The context holding the process span (handlers run inside it).
    fn context(&self) -> &Context;

    /// Carries out `decision` on the broker (ack; schedule a retry with the attempt and the
    /// history in headers; or dead-letter with the reason), ending the process span.
    fn carry_out(self, decision: &Decision)
    -> impl Future<Output = Result<(), Self::Error>> + Send;
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

/// Runs `handler` for `delivery` under `policy` and carries out the decision.
///
/// The handler runs inside the process span. A panic is caught and treated as a transient
/// failure (`error.type = panic`); so is exceeding `time_limit` (`error.type = timeout`), so
/// the message is retried or dead-lettered, never lost. The process span records
/// `mqtrace.retry.max_attempts`, and on retry `mqtrace.retry.delay` (seconds).
///
/// Returns the decision that was carried out, or the broker's error if carrying it out
/// failed (the message then stays with the broker, which redelivers it).
///
/// ```no_run
/// # async fn demo<D: mqtrace::retry::RetryDelivery>(delivery: D) {
/// use mqtrace::retry::{HandlerError, RetryPolicy, run};
/// let policy = RetryPolicy::exponential(5);
/// let decision = run(delivery, &policy, Some(std::time::Duration::from_secs(30)), async |d: &D| {
///     let _ = d.attempt();
///     Ok::<(), HandlerError>(())
/// }).await;
/// # let _ = decision; }
/// ```
pub async fn run<D, F>(
    delivery: D,
    policy: &RetryPolicy,
    time_limit: Option<Duration>,
    handler: F,
) -> Result<Decision, D::Error>
where
    D: RetryDelivery,
    F: AsyncFnOnce(&D) -> Result<(), HandlerError>,
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
    let span = cx.span();
    if span.is_recording() {
        span.set_attribute(KeyValue::new(
            attr::RETRY_MAX_ATTEMPTS,
            i64::from(policy.max_attempts()),
        ));
        if let Decision::Retry { delay, .. } = &decision {
            span.set_attribute(KeyValue::new(attr::RETRY_DELAY, delay.as_secs_f64()));
        }
        if let Err(e) = &result {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, e.error_type.clone()));
            span.add_event(
                "exception",
                vec![KeyValue::new("exception.message", e.to_string())],
            );
        }
    }
    delivery.carry_out(&decision).await?;
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_fraction_and_the_cap() {
        let p = RetryPolicy::exponential(10)
            .with_initial_delay(Duration::from_millis(1000))
            .with_jitter(0.2);
        for _ in 0..200 {
            let Decision::Retry {
                delay,
                next_attempt,
            } = p.decide(1, &Err(HandlerError::transient("x")))
            else {
                panic!("expected a retry");
            };
            assert_eq!(next_attempt, 2);
            assert!(
                delay >= Duration::from_millis(800) && delay <= Duration::from_millis(1200),
                "{delay:?}"
            );
        }
        let capped = RetryPolicy::exponential(30).with_max_delay(Duration::from_secs(2));
        assert!(capped.delay_for(25) <= Duration::from_secs(2));
    }

    #[test]
    fn last_attempt_dead_letters_with_the_history_in_the_reason() {
        let p = RetryPolicy::exponential(3);
        assert_eq!(
            p.decide(3, &Err(HandlerError::transient("db down"))),
            Decision::DeadLetter {
                reason: "gave up after 3 of 3 attempts: db down".into()
            }
        );
    }

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
