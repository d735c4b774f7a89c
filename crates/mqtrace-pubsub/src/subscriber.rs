//! The traced subscriber: a message stream whose handlers carry process spans.

use crate::googclient::GoogleContext;
use crate::handler::TracedHandler;
use crate::short_name;
use futures_util::stream::{Stream, StreamExt};
use google_cloud_pubsub::builder::subscriber::Subscribe;
use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior, ShutdownToken};
use mqtrace::instrument::Instrumentation;
use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

/// A `google_cloud_pubsub` [`Subscriber`] whose messages are traced.
///
/// [`subscribe`](Self::subscribe) mirrors the client's; the rest is the `Subscriber` itself,
/// reached through `Deref`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let subscriber = google_cloud_pubsub::client::Subscriber::builder().build().await?;
/// let inst = mqtrace_pubsub::instrumentation(mqtrace::Config::new(), Some(("pubsub.googleapis.com", 443)));
/// let subscriber = mqtrace_pubsub::TracedSubscriber::new(subscriber, inst);
/// use futures_util::StreamExt;
/// let mut stream = subscriber.subscribe("projects/p/subscriptions/billing").build();
/// while let Some((message, handler)) = stream.next().await.transpose()? {
///     println!("{:?}", message.data);
///     handler.ack();
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TracedSubscriber {
    inner: Subscriber,
    inst: Instrumentation,
    google: GoogleContext,
}

impl fmt::Debug for TracedSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedSubscriber")
            .field("google_context", &self.google)
            .finish_non_exhaustive()
    }
}

impl TracedSubscriber {
    /// Wraps a subscriber client.
    ///
    /// ```no_run
    /// # fn demo(s: google_cloud_pubsub::client::Subscriber) {
    /// let inst = mqtrace_pubsub::instrumentation(mqtrace::Config::new(), None);
    /// let traced = mqtrace_pubsub::TracedSubscriber::new(s, inst);
    /// # let _ = traced; }
    /// ```
    pub fn new(subscriber: Subscriber, inst: Instrumentation) -> Self {
        Self {
            inner: subscriber,
            inst,
            google: GoogleContext::default(),
        }
    }

    /// Sets whether the `googclient_` attributes of Google's client libraries are read (by
    /// default they are, and preferred over the propagator's span context).
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::TracedSubscriber) {
    /// let s = s.with_google_context(mqtrace_pubsub::GoogleContext::Off);
    /// # let _ = s; }
    /// ```
    pub fn with_google_context(mut self, google: GoogleContext) -> Self {
        self.google = google;
        self
    }

    /// The instrumentation this subscriber uses.
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::TracedSubscriber) {
    /// let _ = s.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.inst
    }

    /// The wrapped subscriber.
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::TracedSubscriber) {
    /// let raw: google_cloud_pubsub::client::Subscriber = s.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> Subscriber {
        self.inner
    }

    /// Starts configuring a streaming pull of `subscription`
    /// (`projects/{project}/subscriptions/{subscription}`), like [`Subscriber::subscribe`].
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::TracedSubscriber) {
    /// let stream = s.subscribe("projects/p/subscriptions/billing")
    ///     .set_max_outstanding_messages(100)
    ///     .build();
    /// # let _ = stream; }
    /// ```
    pub fn subscribe(&self, subscription: impl Into<String>) -> TracedSubscribe {
        let subscription: String = subscription.into();
        TracedSubscribe {
            name: Arc::from(subscription.as_str()),
            inner: self.inner.subscribe(subscription),
            inst: self.inst.clone(),
            google: self.google,
        }
    }
}

impl Deref for TracedSubscriber {
    type Target = Subscriber;

    fn deref(&self) -> &Subscriber {
        &self.inner
    }
}

/// The builder of a traced streaming pull: the client's [`Subscribe`] options, then
/// [`build`](Self::build).
///
/// ```no_run
/// # fn demo(s: mqtrace_pubsub::TracedSubscriber) {
/// let stream = s.subscribe("projects/p/subscriptions/billing")
///     .set_max_lease(std::time::Duration::from_secs(600))
///     .build();
/// # let _ = stream; }
/// ```
pub struct TracedSubscribe {
    inner: Subscribe,
    name: Arc<str>,
    inst: Instrumentation,
    google: GoogleContext,
}

impl fmt::Debug for TracedSubscribe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedSubscribe")
            .field("subscription", &self.name)
            .finish_non_exhaustive()
    }
}

impl TracedSubscribe {
    /// Like [`Subscribe::set_max_lease`].
    ///
    /// ```no_run
    /// # fn demo(b: mqtrace_pubsub::TracedSubscribe) {
    /// let b = b.set_max_lease(std::time::Duration::from_secs(60));
    /// # let _ = b; }
    /// ```
    pub fn set_max_lease<T: Into<Duration>>(mut self, v: T) -> Self {
        self.inner = self.inner.set_max_lease(v);
        self
    }

    /// Like [`Subscribe::set_max_lease_extension`].
    ///
    /// ```no_run
    /// # fn demo(b: mqtrace_pubsub::TracedSubscribe) {
    /// let b = b.set_max_lease_extension(std::time::Duration::from_secs(30));
    /// # let _ = b; }
    /// ```
    pub fn set_max_lease_extension<T: Into<Duration>>(mut self, v: T) -> Self {
        self.inner = self.inner.set_max_lease_extension(v);
        self
    }

    /// Like [`Subscribe::set_max_outstanding_messages`].
    ///
    /// ```no_run
    /// # fn demo(b: mqtrace_pubsub::TracedSubscribe) {
    /// let b = b.set_max_outstanding_messages(10);
    /// # let _ = b; }
    /// ```
    pub fn set_max_outstanding_messages<T: Into<i64>>(mut self, v: T) -> Self {
        self.inner = self.inner.set_max_outstanding_messages(v);
        self
    }

    /// Like [`Subscribe::set_max_outstanding_bytes`].
    ///
    /// ```no_run
    /// # fn demo(b: mqtrace_pubsub::TracedSubscribe) {
    /// let b = b.set_max_outstanding_bytes(1 << 20);
    /// # let _ = b; }
    /// ```
    pub fn set_max_outstanding_bytes<T: Into<i64>>(mut self, v: T) -> Self {
        self.inner = self.inner.set_max_outstanding_bytes(v);
        self
    }

    /// Like [`Subscribe::set_shutdown_behavior`].
    ///
    /// ```no_run
    /// # fn demo(b: mqtrace_pubsub::TracedSubscribe) {
    /// let b = b.set_shutdown_behavior(google_cloud_pubsub::subscriber::ShutdownBehavior::NackImmediately);
    /// # let _ = b; }
    /// ```
    pub fn set_shutdown_behavior(mut self, v: ShutdownBehavior) -> Self {
        self.inner = self.inner.set_shutdown_behavior(v);
        self
    }

    /// Opens the stream, like [`Subscribe::build`].
    ///
    /// ```no_run
    /// # fn demo(b: mqtrace_pubsub::TracedSubscribe) {
    /// let stream: mqtrace_pubsub::TracedMessageStream = b.build();
    /// # let _ = stream; }
    /// ```
    pub fn build(self) -> TracedMessageStream {
        TracedMessageStream::open(self.inner.build(), self.name, self.inst, self.google)
    }
}

/// Starts process spans for the messages of one subscription ([`TracedMessageStream::tracer`]).
#[derive(Clone)]
pub(crate) struct StreamTracer {
    /// The short name.
    name: Arc<str>,
    /// The name as given (the full resource name, normally).
    full: Arc<str>,
    inst: Instrumentation,
    google: GoogleContext,
}

impl StreamTracer {
    /// The subscription's short name.
    pub(crate) fn subscription(&self) -> &str {
        &self.name
    }

    /// Starts the process span of `message`.
    pub(crate) fn trace(&self, message: &Message, handler: Handler) -> TracedHandler {
        let mut traced = TracedHandler::new(message, handler, &self.full, &self.inst, self.google);
        traced.subscription = Some(self.name.clone());
        traced
    }
}

/// The client's pull as a `Stream`: the client's `MessageStream` has an inherent `async fn
/// next` (its `Stream` conversion is behind an unstable feature), so its `next()` future is
/// kept here across polls, never dropped half-way (the client's pull is not safe to drop while
/// it opens its stream). One allocation per stream, none per message.
type Pull = Pin<Box<dyn Stream<Item = google_cloud_pubsub::Result<(Message, Handler)>> + Send>>;

fn pull(stream: MessageStream) -> Pull {
    Box::pin(futures_util::stream::unfold(
        stream,
        |mut stream| async move { stream.next().await.map(|item| (item, stream)) },
    ))
}

/// An open streaming pull whose messages come with a [`TracedHandler`]: a `futures::Stream`
/// of `(Message, TracedHandler)`, like the client's `MessageStream` yields `(Message,
/// Handler)` (and like `mqtrace_rdkafka::TracedMessageStream` and `mqtrace_lapin`'s
/// `TracedConsumer`). Cancel-safe: a pull in flight is kept for the next poll.
///
/// ```no_run
/// # async fn demo(mut stream: mqtrace_pubsub::TracedMessageStream) -> Result<(), google_cloud_pubsub::Error> {
/// use futures_util::StreamExt;
/// use mqtrace_pubsub::prelude::*;
/// while let Some((message, handler)) = stream.next().await.transpose()? {
///     handler.in_span(async { /* ... */ }).await;
///     handler.ack();
/// #   let _ = message;
/// }
/// # Ok(()) }
/// ```
pub struct TracedMessageStream {
    pull: Pull,
    shutdown: ShutdownToken,
    tracer: StreamTracer,
}

impl fmt::Debug for TracedMessageStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedMessageStream")
            .field("subscription", &self.tracer.name)
            .finish_non_exhaustive()
    }
}

impl TracedMessageStream {
    /// Wraps a stream opened on `subscription` (full or short name).
    ///
    /// ```no_run
    /// # fn demo(s: google_cloud_pubsub::client::Subscriber) {
    /// let sub = "projects/p/subscriptions/billing";
    /// let inst = mqtrace_pubsub::instrumentation(mqtrace::Config::new(), None);
    /// let stream = mqtrace_pubsub::TracedMessageStream::new(s.subscribe(sub).build(), sub, inst);
    /// # let _ = stream; }
    /// ```
    pub fn new(stream: MessageStream, subscription: &str, inst: Instrumentation) -> Self {
        Self::open(
            stream,
            Arc::from(subscription),
            inst,
            GoogleContext::default(),
        )
    }

    fn open(
        stream: MessageStream,
        name: Arc<str>,
        inst: Instrumentation,
        google: GoogleContext,
    ) -> Self {
        Self {
            shutdown: stream.shutdown_token(),
            pull: pull(stream),
            tracer: StreamTracer {
                name: Arc::from(short_name(&name)),
                full: name,
                inst,
                google,
            },
        }
    }

    /// Sets whether `googclient_` attributes are read (see [`GoogleContext`]).
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::TracedMessageStream) {
    /// let s = s.with_google_context(mqtrace_pubsub::GoogleContext::Off);
    /// # let _ = s; }
    /// ```
    pub fn with_google_context(mut self, google: GoogleContext) -> Self {
        self.tracer.google = google;
        self
    }

    /// The subscription's short name (`messaging.destination.subscription.name`).
    ///
    /// ```no_run
    /// # fn demo(s: mqtrace_pubsub::TracedMessageStream) {
    /// let name: &str = s.subscription(); // "billing" for "projects/p/subscriptions/billing"
    /// # let _ = name;
    /// # }
    /// ```
    pub fn subscription(&self) -> &str {
        self.tracer.subscription()
    }

    /// The next message with the client's own handler: no process span yet (see
    /// [`Self::tracer`]). Cancel-safe, like the stream.
    pub(crate) async fn next_raw(
        &mut self,
    ) -> Option<google_cloud_pubsub::Result<(Message, Handler)>> {
        self.pull.next().await
    }

    /// What starts this stream's process spans, kept apart from the stream.
    pub(crate) fn tracer(&self) -> StreamTracer {
        self.tracer.clone()
    }

    /// A shutdown token for the stream, like [`MessageStream::shutdown_token`].
    ///
    /// ```no_run
    /// # async fn demo(s: mqtrace_pubsub::TracedMessageStream) {
    /// s.shutdown_token().shutdown().await;
    /// # }
    /// ```
    pub fn shutdown_token(&self) -> ShutdownToken {
        self.shutdown.clone()
    }
}

impl Stream for TracedMessageStream {
    type Item = google_cloud_pubsub::Result<(Message, TracedHandler)>;

    /// The next message, like the client's `MessageStream::next`, with its traced handler.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = ready!(this.pull.as_mut().poll_next(cx));
        Poll::Ready(item.map(|item| {
            item.map(|(message, handler)| {
                let handler = this.tracer.trace(&message, handler);
                (message, handler)
            })
        }))
    }
}
