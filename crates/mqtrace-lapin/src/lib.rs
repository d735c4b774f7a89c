//! # mqtrace-lapin
//!
//! Traced [`lapin`] (RabbitMQ) channels, consumers and deliveries, built on the [`mqtrace`]
//! core. Swap `lapin::Channel` for [`TracedChannel`] (or open channels from a
//! [`TracedConnection`]) and keep the rest of your code:
//!
//! - `basic_publish` starts a PRODUCER span `publish {exchange}:{routing key}` and adds
//!   `traceparent` / `tracestate` / `baggage` (whatever the configured propagator writes) to
//!   the message headers as AMQP long strings, leaving your headers as they were; with
//!   publisher confirms the span ends at the confirm;
//! - `basic_consume` returns a [`TracedConsumer`], a `Stream` of [`TracedDelivery`], each with
//!   a CONSUMER span `process {exchange}:{routing key}:{queue}` that continues the producer's
//!   trace;
//! - `ack`, `nack`, `reject` and `dead_letter` on the delivery are recorded as CLIENT settle
//!   spans and as the process span's outcome, with the delivery attempt;
//! - the accessors every traced message has, in every broker crate (`span_context`,
//!   `attempt`, `in_span`, `record_error`, ...), are the [`Traced`] trait's, in [`prelude`].
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use mqtrace_lapin::prelude::*; // the message accessors: in_span, span_context, attempt, ...
//! use lapin::{BasicProperties, ConnectionProperties, options::*, types::FieldTable};
//!
//! # async fn demo() -> lapin::Result<()> {
//! let conn = mqtrace_lapin::TracedConnection::connect(
//!     "amqp://guest:guest@127.0.0.1:5672/%2f",
//!     ConnectionProperties::default(),
//!     mqtrace::Config::new(),
//! ).await?;
//! let channel = conn.create_channel().await?;
//! channel.queue_declare("orders".into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
//! channel.basic_publish("".into(), "orders".into(), BasicPublishOptions::default(), b"{}", BasicProperties::default()).await?;
//!
//! let mut consumer = channel
//!     .basic_consume("orders".into(), "worker".into(), BasicConsumeOptions::default(), FieldTable::default())
//!     .await?;
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     delivery.in_span(async { /* your handler: its spans join the trace */ }).await;
//!     delivery.ack(BasicAckOptions::default()).await?;
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attempt;
mod channel;
mod confirm;
mod connection;
mod consumer;
mod delivery;
mod error;
mod headers;
mod retry;
mod timestamp;

pub use attempt::{DeliveryHistory, MAX_X_DEATH_VALUE};
pub use channel::{TracedChannel, TracedGetMessage, start_publish};
pub use confirm::{ConfirmAnswer, TracedPublisherConfirm};
pub use connection::{TracedConnection, instrumentation};
pub use consumer::TracedConsumer;
pub use delivery::TracedDelivery;
pub use error::error_type;
pub use headers::{AmqpHeaders, AmqpHeadersMut};
pub use mqtrace::Traced;
pub use retry::{RetryError, RetryQueues};

/// One import for the traced types' methods: `use mqtrace_lapin::prelude::*;`.
///
/// ```no_run
/// use mqtrace_lapin::prelude::*;
/// # async fn demo(d: TracedDelivery) {
/// d.in_span(async { /* the handler */ }).await;
/// # }
/// ```
pub mod prelude {
    pub use crate::{TracedChannel, TracedConnection, TracedConsumer, TracedDelivery};
    pub use mqtrace::Traced;
}

use mqtrace::{Operation, OperationType};

/// `publish`: the PRODUCER operation (`messaging.operation.type = send`).
pub const PUBLISH: Operation = Operation::new("publish", OperationType::Send);
/// `receive`: the CLIENT span of a `basic_get` (a pull: the application asked for the message).
pub const RECEIVE: Operation = Operation::new("receive", OperationType::Receive);
/// `process`: the CONSUMER operation.
pub const PROCESS: Operation = Operation::new("process", OperationType::Process);
/// `ack`: a settle operation.
pub const ACK: Operation = Operation::new("ack", OperationType::Settle);
/// `nack`: a settle operation.
pub const NACK: Operation = Operation::new("nack", OperationType::Settle);
/// `reject`: a settle operation.
pub const REJECT: Operation = Operation::new("reject", OperationType::Settle);

/// Whether `queue` is temporary or anonymous ([`mqtrace::instrument::DestinationKind`]): as
/// declared through a [`TracedChannel::queue_declare`] of the same connection (an empty name
/// is anonymous, `exclusive` or `auto_delete` temporary), or by its name: a server-named
/// `amq.gen-*` queue and the direct reply-to pseudo queue `amq.rabbitmq.reply-to*` are both.
///
/// ```
/// let inst = mqtrace_lapin::instrumentation(mqtrace::Config::new(), None);
/// assert!(!mqtrace_lapin::destination_kind(&inst, "amq.gen-JzTY20BRgKO-HjmUJj0wLg").is_named());
/// assert!(mqtrace_lapin::destination_kind(&inst, "amq.rabbitmq.reply-to").is_temporary());
/// assert!(mqtrace_lapin::destination_kind(&inst, "orders").is_named());
/// ```
pub fn destination_kind(
    inst: &mqtrace::instrument::Instrumentation,
    queue: &str,
) -> mqtrace::instrument::DestinationKind {
    if queue.starts_with("amq.gen-") || queue.starts_with("amq.rabbitmq.reply-to") {
        return mqtrace::instrument::DestinationKind::NAMED
            .with_temporary(true)
            .with_anonymous(true);
    }
    inst.declared_kind(queue)
}

/// `messaging.destination.name` of a publish: `{exchange}:{routing key}`, or whichever of the
/// two is not empty, or `amq.default`.
///
/// ```
/// use mqtrace_lapin::publish_destination;
/// assert_eq!(publish_destination("orders", "created"), "orders:created");
/// assert_eq!(publish_destination("", "orders"), "orders");
/// assert_eq!(publish_destination("logs", ""), "logs");
/// assert_eq!(publish_destination("", ""), "amq.default");
/// ```
pub fn publish_destination(exchange: &str, routing_key: &str) -> String {
    join_destination(&[exchange, routing_key])
}

/// `messaging.destination.name` of a consumed message: `{exchange}:{routing key}:{queue}`,
/// leaving out empty parts and the queue when it equals the routing key; `amq.default` when
/// nothing is left.
///
/// ```
/// use mqtrace_lapin::consume_destination;
/// assert_eq!(consume_destination("orders", "created", "billing"), "orders:created:billing");
/// assert_eq!(consume_destination("", "orders", "orders"), "orders");
/// assert_eq!(consume_destination("logs", "", "q1"), "logs:q1");
/// assert_eq!(consume_destination("", "", ""), "amq.default");
/// ```
pub fn consume_destination(exchange: &str, routing_key: &str, queue: &str) -> String {
    let queue = if queue == routing_key { "" } else { queue };
    join_destination(&[exchange, routing_key, queue])
}

fn join_destination(parts: &[&str]) -> String {
    let mut out = String::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push(':');
        }
        out.push_str(p);
    }
    if out.is_empty() {
        out.push_str("amq.default");
    }
    out
}
