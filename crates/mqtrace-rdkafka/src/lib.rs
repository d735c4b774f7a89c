//! # mqtrace-rdkafka
//!
//! Traced [`rdkafka`] (Kafka) producers and consumers, built on the [`mqtrace`] core. Swap
//! the rdkafka type for its traced twin and keep the rest of your code:
//!
//! | rdkafka | mqtrace-rdkafka |
//! | --- | --- |
//! | `FutureProducer` | [`TracedFutureProducer`] |
//! | `BaseProducer`, `ThreadedProducer` | [`TracedBaseProducer`], [`TracedThreadedProducer`] |
//! | `StreamConsumer` | [`TracedStreamConsumer`] |
//! | `BaseConsumer` | [`TracedBaseConsumer`] |
//!
//! - sending starts a PRODUCER span `send {topic}` and adds `traceparent` / `tracestate` /
//!   `baggage` (whatever the configured propagator writes) to the record's headers as UTF-8
//!   bytes, keeping your headers (binary, empty, null-valued, repeated) as they were; the span
//!   ends on the delivery report with `messaging.destination.partition.id` and
//!   `messaging.kafka.offset`, or with `error.type` (the Kafka error code, e.g.
//!   `MessageSizeTooLarge`);
//! - receiving yields a [`TracedMessage`] with a CONSUMER span `process {topic}` that continues
//!   the producer's trace and covers your handler ([`Traced::in_span`]: the accessors every
//!   traced message has, in every broker crate, are the [`Traced`] trait's, in [`prelude`]);
//! - `commit_message` and `store_offset_from_message` on the traced consumer are recorded as
//!   CLIENT settle spans (`commit {topic}`, `store_offset {topic}`) and as the process span's
//!   outcome; with auto-commit a message dropped after handling ends with outcome `auto_ack`;
//!   the bulk `commit`, `commit_consumer_state` and `store_offsets` settle every held message
//!   below the offsets they commit or store;
//! - [`TracedMessage::detach`] gives an [`OwnedTracedMessage`] that a worker task can own,
//!   handle in its process span and settle later through the (shared) consumer;
//! - batches ([`TracedStreamConsumer::recv_batch`], [`TracedBaseConsumer::poll_batch`]) add a
//!   CLIENT span `poll {topic}` linking every message;
//! - [`RetryTopics`] retries failed messages after a delay through retry topics
//!   (`{topic}.retry.{attempt}`) and dead-letters them to `{topic}.dlq`, driven by a
//!   [`mqtrace::retry::RetryPolicy`]; each attempt's process span links to the attempt before
//!   it and to the first send, in one trace.
//!
//! ```no_run
//! use mqtrace_rdkafka::prelude::*; // the message accessors: in_span, span_context, attempt, ...
//! use rdkafka::ClientConfig;
//! use rdkafka::consumer::{CommitMode, Consumer};
//! use rdkafka::message::Message;
//! use rdkafka::producer::FutureRecord;
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), rdkafka::error::KafkaError> {
//! let producer: mqtrace_rdkafka::TracedFutureProducer = ClientConfig::new()
//!     .set("bootstrap.servers", "127.0.0.1:9092")
//!     .create()?; // or TracedFutureProducer::create(&client_config, mqtrace::Config::new())
//! producer
//!     .send(FutureRecord::to("orders").key("o-1").payload("{}"), Duration::from_secs(5))
//!     .await
//!     .map_err(|(e, _)| e)?;
//!
//! let consumer: mqtrace_rdkafka::TracedStreamConsumer = ClientConfig::new()
//!     .set("bootstrap.servers", "127.0.0.1:9092")
//!     .set("group.id", "billing")
//!     .set("enable.auto.commit", "false")
//!     .create()?;
//! consumer.subscribe(&["orders"])?; // rdkafka's own method, through Deref
//! let message = consumer.recv().await?; // CONSUMER span "process orders"
//! message.in_span(async { /* your handler: its spans join the trace */ }).await;
//! consumer.commit_message(&message, CommitMode::Sync)?; // CLIENT span "commit orders"
//! # let _ = message.payload(); Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod consumer;
mod error;
mod headers;
mod message;
mod partition;
mod producer;
mod retry;

pub use client::{ClientInfo, instrumentation};
pub use consumer::{
    CommitReporting, CommitTracker, TracedBaseConsumer, TracedConsumerContext, TracedIter,
    TracedMessageStream, TracedStreamConsumer,
};
pub use error::error_type;
pub use headers::{KafkaHeaders, KafkaHeadersMut, delivery_attempt, not_before};
pub use message::{ConsumedMessage, OwnedTracedMessage, TracedMessage};
pub use mqtrace::Traced;
pub use producer::{
    DeliveryAnswer, TracedBaseProducer, TracedDeliveryFuture, TracedFutureProducer, TracedOpaque,
    TracedProducerContext, TracedThreadedProducer,
};
pub use retry::{RetryError, RetryTopics};

/// One import for the traced types' methods: `use mqtrace_rdkafka::prelude::*;`.
///
/// ```no_run
/// use mqtrace_rdkafka::prelude::*;
/// # async fn demo(m: TracedMessage<'_>) {
/// m.in_span(async { /* the handler */ }).await;
/// # }
/// ```
pub mod prelude {
    pub use crate::{
        OwnedTracedMessage, TracedBaseConsumer, TracedFutureProducer, TracedMessage,
        TracedStreamConsumer,
    };
    pub use mqtrace::Traced;
}

use mqtrace::{Operation, OperationType};

/// `send`: the PRODUCER operation (`messaging.operation.type = send`), as in the messaging
/// conventions' Kafka page.
pub const SEND: Operation = Operation::new("send", OperationType::Send);
/// `process`: the CONSUMER operation.
pub const PROCESS: Operation = Operation::new("process", OperationType::Process);
/// `poll`: the CLIENT receive operation of a batch.
pub const POLL: Operation = Operation::new("poll", OperationType::Receive);
/// `commit`: a settle operation (an offset commit).
pub const COMMIT: Operation = Operation::new("commit", OperationType::Settle);
/// `store_offset`: a settle operation (an offset stored for a later commit).
pub const STORE_OFFSET: Operation = Operation::new("store_offset", OperationType::Settle);
/// `seek`: a settle operation (the partition sought back to a message so it is received
/// again: Kafka's requeue, used by [`RetryTopics`] when a copy could not be produced).
pub const SEEK: Operation = Operation::new("seek", OperationType::Settle);
