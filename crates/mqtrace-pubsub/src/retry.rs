//! Retries after a delay and dead-lettering on Pub/Sub, driven by a [`RetryPolicy`].

use crate::handler::TracedHandler;
use crate::publisher::TracedPublisher;
use crate::subscriber::{StreamTracer, TracedMessageStream};
use crate::{ACK, GOOGCLIENT_TRACEPARENT, GOOGCLIENT_TRACESTATE, NACK, short_name};
use google_cloud_pubsub::error::{AckError, PublishError};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::ShutdownToken;
use google_cloud_pubsub::subscriber::handler::Handler;
use mqtrace::retry::{self, Decision, HandlerError, RetryDelivery, RetryPolicy};
use mqtrace::{Outcome, Traced as _, instrument::Settle};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The attribute of a retry copy saying when it is due: epoch milliseconds, as text (the same
/// name and format as the Kafka crate's retry header).
pub const NOT_BEFORE_ATTRIBUTE: &str = mqtrace::retry::NOT_BEFORE_HEADER;

/// The attributes mqtrace writes on a copy, dropped from the original before they are
/// rewritten.
const OWN_ATTRIBUTES: [&str; 5] = [
    mqtrace::ATTEMPT_HEADER,
    retry::PREVIOUS_ATTEMPT_HEADER,
    retry::ORIGIN_HEADER,
    retry::DEAD_LETTER_REASON_HEADER,
    NOT_BEFORE_ATTRIBUTE,
];

/// How long a [`RetryStream`] holds a copy at most by default: the subscriber client's default
/// maximum lease, past which Pub/Sub would deliver the copy again anyway.
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60 * 60);

/// Retries after a delay through a retry topic, and dead-lettering to a dead-letter topic, for
/// one subscription, with a [`RetryPolicy`].
///
/// How the decisions of [`mqtrace::retry`] map onto Pub/Sub:
///
/// | decision | what happens |
/// | --- | --- |
/// | ack | the message is acked (outcome `ack`) |
/// | retry after a delay | a copy (same data, attributes and ordering key) is published to the **retry topic** with `mqtrace-attempt` (the next attempt), `mqtrace-previous-attempt` (this attempt's process span), `mqtrace-origin` (the first delivery's creation context) and `mqtrace-not-before` (when it is due, epoch milliseconds); then the original is acked (outcome `retry`) |
/// | dead-letter | a copy with the same history and `mqtrace-dead-letter-reason` is published to the **dead-letter topic**; then the original is acked (outcome `dead_letter`) |
///
/// The copy is published inside the attempt's process span (its `create` span is a child of
/// it) and the publish is awaited *before* the original is acked, so a failure in between gives
/// a duplicate, never a loss. If the publish fails, the original is nacked instead (outcome
/// `requeue`: Pub/Sub delivers it again) and the error is returned.
///
/// The retry topic is this subscription's own: create a topic and a subscription on it for
/// each subscription that retries (e.g. `billing-retry`), and read both with a
/// [`RetryStream`] ([`RetryTopics::stream`]). It holds each copy, without a process span,
/// until it is due, while the client keeps extending its lease, and meanwhile hands out what
/// else arrives: a copy never blocks other messages, and one retry topic serves every delay.
/// Set the retry subscription's maximum lease above the policy's longest delay.
///
/// **Why not nack and the subscription's retry policy?** A nack cannot change the message, so
/// the next attempt could not name the attempt before it: every attempt's process span would be
/// a child of the original create span, with no `previous_attempt` link to read "attempt 3 of
/// 5" by. Pub/Sub counts attempts (`delivery_attempt`) only on subscriptions with a
/// dead-letter policy (5 to 100 attempts, the policy's own count), backs off by the
/// subscription's settings (at most 600 s) rather than the [`RetryPolicy`], and dead-letters
/// without saying why. Republishing gives the exact attempt number on every delivery, the
/// chain of linked attempts in one trace, the policy's backoff and jitter, and the reason on
/// the dead-lettered message. A subscription's own dead-letter policy can stay as a backstop:
/// Pub/Sub's redeliveries of a copy add to the attempt it carries.
///
/// **Ordering and duplicates.** A retried message is handled after the messages that followed
/// it, even with an ordering key (the copy keeps the key; enable ordering on the retry
/// subscription to keep copies of a key in order among themselves). Pub/Sub delivers at least
/// once, so a crash between publishing the copy and acking the original, or an expired lease,
/// delivers a message twice: handlers must be idempotent.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use mqtrace::retry::{HandlerError, RetryPolicy};
/// use mqtrace_pubsub::{Emulator, RetryTopics, TracedPublisher, TracedSubscriber};
///
/// let emulator = Emulator::new("127.0.0.1:8085");
/// let inst = emulator.instrumentation(mqtrace::Config::new());
/// let (retry, dlq) = ("projects/p/topics/billing-retry", "projects/p/topics/billing-dlq");
/// let retries = RetryTopics::new(
///     TracedPublisher::new(emulator.publisher(retry).build().await?, retry, inst.clone()),
///     TracedPublisher::new(emulator.publisher(dlq).build().await?, dlq, inst.clone()),
///     RetryPolicy::exponential(5),
/// );
/// let subscriber = TracedSubscriber::new(emulator.subscriber().build().await?, inst);
/// let mut messages = retries.stream(
///     subscriber.subscribe("projects/p/subscriptions/billing").build(),
///     subscriber.subscribe("projects/p/subscriptions/billing-retry").build(),
/// );
/// while let Some((message, handler)) = messages.next().await.transpose()? {
///     retries.handle(message, handler, async |m| {
///         let order: u64 = std::str::from_utf8(&m.data)
///             .map_err(HandlerError::permanent)?
///             .parse()
///             .map_err(HandlerError::permanent)?;
///         let _ = (order, m.attempt()); // transient errors (`?` on any error) are retried
///         Ok(())
///     }).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RetryTopics {
    targets: Arc<Targets>,
    policy: RetryPolicy,
    time_limit: Option<Duration>,
}

/// Where copies go. Shared with each message's [`Retrying`], which owns what it uses: a future
/// of `handle` that borrowed `RetryTopics` there would not be `Send` (the compiler cannot prove
/// the async closure general enough over that borrow).
#[derive(Debug)]
struct Targets {
    retry: TracedPublisher,
    dead_letter: TracedPublisher,
}

/// A received message and its traced handler, as a [`RetryTopics::handle`] handler sees it:
/// the message's fields through `Deref`, and the attempt.
///
/// ```no_run
/// # fn demo(m: &mqtrace_pubsub::Received) {
/// println!("{} bytes, attempt {}", m.data.len(), m.attempt());
/// # }
/// ```
#[derive(Debug)]
pub struct Received {
    message: Message,
    handler: TracedHandler,
}

impl Received {
    /// The message.
    ///
    /// ```no_run
    /// # fn demo(m: &mqtrace_pubsub::Received) {
    /// let _attributes = &m.message().attributes;
    /// # }
    /// ```
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The traced handler (its process span, attempt, context).
    ///
    /// ```no_run
    /// # fn demo(m: &mqtrace_pubsub::Received) {
    /// use mqtrace_pubsub::prelude::*;
    /// println!("trace {}", m.handler().span_context().trace_id());
    /// # }
    /// ```
    pub fn handler(&self) -> &TracedHandler {
        &self.handler
    }

    /// The delivery attempt (1 = first delivery; see [`TracedHandler::attempt`], 1 when unknown).
    ///
    /// ```no_run
    /// # fn demo(m: &mqtrace_pubsub::Received) {
    /// if m.attempt() > 1 { println!("a retry"); }
    /// # }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.handler.attempt()
    }
}

impl Deref for Received {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

/// Why [`RetryTopics::handle`] could not carry out its decision.
///
/// ```
/// use google_cloud_pubsub::error::PublishError;
/// let e = mqtrace_pubsub::RetryError::Publish {
///     topic: "projects/p/topics/billing-dlq".into(),
///     source: PublishError::Shutdown,
/// };
/// assert!(e.to_string().contains("nacked"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum RetryError {
    /// The copy could not be published: the original was nacked, so Pub/Sub delivers it again.
    Publish {
        /// The topic the copy was for.
        topic: String,
        /// What the publisher said.
        source: PublishError,
    },
    /// The ack of the original was not confirmed (exactly-once subscriptions): the message
    /// comes again, and if a copy was published, it is handled twice.
    Ack(AckError),
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Publish { topic, source } => write!(
                f,
                "could not publish the copy to {topic} ({source}); the message was nacked and \
                 comes again"
            ),
            Self::Ack(e) => write!(
                f,
                "the ack was not confirmed ({e}); the message comes again"
            ),
        }
    }
}

impl std::error::Error for RetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Publish { source, .. } => Some(source),
            Self::Ack(e) => Some(e),
        }
    }
}

impl RetryTopics {
    /// Retries through `retry` (a publisher of this subscription's retry topic) and
    /// dead-letters through `dead_letter` (a publisher of its dead-letter topic), as `policy`
    /// decides. The topics must exist.
    ///
    /// ```no_run
    /// # fn demo(retry: mqtrace_pubsub::TracedPublisher, dlq: mqtrace_pubsub::TracedPublisher) {
    /// let retries = mqtrace_pubsub::RetryTopics::new(retry, dlq, mqtrace::retry::RetryPolicy::exponential(5));
    /// # let _ = retries; }
    /// ```
    pub fn new(retry: TracedPublisher, dead_letter: TracedPublisher, policy: RetryPolicy) -> Self {
        Self {
            targets: Arc::new(Targets { retry, dead_letter }),
            policy,
            time_limit: None,
        }
    }

    /// Gives each handler run at most `limit`; a handler that takes longer counts as a
    /// transient failure (`error.type = timeout`).
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_pubsub::RetryTopics) {
    /// let r = r.with_time_limit(std::time::Duration::from_secs(30));
    /// # let _ = r; }
    /// ```
    pub fn with_time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// The policy.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_pubsub::RetryTopics) {
    /// let _ = r.policy().max_attempts();
    /// # }
    /// ```
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The retry topic's full name.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_pubsub::RetryTopics) {
    /// println!("retries go to {}", r.retry_topic());
    /// # }
    /// ```
    pub fn retry_topic(&self) -> &str {
        self.targets.retry.topic()
    }

    /// The dead-letter topic's full name.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_pubsub::RetryTopics) {
    /// println!("dead letters go to {}", r.dead_letter_topic());
    /// # }
    /// ```
    pub fn dead_letter_topic(&self) -> &str {
        self.targets.dead_letter.topic()
    }

    /// The longest a copy is held: twice the policy's longest delay, whatever its
    /// `mqtrace-not-before` says (a guard against a wrong clock).
    fn longest_wait(&self) -> Duration {
        self.policy.delay_for(u32::MAX).saturating_mul(2)
    }

    /// Reads `main` (the subscription) and `retry` (the subscription of the retry topic) as one
    /// stream that holds each copy until it is due; see [`RetryStream`].
    ///
    /// See the example on [`RetryTopics`].
    pub fn stream(&self, main: TracedMessageStream, retry: TracedMessageStream) -> RetryStream {
        RetryStream::new(main, retry).with_max_wait(self.longest_wait())
    }

    /// Runs `handler` for `message` (from the subscription or its retry subscription) and
    /// carries out what the policy decides: ack, retry after a delay, or dead-letter (see
    /// [`mqtrace::retry::run`] for panics and time limits). The process span records the
    /// outcome (`ack`, `retry`, `dead_letter`, or `requeue` when a copy could not be
    /// published) and the attempt the policy counted (`mqtrace.delivery.attempt`, 1 for a
    /// message that neither Pub/Sub nor a copy numbers).
    ///
    /// A copy that is not yet due (read without a [`RetryStream`]) is first waited for, inside
    /// its process span (an event `mqtrace.retry.wait` says how long), for at most twice the
    /// policy's longest delay.
    ///
    /// Returns the decision, or why it could not be carried out (the message then comes
    /// again). See the example on [`RetryTopics`].
    pub async fn handle<F>(
        &self,
        message: Message,
        handler: TracedHandler,
        f: F,
    ) -> Result<Decision, RetryError>
    where
        F: AsyncFnOnce(&Received) -> Result<(), HandlerError>,
    {
        if handler.processing().attempt().is_none() {
            // Neither Pub/Sub nor a copy says: this is the first attempt as far as the policy
            // counts, and the span says so.
            let span = handler.context().span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new(mqtrace::attributes::DELIVERY_ATTEMPT, 1_i64));
            }
        }
        if let Some(wait) = retry::due_in(&message.attributes, self.longest_wait()) {
            retry::wait_in_span(handler.context(), wait).await;
        }
        let retrying = Retrying {
            received: Received { message, handler },
            targets: self.targets.clone(),
        };
        retry::run(
            retrying,
            &self.policy,
            self.time_limit,
            async |r: &Retrying| f(&r.received).await,
        )
        .await
    }

    /// Publishes a copy of `received` through `publisher` with its history for `attempt` and
    /// `extra`, inside its process span, and waits for the publish.
    async fn publish_copy(
        publisher: &TracedPublisher,
        received: &Received,
        attempt: u32,
        extra: (&str, String),
    ) -> Result<(), RetryError> {
        let m = &received.message;
        let propagation = publisher.instrumentation().config().propagation();
        let mut attributes: HashMap<String, String> = m
            .attributes
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                !OWN_ATTRIBUTES.contains(&k)
                    && k != GOOGCLIENT_TRACEPARENT
                    && k != GOOGCLIENT_TRACESTATE
                    && !propagation.is_field(k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        retry::write_history(
            &mut attributes,
            received.handler.span_context(),
            received.handler.origin(),
            attempt,
        );
        attributes.insert(extra.0.to_owned(), extra.1);
        let copy = Message::new()
            .set_data(m.data.clone())
            .set_ordering_key(m.ordering_key.clone())
            .set_attributes(attributes);
        let cx: Context = received.handler.context().clone();
        let published = async { publisher.publish(copy).await }
            .with_context(cx)
            .await;
        match published {
            Ok(_) => Ok(()),
            Err(source) => {
                if !m.ordering_key.is_empty() {
                    // A failed publish pauses the key; let the next copy of it through.
                    publisher.resume_publish(m.ordering_key.clone());
                }
                Err(RetryError::Publish {
                    topic: publisher.topic().to_owned(),
                    source,
                })
            }
        }
    }
}

struct Retrying {
    received: Received,
    targets: Arc<Targets>,
}

impl RetryDelivery for Retrying {
    type Error = RetryError;

    fn attempt(&self) -> u32 {
        self.received.attempt()
    }

    fn context(&self) -> &Context {
        self.received.handler.context()
    }

    async fn carry_out(self, decision: &Decision) -> Result<(), RetryError> {
        let t = &*self.targets;
        let (settle, published) = match decision {
            Decision::Ack => (Settle::new(ACK, Outcome::Ack), Ok(())),
            Decision::Retry {
                delay,
                next_attempt,
            } => {
                let due = retry::epoch_millis(SystemTime::now() + *delay);
                let published = RetryTopics::publish_copy(
                    &t.retry,
                    &self.received,
                    *next_attempt,
                    (NOT_BEFORE_ATTRIBUTE, due.to_string()),
                )
                .await;
                let reason = format!(
                    "retry in {delay:?} as attempt {next_attempt} through {}",
                    short_name(t.retry.topic())
                );
                (
                    Settle::new(ACK, Outcome::Retry).with_reason(reason),
                    published,
                )
            }
            Decision::DeadLetter { reason } => {
                let published = RetryTopics::publish_copy(
                    &t.dead_letter,
                    &self.received,
                    self.received.attempt(),
                    (retry::DEAD_LETTER_REASON_HEADER, reason.clone()),
                )
                .await;
                (
                    Settle::new(ACK, Outcome::DeadLetter).with_reason(reason.clone()),
                    published,
                )
            }
        };
        let handler = self.received.handler;
        if let Err(e) = published {
            let why = format!("could not publish the copy: {e}");
            // The nack hands the message back to Pub/Sub; its own failure changes nothing more.
            let _ = handler
                .settle_as(Settle::new(NACK, Outcome::Requeue).with_reason(why), false)
                .await;
            return Err(e);
        }
        handler
            .settle_as(settle, true)
            .await
            .map_err(RetryError::Ack)
    }
}

/// A copy waiting until it is due.
struct Held {
    due: Instant,
    seq: u64,
    message: Message,
    handler: Handler,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    /// Reversed, so the heap's top is the copy due first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The next item of a stream, with the stream given back.
type Pulled = (
    Box<TracedMessageStream>,
    Option<google_cloud_pubsub::Result<(Message, Handler)>>,
);

/// One stream's pull: idle, or in flight. An in-flight pull owns its stream and is kept across
/// calls of [`RetryStream::next`], never dropped half-way: the client's pull is not safe to
/// drop while it opens its stream (messages the service already handed to it would come again
/// only after their ack deadline).
enum Pull {
    Idle(Box<TracedMessageStream>),
    Pulling(Pin<Box<dyn Future<Output = Pulled> + Send>>),
    Ended,
}

impl Pull {
    /// Starts a pull if none is in flight; whether one is.
    fn start(&mut self) -> bool {
        if let Self::Idle(_) = self
            && let Self::Idle(mut stream) = std::mem::replace(self, Self::Ended)
        {
            *self = Self::Pulling(Box::pin(async move {
                let item = stream.next_raw().await;
                (stream, item)
            }));
        }
        matches!(self, Self::Pulling(_))
    }

    /// Waits for the pull in flight (pending forever if there is none: guard with `start`),
    /// and puts the stream back, or ends this pull if the stream ended.
    async fn finish(&mut self) -> Option<google_cloud_pubsub::Result<(Message, Handler)>> {
        let Self::Pulling(fut) = self else {
            return std::future::pending().await;
        };
        let (stream, item) = fut.await;
        *self = match item {
            Some(Ok(_)) => Self::Idle(stream),
            // An error closes the client's stream, as does its end.
            Some(Err(_)) | None => Self::Ended,
        };
        item
    }
}

/// A subscription and its retry subscription read as one stream: messages of the subscription
/// as they come, and copies of the retry subscription once they are due
/// (`mqtrace-not-before`), each with a [`TracedHandler`] whose process span starts when it is
/// handed out.
///
/// Copies that are not yet due are held in memory (the client keeps extending their lease, up
/// to the subscriber's maximum lease), so they never block other messages. Dropped or shut
/// down, the stream releases the copies it holds: Pub/Sub delivers them again.
///
/// ```no_run
/// # async fn demo(main: mqtrace_pubsub::TracedMessageStream, retry: mqtrace_pubsub::TracedMessageStream) {
/// let mut messages = mqtrace_pubsub::RetryStream::new(main, retry);
/// while let Some(Ok((message, handler))) = messages.next().await {
///     handler.ack();
/// #   let _ = message;
/// }
/// # }
/// ```
pub struct RetryStream {
    main: Pull,
    retry: Pull,
    main_tracer: StreamTracer,
    retry_tracer: StreamTracer,
    shutdown: [ShutdownToken; 2],
    held: BinaryHeap<Held>,
    seq: u64,
    max_wait: Duration,
}

impl fmt::Debug for RetryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryStream")
            .field("subscription", &self.main_tracer.subscription())
            .field("retry_subscription", &self.retry_tracer.subscription())
            .field("held", &self.held.len())
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl RetryStream {
    /// Reads `main` and `retry` together; a copy is held for at most an hour (the subscriber
    /// client's default maximum lease) whatever its due time says.
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::TracedSubscriber) {
    /// let messages = mqtrace_pubsub::RetryStream::new(
    ///     s.subscribe("projects/p/subscriptions/billing").build(),
    ///     s.subscribe("projects/p/subscriptions/billing-retry").build(),
    /// );
    /// # let _ = messages; }
    /// ```
    pub fn new(main: TracedMessageStream, retry: TracedMessageStream) -> Self {
        Self {
            main_tracer: main.tracer(),
            retry_tracer: retry.tracer(),
            shutdown: [main.shutdown_token(), retry.shutdown_token()],
            main: Pull::Idle(Box::new(main)),
            retry: Pull::Idle(Box::new(retry)),
            held: BinaryHeap::new(),
            seq: 0,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    /// Holds a copy for at most `max_wait`, whatever its due time says.
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::RetryStream) {
    /// let s = s.with_max_wait(std::time::Duration::from_secs(600));
    /// # let _ = s; }
    /// ```
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// How many copies are waiting until they are due.
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::RetryStream) {
    /// println!("{} retries pending", s.held());
    /// # }
    /// ```
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The next message of the subscription, or the next copy that is due, with its traced
    /// handler; an error of either stream; `None` once the subscription's stream has ended.
    /// Cancel-safe: a pull in flight and the copies held are kept for the next call.
    ///
    /// ```no_run
    /// # async fn demo(mut s: mqtrace_pubsub::RetryStream) -> Result<(), google_cloud_pubsub::Error> {
    /// while let Some((message, handler)) = s.next().await.transpose()? {
    ///     handler.ack();
    /// #   let _ = message;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Option<google_cloud_pubsub::Result<(Message, TracedHandler)>> {
        loop {
            let next_due = self.held.peek().map(|h| h.due);
            if next_due.is_some_and(|due| due <= Instant::now())
                && let Some(h) = self.held.pop()
            {
                let handler = self.retry_tracer.trace(&h.message, h.handler);
                return Some(Ok((h.message, handler)));
            }
            let main_open = self.main.start();
            let retry_open = self.retry.start();
            if !main_open {
                return None;
            }
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)),
                    if next_due.is_some() => {}
                item = self.retry.finish(), if retry_open => match item {
                    None => {}
                    Some(Err(e)) => return Some(Err(e)),
                    Some(Ok((message, handler))) => {
                        match retry::due_in(&message.attributes, self.max_wait) {
                            None => {
                                let handler = self.retry_tracer.trace(&message, handler);
                                return Some(Ok((message, handler)));
                            }
                            Some(wait) => {
                                self.seq = self.seq.wrapping_add(1);
                                self.held.push(Held {
                                    due: Instant::now() + wait,
                                    seq: self.seq,
                                    message,
                                    handler,
                                });
                            }
                        }
                    }
                },
                item = self.main.finish() => {
                    return item.map(|r| r.map(|(message, handler)| {
                        let handler = self.main_tracer.trace(&message, handler);
                        (message, handler)
                    }));
                }
            }
        }
    }

    /// Releases the held copies (Pub/Sub delivers them again) and shuts both streams down,
    /// waiting for their pending acks to be sent.
    ///
    /// ```no_run
    /// # async fn demo(s: mqtrace_pubsub::RetryStream) {
    /// s.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(mut self) {
        // Dropping a client handler nacks its message.
        self.held.clear();
        let [a, b] = self.shutdown.clone();
        tokio::join!(a.shutdown(), b.shutdown());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker may spawn `handle` and `next` on a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(r: &'static RetryTopics, s: &'static mut RetryStream, h: TracedHandler) {
        fn send<T: Send>(_: T) {}
        send(r.handle(Message::new(), h, async |m| {
            tokio::task::yield_now().await;
            let _ = m.attempt();
            Ok(())
        }));
        send(s.next());
    }

    #[test]
    fn due_times_are_read_capped_and_ignored_when_past_or_invalid() {
        let mut a = HashMap::new();
        assert_eq!(retry::due_in(&a, Duration::from_secs(10)), None);
        a.insert(NOT_BEFORE_ATTRIBUTE.to_owned(), "x".to_owned());
        assert_eq!(retry::due_in(&a, Duration::from_secs(10)), None);
        a.insert(NOT_BEFORE_ATTRIBUTE.to_owned(), "1000".to_owned());
        assert_eq!(
            retry::due_in(&a, Duration::from_secs(10)),
            None,
            "long past"
        );
        let soon = retry::epoch_millis(SystemTime::now() + Duration::from_secs(5));
        a.insert(NOT_BEFORE_ATTRIBUTE.to_owned(), soon.to_string());
        let w = retry::due_in(&a, Duration::from_secs(10)).expect("due later");
        assert!(
            w > Duration::from_secs(3) && w <= Duration::from_secs(5),
            "{w:?}"
        );
        assert_eq!(
            retry::due_in(&a, Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        a.insert(NOT_BEFORE_ATTRIBUTE.to_owned(), u64::MAX.to_string());
        assert!(
            retry::due_in(&a, Duration::from_secs(2)).is_none_or(|w| w <= Duration::from_secs(2))
        );
    }
}
