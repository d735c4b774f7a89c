//! Retries after a delay and dead-lettering on Kafka through retry and dead-letter topics,
//! driven by a [`RetryPolicy`] (see [`RetryTopics`]).

use crate::TracedStreamConsumer;
use crate::consumer::{CommitReporting, Meaning};
use crate::headers::{KafkaHeaders, OwnedHeadersWriter, copy_without};
use crate::message::TracedMessage;
use crate::producer::TracedFutureProducer;
use mqtrace::Traced as _;
use mqtrace::instrument::Processing;
use mqtrace::retry::{
    self, CopyHeaders, CopyTo, Decision, HandlerError, RetryBroker, RetryPolicy, Settlement,
};
use opentelemetry::context::FutureExt as _;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::CommitMode;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::util::{AsyncRuntime, DefaultRuntime};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Why [`RetryTopics`] could not be declared or could not carry out its decision: the core's
/// [`mqtrace::retry::RetryError`] over rdkafka's error.
///
/// ```
/// let e = mqtrace_rdkafka::RetryError::Settle(rdkafka::error::KafkaError::Canceled);
/// assert!(e.to_string().contains("could not settle"));
/// ```
pub type RetryError = mqtrace::retry::RetryError<KafkaError>;

/// The longest Kafka topic name.
const MAX_TOPIC_NAME: usize = 249;

/// How long the metadata request and the topic creation of [`RetryTopics::declare`] may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long producing a copy may wait for room in librdkafka's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long seeking back after a failed copy may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// The retry and dead-letter topics of one topic, and the policy that uses them.
///
/// Subscribe to [`RetryTopics::topics`] (the topic and its retry topics) and pass every
/// message to [`RetryTopics::handle`] with your handler; it runs the handler under the policy
/// ([`mqtrace::retry::run`]: panics and time-outs are transient failures) and settles the
/// offset:
///
/// - **ack**: the original's offset is committed (outcome `ack`);
/// - **retry after a delay**: a copy of the message (same key, payload and headers) is produced
///   to the retry topic `{topic}.retry.{attempt}` with `mqtrace-attempt`, the previous
///   attempt's process span (`mqtrace-previous-attempt`), the first delivery's creation
///   context (`mqtrace-origin`) and the time it is due ([`NOT_BEFORE_HEADER`](mqtrace::retry::NOT_BEFORE_HEADER), epoch
///   milliseconds); once the broker has acknowledged the copy, the original's offset is
///   committed (outcome `retry`);
/// - **dead-letter**: the copy goes to `{topic}.dlq` with the reason
///   (`mqtrace-dead-letter-reason`) and the same history, then the original's offset is
///   committed (outcome `dead_letter`).
///
/// Each attempt's process span links to the attempt before it and to the first send, and is
/// a child of the copy's send span: one trace from the first send to the last attempt or the
/// dead-letter consumer.
///
/// **Never lost.** The copy is produced, and its delivery report awaited, inside the process
/// span and *before* the original's offset is committed, so a failure in between gives a
/// duplicate, never a loss. If producing fails the original is not committed: its partition
/// is sought back to it, so the consumer receives it again rather than commit past it with a
/// later offset (outcome `requeue`, a CLIENT span `seek {topic}`), and the error is returned.
/// For this to hold, let only `handle` store or commit offsets (turn off `enable.auto.commit`
/// or `enable.auto.offset.store`) and handle a partition's messages one at a time: a commit
/// covers every earlier offset of its partition.
///
/// **Delays.** Kafka cannot hold a message back, so the consumer of a retry topic waits until
/// the copy is due before running the handler: `handle` sleeps, inside the process span (an
/// event `mqtrace.retry.wait` records for how long), only for a message of one of its own
/// retry topics and for at most the policy's [`longest_delay`](RetryPolicy::longest_delay),
/// whatever its `mqtrace-not-before` says (a forged header on `{topic}` is not waited for). The sleep holds up the task that calls
/// `handle`, and with it the partition the copy came from; with one loop over one consumer,
/// everything that consumer reads waits too. That is why retries have topics of their own,
/// which you can consume apart from `{topic}` (another consumer or task), and one per attempt:
/// every copy in `{topic}.retry.{n}` waits the same delay (give or take the jitter), so
/// copies arrive in the order they fall due and a short delay never waits behind a long one.
/// Keep the policy's longest delay well below the consumer's `max.poll.interval.ms` (5
/// minutes by default), or the consumer leaves its group while it sleeps.
///
/// **Partitions.** [`RetryTopics::declare`] creates the retry and dead-letter topics when they
/// are missing, with the partition count and replication factor of `{topic}`. A copy keeps
/// its key, so the default partitioner puts a key's copies in the same partition number as
/// the original.
///
/// **Ordering and duplicates.** A retried message is handled after the messages that followed
/// it in its partition: retry topics give up per-key order so that one failing message does
/// not block its partition. A crash or a rebalance between producing the copy and committing
/// the original delivers the message twice: handlers must be idempotent, as for any
/// at-least-once Kafka consumer.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use mqtrace::retry::{HandlerError, RetryPolicy};
/// use mqtrace_rdkafka::{RetryTopics, TracedFutureProducer, TracedStreamConsumer};
/// use rdkafka::ClientConfig;
/// use rdkafka::consumer::Consumer;
/// use rdkafka::Message;
///
/// let producer = TracedFutureProducer::create(
///     ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092"),
///     mqtrace::Config::new(),
/// )?;
/// let retries = RetryTopics::declare(producer, "orders", RetryPolicy::exponential(5)).await?;
/// let consumer = TracedStreamConsumer::create(
///     ClientConfig::new()
///         .set("bootstrap.servers", "127.0.0.1:9092")
///         .set("group.id", "billing")
///         .set("enable.auto.commit", "false"),
///     mqtrace::Config::new(),
/// )?;
/// let topics = retries.topics(); // orders, orders.retry.2, ..., orders.retry.5
/// consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
/// loop {
///     let message = consumer.recv().await?;
///     retries.handle(&consumer, message, async |m| {
///         let order: u64 = std::str::from_utf8(m.payload().unwrap_or_default())
///             .map_err(HandlerError::permanent)?
///             .parse()
///             .map_err(HandlerError::permanent)?;
///         let _ = order; // transient errors (`?` on any error) are retried
///         Ok(())
///     }).await?;
/// }
/// # }
/// ```
pub struct RetryTopics<C = DefaultClientContext, R = DefaultRuntime>
where
    C: ClientContext + 'static,
{
    producer: TracedFutureProducer<C, R>,
    topic: String,
    policy: RetryPolicy,
    time_limit: Option<Duration>,
    commit_mode: CommitMode,
}

impl<C: ClientContext + 'static, R> std::fmt::Debug for RetryTopics<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryTopics")
            .field("topic", &self.topic)
            .field("policy", &self.policy)
            .field("time_limit", &self.time_limit)
            .field("commit_mode", &self.commit_mode)
            .finish_non_exhaustive()
    }
}

/// Runs a blocking librdkafka call off the async runtime's threads when there is a Tokio
/// runtime, inline otherwise.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> KafkaResult<T> + Send + 'static,
) -> KafkaResult<T> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(KafkaError::Canceled),
    }
}

/// The partition count and replication factor of `topic`, and the names of every topic of the
/// cluster (a metadata request for all topics, which never creates one).
fn read_cluster(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> KafkaResult<(i32, i32, HashSet<String>)> {
    let metadata = admin.inner().fetch_metadata(None, ADMIN_TIMEOUT)?;
    let mut source = None;
    let mut existing = HashSet::new();
    for t in metadata.topics() {
        if t.partitions().is_empty() {
            continue;
        }
        if t.name() == topic {
            let partitions = i32::try_from(t.partitions().len()).unwrap_or(i32::MAX);
            let replication = t
                .partitions()
                .first()
                .map_or(1, |p| i32::try_from(p.replicas().len()).unwrap_or(1))
                .max(1);
            source = Some((partitions, replication));
        }
        existing.insert(t.name().to_owned());
    }
    let (partitions, replication) = source.ok_or(KafkaError::AdminOp(
        RDKafkaErrorCode::UnknownTopicOrPartition,
    ))?;
    Ok((partitions, replication, existing))
}

impl<C, R> RetryTopics<C, R>
where
    C: ClientContext + 'static,
    R: AsyncRuntime,
{
    /// Prepares the retry and dead-letter topics of `topic`: `{topic}.retry.{n}` for every
    /// attempt after the first (2 to the policy's maximum) and `{topic}.dlq`, created when
    /// missing with `topic`'s partition count and replication factor (through an admin client
    /// configured like `producer`). `topic` must exist (`UnknownTopicOrPartition` otherwise).
    /// The copies are produced with `producer`.
    ///
    /// Returns [`RetryError::InvalidName`](mqtrace::retry::RetryError::InvalidName), having
    /// created nothing, when a topic name it would use passes Kafka's 249 characters, and
    /// [`RetryError::Declare`](mqtrace::retry::RetryError::Declare) when the metadata request
    /// or the topic creation fails.
    ///
    /// ```no_run
    /// # async fn demo(producer: mqtrace_rdkafka::TracedFutureProducer) -> Result<(), mqtrace_rdkafka::RetryError> {
    /// let retries = mqtrace_rdkafka::RetryTopics::declare(producer, "orders", mqtrace::retry::RetryPolicy::exponential(3)).await?;
    /// let dlq = retries.dead_letter_topic(); // "orders.dlq"
    /// let topics = retries.topics(); // ["orders", "orders.retry.2", "orders.retry.3"]
    /// # let _ = (dlq, topics);
    /// # Ok(()) }
    /// ```
    pub async fn declare(
        producer: TracedFutureProducer<C, R>,
        topic: &str,
        policy: RetryPolicy,
    ) -> Result<Self, RetryError> {
        let this = Self {
            producer,
            topic: topic.to_owned(),
            policy,
            time_limit: None,
            commit_mode: CommitMode::Async,
        };
        for name in [
            this.retry_topic(this.policy.max_attempts()),
            this.dead_letter_topic(),
        ] {
            if name.len() > MAX_TOPIC_NAME {
                return Err(RetryError::InvalidName {
                    reason: format!(
                        "{} bytes, over Kafka's {MAX_TOPIC_NAME}-character limit for a topic name",
                        name.len()
                    ),
                    name,
                });
            }
        }
        this.create_topics()
            .await
            .map_err(|source| RetryError::Declare {
                name: topic.to_owned(),
                source,
            })?;
        for name in this.topics().iter().skip(1) {
            retry::declare_source(name);
        }
        retry::declare_source(&this.dead_letter_topic());
        Ok(this)
    }

    async fn create_topics(&self) -> KafkaResult<()> {
        let admin: Arc<AdminClient<DefaultClientContext>> =
            Arc::new(self.producer.client_config().create()?);
        let (partitions, replication, existing) = {
            let admin = admin.clone();
            let topic = self.topic.clone();
            blocking(move || read_cluster(&admin, &topic)).await?
        };
        let mut wanted: Vec<String> = (2..=self.policy.max_attempts())
            .map(|n| self.retry_topic(n))
            .collect();
        wanted.push(self.dead_letter_topic());
        let missing: Vec<NewTopic<'_>> = wanted
            .iter()
            .filter(|name| !existing.contains(*name))
            .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for result in admin.create_topics(&missing, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code)),
            }
        }
        Ok(())
    }

    /// Runs `handler` for `message` (received by `consumer` from the topic or one of its retry
    /// topics) and carries out what the policy decides: commit, retry after a delay, or
    /// dead-letter (see [`mqtrace::retry::run`] for panics, time limits, outcomes and
    /// reasons). A copy from one of these retry topics that is not yet due is first waited
    /// for, inside its process span (an event `mqtrace.retry.wait` records how long); the wait
    /// is at most the policy's [`longest_delay`](RetryPolicy::longest_delay), whatever the
    /// header says, and a message of any other topic is never waited for.
    ///
    /// Kafka's message does not settle itself: its offset is settled through `consumer`,
    /// which therefore comes first (the other brokers' `handle` takes the delivery alone).
    /// Stored, when the consumer has `enable.auto.commit` and not `enable.auto.offset.store`
    /// (librdkafka commits it and the result is recorded); otherwise committed with
    /// [`RetryTopics::with_commit_mode`]'s mode.
    ///
    /// Returns the decision, or [`RetryError::Copy`](mqtrace::retry::RetryError::Copy) when
    /// the copy could not be produced (the message is then not committed, its partition is
    /// sought back, and the consumer receives it again), or
    /// [`RetryError::Settle`](mqtrace::retry::RetryError::Settle) with the commit's error.
    ///
    /// See the example on [`RetryTopics`].
    pub async fn handle<'m, CC, CR, F>(
        &self,
        consumer: &TracedStreamConsumer<CC, CR>,
        message: TracedMessage<'m>,
        handler: F,
    ) -> Result<Decision, RetryError>
    where
        CC: CommitReporting + 'static,
        CR: AsyncRuntime,
        F: AsyncFnOnce(&TracedMessage<'m>) -> Result<(), HandlerError>,
    {
        if let Some(wait) = self.wait_for(&message) {
            retry::wait_in_span(message.context(), wait).await;
        }
        let retrying = Retrying {
            message,
            consumer,
            topics: self,
        };
        retry::run(
            retrying,
            &self.policy,
            self.time_limit,
            async |r: &Retrying<'_, 'm, C, R, CC, CR>| handler(&r.message).await,
        )
        .await
    }

    /// How long `message` must still wait before it is due, if at all: only a copy of one of
    /// these retry topics, for at most the policy's longest delay.
    fn wait_for(&self, message: &TracedMessage<'_>) -> Option<Duration> {
        if !self.is_retry_topic(message.topic()) {
            return None;
        }
        retry::due_in(
            &KafkaHeaders(message.headers()),
            self.policy.longest_delay(),
        )
    }

    /// Whether `topic` is `{topic}.retry.{n}` for an attempt `n` of the policy.
    fn is_retry_topic(&self, topic: &str) -> bool {
        topic
            .strip_prefix(self.topic.as_str())
            .and_then(|rest| rest.strip_prefix(".retry."))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (2..=self.policy.max_attempts()).contains(&n))
    }

    /// Produces a copy of `message` (key, payload and headers, without mqtrace's own) with
    /// `headers` added to `topic`, inside its process span, and waits for the delivery report.
    async fn produce_copy(
        &self,
        message: &TracedMessage<'_>,
        topic: &str,
        headers: &CopyHeaders,
    ) -> KafkaResult<()> {
        let propagation = self.producer.instrumentation().config().propagation();
        let mut out = OwnedHeadersWriter(copy_without(message.headers(), |k| {
            retry::left_out_of_copy(k, propagation)
        }));
        headers.write(&mut out);
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        record.key = message.key();
        record.payload = message.payload();
        record.headers = Some(out.0);
        self.producer
            .send(record, QUEUE_TIMEOUT)
            .with_context(message.context().clone())
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

impl<C, R> RetryTopics<C, R>
where
    C: ClientContext + 'static,
{
    /// Gives each handler run at most `limit`; a handler that takes longer counts as a
    /// transient failure (`error.type = timeout`).
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_rdkafka::RetryTopics) {
    /// let r = r.with_time_limit(std::time::Duration::from_secs(30));
    /// # let _ = r; }
    /// ```
    pub fn with_time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// How offsets are committed when the consumer commits by hand (default
    /// [`CommitMode::Async`]: the copy is already safe, so waiting for the commit would only
    /// narrow the window for a duplicate, at the price of blocking the thread for a round
    /// trip).
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_rdkafka::RetryTopics) {
    /// let r = r.with_commit_mode(rdkafka::consumer::CommitMode::Sync);
    /// # let _ = r; }
    /// ```
    pub fn with_commit_mode(mut self, mode: CommitMode) -> Self {
        self.commit_mode = mode;
        self
    }

    /// The policy.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_rdkafka::RetryTopics) {
    /// let _ = r.policy().max_attempts();
    /// # }
    /// ```
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// `{topic}.dlq`.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_rdkafka::RetryTopics) {
    /// println!("{}", r.dead_letter_topic());
    /// # }
    /// ```
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    /// `{topic}.retry.{attempt}`: where a copy waits before delivery attempt `attempt`.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_rdkafka::RetryTopics) {
    /// let second = r.retry_topic(2); // "orders.retry.2" for the topic "orders"
    /// # let _ = second;
    /// # }
    /// ```
    pub fn retry_topic(&self, attempt: u32) -> String {
        format!("{}.retry.{attempt}", self.topic)
    }

    /// What the consumer subscribes to: the topic, then its retry topics in attempt order.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_rdkafka::RetryTopics, c: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
    /// use rdkafka::consumer::Consumer;
    /// let topics = r.topics();
    /// c.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
    /// # Ok(()) }
    /// ```
    pub fn topics(&self) -> Vec<String> {
        std::iter::once(self.topic.clone())
            .chain((2..=self.policy.max_attempts()).map(|n| self.retry_topic(n)))
            .collect()
    }
}

/// One message on its way through [`retry::run`].
struct Retrying<'a, 'm, C, R, CC, CR>
where
    C: ClientContext + 'static,
    CC: CommitReporting + 'static,
{
    message: TracedMessage<'m>,
    consumer: &'a TracedStreamConsumer<CC, CR>,
    topics: &'a RetryTopics<C, R>,
}

impl<C, R, CC, CR> RetryBroker for Retrying<'_, '_, C, R, CC, CR>
where
    C: ClientContext + 'static,
    R: AsyncRuntime,
    CC: CommitReporting + 'static,
    CR: AsyncRuntime,
{
    type PublishError = KafkaError;
    type SettleError = KafkaError;
    /// Kafka cannot hold a message back: the copy says when it is due.
    const DELAYS_COPIES: bool = false;

    fn processing(&self) -> &Processing {
        self.message.processing()
    }

    fn destination(&self, to: &CopyTo<'_>) -> String {
        match to {
            CopyTo::Retry { attempt, .. } => self.topics.retry_topic(*attempt),
            CopyTo::DeadLetter { .. } => self.topics.dead_letter_topic(),
        }
    }

    async fn publish_copy(&self, to: &CopyTo<'_>, headers: &CopyHeaders) -> KafkaResult<()> {
        let topic = self.destination(to);
        self.topics
            .produce_copy(&self.message, &topic, headers)
            .await
    }

    /// Not committed; seeking back makes this consumer receive the message again rather than
    /// commit past it with a later offset of the partition.
    async fn requeue(self, reason: String) {
        let _ = self.consumer.seek_back(&self.message, reason, SEEK_TIMEOUT);
    }

    async fn settle(self, settlement: Settlement) -> KafkaResult<()> {
        self.consumer.settle_as(
            &self.message,
            self.topics.commit_mode,
            Meaning {
                outcome: settlement.outcome,
                reason: settlement.reason.map(Cow::Owned),
            },
        )
    }
}
