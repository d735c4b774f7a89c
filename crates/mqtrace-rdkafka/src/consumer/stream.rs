//! The traced `StreamConsumer`.

use super::{CommitReporting, TracedConsumerContext};
use crate::message::{ConsumedMessage, Consuming, TracedMessage};
use futures_util::future::{Either, FutureExt, select};
use futures_util::stream::{Stream, StreamExt};
use mqtrace::{Config, instrument::Instrumentation};
use rdkafka::ClientConfig;
use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{CommitMode, MessageStream, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::util::{AsyncRuntime, DefaultRuntime};
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

/// An rdkafka `StreamConsumer` whose messages carry CONSUMER process spans.
///
/// `recv` and `stream` have rdkafka's signatures and yield [`TracedMessage`]s;
/// `commit_message` and `store_offset_from_message` take them (or their detached
/// [`crate::OwnedTracedMessage`]) and record the settle; the bulk `commit`,
/// `commit_consumer_state` and `store_offsets` settle every held message they cover.
/// Everything else (`subscribe`, `assign`, `seek`, ...) is the
/// `StreamConsumer` itself, reached through `Deref` (with `rdkafka::consumer::Consumer` in
/// scope).
///
/// Build it like the rdkafka type (`ClientConfig::create`, which uses the global tracer
/// provider and propagator) or with [`TracedStreamConsumer::create`] to pass an
/// [`mqtrace::Config`]. A context of your own must report commits: see [`CommitReporting`].
///
/// ```no_run
/// # async fn demo() -> rdkafka::error::KafkaResult<()> {
/// use mqtrace_rdkafka::prelude::*;
/// use rdkafka::ClientConfig;
/// use rdkafka::consumer::{CommitMode, Consumer};
/// let consumer = mqtrace_rdkafka::TracedStreamConsumer::create(
///     ClientConfig::new()
///         .set("bootstrap.servers", "127.0.0.1:9092")
///         .set("group.id", "billing")
///         .set("enable.auto.commit", "false"),
///     mqtrace::Config::new(),
/// )?;
/// consumer.subscribe(&["orders"])?;
/// loop {
///     let message = consumer.recv().await?;
///     message.in_span(async { /* handle it */ }).await;
///     consumer.commit_message(&message, CommitMode::Sync)?;
/// }
/// # }
/// ```
pub struct TracedStreamConsumer<C = TracedConsumerContext, R = DefaultRuntime>
where
    C: CommitReporting + 'static,
{
    consumer: StreamConsumer<C, R>,
    consuming: Consuming,
}

impl<C: CommitReporting + 'static, R> std::fmt::Debug for TracedStreamConsumer<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedStreamConsumer")
            .field("client", &self.consuming.info)
            .finish_non_exhaustive()
    }
}

impl TracedStreamConsumer<TracedConsumerContext> {
    /// Creates a consumer configured with `client`, traced with `config` (with rdkafka's
    /// default runtime; for another, use [`Self::create_with_context`]).
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let consumer: mqtrace_rdkafka::TracedStreamConsumer = mqtrace_rdkafka::TracedStreamConsumer::create(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092").set("group.id", "g"),
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = consumer; Ok(()) }
    /// ```
    pub fn create(client: &ClientConfig, config: Config) -> KafkaResult<Self> {
        Self::create_with_context(client, TracedConsumerContext::default(), config)
    }
}

impl<C, R> TracedStreamConsumer<C, R>
where
    C: CommitReporting + 'static,
    R: AsyncRuntime,
{
    /// Creates a consumer with a context of your own (see [`CommitReporting`]).
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// use mqtrace_rdkafka::{TracedConsumerContext, TracedStreamConsumer};
    /// let consumer: TracedStreamConsumer = TracedStreamConsumer::create_with_context(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092").set("group.id", "g"),
    ///     TracedConsumerContext::default(),
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = consumer; Ok(()) }
    /// ```
    pub fn create_with_context(
        client: &ClientConfig,
        context: C,
        config: Config,
    ) -> KafkaResult<Self> {
        let consumer = StreamConsumer::from_config_and_context(client, context)?;
        let consuming = Consuming::new(
            config,
            client,
            rdkafka::consumer::Consumer::context(&consumer).commit_tracker(),
        );
        Ok(Self {
            consumer,
            consuming,
        })
    }
}

impl<C, R> TracedStreamConsumer<C, R>
where
    C: CommitReporting + 'static,
{
    /// The instrumentation this consumer's spans come from.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) {
    /// let _ = c.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.consuming.inst
    }

    /// What the spans record about this client (server, client id, group, commit settings).
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) {
    /// println!("group {:?}", c.client_info().group_id());
    /// # }
    /// ```
    pub fn client_info(&self) -> &crate::ClientInfo {
        &self.consuming.info
    }

    /// The wrapped consumer.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) {
    /// let raw = c.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> StreamConsumer<C, R> {
        self.consumer
    }

    /// The stream of traced messages, like `StreamConsumer::stream`.
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// use futures_util::StreamExt;
    /// let mut stream = c.stream();
    /// while let Some(message) = stream.next().await {
    ///     let message = message?;
    ///     c.store_offset_from_message(&message)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream(&self) -> TracedMessageStream<'_, C> {
        TracedMessageStream {
            inner: self.consumer.stream(),
            client: rdkafka::consumer::Consumer::client(&self.consumer),
            consuming: &self.consuming,
        }
    }

    /// The next message, like `StreamConsumer::recv`, with its process span started.
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// let message = c.recv().await?;
    /// # let _ = message; Ok(()) }
    /// ```
    pub async fn recv(&self) -> Result<TracedMessage<'_>, KafkaError> {
        let received = self.consumer.recv().await;
        crate::client::learn_cluster(
            &self.consuming.inst,
            rdkafka::consumer::Consumer::client(&self.consumer),
        );
        received.map(|m| self.consuming.start(m))
    }

    /// Commits the message's offset, like `Consumer::commit_message`, under a CLIENT span
    /// `commit {topic}`; the process span ends with outcome `ack` (or the error).
    ///
    /// A synchronous commit is recorded with the broker's answer. For a manual asynchronous
    /// commit librdkafka reports no answer (rdkafka's `commit_callback` only sees the commits
    /// librdkafka makes itself): the span ends once the commit is handed over, with the event
    /// `mqtrace.settle.unreported`. To have asynchronous commits recorded with their result,
    /// use [`Self::store_offset_from_message`] with `enable.auto.commit`.
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// let message = c.recv().await?;
    /// c.commit_message(&message, rdkafka::consumer::CommitMode::Sync)?;
    /// # Ok(()) }
    /// ```
    pub fn commit_message<M: ConsumedMessage + ?Sized>(
        &self,
        message: &M,
        mode: CommitMode,
    ) -> KafkaResult<()> {
        super::commit_message(&self.consumer, message, mode, super::Meaning::ACK)
    }

    /// Stores the message's offset, like `Consumer::store_offset_from_message`, as its
    /// settle operation (outcome `ack`).
    ///
    /// With `enable.auto.commit` (and `enable.auto.offset.store=false`, so only handled
    /// messages are committed) this is an asynchronous commit whose result is reported: a
    /// CLIENT span `commit {topic}` starts now and ends when librdkafka reports the
    /// auto-commit covering this offset, with the error if it failed; the process span ends
    /// now. Without auto-commit the span is `store_offset {topic}` and covers the store.
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// let message = c.recv().await?;
    /// c.store_offset_from_message(&message)?;
    /// # Ok(()) }
    /// ```
    pub fn store_offset_from_message<M: ConsumedMessage + ?Sized>(
        &self,
        message: &M,
    ) -> KafkaResult<()> {
        super::store_offset_from_message(
            &self.consumer,
            &self.consuming,
            message,
            super::Meaning::ACK,
        )
    }

    /// Commits `offsets`, like `Consumer::commit`; every message of this consumer still held
    /// (a [`TracedMessage`] or [`crate::OwnedTracedMessage`]) below a committed offset of its
    /// partition settles: a CLIENT span `commit {topic}` under its process span, and the
    /// outcome `ack` (or the commit's error). A synchronous commit is recorded with the
    /// broker's answer; an asynchronous one ends its spans once handed over, with the event
    /// `mqtrace.settle.unreported`. Messages at or beyond the offsets stay open.
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    /// let mut offsets = TopicPartitionList::new();
    /// offsets.add_partition_offset("orders", 0, Offset::Offset(100))?; // covers offsets 0..=99
    /// c.commit(&offsets, rdkafka::consumer::CommitMode::Sync)?;
    /// # Ok(()) }
    /// ```
    pub fn commit(&self, offsets: &TopicPartitionList, mode: CommitMode) -> KafkaResult<()> {
        super::commit(&self.consumer, offsets, mode)
    }

    /// Commits the consumer's current offsets, like `Consumer::commit_consumer_state`; the
    /// messages still held below them settle as with [`Self::commit`]. The offsets are the
    /// consumer's position with `enable.auto.offset.store` (librdkafka's default), otherwise
    /// the offsets stored through this consumer.
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)?;
    /// # Ok(()) }
    /// ```
    pub fn commit_consumer_state(&self, mode: CommitMode) -> KafkaResult<()> {
        super::commit_consumer_state(&self.consumer, &self.consuming, mode)
    }

    /// Stores `offsets` for the next commit, like `Consumer::store_offsets`; every message
    /// still held below a stored offset of its partition settles with outcome `ack` under a
    /// CLIENT span `store_offset {topic}`. With `enable.auto.commit`, the commit's result is
    /// reported on a `commit {topic}` span (one per partition and offset range, see
    /// [`crate::CommitTracker`]).
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    /// let mut offsets = TopicPartitionList::new();
    /// offsets.add_partition_offset("orders", 0, Offset::Offset(100))?;
    /// c.store_offsets(&offsets)?;
    /// # Ok(()) }
    /// ```
    pub fn store_offsets(&self, offsets: &TopicPartitionList) -> KafkaResult<()> {
        super::store_offsets(&self.consumer, &self.consuming, offsets)
    }

    /// Settles `message` with `meaning` (see [`super::settle`]).
    pub(crate) fn settle_as(
        &self,
        message: &TracedMessage<'_>,
        mode: CommitMode,
        meaning: super::Meaning,
    ) -> KafkaResult<()> {
        super::settle(&self.consumer, &self.consuming, message, mode, meaning)
    }

    /// Seeks back to `message` so it is received again (see [`super::seek_back`]).
    pub(crate) fn seek_back(
        &self,
        message: &TracedMessage<'_>,
        reason: String,
        timeout: Duration,
    ) -> KafkaResult<()> {
        super::seek_back(&self.consumer, message, reason, timeout)
    }
}

impl<C, R> TracedStreamConsumer<C, R>
where
    C: CommitReporting + 'static,
    R: AsyncRuntime,
{
    /// Receives a batch: waits up to `timeout` for a first message, then takes the messages
    /// that are ready at once, up to `max` in all. When messages arrived, a CLIENT span
    /// `poll {topic}` (just `poll` when they came from several topics) covers the wait and
    /// links every message's creation context; each message still gets its own process span,
    /// a child of its own creation context. Errors are returned in place.
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// use mqtrace_rdkafka::prelude::*;
    /// use std::time::Duration;
    /// for message in c.recv_batch(100, Duration::from_millis(500)).await {
    ///     let message = message?;
    ///     message.in_span(async { /* handle it */ }).await;
    ///     c.store_offset_from_message(&message)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv_batch(
        &self,
        max: usize,
        timeout: Duration,
    ) -> Vec<KafkaResult<TracedMessage<'_>>> {
        if max == 0 {
            return Vec::new();
        }
        let started = SystemTime::now();
        let mut stream = self.consumer.stream();
        let mut polled = Vec::new();
        let deadline = std::pin::pin!(R::delay_for(timeout));
        if let Either::Left((Some(first), _)) = select(stream.next(), deadline).await {
            polled.push(first);
            while polled.len() < max {
                match stream.next().now_or_never() {
                    Some(Some(m)) => polled.push(m),
                    _ => break,
                }
            }
        }
        crate::client::learn_cluster(
            &self.consuming.inst,
            rdkafka::consumer::Consumer::client(&self.consumer),
        );
        self.consuming.start_batch(started, polled)
    }
}

impl<C, R> Deref for TracedStreamConsumer<C, R>
where
    C: CommitReporting + 'static,
{
    type Target = StreamConsumer<C, R>;

    fn deref(&self) -> &StreamConsumer<C, R> {
        &self.consumer
    }
}

impl<R: AsyncRuntime> FromClientConfig for TracedStreamConsumer<TracedConsumerContext, R> {
    /// `ClientConfig::create`: traced with the default [`mqtrace::Config`] (global tracer
    /// provider and propagator).
    fn from_config(client: &ClientConfig) -> KafkaResult<Self> {
        Self::create_with_context(client, TracedConsumerContext::default(), Config::new())
    }
}

impl<C, R> FromClientConfigAndContext<C> for TracedStreamConsumer<C, R>
where
    C: CommitReporting + 'static,
    R: AsyncRuntime,
{
    /// `ClientConfig::create_with_context`: traced with the default [`mqtrace::Config`].
    fn from_config_and_context(client: &ClientConfig, context: C) -> KafkaResult<Self> {
        Self::create_with_context(client, context, Config::new())
    }
}

/// The `Stream` of [`TracedMessage`]s of a [`TracedStreamConsumer`], like rdkafka's
/// `MessageStream`.
///
/// ```no_run
/// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) {
/// use futures_util::StreamExt;
/// let first = c.stream().next().await;
/// # let _ = first; }
/// ```
pub struct TracedMessageStream<'a, C: CommitReporting + 'static> {
    inner: MessageStream<'a, C>,
    client: &'a rdkafka::client::Client<C>,
    consuming: &'a Consuming,
}

impl<C: CommitReporting + 'static> std::fmt::Debug for TracedMessageStream<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedMessageStream")
            .finish_non_exhaustive()
    }
}

impl<'a, C: CommitReporting + 'static> Stream for TracedMessageStream<'a, C> {
    type Item = KafkaResult<TracedMessage<'a>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let consuming = self.consuming;
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(m))) => {
                crate::client::learn_cluster(&consuming.inst, self.client);
                Poll::Ready(Some(Ok(consuming.start(m))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
