//! Retries after a delay and dead-lettering on Pub/Sub, driven by a [`RetryPolicy`]. The flow
//! is the core's ([`mqtrace::retry::run`]); this module supplies its three primitives
//! (publish a copy, nack, ack) and [`RetryStream`], which holds copies until they are due.

use crate::handler::TracedHandler;
use crate::publisher::TracedPublisher;
use crate::subscriber::{StreamTracer, TracedMessageStream};
use crate::{ACK, GOOGCLIENT_TRACEPARENT, GOOGCLIENT_TRACESTATE, NACK, short_name};
use google_cloud_pubsub::error::{AckError, PublishError};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::ShutdownToken;
use google_cloud_pubsub::subscriber::handler::Handler;
use mqtrace::instrument::Processing;
use mqtrace::retry::{
    self, CopyHeaders, CopyTo, Decision, HandlerError, RetryBroker, RetryPolicy, Settlement,
};
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
use std::time::Duration;
use tokio::time::Instant;

/// How long a [`RetryStream`] made with [`RetryStream::new`] holds a copy at most: the
/// subscriber client's default maximum lease, past which Pub/Sub would deliver the copy again
/// anyway. [`RetryTopics::stream`] holds for at most the policy's longest delay instead.
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
/// The copy is published inside the attempt's process span (its `send` span is a child of
/// it) and the publish is awaited *before* the original is acked, so a failure in between gives
/// a duplicate, never a loss. If the publish fails, the original is nacked instead (outcome
/// `requeue`: Pub/Sub delivers it again) and the error is returned.
///
/// The retry topic is this subscription's own: create a topic and a subscription on it for
/// each subscription that retries (e.g. `billing-retry`), name that subscription to
/// [`RetryTopics::declare`], and read both with a [`RetryStream`] ([`RetryTopics::stream`]).
/// It holds each copy, without a process span, until it is due (for at most the policy's
/// [`longest_delay`](RetryPolicy::longest_delay), whatever its `mqtrace-not-before` says),
/// while the client keeps extending its lease, and meanwhile hands out what else arrives: a
/// copy never blocks other messages, and one retry topic serves every delay. Set the retry
/// subscription's maximum lease above the policy's longest delay.
///
/// **Why not nack and the subscription's retry policy?** A nack cannot change the message, so
/// the next attempt could not name the attempt before it: every attempt's process span would be
/// a child of the original send span, with no `previous_attempt` link to read "attempt 3 of
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
/// let retries = RetryTopics::declare(
///     (
///         TracedPublisher::new(emulator.publisher(retry).build().await?, retry, inst.clone()),
///         TracedPublisher::new(emulator.publisher(dlq).build().await?, dlq, inst.clone()),
///     ),
///     "projects/p/subscriptions/billing-retry",
///     RetryPolicy::exponential(5),
/// ).await?;
/// let subscriber = TracedSubscriber::new(emulator.subscriber().build().await?, inst);
/// let mut messages = retries.stream(
///     subscriber.subscribe("projects/p/subscriptions/billing").build(),
///     subscriber.subscribe("projects/p/subscriptions/billing-retry").build(),
/// );
/// while let Some(delivery) = messages.next().await {
///     retries.handle(delivery?, async |m| {
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
    /// The retry subscription's short name.
    retry_subscription: Arc<str>,
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

/// Why [`RetryTopics`] could not be declared or could not carry out its decision: the core's
/// [`mqtrace::retry::RetryError`] over the publisher's error (copies) and the ack's error
/// (exactly-once subscriptions).
///
/// ```
/// use google_cloud_pubsub::error::PublishError;
/// let e = mqtrace_pubsub::RetryError::Copy {
///     destination: "billing-dlq".into(),
///     source: PublishError::Shutdown,
/// };
/// assert!(e.to_string().contains("requeued"));
/// ```
pub type RetryError = mqtrace::retry::RetryError<PublishError, AckError>;

impl RetryTopics {
    /// Retries through `publishers.0` (a publisher of this subscription's retry topic, read
    /// back through `retry_subscription`) and dead-letters through `publishers.1` (a publisher
    /// of its dead-letter topic), as `policy` decides. The topics and the retry subscription
    /// must exist (mqtrace creates nothing on Pub/Sub). The retry subscription is recorded as
    /// one mqtrace declared ([`mqtrace::retry::declare_source`]); only its copies are waited
    /// for.
    ///
    /// Returns [`RetryError::InvalidName`](mqtrace::retry::RetryError::InvalidName) when both
    /// publishers publish to the same topic or the retry subscription is empty.
    ///
    /// ```no_run
    /// # async fn demo(retry: mqtrace_pubsub::TracedPublisher, dlq: mqtrace_pubsub::TracedPublisher) -> Result<(), mqtrace_pubsub::RetryError> {
    /// let retries = mqtrace_pubsub::RetryTopics::declare(
    ///     (retry, dlq),
    ///     "projects/p/subscriptions/billing-retry",
    ///     mqtrace::retry::RetryPolicy::exponential(5),
    /// ).await?;
    /// # let _ = retries; Ok(()) }
    /// ```
    pub async fn declare(
        publishers: (TracedPublisher, TracedPublisher),
        retry_subscription: &str,
        policy: RetryPolicy,
    ) -> Result<Self, RetryError> {
        let (retry, dead_letter) = publishers;
        if retry.topic() == dead_letter.topic() {
            return Err(RetryError::InvalidName {
                name: retry.topic().to_owned(),
                reason: "the retry and the dead-letter topic must differ".to_owned(),
            });
        }
        let retry_subscription: Arc<str> = Arc::from(short_name(retry_subscription));
        if retry_subscription.is_empty() {
            return Err(RetryError::InvalidName {
                name: String::new(),
                reason: "the retry subscription is not named".to_owned(),
            });
        }
        retry::declare_source(&retry_subscription);
        Ok(Self {
            targets: Arc::new(Targets {
                retry,
                dead_letter,
                retry_subscription,
            }),
            policy,
            time_limit: None,
        })
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

    /// The retry subscription's short name.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_pubsub::RetryTopics) {
    /// println!("copies come back through {}", r.retry_subscription());
    /// # }
    /// ```
    pub fn retry_subscription(&self) -> &str {
        &self.targets.retry_subscription
    }

    /// Reads `main` (the subscription) and `retry` (the subscription of the retry topic) as one
    /// stream that holds each copy until it is due, for at most the policy's
    /// [`longest_delay`](RetryPolicy::longest_delay); see [`RetryStream`].
    ///
    /// See the example on [`RetryTopics`].
    pub fn stream(&self, main: TracedMessageStream, retry: TracedMessageStream) -> RetryStream {
        RetryStream::new(main, retry).with_max_wait(self.policy.longest_delay())
    }

    /// Runs `handler` for `delivery` (a message and its traced handler, from the subscription
    /// or its retry subscription, as the streams hand them out) and carries out what the
    /// policy decides: ack, retry after a delay, or dead-letter (see [`mqtrace::retry::run`]
    /// for panics, time limits, outcomes and reasons). The process span records the attempt
    /// the policy counted (`mqtrace.delivery.attempt`, 1 for a message that neither Pub/Sub
    /// nor a copy numbers).
    ///
    /// A copy of the retry subscription that is not yet due (read without a [`RetryStream`])
    /// is first waited for, inside its process span (an event `mqtrace.retry.wait` says how
    /// long), for at most the policy's longest delay; a message of any other subscription is
    /// never waited for, whatever its `mqtrace-not-before` says.
    ///
    /// Returns the decision, or why it could not be carried out
    /// ([`RetryError::Copy`](mqtrace::retry::RetryError::Copy): the original was nacked and
    /// comes again; [`RetryError::Settle`](mqtrace::retry::RetryError::Settle): the ack was
    /// not confirmed). See the example on [`RetryTopics`].
    pub async fn handle<F>(
        &self,
        delivery: (Message, TracedHandler),
        handler: F,
    ) -> Result<Decision, RetryError>
    where
        F: AsyncFnOnce(&Received) -> Result<(), HandlerError>,
    {
        let (message, traced) = delivery;
        if traced.processing().attempt().is_none() {
            // Neither Pub/Sub nor a copy says: this is the first attempt as far as the policy
            // counts, and the span says so.
            let span = traced.context().span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new(mqtrace::attributes::DELIVERY_ATTEMPT, 1_i64));
            }
        }
        let from_retry = !traced.held
            && traced
                .subscription
                .as_deref()
                .is_some_and(|s| s == &*self.targets.retry_subscription);
        if from_retry
            && let Some(wait) = retry::due_in(&message.attributes, self.policy.longest_delay())
        {
            retry::wait_in_span(traced.context(), wait).await;
        }
        let retrying = Retrying {
            received: Received {
                message,
                handler: traced,
            },
            targets: self.targets.clone(),
        };
        retry::run(
            retrying,
            &self.policy,
            self.time_limit,
            async |r: &Retrying| handler(&r.received).await,
        )
        .await
    }
}

/// One message on its way through [`retry::run`].
struct Retrying {
    received: Received,
    targets: Arc<Targets>,
}

impl Retrying {
    fn publisher(&self, to: &CopyTo<'_>) -> &TracedPublisher {
        match to {
            CopyTo::Retry { .. } => &self.targets.retry,
            CopyTo::DeadLetter { .. } => &self.targets.dead_letter,
        }
    }
}

impl RetryBroker for Retrying {
    type PublishError = PublishError;
    type SettleError = AckError;
    /// Pub/Sub cannot hold a message back: the copy says when it is due.
    const DELAYS_COPIES: bool = false;

    fn processing(&self) -> &Processing {
        self.received.handler.processing()
    }

    fn destination(&self, to: &CopyTo<'_>) -> String {
        short_name(self.publisher(to).topic()).to_owned()
    }

    /// Publishes a copy (data, ordering key and attributes, without mqtrace's own and the
    /// propagation fields the publisher writes anew) and waits for the publish.
    async fn publish_copy(
        &self,
        to: &CopyTo<'_>,
        headers: &CopyHeaders,
    ) -> Result<(), PublishError> {
        let publisher = self.publisher(to);
        let m = &self.received.message;
        let propagation = publisher.instrumentation().config().propagation();
        let mut attributes: HashMap<String, String> = m
            .attributes
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                !retry::is_owned(k)
                    && k != GOOGCLIENT_TRACEPARENT
                    && k != GOOGCLIENT_TRACESTATE
                    && !propagation.is_field(k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.write(&mut attributes);
        let copy = Message::new()
            .set_data(m.data.clone())
            .set_ordering_key(m.ordering_key.clone())
            .set_attributes(attributes);
        let cx: Context = self.received.handler.context().clone();
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
                Err(source)
            }
        }
    }

    /// Nacks the original: Pub/Sub delivers it again; the nack's own failure changes nothing
    /// more.
    async fn requeue(self, reason: String) {
        let _ = self
            .received
            .handler
            .settle_as(
                Settle::new(NACK, Outcome::Requeue).with_reason(reason),
                false,
            )
            .await;
    }

    /// Acks the original (confirmed on exactly-once subscriptions).
    async fn settle(self, settlement: Settlement) -> Result<(), AckError> {
        let mut settle = Settle::new(ACK, settlement.outcome);
        if let Some(reason) = settlement.reason {
            settle = settle.with_reason(reason);
        }
        self.received.handler.settle_as(settle, true).await
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
    /// client's default maximum lease) whatever its due time says; [`RetryTopics::stream`]
    /// holds for at most the policy's longest delay.
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
                let mut handler = self.retry_tracer.trace(&h.message, h.handler);
                handler.held = true;
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
                                let mut handler = self.retry_tracer.trace(&message, handler);
                                handler.held = true;
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
        send(r.handle((Message::new(), h), async |m| {
            tokio::task::yield_now().await;
            let _ = m.attempt();
            Ok(())
        }));
        send(s.next());
    }
}
