//! The traced message: a consumed `BorrowedMessage` with its process span.

use crate::client::{self, ClientInfo};
use crate::consumer::{CommitTracker, Shared, Tracked};
use crate::headers::{KafkaHeaders, delivery_attempt};
use crate::partition::partition_id;
use crate::{POLL, PROCESS};
use mqtrace::attributes as attr;
use mqtrace::{
    Config, Outcome, Traced,
    instrument::{Extracted, Incoming, Instrumentation, ProcessSpan, Processing, Receive},
};
use opentelemetry::KeyValue;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use std::ops::Deref;
use std::sync::Arc;
use std::time::SystemTime;

/// A consumed message with its CONSUMER process span.
///
/// It dereferences to the `rdkafka::message::BorrowedMessage` (`payload()`, `key()`,
/// `headers()`, `topic()`, `partition()`, `offset()` are rdkafka's, unchanged; bring
/// `rdkafka::Message` into scope). Settle it through the consumer that returned it
/// (`commit_message`, `store_offset_from_message`), which records a CLIENT settle span and the
/// process span's outcome. Dropped unsettled, the process span ends with outcome `auto_ack`
/// when the consumer commits by itself (`enable.auto.commit` and `enable.auto.offset.store`,
/// librdkafka's defaults), otherwise `unsettled` (an error). Bulk commits and stores through
/// the traced consumer (`commit`, `commit_consumer_state`, `store_offsets`) settle every
/// message they cover that is still held (outcome `ack`). To hand the message to another
/// task, [`TracedMessage::detach`] it.
///
/// The accessors every traced message has (`context`, `span_context`, `origin`, `attempt`:
/// the `mqtrace-attempt` header when present, else 1; `in_span`, `record_error`, `finish`)
/// come from [`mqtrace::Traced`] (in [`crate::prelude`]).
///
/// ```no_run
/// # async fn demo(consumer: mqtrace_rdkafka::TracedStreamConsumer) -> rdkafka::error::KafkaResult<()> {
/// use mqtrace_rdkafka::prelude::*;
/// use rdkafka::Message;
/// use rdkafka::consumer::CommitMode;
/// let message = consumer.recv().await?;
/// println!("attempt {} of trace {}", message.attempt(), message.span_context().trace_id());
/// let body = message.payload().unwrap_or_default();
/// message.in_span(async { /* handle body */ }).await;
/// consumer.commit_message(&message, CommitMode::Async)?;
/// # let _ = body; Ok(()) }
/// ```
pub struct TracedMessage<'a> {
    message: BorrowedMessage<'a>,
    processing: Arc<Processing>,
    _tracked: Tracked,
}

impl std::fmt::Debug for TracedMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedMessage")
            .field("message", &self.message)
            .field("attempt", &self.processing.attempt())
            .field("span_context", self.processing.span_context())
            .finish_non_exhaustive()
    }
}

impl<'a> TracedMessage<'a> {
    pub(crate) fn take_span(&self) -> Option<ProcessSpan> {
        self.processing.take()
    }

    /// Detaches the message from the consumer, like rdkafka's `BorrowedMessage::detach` (the
    /// message is copied into an [`OwnedMessage`]), keeping its process span: the
    /// [`OwnedTracedMessage`] can be moved to another task (a worker pool), handled there in
    /// its span, and settled later through the consumer (`commit_message`,
    /// `store_offset_from_message` take it too; share the consumer with an `Arc`).
    ///
    /// ```no_run
    /// # async fn demo(consumer: std::sync::Arc<mqtrace_rdkafka::TracedStreamConsumer>) -> rdkafka::error::KafkaResult<()> {
    /// use mqtrace_rdkafka::prelude::*;
    /// let message = consumer.recv().await?.detach();
    /// let worker = consumer.clone();
    /// tokio::spawn(async move {
    ///     message.in_span(async { /* handle it */ }).await;
    ///     worker.store_offset_from_message(&message)
    /// });
    /// # Ok(()) }
    /// ```
    pub fn detach(self) -> OwnedTracedMessage {
        OwnedTracedMessage {
            message: self.message.detach(),
            processing: self.processing,
            _tracked: self._tracked,
        }
    }

    /// The wrapped message.
    ///
    /// ```no_run
    /// # fn demo(m: mqtrace_rdkafka::TracedMessage<'_>) {
    /// let raw: &rdkafka::message::BorrowedMessage<'_> = m.message();
    /// # let _ = raw; }
    /// ```
    pub fn message(&self) -> &BorrowedMessage<'a> {
        &self.message
    }

    /// The wrapped message and its process span, for settling by other means (the span ends
    /// when you finish or drop it).
    ///
    /// ```no_run
    /// # fn demo(m: mqtrace_rdkafka::TracedMessage<'_>) {
    /// let (message, span) = m.into_parts();
    /// if let Some(span) = span { span.finish(mqtrace::Outcome::Ack); }
    /// # let _ = message; }
    /// ```
    pub fn into_parts(self) -> (BorrowedMessage<'a>, Option<ProcessSpan>) {
        let span = self.take_span();
        (self.message, span)
    }
}

impl Traced for TracedMessage<'_> {
    /// The process span this message holds until it is settled.
    ///
    /// ```no_run
    /// # fn demo(m: mqtrace_rdkafka::TracedMessage<'_>) {
    /// use mqtrace_rdkafka::prelude::*;
    /// assert_eq!(m.processing().attempt(), Some(m.attempt()));
    /// # }
    /// ```
    fn processing(&self) -> &Processing {
        &self.processing
    }
}

/// A consumed message detached from its consumer ([`TracedMessage::detach`]), with its
/// process span: it is `Send + 'static`, so a worker task can own it.
///
/// It dereferences to rdkafka's `OwnedMessage`. Settle it through the consumer it came from
/// (`commit_message`, `store_offset_from_message`), which records the settle span and the
/// process span's outcome, or with [`OwnedTracedMessage::finish`]; a bulk commit or store
/// through the consumer settles it too while it is held. Dropped unsettled, its process span
/// ends as a [`TracedMessage`]'s would (`auto_ack` or `unsettled`).
///
/// ```no_run
/// # async fn demo(consumer: std::sync::Arc<mqtrace_rdkafka::TracedStreamConsumer>) -> rdkafka::error::KafkaResult<()> {
/// use mqtrace_rdkafka::prelude::*;
/// use rdkafka::Message;
/// let message: mqtrace_rdkafka::OwnedTracedMessage = consumer.recv().await?.detach();
/// let consumer = consumer.clone();
/// tokio::spawn(async move {
///     let len = message.payload().map_or(0, <[u8]>::len);
///     message.in_span(async move { /* handle `len` bytes */ let _ = len; }).await;
///     consumer.commit_message(&message, rdkafka::consumer::CommitMode::Async)
/// });
/// # Ok(()) }
/// ```
pub struct OwnedTracedMessage {
    message: OwnedMessage,
    processing: Arc<Processing>,
    _tracked: Tracked,
}

impl std::fmt::Debug for OwnedTracedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedTracedMessage")
            .field("message", &self.message)
            .field("attempt", &self.processing.attempt())
            .field("span_context", self.processing.span_context())
            .finish_non_exhaustive()
    }
}

impl OwnedTracedMessage {
    /// The wrapped message.
    ///
    /// ```no_run
    /// # fn demo(m: mqtrace_rdkafka::OwnedTracedMessage) {
    /// let raw: &rdkafka::message::OwnedMessage = m.message();
    /// # let _ = raw; }
    /// ```
    pub fn message(&self) -> &OwnedMessage {
        &self.message
    }

    /// The wrapped message and its process span (see [`TracedMessage::into_parts`]).
    ///
    /// ```no_run
    /// # fn demo(m: mqtrace_rdkafka::OwnedTracedMessage) {
    /// let (message, span) = m.into_parts();
    /// if let Some(span) = span { span.finish(mqtrace::Outcome::Ack); }
    /// # let _ = message; }
    /// ```
    pub fn into_parts(self) -> (OwnedMessage, Option<ProcessSpan>) {
        let span = self.processing.take();
        (self.message, span)
    }
}

impl Traced for OwnedTracedMessage {
    /// The process span this message holds until it is settled.
    ///
    /// ```no_run
    /// # fn demo(m: mqtrace_rdkafka::OwnedTracedMessage) {
    /// use mqtrace_rdkafka::prelude::*;
    /// let _attempt = m.processing().attempt();
    /// # }
    /// ```
    fn processing(&self) -> &Processing {
        &self.processing
    }
}

impl Deref for OwnedTracedMessage {
    type Target = OwnedMessage;

    fn deref(&self) -> &OwnedMessage {
        &self.message
    }
}

mod sealed {
    /// Keeps [`super::ConsumedMessage`] implemented by this crate's messages only.
    #[allow(unreachable_pub)]
    pub trait Sealed {}
}

/// A received message the traced consumers settle: a [`TracedMessage`] or an
/// [`OwnedTracedMessage`]. Sealed: implemented by these two only.
///
/// ```
/// fn settle_any<M: mqtrace_rdkafka::ConsumedMessage>(
///     consumer: &mqtrace_rdkafka::TracedStreamConsumer,
///     message: &M,
/// ) -> rdkafka::error::KafkaResult<()> {
///     consumer.store_offset_from_message(message)
/// }
/// # let _ = settle_any::<mqtrace_rdkafka::OwnedTracedMessage>;
/// ```
pub trait ConsumedMessage: sealed::Sealed {
    #[doc(hidden)]
    fn processing(&self) -> &Processing;
    #[doc(hidden)]
    fn position(&self) -> (&str, i32, i64);
    #[doc(hidden)]
    fn borrowed(&self) -> Option<&BorrowedMessage<'_>>;
}

impl sealed::Sealed for TracedMessage<'_> {}
impl sealed::Sealed for OwnedTracedMessage {}

impl ConsumedMessage for TracedMessage<'_> {
    fn processing(&self) -> &Processing {
        &self.processing
    }
    fn position(&self) -> (&str, i32, i64) {
        (
            self.message.topic(),
            self.message.partition(),
            self.message.offset(),
        )
    }
    fn borrowed(&self) -> Option<&BorrowedMessage<'_>> {
        Some(&self.message)
    }
}

impl ConsumedMessage for OwnedTracedMessage {
    fn processing(&self) -> &Processing {
        &self.processing
    }
    fn position(&self) -> (&str, i32, i64) {
        (
            self.message.topic(),
            self.message.partition(),
            self.message.offset(),
        )
    }
    fn borrowed(&self) -> Option<&BorrowedMessage<'_>> {
        None
    }
}

impl<'a> Deref for TracedMessage<'a> {
    type Target = BorrowedMessage<'a>;

    fn deref(&self) -> &BorrowedMessage<'a> {
        &self.message
    }
}

/// What every consumer shares: the instrumentation and what its configuration says.
#[derive(Debug)]
pub(crate) struct Consuming {
    pub(crate) inst: Instrumentation,
    pub(crate) info: ClientInfo,
    group: Option<KeyValue>,
    drop_outcome: Outcome,
    /// The in-flight bookkeeping of the consumer's commit tracker.
    tracker: Arc<Shared>,
}

impl Consuming {
    pub(crate) fn new(config: Config, client: &ClientConfig, tracker: &CommitTracker) -> Self {
        let info = ClientInfo::read(client);
        let inst = client::build(config, &info);
        let drop_outcome = if info.auto_commit() && info.auto_offset_store() {
            Outcome::AutoAck
        } else {
            Outcome::Unsettled
        };
        let group = info.group_kv();
        tracker.configure(info.auto_commit() && !info.auto_offset_store());
        Self {
            inst,
            group,
            info,
            drop_outcome,
            tracker: tracker.shared().clone(),
        }
    }

    /// Starts the process span of `message`.
    pub(crate) fn start<'a>(&self, message: BorrowedMessage<'a>) -> TracedMessage<'a> {
        let extracted = self.inst.extract(&KafkaHeaders(message.headers()));
        self.start_with(message, extracted, false)
    }

    /// Starts the process span of `message`, whose context was already read.
    pub(crate) fn start_with<'a>(
        &self,
        message: BorrowedMessage<'a>,
        extracted: Extracted,
        counted_at_receive: bool,
    ) -> TracedMessage<'a> {
        let headers = KafkaHeaders(message.headers());
        let topic = message.topic();
        // A carried attempt is believed only where mqtrace's history is (a trusted topic or a
        // retry topic `RetryTopics` declared); elsewhere the core records it as refused.
        let attempt = if self.inst.believes_history(topic) {
            delivery_attempt(message.headers())
        } else {
            1
        };
        let partition = KeyValue::new(
            attr::MESSAGING_DESTINATION_PARTITION_ID,
            partition_id(message.partition()),
        );
        let with_group;
        let extra: &[KeyValue] = match &self.group {
            Some(g) => {
                with_group = [partition, g.clone()];
                &with_group
            }
            None => std::slice::from_ref(&partition),
        };
        let record = |kv: &mut Vec<KeyValue>| {
            if self.inst.config().message_key()
                && let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok())
            {
                kv.push(KeyValue::new(
                    attr::MESSAGING_KAFKA_MESSAGE_KEY,
                    key.to_owned(),
                ));
            }
            if message.payload().is_none() {
                kv.push(KeyValue::new(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE, true));
            }
        };
        // What its settle spans (commit, store, seek) record too.
        let settled = |kv: &mut Vec<KeyValue>| {
            kv.push(KeyValue::new(
                attr::MESSAGING_KAFKA_OFFSET,
                message.offset(),
            ));
        };
        let incoming = Incoming::new(PROCESS, topic, topic)
            .with_body_size(message.payload_len())
            .with_attempt(Some(attempt))
            .with_headers(&headers)
            .with_attributes(extra)
            .with_recorded(&record)
            .with_settle_recorded(&settled)
            .with_sent_at(crate::headers::record_time(message.timestamp()))
            .with_counted_at_receive(counted_at_receive);
        let mut span = self.inst.start_process(incoming, extracted);
        span.set_drop_outcome(self.drop_outcome);
        let processing = Arc::new(Processing::new(span));
        let tracked = CommitTracker::track(
            &self.tracker,
            topic,
            message.partition(),
            message.offset(),
            &processing,
        );
        TracedMessage {
            message,
            processing,
            _tracked: tracked,
        }
    }

    /// Starts the process spans of a polled batch, after recording its receive span (which
    /// links every message) when the batch holds messages.
    pub(crate) fn start_batch<'a>(
        &self,
        started: SystemTime,
        polled: Vec<KafkaResult<BorrowedMessage<'a>>>,
    ) -> Vec<KafkaResult<TracedMessage<'a>>> {
        let mut extracted: Vec<Option<Extracted>> = Vec::with_capacity(polled.len());
        let mut topic: Option<&str> = None;
        let mut one_topic = true;
        for m in &polled {
            match m {
                Ok(m) => {
                    match topic {
                        None => topic = Some(m.topic()),
                        Some(t) if t != m.topic() => one_topic = false,
                        Some(_) => {}
                    }
                    extracted.push(Some(self.inst.extract(&KafkaHeaders(m.headers()))));
                }
                Err(_) => extracted.push(None),
            }
        }
        // The receive span counts the batch's deliveries when it names one topic.
        let counted = topic.is_some() && one_topic;
        if topic.is_some() {
            let receive = Receive::new(POLL, started)
                .with_destination(topic.filter(|_| one_topic))
                .with_attributes(self.group.as_slice());
            self.inst.record_receive(
                receive,
                extracted.iter().flatten().map(Extracted::span_context),
            );
        }
        polled
            .into_iter()
            .zip(extracted)
            .map(|(m, x)| m.map(|m| self.start_with(m, x.unwrap_or_default(), counted)))
            .collect()
    }
}
