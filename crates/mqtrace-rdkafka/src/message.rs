//! The traced message: a consumed `BorrowedMessage` with its process span.

use crate::client::{self, ClientInfo};
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
use rdkafka::message::{BorrowedMessage, Message};
use std::ops::Deref;
use std::time::SystemTime;

/// A consumed message with its CONSUMER process span.
///
/// It dereferences to the `rdkafka::message::BorrowedMessage` (`payload()`, `key()`,
/// `headers()`, `topic()`, `partition()`, `offset()` are rdkafka's, unchanged; bring
/// `rdkafka::Message` into scope). Settle it through the consumer that returned it
/// (`commit_message`, `store_offset_from_message`), which records a CLIENT settle span and the
/// process span's outcome. Dropped unsettled, the process span ends with outcome `auto_ack`
/// when the consumer commits by itself (`enable.auto.commit` and `enable.auto.offset.store`,
/// librdkafka's defaults), otherwise `unsettled` (an error). If you commit in bulk
/// (`commit_consumer_state`), end the span yourself with [`Traced::finish`].
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
    processing: Processing,
    attempt: u32,
}

impl std::fmt::Debug for TracedMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedMessage")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .field("span_context", self.processing.span_context())
            .finish_non_exhaustive()
    }
}

impl<'a> TracedMessage<'a> {
    fn new(message: BorrowedMessage<'a>, span: ProcessSpan, attempt: u32) -> Self {
        Self {
            processing: Processing::new(span),
            attempt,
            message,
        }
    }

    pub(crate) fn take_span(&self) -> Option<ProcessSpan> {
        self.processing.take()
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
}

impl Consuming {
    pub(crate) fn new(config: Config, client: &ClientConfig) -> Self {
        let info = ClientInfo::read(client);
        let inst = client::build(config, &info);
        let drop_outcome = if info.auto_commit() && info.auto_offset_store() {
            Outcome::AutoAck
        } else {
            Outcome::Unsettled
        };
        Self {
            inst,
            group: info.group_kv(),
            info,
            drop_outcome,
        }
    }

    /// The attributes every consumer-side span of this message records.
    pub(crate) fn message_attributes(&self, message: &BorrowedMessage<'_>) -> Vec<KeyValue> {
        let mut kv = Vec::with_capacity(4);
        kv.push(KeyValue::new(
            attr::MESSAGING_DESTINATION_PARTITION_ID,
            partition_id(message.partition()),
        ));
        kv.push(KeyValue::new(
            attr::MESSAGING_KAFKA_OFFSET,
            message.offset(),
        ));
        if let Some(g) = &self.group {
            kv.push(g.clone());
        }
        kv.push(self.info.client_id_kv());
        kv
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
        let attempt = delivery_attempt(message.headers());
        let topic = message.topic();
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
        let incoming = Incoming::new(PROCESS, topic, topic)
            .with_body_size(message.payload_len())
            .with_attempt(Some(attempt))
            .with_headers(&headers)
            .with_attributes(extra)
            .with_sent_at(crate::headers::record_time(message.timestamp()))
            .with_counted_at_receive(counted_at_receive);
        let mut span = self.inst.start_process(incoming, extracted);
        span.record(|| {
            let mut kv = Vec::with_capacity(4);
            kv.push(KeyValue::new(
                attr::MESSAGING_KAFKA_OFFSET,
                message.offset(),
            ));
            kv.push(self.info.client_id_kv());
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
            kv
        });
        span.set_drop_outcome(self.drop_outcome);
        TracedMessage::new(message, span, attempt)
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
