//! The traced `BaseConsumer`.

use super::{CommitReporting, TracedConsumerContext};
use crate::message::{ConsumedMessage, Consuming, TracedMessage};
use mqtrace::{Config, instrument::Instrumentation};
use rdkafka::ClientConfig;
use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::base_consumer::Iter;
use rdkafka::consumer::{BaseConsumer, CommitMode};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::util::Timeout;
use std::ops::Deref;
use std::time::{Duration, SystemTime};

/// An rdkafka `BaseConsumer` whose messages carry CONSUMER process spans.
///
/// `poll` and `iter` have rdkafka's signatures and yield [`TracedMessage`]s; `commit_message`
/// and `store_offset_from_message` take them and record the settle (see
/// [`crate::TracedStreamConsumer`] for what each records). Everything else is the
/// `BaseConsumer` itself, through `Deref`.
///
/// ```no_run
/// # fn demo() -> rdkafka::error::KafkaResult<()> {
/// use mqtrace_rdkafka::prelude::*;
/// use rdkafka::ClientConfig;
/// use rdkafka::consumer::{CommitMode, Consumer};
/// use std::time::Duration;
/// let consumer: mqtrace_rdkafka::TracedBaseConsumer = ClientConfig::new()
///     .set("bootstrap.servers", "127.0.0.1:9092")
///     .set("group.id", "billing")
///     .create()?;
/// consumer.subscribe(&["orders"])?;
/// while let Some(message) = consumer.poll(Duration::from_secs(1)) {
///     let message = message?;
///     let _guard = message.context().clone().attach(); // the handler runs inside the span
///     consumer.commit_message(&message, CommitMode::Sync)?;
/// }
/// # Ok(()) }
/// ```
pub struct TracedBaseConsumer<C = TracedConsumerContext>
where
    C: CommitReporting + 'static,
{
    consumer: BaseConsumer<C>,
    consuming: Consuming,
}

impl<C: CommitReporting + 'static> std::fmt::Debug for TracedBaseConsumer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedBaseConsumer")
            .field("client", &self.consuming.info)
            .finish_non_exhaustive()
    }
}

impl TracedBaseConsumer<TracedConsumerContext> {
    /// Creates a consumer configured with `client`, traced with `config`.
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let consumer = mqtrace_rdkafka::TracedBaseConsumer::create(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092").set("group.id", "g"),
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = consumer; Ok(()) }
    /// ```
    pub fn create(client: &ClientConfig, config: Config) -> KafkaResult<Self> {
        Self::create_with_context(client, TracedConsumerContext::default(), config)
    }
}

impl<C: CommitReporting + 'static> TracedBaseConsumer<C> {
    /// Creates a consumer with a context of your own (see [`CommitReporting`]).
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let consumer = mqtrace_rdkafka::TracedBaseConsumer::create_with_context(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092").set("group.id", "g"),
    ///     mqtrace_rdkafka::TracedConsumerContext::default(),
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = consumer; Ok(()) }
    /// ```
    pub fn create_with_context(
        client: &ClientConfig,
        context: C,
        config: Config,
    ) -> KafkaResult<Self> {
        let consumer = BaseConsumer::from_config_and_context(client, context)?;
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

    /// The instrumentation this consumer's spans come from.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) {
    /// let _ = c.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.consuming.inst
    }

    /// What the spans record about this client.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) {
    /// println!("client {}", c.client_info().client_id());
    /// # }
    /// ```
    pub fn client_info(&self) -> &crate::ClientInfo {
        &self.consuming.info
    }

    /// The wrapped consumer.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) {
    /// let raw = c.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> BaseConsumer<C> {
        self.consumer
    }

    /// Polls for a message, like `BaseConsumer::poll`, and starts its process span.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) {
    /// use mqtrace_rdkafka::prelude::*;
    /// if let Some(Ok(message)) = c.poll(std::time::Duration::from_millis(100)) {
    ///     message.finish(mqtrace::Outcome::Ack);
    /// }
    /// # }
    /// ```
    pub fn poll<T: Into<Timeout>>(&self, timeout: T) -> Option<KafkaResult<TracedMessage<'_>>> {
        let polled = self.consumer.poll(timeout);
        crate::client::learn_cluster(
            &self.consuming.inst,
            rdkafka::consumer::Consumer::client(&self.consumer),
        );
        polled.map(|r| r.map(|m| self.consuming.start(m)))
    }

    /// Polls a batch: waits up to `timeout` for a first message, then takes the messages that
    /// are ready at once, up to `max` in all. When messages arrived, a CLIENT span
    /// `poll {topic}` covers the poll and links every message; each message still gets its
    /// own process span, a child of its own creation context. Errors are returned in place.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) -> rdkafka::error::KafkaResult<()> {
    /// for message in c.poll_batch(100, std::time::Duration::from_millis(500)) {
    ///     let message = message?;
    ///     c.commit_message(&message, rdkafka::consumer::CommitMode::Sync)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn poll_batch(&self, max: usize, timeout: Duration) -> Vec<KafkaResult<TracedMessage<'_>>> {
        if max == 0 {
            return Vec::new();
        }
        let started = SystemTime::now();
        let mut polled = Vec::new();
        if let Some(first) = self.consumer.poll(timeout) {
            polled.push(first);
            while polled.len() < max {
                match self.consumer.poll(Duration::ZERO) {
                    Some(m) => polled.push(m),
                    None => break,
                }
            }
        }
        crate::client::learn_cluster(
            &self.consuming.inst,
            rdkafka::consumer::Consumer::client(&self.consumer),
        );
        self.consuming.start_batch(started, polled)
    }

    /// An iterator over traced messages, like `BaseConsumer::iter` (it polls forever).
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) -> rdkafka::error::KafkaResult<()> {
    /// for message in c.iter() {
    ///     let message = message?;
    ///     c.store_offset_from_message(&message)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn iter(&self) -> TracedIter<'_, C> {
        TracedIter {
            inner: self.consumer.iter(),
            client: rdkafka::consumer::Consumer::client(&self.consumer),
            consuming: &self.consuming,
        }
    }

    /// Commits the message's offset under a CLIENT span `commit {topic}`; see
    /// [`crate::TracedStreamConsumer::commit_message`].
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) -> rdkafka::error::KafkaResult<()> {
    /// if let Some(message) = c.poll(std::time::Duration::from_secs(1)) {
    ///     c.commit_message(&message?, rdkafka::consumer::CommitMode::Sync)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn commit_message<M: ConsumedMessage + ?Sized>(
        &self,
        message: &M,
        mode: CommitMode,
    ) -> KafkaResult<()> {
        super::commit_message(&self.consumer, message, mode, super::Meaning::ACK)
    }

    /// Stores the message's offset as its settle operation; see
    /// [`crate::TracedStreamConsumer::store_offset_from_message`].
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) -> rdkafka::error::KafkaResult<()> {
    /// if let Some(message) = c.poll(std::time::Duration::from_secs(1)) {
    ///     c.store_offset_from_message(&message?)?;
    /// }
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
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) -> rdkafka::error::KafkaResult<()> {
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
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) -> rdkafka::error::KafkaResult<()> {
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
    /// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) -> rdkafka::error::KafkaResult<()> {
    /// use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    /// let mut offsets = TopicPartitionList::new();
    /// offsets.add_partition_offset("orders", 0, Offset::Offset(100))?;
    /// c.store_offsets(&offsets)?;
    /// # Ok(()) }
    /// ```
    pub fn store_offsets(&self, offsets: &TopicPartitionList) -> KafkaResult<()> {
        super::store_offsets(&self.consumer, &self.consuming, offsets)
    }
}

impl<C: CommitReporting + 'static> Deref for TracedBaseConsumer<C> {
    type Target = BaseConsumer<C>;

    fn deref(&self) -> &BaseConsumer<C> {
        &self.consumer
    }
}

impl FromClientConfig for TracedBaseConsumer<TracedConsumerContext> {
    /// `ClientConfig::create`: traced with the default [`mqtrace::Config`].
    fn from_config(client: &ClientConfig) -> KafkaResult<Self> {
        Self::create(client, Config::new())
    }
}

impl<C: CommitReporting + 'static> FromClientConfigAndContext<C> for TracedBaseConsumer<C> {
    /// `ClientConfig::create_with_context`: traced with the default [`mqtrace::Config`].
    fn from_config_and_context(client: &ClientConfig, context: C) -> KafkaResult<Self> {
        Self::create_with_context(client, context, Config::new())
    }
}

/// The iterator of [`TracedBaseConsumer::iter`].
///
/// ```no_run
/// # fn demo(c: mqtrace_rdkafka::TracedBaseConsumer) {
/// let first = c.iter().next();
/// # let _ = first; }
/// ```
pub struct TracedIter<'a, C: CommitReporting + 'static> {
    inner: Iter<'a, C>,
    client: &'a rdkafka::client::Client<C>,
    consuming: &'a Consuming,
}

impl<C: CommitReporting + 'static> std::fmt::Debug for TracedIter<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedIter").finish_non_exhaustive()
    }
}

impl<'a, C: CommitReporting + 'static> Iterator for TracedIter<'a, C> {
    type Item = KafkaResult<TracedMessage<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let consuming = self.consuming;
        let next = self.inner.next();
        crate::client::learn_cluster(&consuming.inst, self.client);
        next.map(|r| r.map(|m| consuming.start(m)))
    }
}
